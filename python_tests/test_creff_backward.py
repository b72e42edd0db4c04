"""creff_backward (the fused CPU gradient of creff for key_feature, lr_feature, weight and bias): against autograd
of arseg_ops.reference.creff in float64, over kernel sizes, dtypes, instruction sets, row segments (thread
counts), layouts and far motion; its use by creff's autograd; gradcheck, opcheck, torch.compile and bad input."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import arseg_ops
from arseg_ops import reference
from test_creff import CASES, ISAS, KW, _inputs

_op = torch.ops.arseg_ops.creff_backward
SX, SY = KW["mv_scale"]
# CASES plus the kernel sizes it lacks (5, 11, 13, 15: 11 and up have no specialisation of their own), odd C.
BWD_CASES = CASES + [(2, 3, 12, 15, 6, 8, 3, 4, 5), (1, 5, 14, 13, 7, 7, 4, 3, 11), (1, 3, 9, 16, 9, 5, 2, 4, 13),
                     (1, 1, 7, 6, 3, 3, 2, 2, 15)]
_ids = lambda c: "x".join(map(str, c))  # noqa: E731
GRADS = ("key_feature", "lr_feature", "weight", "bias")
# Largest error allowed, relative to the largest reference gradient.
REL_TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def _grad_output(inputs):
    return torch.randn_like(inputs[0])


def _reference_grads(inputs, grad, kernel_size, scale=KW["scale"], mv_scale=KW["mv_scale"]):
    """(d key, d lr, d weight, d bias) by autograd of the reference chain in float64 (of the same, rounded inputs)."""
    key, mv, lr, weight, bias = (t.detach().double() for t in inputs)
    leaves = [t.requires_grad_() for t in (key, lr, weight, bias)]
    out = reference.creff(key, mv, lr, weight, bias, kernel_size=kernel_size, scale=scale, mv_scale=mv_scale)
    return torch.autograd.grad(out, leaves, grad.double())


def _fused(inputs, grad, kernel_size, scale=KW["scale"], mv_scale=KW["mv_scale"]):
    return _op(grad, *inputs, kernel_size, scale, *mv_scale)


def _assert_grads_close(got, expected, dtype, what=""):
    for name, g, e in zip(GRADS, got, expected):  # (an all-zero reference gradient asks for exact zeros)
        assert g.shape == e.shape and g.dtype == dtype, name
        err = (g.double() - e).abs().max().item()
        assert err <= REL_TOL[dtype] * e.abs().max().item(), "%s %s: max error %.3g of max |grad| %.3g" % (
            what, name, err, e.abs().max().item())


def _for_every_isa(monkeypatch, check):
    """check(isa) with the CPU kernels capped at each instruction set (test_creff.py: a cap above the CPU's
    runs the best one it has)."""
    for isa in ISAS:
        monkeypatch.setenv("ARSEG_CPU_ISA", isa)
        check(isa)


VALUE_CASES = [pytest.param(case, dtype, id="%s-%s" % (_ids(case), str(dtype)[6:]))
               for dtype in (torch.float64, torch.float32) for case in BWD_CASES]
VALUE_CASES += [pytest.param(case, dtype, id="%s-%s" % (_ids(case), str(dtype)[6:]))
                for dtype in (torch.float16, torch.bfloat16) for case in (CASES[0], CASES[1], BWD_CASES[-3])]


@pytest.mark.parametrize("case, dtype", VALUE_CASES)
def test_matches_reference_gradients(monkeypatch, poison, case, dtype):
    inputs = [t.to(dtype) for t in _inputs(case, torch.float64)]
    grad = _grad_output(inputs)
    expected = _reference_grads(inputs, grad, case[-1])
    _for_every_isa(monkeypatch, lambda isa: _assert_grads_close(_fused(inputs, grad, case[-1]), expected, dtype, isa))


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Several row segments per image with enough threads (segments of >= 8 * (K/2 + 2) rows: 5, 2 and 3 here).
SEGMENT_CASES = [(1, 5, 130, 37, 65, 19, 13, 9, 3), (2, 4, 97, 20, 50, 10, 10, 4, 7),
                 (1, 3, 200, 23, 100, 12, 20, 5, 11)]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=_ids)
def test_row_segments_match_reference_and_are_deterministic(monkeypatch, poison, case):
    inputs64 = _inputs(case, torch.float64, motion=4.0)
    grad64 = _grad_output(inputs64)
    expected = _reference_grads(inputs64, grad64, case[-1])
    inputs32, grad32 = [t.float() for t in inputs64], grad64.float()

    def check(isa):
        for threads in (1, 3, 8):
            what = "%s, %d threads" % (isa, threads)
            with _threads(threads):
                _assert_grads_close(_fused(inputs64, grad64, case[-1]), expected, torch.float64, what)
                first, again = _fused(inputs32, grad32, case[-1]), _fused(inputs32, grad32, case[-1])
            _assert_grads_close(first, expected, torch.float32, what)
            for name, a, b in zip(GRADS, first, again):
                assert torch.equal(a, b), "%s: %s differs between two runs" % (what, name)

    _for_every_isa(monkeypatch, check)


def _is_format(t, channels_last):
    return t.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_layouts_and_views(poison):
    """channels_last / strided key, lr and grad give the NCHW result; d_key and d_lr are channels_last exactly when
    key_feature / lr_feature strictly are (C = 1 tensors are both: NCHW), d_weight and d_bias contiguous."""
    case = (2, 6, 19, 22, 9, 11, 5, 6, 5)
    inputs = _inputs(case, torch.float64)
    grad = _grad_output(inputs)
    expected = _fused(inputs, grad, 5)
    key, mv, lr, weight, bias = inputs
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731

    def view(t):  # a strided view: rows that are not whole, channels and batch offset in a larger buffer
        padded = torch.nn.functional.pad(t, (2, 1, 0, 0, 1, 1))
        return padded.narrow(1, 1, t.shape[1]).narrow(3, 2, t.shape[3])

    w_major = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731  (x-major rows)
    variants = [(cl(key), lr, grad), (key, cl(lr), grad), (key, lr, cl(grad)), (cl(key), cl(lr), cl(grad)),
                (view(key), view(lr), view(grad)), (cl(key), w_major(lr), w_major(grad))]
    for k, l, g in variants:
        got = _op(g, k, w_major(mv), l, view(weight.squeeze(2)).unsqueeze(2), bias.t().contiguous().t(), 5,
                  KW["scale"], SX, SY)
        assert _is_format(got[0], arseg_ops._validate.creff_channels_last(k))
        assert _is_format(got[1], arseg_ops._validate.creff_channels_last(l))
        assert got[2].is_contiguous() and got[3].is_contiguous()
        for name, a, b in zip(GRADS, got, expected):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=name)
    one = _inputs((1, 1, 8, 9, 4, 5, 2, 2, 3), torch.float64)
    got = _op(cl(_grad_output(one)), cl(one[0]), one[1], cl(one[2]), *one[3:], 3, 1.0, 1.0, 1.0)
    assert got[0].is_contiguous() and got[1].is_contiguous()


def test_far_motion(poison):
    """Blocks pointing 40 px outside the image (all taps absent) or across the border."""
    case = (2, 4, 15, 18, 8, 9, 4, 5, 5)
    inputs = _inputs(case, torch.float64)
    inputs[1][:, :, :2] = 40.0
    inputs[1][:, 0, 2:, :2] = -2.5
    grad = _grad_output(inputs)
    _assert_grads_close(_fused(inputs, grad, 5), _reference_grads(inputs, grad, 5), torch.float64)


def test_absent_taps_ignore_inf_in_the_key_feature(poison):
    """With every tap outside the image, hr = 0: the key feature's values (inf, NaN) reach no gradient, d_key is 0."""
    case = (1, 4, 20, 24, 10, 12, 5, 6, 3)
    inputs = _inputs(case, torch.float64)
    inputs[1][:] = 100.0
    grad = _grad_output(inputs)
    expected = _reference_grads(inputs, grad, 3)
    inputs[0][:, :, 0, 0] = float("inf")
    inputs[0][:, :, 5, 7] = float("nan")
    got = _fused(inputs, grad, 3)
    assert torch.equal(got[0], torch.zeros_like(inputs[0]))
    _assert_grads_close(got[1:], expected[1:], torch.float64)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _autograd_grads(fn, inputs, grad, with_mv):
    leaves = [t.detach().clone().requires_grad_(i != 1 or with_mv) for i, t in enumerate(inputs)]
    recorder = _RecordOps()
    out = fn(*leaves, kernel_size=5, **KW)
    with recorder:
        out.backward(grad)
    return [t.grad for t in leaves], recorder.names


