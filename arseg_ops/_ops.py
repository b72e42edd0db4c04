"""Public ops: Python wrappers, fake (meta) kernels and autograd formulas of torch.ops.arseg_ops.*.

The schemas and CPU/CUDA kernels are registered in C++ (csrc/). Here the ops become usable under autograd and
torch.compile: fake kernels give output shapes without running, and the backward of each op calls its
backward ops, which are dispatcher ops themselves.
"""
import torch
import torch.nn.functional as F

from ._loader import experimental_kernel
from ._validate import (check_creff, check_local_attn, check_mv_warp, creff_channels_last, tensor_like as _tensor_like,
                        warp_scale)

_ops = torch.ops.arseg_ops


def mv_warp(feature, mv, *, scale=1.0, mode="bilinear", padding_mode="zeros"):
    """Warp `feature` (N, C, H, W) with block-wise motion `mv` (N, 2, Hb, Wb) ("pull" warp).

    Output pixel (y, x) takes the vector (dx, dy) = mv[n, :, floor(y*Hb/H), floor(x*Wb/W)] of its block and
    samples `feature` at (x + sx*dx, y + sy*dy), pixel centres at integer coordinates: zero motion is the
    identity. `scale` is a number or (sx, sy), e.g. to turn image-pixel motion into feature-pixel motion.
    mode: "bilinear" | "nearest" (round half to even). padding_mode: "zeros" (taps outside count 0) |
    "border" (sample coordinates clamped to the image). Differentiable in `feature` and `mv`.
    """
    check_mv_warp(feature, mv, mode, padding_mode)
    sx, sy = warp_scale(scale)
    return _ops.mv_warp(feature, mv, sx, sy, mode, padding_mode)


def local_attn(query, key, value, kernel_size=7, *, scale=1.0, padding="zeros"):
    """Fused k x k local attention: out[:, :, p] = sum_j softmax_j(scale * <q_p, k_j>) v_j over the window at p.

    query, key (N, C, H, W); value (N, Cv, H, W); odd kernel_size in [1, 15]. padding="zeros" (AR-Seg): window
    positions outside the image take part with logit 0 and value 0; "exclude": they are left out of the
    softmax. Differentiable in all three inputs.
    """
    check_local_attn(query, key, value, kernel_size, scale, padding)
    return _ops.local_attn(query, key, value, int(kernel_size), float(scale), padding)


# ---- fake kernels: validate like the real ones and describe the outputs (shape, dtype, memory format) ----


def _mv_warp_output_is_channels_last(t):
    """Memory format of mv_warp's output (for input `t`) and of mv_warp_backward_feature's (for grad_output `t`).

    channels_last when `t` is strictly channels_last (channels_last and not also NCHW-contiguous, as C == 1 or
    H == W == 1 tensors are), NCHW otherwise, on CPU (csrc/cpu/mv_warp_cpu.cpp) and with the opt-in v2 CUDA
    kernels (experimental_kernels("mv_warp"); csrc/cuda/mv_warp_cuda.cpp); the default CUDA kernels always
    return contiguous NCHW. Keep the three in step. Fake kernels read the switch when torch.compile traces, so
    switch kernels before compiling.
    """
    if not (t.dim() == 4 and creff_channels_last(t)):
        return False
    return t.device.type == "cpu" or (t.device.type == "cuda" and experimental_kernel("mv_warp"))


def _new_warp_output(t):
    fmt = torch.channels_last if _mv_warp_output_is_channels_last(t) else torch.contiguous_format
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt)


@torch.library.register_fake("arseg_ops::mv_warp")
def _mv_warp_fake(feature, mv, scale_x=1.0, scale_y=1.0, mode="bilinear", padding_mode="zeros"):
    check_mv_warp(feature, mv, mode, padding_mode)
    return _new_warp_output(feature)


