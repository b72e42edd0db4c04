"""TinyNet: a small CPU-trainable stand-in for PSPNet-18 with the same interface (not from the paper).

It exists so that the whole AR-Seg recipe (HR / LR-only / AR with CReFF and FST) can be trained and measured on
a laptop-class CPU in minutes (benchmarks/accuracy.py): ~0.35 GMAC per 96x128 frame against PSPNet-18's ~5.
Like PSPNet-18 its fusion feature has stride 1, so thin structures stay resolvable at full resolution.
Encoder: 3x3 convs at strides 1, 2, 4 (the last with dilations 2 and 4 for context); decoder: upsample and merge
the skips back to stride 1 -> 32-channel feature -> `final_conv` 1x1 -> log-probabilities.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .segnet import SegNet


def _cbr(in_ch, out_ch, stride=1, dilation=1):
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class TinyNet(SegNet):
    feature_channels = 32
    feature_stride = 1

    def __init__(self, num_classes=12, *, aux_heads=False):
        if aux_heads:
            raise ValueError("TinyNet has no training-only heads (aux_heads must be False)")
        super().__init__(num_classes, aux_heads)
        self.stem = _cbr(3, 16)
        self.down1 = _cbr(16, 32, stride=2)
        self.down2 = nn.Sequential(_cbr(32, 64, stride=2), _cbr(64, 64, dilation=2), _cbr(64, 64, dilation=4))
        self.up1 = _cbr(64 + 32, 32)
        self.up2 = _cbr(32 + 16, 32)
        self.final_conv = nn.Conv2d(32, num_classes, 1)

    def _backbone(self, x):
        f1 = self.stem(x)
        f2 = self.down1(f1)
        f4 = self.down2(f2)
        up = F.interpolate(f4, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        up = self.up1(torch.cat([up, f2], dim=1))
        up = F.interpolate(up, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.up2(torch.cat([up, f1], dim=1)), None

    def classify(self, feature, out_size=None):
        logits = self.final_conv(feature)
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=True)
        return F.log_softmax(logits, dim=1)


class TinyNetWithCReFF(TinyNet):
    """TinyNet + CReFF (`fuse_attention`) before final_conv, as PSPNet18WithCReFF."""

    def __init__(self, num_classes=12, kernel_size=7, *, aux_heads=False, fused=True, position_bias=False):
        super().__init__(num_classes, aux_heads=aux_heads)
        self._add_creff(kernel_size, fused, position_bias)
