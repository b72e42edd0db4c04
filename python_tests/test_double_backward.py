"""Second-order gradients of mv_warp and local_attn: gradgradcheck and comparisons with arseg_ops.reference.

The backward ops are differentiable (arseg_ops/_double_backward.py), so a gradient of a gradient is the true
one, never the zeros PyTorch gives for an op without an autograd formula. gradgradcheck runs in fast mode (a
random projection of the Jacobian): the double backward goes through the reference and torch.func, so the full
Jacobian, one double backward per output element, would take minutes.
"""
import pytest
import torch

import arseg_ops
from arseg_ops import reference

WARP_CASES = [(mode, pad) for mode in ("bilinear", "nearest") for pad in ("zeros", "border")]


def _attn_inputs(device):
    return [torch.randn(1, 3, 5, 6, device=device, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _warp_inputs(device):
    feature = torch.randn(1, 2, 6, 7, device=device, dtype=torch.float64, requires_grad=True)
    # off-integer motion (the bilinear weights have kinks at integer sample coordinates)
    mv = (torch.randn(1, 2, 2, 3, device=device, dtype=torch.float64) * 1.5 + 0.3).requires_grad_()
    return [feature, mv]


@pytest.mark.parametrize("padding", ["zeros", "exclude"])
def test_local_attn_gradgradcheck(device, padding):
    fn = lambda q, k, v: arseg_ops.local_attn(q, k, v, 3, scale=0.7, padding=padding)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(_attn_inputs(device)), fast_mode=True)


@pytest.mark.parametrize("mode,padding", WARP_CASES)
def test_mv_warp_gradgradcheck(device, mode, padding):
    fn = lambda f, m: arseg_ops.mv_warp(f, m, scale=(1.0, 0.5), mode=mode, padding_mode=padding)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(_warp_inputs(device)), fast_mode=True)


def _second_order(fn, inputs):
    """d/d inputs of |d fn(inputs) . w / d inputs|^2 (a gradient penalty), w a fixed random weight."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * weight).sum(), inputs, create_graph=True, allow_unused=True, materialize_grads=True)
    penalty = sum(g.square().sum() for g in grads)
    return torch.autograd.grad(penalty, inputs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("padding", ["zeros", "exclude"])
def test_local_attn_second_order_matches_reference(device, padding):
    inputs = _attn_inputs(device)
    got = _second_order(lambda q, k, v: arseg_ops.local_attn(q, k, v, 3, scale=0.7, padding=padding), inputs)
    expected = _second_order(lambda q, k, v: reference.local_attn(q, k, v, 3, scale=0.7, padding=padding), inputs)
    for g, e in zip(got, expected):
        assert e.norm() > 0
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("mode,padding", WARP_CASES)
def test_mv_warp_second_order_matches_reference(device, mode, padding):
    inputs = _warp_inputs(device)
    kw = dict(scale=(1.0, 0.5), mode=mode, padding_mode=padding)
    got = _second_order(lambda f, m: arseg_ops.mv_warp(f, m, **kw), inputs)
    expected = _second_order(lambda f, m: reference.mv_warp(f, m, **kw), inputs)
    if mode == "bilinear":  # nearest is piecewise constant in mv: its second derivatives are all 0
        assert all(e.norm() > 0 for e in expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_third_order_local_attn(device):
    """The double backward is itself differentiable: a third derivative matches the reference's."""
    q, k, v = _attn_inputs(device)

    def third(fn):
        x = q.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(x, k.detach(), v.detach(), 3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        return torch.autograd.grad(gg.sum(), x)[0]

    expected = third(reference.local_attn)
    assert expected.norm() > 0
    torch.testing.assert_close(third(arseg_ops.local_attn), expected)
