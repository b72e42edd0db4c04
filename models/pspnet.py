"""PSPNet-18 as in the AR-Seg release (parameter names and forward computation), and its LR variant with CReFF.

Forward: dilated ResNet-18 -> pyramid pooling (1, 2, 3, 6) -> bottleneck 2560->1024 + ReLU -> Dropout2d(0.3)
-> three x2 upsampling stages (conv3x3 + BN + PReLU, Dropout2d(0.15) after each) = the 64-channel fusion
feature at stride 1 (for H, W multiples of 8) -> final_conv 1x1 -> resize (bilinear, align_corners=True) ->
log_softmax over classes.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import DilatedResNet18, conv_bn, pointwise_conv
from .creff import resize_ac
from .segnet import SegNet


def pyramid_avg_pool(f, sizes):
    """[F.adaptive_avg_pool2d(f, s) for s in sizes]. When H and W are multiples of L = lcm(sizes), every bin is a
    uniform block: one avg_pool2d pass makes the L x L bins and each coarser pyramid level averages whole blocks
    of them (exact up to float rounding). Other sizes keep the general (overlapping-bin) adaptive pooling."""
    h, w = f.shape[-2:]
    fine = math.lcm(*sizes)
    if h % fine or w % fine:
        return [F.adaptive_avg_pool2d(f, s) for s in sizes]
    base = F.avg_pool2d(f, (h // fine, w // fine))
    return [base if s == fine else F.avg_pool2d(base, fine // s) for s in sizes]


def _resize_matrix(n_in, n_out, like):
    """(n_out, n_in) matrix M with M @ x = 1-D bilinear resize (align_corners=False) of x: F.interpolate applied
    to the identity, so that the weights are PyTorch's own."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device).view(1, n_in, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()


def add_resized(base, smalls):
    """base + sum_i F.interpolate(smalls[i], base's size, bilinear, align_corners=False), in one batched GEMM:
    the separable resizes of all smalls are the block-diagonal product R_h @ blockdiag(smalls) @ R_w^T, and
    R_h's blocks side by side times the width-resized smalls stacked (a few rows each) is that sum. The result
    has base's memory format (NCHW or channels_last)."""
    n, c, h, w = base.shape
    rows = torch.cat([_resize_matrix(g.shape[-2], h, base) for g in smalls], dim=1)  # (H, S), S = sum of heights
    t = torch.cat([g @ _resize_matrix(g.shape[-1], w, base).t() for g in smalls], dim=2)  # (N, C, S, W)
    if base.is_contiguous():
        out = torch.baddbmm(base.view(n * c, h, w), rows.expand(n * c, h, rows.shape[1]), t.reshape(n * c, -1, w))
        return out.view(n, c, h, w)
    nhwc = base.permute(0, 2, 3, 1)  # contiguous for channels_last; other layouts are copied once
    t = t.permute(0, 2, 3, 1).reshape(n, -1, w * c)  # (N, S, W*C)
    out = torch.baddbmm(nhwc.reshape(n, h, w * c), rows.expand(n, h, rows.shape[1]), t)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


class PSPModule(nn.Module):
    """Pyramid pooling: avg-pool to each bin size, 1x1 conv, resize back; concat with the input; bottleneck.

    The release's formulation (`factored=False`) resizes four 512-channel priors to full resolution, concatenates
    them with the input (2560 channels) and runs the 1x1 bottleneck over all of it. A 1x1 convolution commutes
    with a bilinear resize (both are linear, one across channels, the other across pixels), so the default
    (`factored=True`) applies each prior's slice of the bottleneck at the pooled size (<= 6x6) and resizes the
    1024-channel sums in one pass: the same function up to float rounding, with the bottleneck's full-resolution
    work cut from 2560 to 512 input channels and no full-resolution priors or concatenation in memory.
    """

    def __init__(self, channels=512, out_channels=1024, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.sizes = tuple(sizes)
        self.factored = True
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(channels, channels, 1, bias=False)) for s in sizes
        )
        self.bottleneck = nn.Conv2d(channels * (len(sizes) + 1), out_channels, 1)

    def forward(self, f):
        size = f.shape[-2:]
        pooled = pyramid_avg_pool(f, self.sizes)
        priors = [stage[1](p) for stage, p in zip(self.stages, pooled)]
        if not self.factored:
            priors = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in priors]
            return F.relu(self.bottleneck(torch.cat(priors + [f], dim=1)))
        c = f.shape[1]
        weight = self.bottleneck.weight  # (out, c * (stages + 1), 1, 1): priors' slices first, then f's
        small = [F.conv2d(p, weight[:, i * c:(i + 1) * c]) for i, p in enumerate(priors)]
        out = F.conv2d(f, weight[:, len(priors) * c:], self.bottleneck.bias)
        return torch.relu_(add_resized(out, small))


class PSPUpsample(nn.Module):
    """x2 bilinear resize, then conv3x3 (bias) + BN + PReLU (names `conv.0/1/2` as the release)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.PReLU())

    def forward(self, x):
        h, w = x.shape[-2:]
        conv, bn, prelu = self.conv
        return prelu(conv_bn(F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False), conv, bn))


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
        logits = pointwise_conv(feature, self.final_conv)
        logits = resize_ac(logits, feature.shape[-2:] if out_size is None else out_size)
        return F.log_softmax(logits, dim=1)

    def _aux_outputs(self, class_f, out_size):
        pooled = F.adaptive_max_pool2d(class_f, 1).flatten(1)
        return {"label_presence": self.classifier(pooled)}


class PSPNet18WithCReFF(PSPNet18):
    """The release's LR network (`PSPNetWithFuse`): PSPNet18 + `fuse_attention` (CReFF) right before final_conv."""

    def __init__(self, num_classes=12, kernel_size=7, *, aux_heads=False, fused=True, position_bias=False):
        super().__init__(num_classes, aux_heads=aux_heads)
        self._add_creff(kernel_size, fused, position_bias)
