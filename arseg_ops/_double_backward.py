"""Autograd of the backward ops, so second-order gradients of mv_warp and local_attn are correct.

The first-order gradients come from the fused backward kernels (`local_attn_backward`, `mv_warp_backward_feature`,
`mv_warp_backward_mv`, dispatcher ops). Their own derivatives are rarely needed (gradient penalties, Hessian-vector
products, gradgradcheck), so they are not fused: each backward op's backward differentiates the same first-order
gradient written with arseg_ops.reference (pure PyTorch) by nested torch.func.vjp. That costs the reference's memory
(local_attn unfolds k*k copies of key and value) but is exact, and it is itself differentiable, so third and higher
orders work too. Without this registration PyTorch would treat the backward ops as constants and return zeros.
"""
import functools

import torch

from . import reference

_LIB = "arseg_ops::"


def _vjp_of(first_order, primals, cotangents):
    """Vector-Jacobian product of first_order(*primals) with `cotangents`, differentiable in turn."""
    _, vjp_fn = torch.func.vjp(first_order, *primals)
    return vjp_fn(cotangents)


def _zero_if_none(grads, like):
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


# ---- local_attn_backward(grad_output, query, key, value, kernel_size, scale, padding) -> (dq, dk, dv) ----


def _local_attn_first_order(kernel_size, scale, padding, grad_output, query, key, value):
    forward = functools.partial(reference.local_attn, kernel_size=kernel_size, scale=scale, padding=padding)
    _, vjp_fn = torch.func.vjp(forward, query, key, value)
    return vjp_fn(grad_output)


def _local_attn_backward_setup(ctx, inputs, output):
    grad_output, query, key, value, kernel_size, scale, padding = inputs
    ctx.args = (kernel_size, scale, padding)
    ctx.save_for_backward(grad_output, query, key, value)


def _local_attn_backward_backward(ctx, gg_query, gg_key, gg_value):
    primals = ctx.saved_tensors
    cotangents = _zero_if_none((gg_query, gg_key, gg_value), primals[1:])
    first_order = functools.partial(_local_attn_first_order, *ctx.args)
    grads = _vjp_of(first_order, primals, cotangents)
    return tuple(grads) + (None, None, None)


# ---- mv_warp_backward_feature(grad_output, mv, scale_x, scale_y, mode, padding_mode) -> grad_feature ----


def _mv_warp_kwargs(scale_x, scale_y, mode, padding_mode):
    return dict(scale=(scale_x, scale_y), mode=mode, padding_mode=padding_mode)


def _mv_warp_feature_first_order(kwargs, grad_output, mv):
    # mv_warp is linear in the feature: its feature gradient does not depend on the feature's values.
    forward = functools.partial(reference.mv_warp, mv=mv, **kwargs)
    _, vjp_fn = torch.func.vjp(forward, torch.zeros_like(grad_output))
    return vjp_fn(grad_output)[0]


def _mv_warp_backward_feature_setup(ctx, inputs, output):
    grad_output, mv, scale_x, scale_y, mode, padding_mode = inputs
    ctx.kwargs = _mv_warp_kwargs(scale_x, scale_y, mode, padding_mode)
    ctx.save_for_backward(grad_output, mv)


def _mv_warp_backward_feature_backward(ctx, gg_feature):
    grad_output, mv = ctx.saved_tensors
    first_order = functools.partial(_mv_warp_feature_first_order, ctx.kwargs)
    grads = _vjp_of(first_order, (grad_output, mv), gg_feature)
    return tuple(grads) + (None, None, None, None)


# ---- mv_warp_backward_mv(grad_output, feature, mv, scale_x, scale_y, mode, padding_mode) -> grad_mv ----


def _mv_warp_mv_first_order(kwargs, grad_output, feature, mv):
    forward = functools.partial(reference.mv_warp, feature, **kwargs)
    _, vjp_fn = torch.func.vjp(forward, mv)
    return vjp_fn(grad_output)[0]


def _mv_warp_backward_mv_setup(ctx, inputs, output):
    grad_output, feature, mv, scale_x, scale_y, mode, padding_mode = inputs
    ctx.kwargs = _mv_warp_kwargs(scale_x, scale_y, mode, padding_mode)
    ctx.save_for_backward(grad_output, feature, mv)


def _mv_warp_backward_mv_backward(ctx, gg_mv):
    primals = ctx.saved_tensors
    first_order = functools.partial(_mv_warp_mv_first_order, ctx.kwargs)
    grads = _vjp_of(first_order, primals, gg_mv)
    return tuple(grads) + (None, None, None, None)


torch.library.register_autograd(
    _LIB + "local_attn_backward", _local_attn_backward_backward, setup_context=_local_attn_backward_setup
)
torch.library.register_autograd(
    _LIB + "mv_warp_backward_feature", _mv_warp_backward_feature_backward, setup_context=_mv_warp_backward_feature_setup
)
torch.library.register_autograd(
    _LIB + "mv_warp_backward_mv", _mv_warp_backward_mv_backward, setup_context=_mv_warp_backward_mv_setup
)