@pytest.mark.parametrize("with_mv", [False, True], ids=["mv_constant", "mv_requires_grad"])
def test_autograd_uses_the_fused_op_without_mv_gradient(with_mv):
    case = (2, 3, 11, 14, 6, 7, 3, 4, 5)
    inputs = _inputs(case, torch.float64, motion=0.7)
    grad = _grad_output(inputs)
    got, ops = _autograd_grads(arseg_ops.creff, inputs, grad, with_mv)
    expected, _ = _autograd_grads(reference.creff, inputs, grad, with_mv)
    assert ("arseg_ops.creff_backward" in ops) == (not with_mv), ops
    assert ("arseg_ops.local_attn_backward" in ops) == with_mv, ops
    assert (got[1] is None) == (not with_mv)
    for g, e in zip(got, expected):
        if e is not None:
            torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def _small(kernel_size):
    """creff of tiny float64 inputs as a function of key, lr, weight and bias (mv constant)."""
    key, mv, lr, weight, bias = _inputs((1, 2, 5, 6, 3, 4, 2, 2, kernel_size), torch.float64, motion=0.7,
                                        requires_grad=True)
    fn = lambda k, l, w, b: arseg_ops.creff(k, mv.detach(), l, w, b, kernel_size=kernel_size, scale=0.8,  # noqa: E731
                                            mv_scale=(1.1, 0.9))
    return fn, (key, lr, weight, bias)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_gradcheck_through_the_fused_op(kernel_size):
    fn, inputs = _small(kernel_size)
    recorder = _RecordOps()
    with recorder:
        assert torch.autograd.gradcheck(fn, inputs)
    assert "arseg_ops.creff_backward" in recorder.names