@torch.library.register_fake("arseg_ops::mv_warp_backward_feature")
def _mv_warp_backward_feature_fake(grad_output, mv, scale_x, scale_y, mode, padding_mode):
    check_mv_warp(grad_output, mv, mode, padding_mode, op="mv_warp_backward_feature")
    return _new_warp_output(grad_output)


@torch.library.register_fake("arseg_ops::mv_warp_backward_mv")
def _mv_warp_backward_mv_fake(grad_output, feature, mv, scale_x, scale_y, mode, padding_mode):
    check_mv_warp(feature, mv, mode, padding_mode, op="mv_warp_backward_mv")
    return mv.new_empty(mv.shape)


def _local_attn_layout(query):
    """Memory format of local_attn's outputs (and its backward's), as the kernels produce them: channels_last
    exactly when `query` is channels_last and not also NCHW-contiguous (C == 1 or H == W == 1 tensors are both),
    on CPU (csrc/cpu/local_attn_cpu.cpp) and CUDA (csrc/cuda/local_attn_cuda.cpp); NCHW-contiguous otherwise.
    """
    if creff_channels_last(query):
        return torch.channels_last
    return torch.contiguous_format


def _empty(like, layout):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device, memory_format=layout)


@torch.library.register_fake("arseg_ops::local_attn")
def _local_attn_fake(query, key, value, kernel_size=7, scale=1.0, padding="zeros"):
    check_local_attn(query, key, value, kernel_size, scale, padding)
    return _empty(value, _local_attn_layout(query))


@torch.library.register_fake("arseg_ops::local_attn_backward")
def _local_attn_backward_fake(grad_output, query, key, value, kernel_size, scale, padding):
    check_local_attn(query, key, value, kernel_size, scale, padding, op="local_attn_backward")
    layout = _local_attn_layout(query)
    return _empty(query, layout), _empty(key, layout), _empty(value, layout)


# ---- autograd ----


def _mv_warp_setup_context(ctx, inputs, output):
    feature, mv, scale_x, scale_y, mode, padding_mode = inputs
    ctx.args = (scale_x, scale_y, mode, padding_mode)
    # The feature gradient needs only the motion; the feature itself is kept only if mv needs a gradient.
    ctx.save_for_backward(feature if ctx.needs_input_grad[1] else None, mv)


def _mv_warp_backward(ctx, grad):
    feature, mv = ctx.saved_tensors
    if not _mv_warp_output_is_channels_last(grad):  # CPU and the v2 CUDA kernels take channels_last gradients as they are
        grad = grad.contiguous()
    grad_feature = _ops.mv_warp_backward_feature(grad, mv, *ctx.args) if ctx.needs_input_grad[0] else None
    grad_mv = _ops.mv_warp_backward_mv(grad, feature, mv, *ctx.args) if ctx.needs_input_grad[1] else None
    return grad_feature, grad_mv, None, None, None, None


def _local_attn_setup_context(ctx, inputs, output):
    query, key, value, kernel_size, scale, padding = inputs
    ctx.args = (kernel_size, scale, padding)
    ctx.save_for_backward(query, key, value)


def _local_attn_backward(ctx, grad):
    query, key, value = ctx.saved_tensors
    # No .contiguous() here: the kernels take grad in the layout they run in (NCHW or channels_last).
    dq, dk, dv = _ops.local_attn_backward(grad, query, key, value, *ctx.args)
    return dq, dk, dv, None, None, None


torch.library.register_autograd("arseg_ops::mv_warp", _mv_warp_backward, setup_context=_mv_warp_setup_context)
torch.library.register_autograd(
    "arseg_ops::local_attn", _local_attn_backward, setup_context=_local_attn_setup_context
)

# Second order: autograd of the backward ops (differentiates the reference's first-order gradient).
from . import _double_backward  # noqa: E402,F401  (registers on import)


# ==== creff: fused CReFF (mv_warp + resize + three depthwise convs + local_attn + add in one kernel) ====


