"""Bad input: a clear error naming the argument, from the Python API and from direct torch.ops calls."""
import pytest
import torch

import arseg_ops
from arseg_ops import reference

f = lambda *s, **kw: torch.randn(*s, **kw)  # noqa: E731


def _warp_cases():
    feat, mv = f(1, 3, 8, 8), f(1, 2, 2, 2)
    return [
        ((f(3, 8, 8), mv), {}, ValueError, "'feature' must be 4-D"),
        ((feat, f(2, 2, 2)), {}, ValueError, "'mv' must be 4-D"),
        ((feat, f(1, 3, 2, 2)), {}, ValueError, "'mv' must have 2 channels"),
        ((feat, f(2, 2, 2, 2)), {}, ValueError, "'mv' has batch size 2"),
        ((feat, f(1, 2, 0, 2)), {}, ValueError, "'mv' needs a block grid"),
        ((feat, mv), {"mode": "bicubic"}, ValueError, "'mode' must be one of"),
        ((feat, mv), {"padding_mode": "reflection"}, ValueError, "'padding_mode' must be one of"),
        ((feat, mv), {"mode": None}, TypeError, "'mode' must be a string"),
        ((feat, mv), {"scale": (1.0, 2.0, 3.0)}, ValueError, "'scale' must be a number or a pair"),
        ((feat, mv), {"scale": "2"}, TypeError, "'scale' must be a real number"),
        ((feat, mv), {"scale": float("nan")}, ValueError, "'scale' must be finite"),
        ((feat.long(), mv), {}, TypeError, "'feature' must be a floating-point tensor"),
        ((feat, mv.int()), {}, TypeError, "'mv' must be a floating-point tensor"),
        ((feat, mv.double()), {}, TypeError, "'mv' has dtype torch.float64 but 'feature' has torch.float32"),
        ((feat.numpy(), mv), {}, TypeError, "'feature' must be a torch.Tensor"),
        ((feat, mv.to("meta")), {}, ValueError, "'mv' is on meta but 'feature' is on cpu"),
    ]


def _attn_cases():
    q, v = f(1, 4, 6, 6), f(1, 3, 6, 6)
    return [
        ((f(4, 6, 6), q, v), {}, ValueError, "'query' must be 4-D"),
        ((q, f(1, 5, 6, 6), v), {}, ValueError, "'key' must have the shape of 'query'"),
        ((q, q, f(1, 3, 6, 7)), {}, ValueError, "'value' must be (N, Cv, H, W)"),
        ((q, q, f(2, 3, 6, 6)), {}, ValueError, "'value' must be (N, Cv, H, W)"),
        ((q, q, v, 4), {}, ValueError, "'kernel_size' must be odd and in [1, 15]"),
        ((q, q, v, 17), {}, ValueError, "'kernel_size' must be odd and in [1, 15]"),
        ((q, q, v, -1), {}, ValueError, "'kernel_size' must be odd"),
        ((q, q, v, 3.0), {}, TypeError, "'kernel_size' must be an int"),
        ((q, q, v, True), {}, TypeError, "'kernel_size' must be an int"),
        ((q, q, v), {"padding": "reflect"}, ValueError, "'padding' must be one of"),
        ((q, q, v), {"scale": float("inf")}, ValueError, "'scale' must be finite"),
        ((q.long(), q.long(), v), {}, TypeError, "'query' must be a floating-point tensor"),
        ((q, q.double(), v), {}, TypeError, "'key' has dtype torch.float64 but 'query' has torch.float32"),
        ((q, q, v.half()), {}, TypeError, "'value' has dtype torch.float16"),
        ((q, q, v.to("meta")), {}, ValueError, "'value' is on meta but 'query' is on cpu"),
    ]


@pytest.mark.parametrize("impl", [arseg_ops, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("args,kwargs,exc,match", _warp_cases())
def test_mv_warp_bad_input(impl, args, kwargs, exc, match):
    with pytest.raises(exc, match=_re(match)):
        impl.mv_warp(*args, **kwargs)


@pytest.mark.parametrize("impl", [arseg_ops, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("args,kwargs,exc,match", _attn_cases())
def test_local_attn_bad_input(impl, args, kwargs, exc, match):
    with pytest.raises(exc, match=_re(match)):
        impl.local_attn(*args, **kwargs)


def _re(text):
    import re

    return re.escape(text)


# Direct dispatcher calls skip the Python checks: the C++ kernels must still refuse with a named argument.
OPS = torch.ops.arseg_ops


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(1, 3, 2, 2)), "argument 'mv' must have 2 channels"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(2, 2, 2, 2)), "argument 'mv' has batch size 2"),
        (lambda: OPS.mv_warp(f(3, 8, 8), f(1, 2, 2, 2)), "argument 'feature' must be 4-D"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(1, 2, 2, 2), 1.0, 1.0, "cubic", "zeros"), "argument 'mode'"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(1, 2, 2, 2), 1.0, 1.0, "bilinear", "wrap"), "argument 'padding_mode'"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8).long(), f(1, 2, 2, 2)), "argument 'feature' must be a floating-point"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(1, 2, 2, 2).double()), "argument 'mv' has dtype Double"),
        (lambda: OPS.mv_warp(f(1, 3, 8, 8), f(1, 2, 2, 2), float("nan"), 1.0), "argument 'scale' must be finite"),
        (lambda: OPS.mv_warp_backward_mv(f(1, 3, 8, 9), f(1, 3, 8, 8), f(1, 2, 2, 2), 1.0, 1.0, "bilinear", "zeros"),
         "argument 'grad_output' must have shape"),
        (lambda: OPS.local_attn(f(1, 4, 6, 6), f(1, 4, 6, 6), f(1, 3, 6, 6), 8), "argument 'kernel_size'"),
        (lambda: OPS.local_attn(f(1, 4, 6, 6), f(1, 4, 6, 5), f(1, 3, 6, 6)), "argument 'key'"),
        (lambda: OPS.local_attn(f(1, 4, 6, 6), f(1, 4, 6, 6), f(1, 3, 5, 6)), "argument 'value'"),
        (lambda: OPS.local_attn(f(1, 4, 6, 6), f(1, 4, 6, 6), f(1, 3, 6, 6), 3, 1.0, "same"), "argument 'padding'"),
        (lambda: OPS.local_attn_backward(f(1, 2, 6, 6), f(1, 4, 6, 6), f(1, 4, 6, 6), f(1, 3, 6, 6), 3, 1.0, "zeros"),
         "argument 'grad_output' must have shape"),
    ],
)
def test_dispatcher_checks(call, match):
    with pytest.raises(RuntimeError, match=_re(match)):
        call()
