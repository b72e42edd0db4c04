"""BiSeNet-V1 with ResNet-18 as in the AR-Seg release (parameter names and forward), and its LR variant.

Forward: context path (ResNet-18 + attention refinement + global context) gives a 1/8 feature; spatial path
(three stride-2 convs) gives another, resized to it; the feature fusion module merges them; `conv_out.conv`
(3x3 ConvBNReLU) gives the 256-channel fusion feature at 1/8; `conv_out.conv_out` (1x1) gives logits, upsampled
x8 (bilinear, align_corners=False). No softmax.

The release's checkpoints also hold `feat_conv_out.*` and `final_conv.*`, second names of `conv_out.conv` and
`conv_out.conv_out` (same shapes; the forward runs `conv_out`): `load_official` reads `conv_out.*` and ignores
them. The aux heads `conv_out16`/`conv_out32` are training-only.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import ResNet18, conv_bn
from .creff import resize_ac
from .segnet import SegNet


class ConvBNReLU(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(conv_bn(x, self.conv, self.bn))


def _channel_gate(feat, conv, bn):
    """sigmoid(bn(conv(global mean of feat))): the per-channel attention of ARM and FFM."""
    return torch.sigmoid(bn(conv(feat.mean(dim=(2, 3), keepdim=True))))


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 3, 1, 1)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        feat = self.conv(x)
        return feat * _channel_gate(feat, self.conv_atten, self.bn_atten)


class ContextPath(nn.Module):
    """forward(x) -> (feat16_up at 1/8, feat32_up at 1/16), 128 channels each."""

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        _, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + avg
        feat32_up = F.interpolate(feat32_sum, scale_factor=2.0, mode="nearest")
        feat32_up = self.conv_head32(resize_ac(feat32_up, feat16.shape[-2:]))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, scale_factor=2.0, mode="nearest"))
        return feat16_up, feat32_up


class SpatialPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, 2, 3)
        self.conv2 = ConvBNReLU(64, 64, 3, 2, 1)
        self.conv3 = ConvBNReLU(64, 64, 3, 2, 1)
        self.conv_out = ConvBNReLU(64, 128, 1, 1, 0)

    def forward(self, x):
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusionModule(nn.Module):
    def __init__(self, in_ch=256, out_ch=256):
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, 1, 1, 0)
        self.conv = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, feat_sp, feat_cp):
        feat = self.convblk(torch.cat([feat_sp, feat_cp], dim=1))
        return feat * _channel_gate(feat, self.conv, self.bn) + feat


class BiSeNetOutput(nn.Module):
    """`conv` (3x3 ConvBNReLU) -> `conv_out` (1x1, bias) -> x`up_factor` bilinear (align_corners=False)."""

    def __init__(self, in_ch, mid_ch, num_classes, up_factor):
        super().__init__()
        self.up_factor = up_factor
        self.conv = ConvBNReLU(in_ch, mid_ch, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1)

    def logits(self, feat):
        return F.interpolate(self.conv_out(feat), scale_factor=float(self.up_factor), mode="bilinear",
                             align_corners=False)

    def forward(self, x):
        return self.logits(self.conv(x))


class BiSeNet18(SegNet):
    """BiSeNet-V1 with ResNet-18 (the release's HR network). Output: logits (N, classes, 8h', 8w') where h', w'
    is the 1/8 feature size (= H, W for multiples of 8); resized to out_size (bilinear, align_corners=True) when
    that differs. aux_heads=True adds the training-only heads `conv_out16` and `conv_out32`.
    """

    feature_channels = 256
    feature_stride = 8

    def __init__(self, num_classes=12, *, aux_heads=False):
        super().__init__(num_classes, aux_heads)
        self.cp = ContextPath()
        self.sp = SpatialPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes, up_factor=8)
        if aux_heads:
            self.conv_out16 = BiSeNetOutput(128, 64, num_classes, up_factor=8)
            self.conv_out32 = BiSeNetOutput(128, 64, num_classes, up_factor=16)

    def _backbone(self, x):
        cp8, cp16 = self.cp(x)
        sp = resize_ac(self.sp(x), cp8.shape[-2:])
        return self.conv_out.conv(self.ffm(sp, cp8)), (cp8, cp16)

    def classify(self, feature, out_size=None):
        logits = self.conv_out.logits(feature)
        return logits if out_size is None else resize_ac(logits, out_size)

    def _aux_outputs(self, aux_inputs, out_size):
        cp8, cp16 = aux_inputs
        return {"out16": resize_ac(self.conv_out16(cp8), out_size),
                "out32": resize_ac(self.conv_out32(cp16), out_size)}


class BiSeNet18WithCReFF(BiSeNet18):
    """The release's LR network (`BiSeNetV1WithFuse`): CReFF on the `conv_out.conv` output."""

    def __init__(self, num_classes=12, kernel_size=7, *, aux_heads=False, fused=True, position_bias=False):
        super().__init__(num_classes, aux_heads=aux_heads)
        self._add_creff(kernel_size, fused, position_bias)