def creff(key_feature, mv, lr_feature, weight, bias, *, kernel_size=7, scale=1.0, mv_scale=1.0):
    """AR-Seg's cross-resolution feature fusion in one op, from the keyframe feature to the fused feature:

        hr = mv_warp(key_feature, mv, scale=mv_scale, mode="bilinear", padding_mode="zeros")    # (N, C, H, W)
        lr = bilinear resize of lr_feature (N, C, h, w) to (H, W), align_corners=True
        q, k, v = depthwise 3x3 convs (zero padding 1) of lr, hr, hr with weight[0|1|2] (C, 1, 3, 3), bias[0|1|2]
        out = lr + local_attn(q, k, v, kernel_size, scale=scale, padding="zeros")

    weight (3, C, 1, 3, 3), bias (3, C); 1 <= h <= H, 1 <= w <= W; mv_scale a number or (sx, sy) as mv_warp's
    scale. The forward kernel never writes hr, lr, q, k or v to memory. The output is channels_last when
    key_feature is. Differentiable in key_feature, mv, lr_feature, weight and bias. On CPU the backward is one
    fused op too (creff_backward: it streams like the forward and gives every gradient but mv's; on CUDA with
    ARSEG_EXPERIMENTAL_KERNELS=creff as well); when mv's gradient is asked for, on CUDA by default, and for
    second-order gradients, the backward recomputes hr, lr, q, k, v with
    the unfused ops (mv_warp, upsample, depthwise conv) and runs their backward ops.
    """
    check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size, scale)
    sx, sy = warp_scale(mv_scale, "creff", "mv_scale")
    return _ops.creff(key_feature, mv, lr_feature, weight, bias, int(kernel_size), float(scale), sx, sy)


@torch.library.register_fake("arseg_ops::creff")
def _creff_fake(key_feature, mv, lr_feature, weight, bias, kernel_size=7, scale=1.0, mv_scale_x=1.0,
                mv_scale_y=1.0):
    check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size, scale)
    fmt = torch.channels_last if creff_channels_last(key_feature) else torch.contiguous_format
    return key_feature.new_empty(key_feature.shape).contiguous(memory_format=fmt)


@torch.library.register_fake("arseg_ops::creff_backward")
def _creff_backward_fake(grad_output, key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x,
                         mv_scale_y):
    check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size, scale, op="creff_backward")
    _tensor_like("creff_backward", "grad_output", grad_output, "key_feature", key_feature)

    def like(t):  # the kernel's rule: each gradient channels_last when its input strictly is
        fmt = torch.channels_last if creff_channels_last(t) else torch.contiguous_format
        return t.new_empty(t.shape).contiguous(memory_format=fmt)

    return like(key_feature), like(lr_feature), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _creff_setup_context(ctx, inputs, output):
    key_feature, mv, lr_feature, weight, bias, kernel_size, scale, sx, sy = inputs
    ctx.args = (kernel_size, scale, sx, sy)
    ctx.save_for_backward(key_feature, mv, lr_feature, weight, bias)


def _depthwise_backward(grad, x, weight, mask):
    """(d input, d weight, d bias) of conv2d(x, weight, bias, padding=1, groups=C) for a (C, 1, 3, 3) weight."""
    C = x.shape[1]
    return torch.ops.aten.convolution_backward.default(grad, x, weight, [C], [1, 1], [1, 1], [1, 1], False, [0, 0], C, mask)


def _align_corners_matrix(out_size, in_size, like):
    """(out_size, in_size) matrix of a 1-D linear resize with align_corners=True (rows sum to 1)."""
    dst = torch.arange(out_size, device=like.device, dtype=torch.float64)
    src = dst * ((in_size - 1) / (out_size - 1)) if out_size > 1 else dst * 0
    i0 = src.floor().clamp(max=in_size - 1)
    l1 = (src - i0).to(like.dtype)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=in_size - 1)
    cols = torch.arange(in_size, device=like.device).view(1, in_size)
    return (cols == i0.view(-1, 1)) * (1 - l1).view(-1, 1) + (cols == i1.view(-1, 1)) * l1.view(-1, 1)


