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
    # Under torch.compile(dynamic=True) a float argument, a default included, is traced as a symbolic float whose
    # finiteness cannot be decided without specializing the graph on its value (math.isfinite does not trace).
    # The kernels check it again when they run (TORCH_CHECK naming the argument), so a traced call still fails
    # clearly on inf or NaN, with a RuntimeError instead of this ValueError.
    if not torch.compiler.is_compiling() and not math.isfinite(value):
        raise ValueError("%s: argument '%s' must be finite, got %r" % (op, name, value))
    return value


def warp_scale(scale, op="mv_warp", name="scale"):
    """`scale` as (sx, sy): a number applies to both axes, a pair gives them separately."""
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError("%s: argument '%s' must be a number or a pair (sx, sy), got %r" % (op, name, scale))
        return _number(op, name, scale[0]), _number(op, name, scale[1])
    s = _number(op, name, scale)
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


def _kernel_size(op, kernel_size):
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral):
        raise TypeError("%s: argument 'kernel_size' must be an int, got %r" % (op, kernel_size))
    if not (1 <= kernel_size <= MAX_KERNEL_SIZE and kernel_size % 2 == 1):
        raise ValueError(
            "%s: argument 'kernel_size' must be odd and in [1, %d], got %d" % (op, MAX_KERNEL_SIZE, kernel_size)
        )


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
    _kernel_size(op, kernel_size)
    _number(op, "scale", scale)
    _choice(op, "padding", padding, ATTN_PADDINGS)


def check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size=7, scale=1.0, op="creff"):
    """creff: key_feature (N, C, H, W), mv (N, 2, Hb, Wb), lr_feature (N, C, h, w) with 1 <= h <= H and
    1 <= w <= W, weight (3, C, 1, 3, 3), bias (3, C); one dtype and device for all."""
    names = ("key_feature", "mv", "lr_feature", "weight", "bias")
    tensors = (key_feature, mv, lr_feature, weight, bias)
    for name, t in zip(names, tensors):
        _tensor(op, name, t)
    _rank4(op, "key_feature", key_feature, "(N, C, H, W)")
    _rank4(op, "mv", mv, "(N, 2, Hb, Wb)")
    _rank4(op, "lr_feature", lr_feature, "(N, C, h, w)")
    N, C, H, W = key_feature.shape
    if mv.shape[0] != N or mv.shape[1] != 2 or mv.shape[2] < 1 or mv.shape[3] < 1:
        raise ValueError("%s: argument 'mv' must be (N, 2, Hb, Wb) with N=%d and a block grid of at least 1x1, got %s"
                         % (op, N, tuple(mv.shape)))
    if lr_feature.shape[0] != N or lr_feature.shape[1] != C:
        raise ValueError("%s: argument 'lr_feature' must have N=%d and C=%d of 'key_feature' %s, got %s"
                         % (op, N, C, tuple(key_feature.shape), tuple(lr_feature.shape)))
    h, w = lr_feature.shape[2:]
    if H < 1 or W < 1 or not (1 <= h <= H and 1 <= w <= W):
        raise ValueError("%s: argument 'lr_feature' must be (N, C, h, w) with 1 <= h <= H=%d and 1 <= w <= W=%d "
                         "(it is resized up to key_feature's size), got %s" % (op, H, W, tuple(lr_feature.shape)))
    if tuple(weight.shape) != (3, C, 1, 3, 3):
        raise ValueError("%s: argument 'weight' must be (3, C, 1, 3, 3) = %s (the query, key and value depthwise "
                         "3x3 convs), got %s" % (op, (3, C, 1, 3, 3), tuple(weight.shape)))
    if tuple(bias.shape) != (3, C):
        raise ValueError("%s: argument 'bias' must be (3, C) = %s, got %s" % (op, (3, C), tuple(bias.shape)))
    for name, t in zip(names[1:], tensors[1:]):
        _same_kind(op, name, t, "key_feature", key_feature)
    _kernel_size(op, kernel_size)
    _number(op, "scale", scale)


def tensor_like(op, name, t, ref_name, ref):
    """A gradient argument: a floating-point tensor of ref's shape, dtype and device."""
    _tensor(op, name, t)
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError("%s: argument '%s' must have shape %s (of '%s'), got %s"
                         % (op, name, tuple(ref.shape), ref_name, tuple(t.shape)))
    _same_kind(op, name, t, ref_name, ref)


def creff_channels_last(key_feature):
    """The layout rule of creff's output: channels_last when key_feature is channels_last (and not also
    contiguous, as for C == 1 or 1x1 images), else contiguous NCHW. The C++ kernel applies the same rule."""
    return (not key_feature.is_contiguous()) and key_feature.is_contiguous(memory_format=torch.channels_last)