def test_gradgradcheck_uses_the_differentiable_chain():
    fn, inputs = _small(3)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)
    recorder = _RecordOps()
    with recorder:
        torch.autograd.grad(fn(*inputs).square().sum(), inputs, create_graph=True)
    assert "arseg_ops.creff_backward" not in recorder.names


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    inputs = [t.detach() for t in _inputs((2, 3, 6, 7, 3, 4, 2, 3, 3), torch.float64)]
    grad = _grad_output(inputs)
    if channels_last:
        inputs[0], grad = inputs[0].to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    torch.library.opcheck(_op.default, (grad, *inputs, 3, 0.5, 1.2, 0.8))


def _compiled_matches_eager(compiled, eager, inputs):
    """Value and the gradients of key, lr, weight and bias (mv constant: the fused backward) of a scalar step."""
    results = []
    for fn in (compiled, eager):
        leaves = [t.detach().clone().requires_grad_(i != 1) for i, t in enumerate(inputs)]
        out = fn(*leaves)
        recorder = _RecordOps()
        with recorder:
            out.backward()
        assert "arseg_ops.creff_backward" in recorder.names, recorder.names
        results.append([out] + [t.grad for i, t in enumerate(leaves) if i != 1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def _step(key, mv, lr, weight, bias):
    return (arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=3, **KW) * 2).square().sum()


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    _compiled_matches_eager(torch.compile(_step, fullgraph=True), _step, _inputs((1, 4, 7, 9, 4, 5, 2, 3, 3)))


def test_torch_compile_dynamic_shapes():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_step, fullgraph=True, dynamic=True, backend=counter)
    for i, case in enumerate([(3, 5, 12, 14, 6, 8, 4, 9, 3), (3, 7, 10, 17, 5, 9, 3, 6, 3)]):
        _compiled_matches_eager(compiled, _step, _inputs(case, torch.float64))
        traced = counter.frame_count if i == 0 else traced
    assert counter.frame_count == traced, "recompiled for new shapes"


def _bad_args(**changes):
    inputs = _inputs((2, 4, 8, 10, 4, 5, 2, 3, 3))
    args = dict(zip(("grad_output",) + ("key_feature", "mv", "lr_feature", "weight", "bias"),
                    [_grad_output(inputs)] + inputs))
    args.update(kernel_size=3, scale=1.0, mv_scale_x=1.0, mv_scale_y=1.0)
    for name, value in changes.items():
        args[name] = value(args[name]) if callable(value) else value
    return list(args.values())


BAD = [
    (dict(grad_output=lambda g: g[:, :, :-1]), ValueError, "grad_output"),
    (dict(grad_output=lambda g: g[:1]), ValueError, "grad_output"),
    (dict(grad_output=lambda g: g.double()), TypeError, "grad_output"),
    (dict(grad_output=lambda g: g.long()), TypeError, "grad_output"),
    (dict(kernel_size=4), ValueError, "kernel_size"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=-3), ValueError, "kernel_size"),
    (dict(kernel_size=17), ValueError, "kernel_size"),
    (dict(weight=lambda w: w.double()), TypeError, "weight"),
    (dict(lr_feature=lambda t: t.half()), TypeError, "lr_feature"),
    (dict(mv=lambda t: t.int()), TypeError, "mv"),
    (dict(bias=lambda b: b[:, :3]), ValueError, "bias"),
    (dict(lr_feature=lambda t: torch.randn(2, 4, 9, 5)), ValueError, "lr_feature"),
    (dict(key_feature=lambda t: t.long()), TypeError, "key_feature"),
    (dict(scale=float("inf")), ValueError, "scale"),
]


@pytest.mark.parametrize("changes, error, name", BAD, ids=lambda v: str(v)[:40])
def test_bad_input(changes, error, name):
    """The C++ checks (RuntimeError) and the fake kernel (ValueError / TypeError) name the bad argument."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _bad_args(**changes)
    with pytest.raises(RuntimeError, match="'%s'" % name):
        _op(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(error, match="'%s'" % name):
            _op(*fake)


@pytest.mark.parametrize("shape", [(0, 3, 5, 6), (2, 0, 5, 6)])
def test_empty(poison, shape):
    N, C, H, W = shape
    key, lr = torch.randn(N, C, H, W), torch.randn(N, C, 3, 4)
    mv, weight, bias = torch.randn(N, 2, 2, 2), torch.randn(3, C, 1, 3, 3), torch.randn(3, C)
    got = _op(torch.randn(N, C, H, W), key, mv, lr, weight, bias, 7, 1.0, 1.0, 1.0)
    for g, like in zip(got, (key, lr, weight, bias)):
        assert torch.equal(g, torch.zeros_like(like))