def _creff_backward(ctx, grad):
    key_feature, mv, lr_feature, weight, bias = ctx.saved_tensors
    kernel_size, scale, sx, sy = ctx.args
    need_key, need_mv, need_lr, need_w, need_b = ctx.needs_input_grad[:5]
    N, C, H, W = key_feature.shape
    if N == 0 or C == 0:
        grads = [torch.zeros_like(t) if need else None
                 for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:5])]
        return tuple(grads) + (None,) * 4
    # The fused backward (CPU; CUDA only when the experimental creff kernels are opted in): all gradients but
    # mv's. Not when building a graph for second-order gradients (it has no autograd of its own; the op-by-op
    # path below is differentiable through its backward ops).
    fused = key_feature.device.type == "cpu" or (key_feature.device.type == "cuda" and experimental_kernel("creff"))
    if fused and not need_mv and not torch.is_grad_enabled():
        d_key, d_lr, d_w, d_b = _ops.creff_backward(grad, key_feature, mv, lr_feature, weight, bias, kernel_size,
                                                    scale, sx, sy)
        return (d_key if need_key else None, None, d_lr if need_lr else None, d_w if need_w else None,
                d_b if need_b else None, None, None, None, None)
    # Recompute the intermediates the fused forward never stored, with the unfused ops.
    hr = _ops.mv_warp(key_feature, mv, sx, sy, "bilinear", "zeros")
    lr_up = F.interpolate(lr_feature, size=(H, W), mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C).contiguous()
               for i, x in enumerate((lr_up, hr, hr)))
    grad = grad.contiguous()
    dq, dk, dv = _ops.local_attn_backward(grad, q, k, v, kernel_size, scale, "zeros")
    del q, k, v  # each full-size intermediate is dropped as soon as it is used up: lower peak memory
    need_hr = need_key or need_mv
    d_lr_up, dw_q, db_q = _depthwise_backward(dq, lr_up, weight[0], [need_lr, need_w, need_b])
    del dq, lr_up
    d_hr_k, dw_k, db_k = _depthwise_backward(dk, hr, weight[1], [need_hr, need_w, need_b])
    del dk
    d_hr_v, dw_v, db_v = _depthwise_backward(dv, hr, weight[2], [need_hr, need_w, need_b])
    del dv, hr
    grad_key = grad_mv = grad_lr = grad_w = grad_b = None
    if need_hr:
        d_hr = (d_hr_k + d_hr_v).contiguous()
        del d_hr_k, d_hr_v
        if need_key:
            grad_key = _ops.mv_warp_backward_feature(d_hr, mv, sx, sy, "bilinear", "zeros")
        if need_mv:
            grad_mv = _ops.mv_warp_backward_mv(d_hr, key_feature, mv, sx, sy, "bilinear", "zeros")
    if need_lr:
        d_lr_up = grad + d_lr_up  # the residual add
        # The resize is lr_up = A_y lr A_x^T with (H, h) and (W, w) interpolation matrices, so its backward is
        # A_y^T d_lr_up A_x (aten's upsample_bilinear2d_backward does not trace with dynamic shapes).
        a_y = _align_corners_matrix(H, lr_feature.shape[2], grad)
        a_x = _align_corners_matrix(W, lr_feature.shape[3], grad)
        grad_lr = torch.matmul(torch.matmul(a_y.t(), d_lr_up), a_x)
    if need_w:
        grad_w = torch.stack((dw_q, dw_k, dw_v))
    if need_b:
        grad_b = torch.stack((db_q, db_k, db_v))
    return grad_key, grad_mv, grad_lr, grad_w, grad_b, None, None, None, None


torch.library.register_autograd("arseg_ops::creff", _creff_backward, setup_context=_creff_setup_context)
