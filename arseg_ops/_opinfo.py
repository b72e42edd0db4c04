"""What each op is, in one place: argument limits and choices, arithmetic (MACs) and compulsory memory traffic.

Used by the validation (`_validate`), the FLOP counter (formulas registered with torch.utils.flop_counter here,
at import) and the benchmarks' roofline (`arseg_ops.bench.roofline`). The kernel-size limit comes from the
compiled library (csrc/local_attn_math.h, kMaxKernelSize), so C++ and Python cannot disagree.

FLOP convention: torch's FlopCounterMode reports FLOPs = 2 x multiply-accumulates, so the formulas do the same.
Traffic convention: each input read once, each output written once (what a perfectly fused kernel must move).
"""
import math

import torch
from torch.utils.flop_counter import register_flop_formula

from ._loader import load_library

WARP_MODES = ("bilinear", "nearest")
WARP_PADDINGS = ("zeros", "border")
ATTN_PADDINGS = ("zeros", "exclude")
MAX_KERNEL_SIZE = int(load_library().max_kernel_size)  # odd kernel sizes 1..MAX_KERNEL_SIZE
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

PASSES = ("forward", "backward", "forward_backward")


def _numel(shape):
    return math.prod(int(s) for s in shape)


# ---- local_attn ----


def local_attn_macs(query_shape, value_channels, kernel_size):
    """Forward MACs: per pixel C*k^2 for the similarities and Cv*k^2 for the weighted sum of values."""
    n, c, h, w = query_shape
    return n * h * w * kernel_size * kernel_size * (c + value_channels)


def local_attn_traffic(query_shape, value_channels, element_size, pass_):
    """Compulsory bytes: forward reads q, k, v and writes out; backward reads q, k, v, dout and the per-pixel
    log-sum-exp (4 bytes) and writes dq, dk, dv; forward_backward also writes the log-sum-exp once."""
    n, c, h, w = query_shape
    p = n * h * w
    cv = value_channels
    fwd = p * (2 * c + 2 * cv) * element_size
    bwd = p * (4 * c + 4 * cv) * element_size + 4 * p
    return {"forward": fwd, "backward": bwd, "forward_backward": fwd + 4 * p + bwd}[pass_]


@register_flop_formula(torch.ops.arseg_ops.local_attn)
def _local_attn_flop(query_shape, key_shape, value_shape, kernel_size=7, *args, out_shape=None, **kwargs):
    return 2 * local_attn_macs(query_shape, value_shape[1], kernel_size)


@register_flop_formula(torch.ops.arseg_ops.local_attn_backward)
def _local_attn_backward_flop(grad_shape, query_shape, key_shape, value_shape, kernel_size, *args,
                              out_shape=None, **kwargs):
    # dq and dk (C*k^2 each), dv and d(attention) = <grad, v_j> (Cv*k^2 each): twice the forward.
    return 4 * local_attn_macs(query_shape, value_shape[1], kernel_size)


# ---- mv_warp ----


def mv_warp_macs(feature_shape, mode):
    """Forward MACs: 4 per output element for bilinear sampling, none for nearest (a copy)."""
    return 4 * _numel(feature_shape) if mode == "bilinear" else 0


def mv_warp_traffic(feature_shape, mv_shape, element_size, pass_):
    """Compulsory bytes: forward reads the feature and the block motion and writes the output; the feature
    gradient reads dout and the motion and writes dfeature (the same amount)."""
    one = (2 * _numel(feature_shape) + _numel(mv_shape)) * element_size
    return {"forward": one, "backward": one, "forward_backward": 2 * one}[pass_]


@register_flop_formula(torch.ops.arseg_ops.mv_warp)
def _mv_warp_flop(feature_shape, mv_shape, scale_x=1.0, scale_y=1.0, mode="bilinear", *args, out_shape=None,
                  **kwargs):
    return 2 * mv_warp_macs(feature_shape, mode)


@register_flop_formula(torch.ops.arseg_ops.mv_warp_backward_feature)
def _mv_warp_backward_feature_flop(grad_shape, mv_shape, scale_x, scale_y, mode, *args, out_shape=None,
                                   **kwargs):
    return 2 * mv_warp_macs(grad_shape, mode)


@register_flop_formula(torch.ops.arseg_ops.mv_warp_backward_mv)
def _mv_warp_backward_mv_flop(grad_shape, feature_shape, mv_shape, scale_x, scale_y, mode, *args,
                              out_shape=None, **kwargs):
    # d/dx and d/dy of the 4-tap interpolation: two 4-tap sums per element.
    return 4 * mv_warp_macs(feature_shape, mode)


# ---- creff ----


@register_flop_formula(torch.ops.arseg_ops.creff)
def _creff_flop(key_shape, mv_shape, lr_shape, weight_shape, bias_shape, kernel_size=7, *args, out_shape=None,
                **kwargs):
    # Counted as the unfused chain is: three depthwise 3x3 convs (9 MACs per element each, as torch's conv
    # formula) and the attention. The warp is left out like mv_warp in count_gmacs' default (the paper's
    # accounting); the resize is counted on neither path.
    return 2 * (27 * _numel(key_shape) + local_attn_macs(key_shape, key_shape[1], kernel_size))
