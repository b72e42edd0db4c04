"""CReFF: the warp-free part of AR-Seg's cross-resolution feature fusion (the release's `fuse_attention`)."""
import math

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

    position_bias=True (not in the paper) adds a learned relative-position bias to the attention logits,
    b(dx, dy) = sum_f a[0, f] cos(w_f dx) + a[1, f] cos(w_f dy), w_f = pi f / (r + 1), f = 1..r = kernel_size // 2
    (parameter `position_bias`, a = 0 at init: the softmax starts as without it). A content-only dot product
    cannot tell the aligned neighbour from the other 48 of a 7x7 window (measured: the centre won 2-5% of the
    time), so a 7x7 window blurred the HR feature; with the bias it learns to weigh the window by offset
    (benchmarks/RESULTS.md, accuracy). It is computed exactly as extra channels of q and k (cos / sin of the pixel
    position, whose dot products are cos(w_f * offset)), so this runs the op-by-op chain (local_attn), not the
    fused op; taps outside the image keep logit 0 (zero padding), as without it.
    """

    def __init__(self, channels, kernel_size=7, *, fused=True, position_bias=False):
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
        self.position_bias = None
        if position_bias:
            # amplitude a[axis, f] of cos(w_f * offset) added to the logits, w_f = pi f / (r + 1), f = 1..r
            self.position_bias = nn.Parameter(torch.zeros(2, kernel_size // 2))

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
        if self.fused and fits and self.position_bias is None:
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
        q, k = self.with_position_channels(q, k)
        return lr_up + arseg_ops.local_attn(q, k, v, self.kernel_size)

    def with_position_channels(self, q, k):
        """(q, k) as local_attn takes them: unchanged without a position bias, else each with its 4r position
        channels appended (see position_channels)."""
        if self.position_bias is None:
            return q, k
        q_part, k_part = self.position_channels(q)
        return torch.cat([q, q_part], 1), torch.cat([k, k_part], 1)

    def position_channels(self, like):
        """(q part, k part), each (N, 4r, H, W): their dot product at offset (dx, dy) of the window is
        sum_f a[0, f] cos(w_f dx) + a[1, f] cos(w_f dy), a learned relative-position bias of the logits."""
        n, _, h, w = like.shape
        r = self.kernel_size // 2
        freq = torch.arange(1, r + 1, device=like.device)
        parts_q, parts_k = [], []
        for axis, length in ((0, w), (1, h)):
            pos = torch.arange(length, device=like.device)
            # angle w_f * pos reduced mod 2 pi in integers ((f pos) mod 2(r + 1)), then float32: exact phases at
            # any image size, also when `like` is bfloat16 / float16 (which cannot even hold pixel indices > 256)
            phase = (freq[:, None] * pos[None, :]) % (2 * (r + 1))
            ang = phase.to(torch.float32 if like.dtype != torch.float64 else torch.float64) * (math.pi / (r + 1))
            code = torch.cat([ang.cos(), ang.sin()], 0)  # (2r, length)
            amp = self.position_bias[axis].repeat(2)[:, None].to(code.dtype)
            shape = (1, 2 * r, 1, w) if axis == 0 else (1, 2 * r, h, 1)
            parts_k.append(code.to(like.dtype).view(shape).expand(n, 2 * r, h, w))
            parts_q.append((amp * code).to(like.dtype).view(shape).expand(n, 2 * r, h, w))
        return torch.cat(parts_q, 1), torch.cat(parts_k, 1)
