"""CReFF: the warp-free part of AR-Seg's cross-resolution feature fusion (the release's `fuse_attention`)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import arseg_ops


def resize_ac(x, size):
    """Bilinear resize with align_corners=True (the release's choice for every 'resize to a size' step)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # align_corners=True resizing to the same size is the identity; skip the copy
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class CReFF(nn.Module):
    """forward(hr_feature (N,C,H,W), lr_feat (N,C,h,w), mv=None, *, mv_scale=1.0) -> (N,C,H,W).

    hr = hr_feature warped by `mv` (arseg_ops.mv_warp(hr_feature, mv, scale=mv_scale): the keyframe's feature and
    the motion to it), or hr_feature itself when mv is None (already warped); lr_up = lr_feat resized to (H, W)
    (bilinear, align_corners=True); q, k, v = depthwise 3x3 convs (with bias) of lr_up, hr, hr;
    result = lr_up + local_attn(q, k, v, kernel_size) (zero padding, no 1/sqrt(C) scaling).

    fused=True (default) runs all of it as one arseg_ops.creff call, which never materializes hr, lr_up, q, k or
    v; fused=False runs the op-by-op chain. Same parameters (names and shapes) either way.
    """

    def __init__(self, channels, kernel_size=7, *, fused=True):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"CReFF: channels must be a positive int, got {channels!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CReFF: kernel_size must be a positive odd int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.fused = bool(fused)
        self.lr_query_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.hr_key_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.hr_value_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def qkv_weight_bias(self):
        """The three depthwise convs as arseg_ops.creff takes them: weight (3, C, 1, 3, 3), bias (3, C)."""
        convs = (self.lr_query_conv, self.hr_key_conv, self.hr_value_conv)
        return torch.stack([c.weight for c in convs]), torch.stack([c.bias for c in convs])

    def forward(self, hr_feature, lr_feat, mv=None, *, mv_scale=1.0):
        if hr_feature.dim() != 4 or lr_feat.dim() != 4 or hr_feature.shape[:2] != lr_feat.shape[:2]:
            raise ValueError(
                "CReFF: hr_feature and lr_feat must be (N, C, H, W) with the same N and C, got "
                f"{tuple(hr_feature.shape)} and {tuple(lr_feat.shape)}"
            )
        size = tuple(hr_feature.shape[-2:])
        fits = lr_feat.shape[-2] <= size[0] and lr_feat.shape[-1] <= size[1]  # the fused op only resizes up
        if self.fused and fits:
            if mv is None:  # already warped: zero motion is the exact identity warp
                mv = hr_feature.new_zeros(hr_feature.shape[0], 2, 1, 1)
            weight, bias = self.qkv_weight_bias()
            return arseg_ops.creff(hr_feature, mv.to(hr_feature.dtype), lr_feat, weight, bias,
                                   kernel_size=self.kernel_size, mv_scale=mv_scale)
        hr = hr_feature if mv is None else arseg_ops.mv_warp(hr_feature, mv.to(hr_feature.dtype), scale=mv_scale)
        lr_up = resize_ac(lr_feat, size)
        q = self.lr_query_conv(lr_up)
        k = self.hr_key_conv(hr)
        v = self.hr_value_conv(hr)
        return lr_up + arseg_ops.local_attn(q, k, v, self.kernel_size)
