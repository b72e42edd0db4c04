"""Public ops: Python wrappers, fake (meta) kernels and autograd formulas of torch.ops.arseg_ops.*.

The schemas and CPU/CUDA kernels are registered in C++ (csrc/). Here the ops become usable under autograd and
torch.compile: fake kernels give output shapes without running, and the backward of each op calls its
backward ops, which are dispatcher ops themselves.
"""
import torch

from ._loader import experimental_kernel
from ._validate import check_local_attn, check_mv_warp, warp_scale

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

    The opt-in v2 CUDA kernels (experimental_kernels("mv_warp")) keep a strictly channels_last tensor's layout
    (channels_last and not also NCHW-contiguous, as C == 1 or H == W == 1 tensors are); every other path (CPU,
    the default CUDA kernels) returns contiguous NCHW. csrc/cuda/mv_warp_cuda.cpp follows the same rule: keep the
    two in step. Fake kernels read the switch when torch.compile traces, so switch kernels before compiling.
    """
    return (t.device.type == "cuda" and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last) and experimental_kernel("mv_warp"))


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
    """Memory format of local_attn's outputs (and its backward's), as the kernels produce them.

    CUDA (csrc/cuda/local_attn_cuda.cpp): channels_last exactly when `query` is channels_last and not also
    NCHW-contiguous (C == 1 or H == W == 1 tensors are both). CPU: always NCHW-contiguous.
    """
    if query.device.type == "cuda" and query.is_contiguous(memory_format=torch.channels_last) \
            and not query.is_contiguous():
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
    if not _mv_warp_output_is_channels_last(grad):  # the v2 CUDA kernels take channels_last gradients as they are
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
