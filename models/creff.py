"""CReFF: the warp-free part of AR-Seg's cross-resolution feature fusion (the release's `fuse_attention`)."""
import torch.nn as nn
import torch.nn.functional as F

import arseg_ops


def resize_ac(x, size):
    """Bilinear resize with align_corners=True (the release's choice for every 'resize to a size' step)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # align_corners=True resizing to the same size is the identity; skip the copy
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class CReFF(nn.Module):
    """forward(hr_feat_warped (N,C,H,W), lr_feat (N,C,h,w)) -> (N,C,H,W).

    lr_up = lr_feat resized to (H, W) (bilinear, align_corners=True); q, k, v = depthwise 3x3 convs (with bias)
    of lr_up, hr, hr; result = lr_up + local_attn(q, k, v, kernel_size) (zero padding, no 1/sqrt(C) scaling).
    """

    def __init__(self, channels, kernel_size=7):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"CReFF: channels must be a positive int, got {channels!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CReFF: kernel_size must be a positive odd int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.lr_query_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.hr_key_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.hr_value_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, hr_feat_warped, lr_feat):
        if hr_feat_warped.dim() != 4 or lr_feat.dim() != 4 or hr_feat_warped.shape[:2] != lr_feat.shape[:2]:
            raise ValueError(
                "CReFF: hr_feat_warped and lr_feat must be (N, C, H, W) with the same N and C, got "
                f"{tuple(hr_feat_warped.shape)} and {tuple(lr_feat.shape)}"
            )
        lr_up = resize_ac(lr_feat, hr_feat_warped.shape[-2:])
        q = self.lr_query_conv(lr_up)
        k = self.hr_key_conv(hr_feat_warped)
        v = self.hr_value_conv(hr_feat_warped)
        return lr_up + arseg_ops.local_attn(q, k, v, self.kernel_size)
