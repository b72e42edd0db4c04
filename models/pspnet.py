"""PSPNet-18 as in the AR-Seg release (parameter names and forward computation), and its LR variant with CReFF.

Forward: dilated ResNet-18 -> pyramid pooling (1, 2, 3, 6) -> bottleneck 2560->1024 + ReLU -> Dropout2d(0.3)
-> three x2 upsampling stages (conv3x3 + BN + PReLU, Dropout2d(0.15) after each) = the 64-channel fusion
feature at stride 1 (for H, W multiples of 8) -> final_conv 1x1 -> resize (bilinear, align_corners=True) ->
log_softmax over classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import DilatedResNet18
from .creff import resize_ac
from .segnet import SegNet


class PSPModule(nn.Module):
    """Pyramid pooling: avg-pool to each bin size, 1x1 conv, resize back; concat with the input; bottleneck."""

    def __init__(self, channels=512, out_channels=1024, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(channels, channels, 1, bias=False)) for s in sizes
        )
        self.bottleneck = nn.Conv2d(channels * (len(sizes) + 1), out_channels, 1)

    def forward(self, f):
        size = f.shape[-2:]
        priors = [F.interpolate(stage(f), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return F.relu(self.bottleneck(torch.cat(priors + [f], dim=1)))


class PSPUpsample(nn.Module):
    """x2 bilinear resize, then conv3x3 (bias) + BN + PReLU (names `conv.0/1/2` as the release)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.PReLU())

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.conv(F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False))


class PSPNet18(SegNet):
    """PSPNet with a dilated ResNet-18 (the release's HR network). Output: log-probabilities (N, classes, H, W).

    aux_heads=True adds the release's training-only `classifier` (label presence from max-pooled layer3).
    """

    feature_channels = 64
    feature_stride = 1

    def __init__(self, num_classes=12, *, aux_heads=False):
        super().__init__(num_classes, aux_heads)
        self.feats = DilatedResNet18()
        self.psp = PSPModule(512, 1024)
        self.drop_1 = nn.Dropout2d(0.3)
        self.up_1 = PSPUpsample(1024, 256)
        self.up_2 = PSPUpsample(256, 64)
        self.up_3 = PSPUpsample(64, 64)
        self.drop_2 = nn.Dropout2d(0.15)
        self.final_conv = nn.Conv2d(64, num_classes, 1)
        if aux_heads:
            self.classifier = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def _backbone(self, x):
        f, class_f = self.feats(x)
        p = self.drop_1(self.psp(f))
        for up in (self.up_1, self.up_2, self.up_3):
            p = self.drop_2(up(p))
        return p, class_f

    def classify(self, feature, out_size=None):
        logits = self.final_conv(feature)
        logits = resize_ac(logits, feature.shape[-2:] if out_size is None else out_size)
        return F.log_softmax(logits, dim=1)

    def _aux_outputs(self, class_f, out_size):
        pooled = F.adaptive_max_pool2d(class_f, 1).flatten(1)
        return {"label_presence": self.classifier(pooled)}


class PSPNet18WithCReFF(PSPNet18):
    """The release's LR network (`PSPNetWithFuse`): PSPNet18 + `fuse_attention` (CReFF) right before final_conv."""

    def __init__(self, num_classes=12, kernel_size=7, *, aux_heads=False):
        super().__init__(num_classes, aux_heads=aux_heads)
        self._add_creff(kernel_size)
