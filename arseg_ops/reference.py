"""Pure-PyTorch versions of the arseg_ops kernels: the ground truth for tests and the baseline for benchmarks.

Same signatures and semantics as arseg_ops.mv_warp / local_attn / creff, written the straightforward way:
mv_warp expands the block motion to a dense flow and gathers four taps; local_attn unfolds k*k copies of key
and value (C*k*k*H*W elements each), which is exactly the memory the fused kernels avoid; creff is the unfused
chain of the two plus a resize and three depthwise convs. Half-precision inputs
are computed in float32 (as the kernels accumulate) and returned in their own dtype.
"""
import torch
import torch.nn.functional as F

from ._validate import check_creff, check_local_attn, check_mv_warp, creff_channels_last, warp_scale


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mv_warp(feature, mv, *, scale=1.0, mode="bilinear", padding_mode="zeros"):
    check_mv_warp(feature, mv, mode, padding_mode)
    sx, sy = warp_scale(scale)
    out_dtype = feature.dtype
    dtype = _compute_dtype(out_dtype)
    feature, mv = feature.to(dtype), mv.to(dtype)
    N, C, H, W = feature.shape
    Hb, Wb = mv.shape[2:]
    if feature.numel() == 0:
        return feature.new_zeros(feature.shape, dtype=out_dtype) + 0 * mv.sum()
    device = feature.device
    by = torch.arange(H, device=device) * Hb // H
    bx = torch.arange(W, device=device) * Wb // W
    flow = mv[:, :, by][:, :, :, bx]  # (N, 2, H, W): the dense flow the fused kernel never builds
    xs = torch.arange(W, device=device, dtype=dtype).view(1, 1, W) + sx * flow[:, 0]
    ys = torch.arange(H, device=device, dtype=dtype).view(1, H, 1) + sy * flow[:, 1]
    finite = torch.isfinite(xs) & torch.isfinite(ys)
    xs = torch.where(finite, xs, torch.zeros_like(xs))
    ys = torch.where(finite, ys, torch.zeros_like(ys))
    if padding_mode == "border":
        xs = xs.clamp(0, W - 1)
        ys = ys.clamp(0, H - 1)
    else:  # far-outside samples: keep the integer casts below in range; every tap is outside anyway
        xs = xs.clamp(-2, W + 1)
        ys = ys.clamp(-2, H + 1)
    if mode == "nearest":
        taps = [(torch.round(xs), torch.round(ys), torch.ones_like(xs))]
    else:
        x0, y0 = torch.floor(xs), torch.floor(ys)
        fx, fy = xs - x0, ys - y0
        taps = [
            (x0, y0, (1 - fx) * (1 - fy)),
            (x0 + 1, y0, fx * (1 - fy)),
            (x0, y0 + 1, (1 - fx) * fy),
            (x0 + 1, y0 + 1, fx * fy),
        ]
    flat = feature.reshape(N, C, H * W)
    out = feature.new_zeros(N, C, H * W)
    for xt, yt, w in taps:
        xi, yi = xt.long(), yt.long()
        valid = finite & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).reshape(N, 1, H * W).expand(N, C, H * W)
        w = (w * valid).reshape(N, 1, H * W)
        # a zero-weight tap contributes 0 even if the value it reads is inf/NaN (as the kernels)
        out = out + torch.where(w != 0, w * flat.gather(2, idx), torch.zeros((), dtype=dtype, device=device))
    return out.reshape(N, C, H, W).to(out_dtype)


def local_attn(query, key, value, kernel_size=7, *, scale=1.0, padding="zeros"):
    check_local_attn(query, key, value, kernel_size, scale, padding)
    out_dtype = value.dtype
    dtype = _compute_dtype(out_dtype)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    N, C, H, W = query.shape
    Cv = value.shape[1]
    K = int(kernel_size)
    KK = K * K
    if N * H * W * Cv == 0:
        return value.new_zeros(value.shape, dtype=out_dtype) + 0 * (query.sum() + key.sum())
    # k*k shifted copies of key and value; out-of-image positions are zeros (logit 0, value 0).
    if C > 0:
        k_unf = F.unfold(key, K, padding=K // 2).view(N, C, KK, H, W)
        logits = (query.unsqueeze(2) * k_unf).sum(1) * float(scale)  # (N, KK, H, W)
    else:  # an empty dot product is 0 (unfold rejects zero channels)
        logits = query.new_zeros(N, KK, H, W) + 0 * (query.sum() + key.sum())
    if padding == "exclude":
        ones = torch.ones(1, 1, H, W, device=query.device, dtype=dtype)
        inside = F.unfold(ones, K, padding=K // 2).view(1, KK, H, W) > 0
        logits = logits.masked_fill(~inside, float("-inf"))
    attn = torch.softmax(logits, dim=1)
    v_unf = F.unfold(value, K, padding=K // 2).view(N, Cv, KK, H, W)
    out = (attn.unsqueeze(1) * v_unf).sum(2)
    return out.to(out_dtype)


def creff(key_feature, mv, lr_feature, weight, bias, *, kernel_size=7, scale=1.0, mv_scale=1.0):
    check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size, scale)
    warp_scale(mv_scale, "creff", "mv_scale")
    out_dtype = key_feature.dtype
    dtype = _compute_dtype(out_dtype)
    key_feature, mv, lr_feature, weight, bias = (t.to(dtype) for t in (key_feature, mv, lr_feature, weight, bias))
    C = key_feature.shape[1]
    H, W = key_feature.shape[-2:]
    hr = mv_warp(key_feature, mv, scale=mv_scale, mode="bilinear", padding_mode="zeros")
    lr = F.interpolate(lr_feature, size=(H, W), mode="bilinear", align_corners=True)
    if C == 0:
        out = lr + 0 * (hr.sum() + weight.sum() + bias.sum())
    else:
        q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((lr, hr, hr)))
        out = lr + local_attn(q, k, v, kernel_size, scale=scale, padding="zeros")
    memory_format = torch.channels_last if creff_channels_last(key_feature) else torch.contiguous_format
    return out.to(out_dtype).contiguous(memory_format=memory_format)
