"""Argument validation for the public ops, shared by the Python wrappers, the fake kernels and the reference.

Errors name the argument and say what was expected: TypeError for a wrong kind of value, ValueError for a
wrong value. The C++ kernels check again (TORCH_CHECK) for direct torch.ops calls.
"""
import math
import numbers

import torch

from ._opinfo import ATTN_PADDINGS, FLOAT_DTYPES, MAX_KERNEL_SIZE, WARP_MODES, WARP_PADDINGS


def _tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s: argument '%s' must be a torch.Tensor, got %s" % (op, name, type(t).__name__))
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            "%s: argument '%s' must be a floating-point tensor (float32, float64, float16 or bfloat16), got %s"
            % (op, name, t.dtype)
        )


def _rank4(op, name, t, layout):
    if t.dim() != 4:
        raise ValueError("%s: argument '%s' must be 4-D %s, got shape %s" % (op, name, layout, tuple(t.shape)))


def _same_kind(op, name, t, ref_name, ref):
    if t.dtype != ref.dtype:
        raise TypeError(
            "%s: argument '%s' has dtype %s but '%s' has %s; they must match" % (op, name, t.dtype, ref_name, ref.dtype)
        )
    if t.device != ref.device:
        raise ValueError(
            "%s: argument '%s' is on %s but '%s' is on %s; they must be on the same device"
            % (op, name, t.device, ref_name, ref.device)
        )


def _choice(op, name, value, choices):
    if not isinstance(value, str):
        raise TypeError("%s: argument '%s' must be a string, one of %s, got %r" % (op, name, choices, value))
    if value not in choices:
        raise ValueError("%s: argument '%s' must be one of %s, got %r" % (op, name, choices, value))


def _number(op, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s: argument '%s' must be a real number, got %r" % (op, name, value))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("%s: argument '%s' must be finite, got %r" % (op, name, value))
    return value


def warp_scale(scale):
    """`scale` as (sx, sy): a number applies to both axes, a pair gives them separately."""
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError("mv_warp: argument 'scale' must be a number or a pair (sx, sy), got %r" % (scale,))
        return _number("mv_warp", "scale", scale[0]), _number("mv_warp", "scale", scale[1])
    s = _number("mv_warp", "scale", scale)
    return s, s


def check_mv_warp(feature, mv, mode="bilinear", padding_mode="zeros", op="mv_warp"):
    _tensor(op, "feature", feature)
    _tensor(op, "mv", mv)
    _rank4(op, "feature", feature, "(N, C, H, W)")
    _rank4(op, "mv", mv, "(N, 2, Hb, Wb)")
    if mv.shape[1] != 2:
        raise ValueError("%s: argument 'mv' must have 2 channels (dx, dy) in dim 1, got shape %s" % (op, tuple(mv.shape)))
    if mv.shape[0] != feature.shape[0]:
        raise ValueError(
            "%s: argument 'mv' has batch size %d but 'feature' has %d" % (op, mv.shape[0], feature.shape[0])
        )
    if mv.shape[2] < 1 or mv.shape[3] < 1:
        raise ValueError("%s: argument 'mv' needs a block grid of at least 1x1, got shape %s" % (op, tuple(mv.shape)))
    _same_kind(op, "mv", mv, "feature", feature)
    _choice(op, "mode", mode, WARP_MODES)
    _choice(op, "padding_mode", padding_mode, WARP_PADDINGS)


def check_local_attn(query, key, value, kernel_size=7, scale=1.0, padding="zeros", op="local_attn"):
    for name, t in (("query", query), ("key", key), ("value", value)):
        _tensor(op, name, t)
    _rank4(op, "query", query, "(N, C, H, W)")
    if key.shape != query.shape:
        raise ValueError(
            "%s: argument 'key' must have the shape of 'query' %s, got %s" % (op, tuple(query.shape), tuple(key.shape))
        )
    _rank4(op, "value", value, "(N, Cv, H, W)")
    if value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            "%s: argument 'value' must be (N, Cv, H, W) with N, H, W of 'query' %s, got %s"
            % (op, tuple(query.shape), tuple(value.shape))
        )
    _same_kind(op, "key", key, "query", query)
    _same_kind(op, "value", value, "query", query)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral):
        raise TypeError("%s: argument 'kernel_size' must be an int, got %r" % (op, kernel_size))
    if not (1 <= kernel_size <= MAX_KERNEL_SIZE and kernel_size % 2 == 1):
        raise ValueError(
            "%s: argument 'kernel_size' must be odd and in [1, %d], got %d" % (op, MAX_KERNEL_SIZE, kernel_size)
        )
    _number(op, "scale", scale)
    _choice(op, "padding", padding, ATTN_PADDINGS)
