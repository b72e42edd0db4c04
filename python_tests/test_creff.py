"""creff (fused CReFF): the fused kernel against the unfused composition (arseg_ops.reference.creff), gradients,
layouts, dtypes, opcheck, torch.compile and bad input."""
import pytest
import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import reference, testing

# (N, C, H, W, h, w, Hb, Wb, kernel_size): odd sizes, H and W not multiples of the motion block, lr at the output
# size and at 1 pixel, windows larger than the image, several tiles across and down (the CPU kernel works in
# tiles of 16 rows and a C-dependent number of columns), one motion vector for the whole image, dense flow.
CASES = [
    (2, 5, 13, 17, 7, 9, 4, 5, 3),
    (1, 8, 37, 71, 19, 36, 10, 18, 7),
    (1, 3, 9, 11, 9, 11, 3, 3, 9),
    (2, 4, 6, 5, 1, 1, 1, 1, 7),
    (1, 6, 21, 29, 10, 14, 21, 29, 1),
    (1, 1, 1, 1, 1, 1, 1, 1, 3),
    (1, 64, 17, 90, 9, 45, 5, 23, 7),
]
KW = dict(scale=0.6, mv_scale=(1.3, 0.7))
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _inputs(case, dtype=torch.float32, motion=3.0, requires_grad=False):
    N, C, H, W, h, w, Hb, Wb, _ = case
    key = torch.randn(N, C, H, W, dtype=dtype)
    mv = torch.randn(N, 2, Hb, Wb, dtype=dtype) * motion
    lr = torch.randn(N, C, h, w, dtype=dtype)
    # Weights of the size a trained CReFF has: logits of O(1) over C channels.
    weight = torch.randn(3, C, 1, 3, 3, dtype=dtype) * (0.5 / max(C, 1) ** 0.25)
    bias = torch.randn(3, C, dtype=dtype) * 0.1
    return [t.requires_grad_(requires_grad) for t in (key, mv, lr, weight, bias)]


def _unfused_ops(key, mv, lr, weight, bias, kernel_size, scale, mv_scale):
    """The same chain through arseg_ops' own kernels (what models.CReFF runs with fused=False)."""
    C = key.shape[1]
    hr = arseg_ops.mv_warp(key, mv, scale=mv_scale)
    up = F.interpolate(lr, size=key.shape[-2:], mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((up, hr, hr)))
    return up + arseg_ops.local_attn(q, k, v, kernel_size, scale=scale)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_unfused(poison, case, dtype):
    inputs = _inputs(case, dtype)
    K = case[-1]
    out = arseg_ops.creff(*inputs, kernel_size=K, **KW)
    assert out.shape == inputs[0].shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, reference.creff(*inputs, kernel_size=K, **KW), **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(out, _unfused_ops(*inputs, K, KW["scale"], KW["mv_scale"]), **TOL[dtype])


def test_motion_outside_the_image(poison):
    """Blocks whose motion points far outside (all taps absent: hr = 0 there) or across the border."""
    case = (1, 4, 15, 18, 8, 9, 4, 5, 5)
    key, mv, lr, weight, bias = _inputs(case, torch.float64)
    mv[:, :, :2] = 40.0
    mv[:, 0, 2:, :2] = -2.5
    out = arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=5)
    torch.testing.assert_close(out, reference.creff(key, mv, lr, weight, bias, kernel_size=5), **TOL[torch.float64])


def test_zero_motion_is_the_creff_of_the_key_feature():
    key, _, lr, weight, bias = _inputs(CASES[0], torch.float64)
    zero = torch.zeros(key.shape[0], 2, 1, 1, dtype=torch.float64)
    C = key.shape[1]
    up = F.interpolate(lr, size=key.shape[-2:], mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((up, key, key)))
    expected = up + reference.local_attn(q, k, v, 7)
    torch.testing.assert_close(arseg_ops.creff(key, zero, lr, weight, bias), expected, **TOL[torch.float64])


def test_layouts_and_views(poison):
    case = (2, 6, 11, 20, 6, 10, 3, 5, 3)
    key, mv, lr, weight, bias = _inputs(case)
    expected = reference.creff(key, mv, lr, weight, bias, kernel_size=3)
    key_cl, lr_cl = key.to(memory_format=torch.channels_last), lr.to(memory_format=torch.channels_last)
    out = arseg_ops.creff(key_cl, mv, lr_cl, weight, bias, kernel_size=3)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    # NCHW key with a channels_last lr: NCHW output
    out = arseg_ops.creff(key, mv, lr_cl, weight, bias, kernel_size=3)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    # strided views of every input
    big = torch.randn(2, 8, 11, 40)
    key_v = big[:, 1:7, :, ::2]
    mv_v = torch.randn(2, 2, 5, 3).transpose(2, 3)
    w_v = torch.randn(3, 6, 1, 3, 6)[..., ::2] * 0.3
    out = arseg_ops.creff(key_v, mv_v, lr, w_v, bias.t().contiguous().t(), kernel_size=3)
    ref = reference.creff(key_v.contiguous(), mv_v.contiguous(), lr, w_v.contiguous(), bias, kernel_size=3)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


# The CPU kernel is compiled for three instruction sets and runs the best one the CPU has; ARSEG_CPU_ISA caps
# it, so each build is tested where the CPU has it (a cap above what the CPU has runs the best available one).
ISAS = ["baseline", "avx2", "avx512"]
# Several column strips and row segments (C=64: strips of <= ~190 columns; segments of >= 8 * (K/2 + 2) rows).
STRIP_CASE = (1, 64, 90, 300, 45, 150, 23, 75, 7)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("motion, dtype", [("random", torch.float64), ("random", torch.float32),
                                           ("integer", torch.float64), ("zero", torch.float64)])
def test_every_instruction_set_matches_unfused(monkeypatch, poison, isa, motion, dtype):
    """Random motion (short runs of equal warp taps; 4-pixel blocks: the AVX-512 build's run quads in
    float32), integer motion (one tap per pixel) and zero motion (one run per row), over several strips and
    row segments, with motion pointing outside the image at the top."""
    monkeypatch.setenv("ARSEG_CPU_ISA", isa)
    key, mv, lr, weight, bias = _inputs(STRIP_CASE, dtype, motion=4.0)
    mv = {"random": mv, "integer": mv.round(), "zero": mv * 0}[motion]
    mv[:, 1, 0] -= 3.0
    out = arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=7, **KW)
    torch.testing.assert_close(out, reference.creff(key, mv, lr, weight, bias, kernel_size=7, **KW), **TOL[dtype])


@pytest.mark.parametrize("isa", ISAS)
def test_every_instruction_set_float32_layouts_and_generic_kernel_size(monkeypatch, poison, isa):
    """float32 (the vector exp), channels_last key (strided taps), a key view whose rows are not whole pixels,
    bfloat16, and a kernel size without its own specialisation (9)."""
    monkeypatch.setenv("ARSEG_CPU_ISA", isa)
    case = (2, 16, 41, 70, 21, 35, 11, 18, 9)
    key, mv, lr, weight, bias = _inputs(case, motion=5.0)
    expected = reference.creff(key, mv, lr, weight, bias, kernel_size=9, **KW)
    for k in (key, key.to(memory_format=torch.channels_last),
              torch.nn.functional.pad(key, (1, 2)).narrow(3, 1, key.shape[3])):
        out = arseg_ops.creff(k, mv, lr, weight, bias, kernel_size=9, **KW)
        torch.testing.assert_close(out, expected, **TOL[torch.float32])
    low = [t.bfloat16() for t in (key, mv, lr, weight, bias)]
    out = arseg_ops.creff(*low, kernel_size=9, **KW)
    torch.testing.assert_close(out, reference.creff(*[t.float() for t in low], kernel_size=9, **KW).bfloat16(),
                               atol=1e-2, rtol=1e-2)


def test_absent_taps_ignore_inf_in_the_key_feature(poison):
    """Pixels whose motion points outside the image must not pick up an inf/NaN from the element an absent
    tap would read (mv_warp's tap_product rule): hr is 0 there, so the output stays finite."""
    case = (1, 4, 20, 24, 10, 12, 5, 6, 3)
    key, mv, lr, weight, bias = _inputs(case, torch.float64)
    key[:, :, 0, 0] = float("inf")
    key[:, :, 5, 7] = float("nan")
    mv[:] = 100.0  # every tap outside
    out = arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.creff(key, mv, lr, weight, bias, kernel_size=3), **TOL[torch.float64])


def test_bad_instruction_set_cap(monkeypatch):
    monkeypatch.setenv("ARSEG_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="ARSEG_CPU_ISA"):
        arseg_ops.creff(*_inputs(CASES[0]), kernel_size=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(poison, dtype):
    case = (1, 8, 17, 23, 9, 12, 5, 6, 7)
    inputs = [t.to(dtype) for t in _inputs(case)]
    out = arseg_ops.creff(*inputs, **KW)
    assert out.dtype == dtype
    # Same rounded inputs, float32 math in both: only the output rounding differs.
    expected = reference.creff(*[t.float() for t in inputs], **KW).to(dtype)
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("shape", [(0, 3, 5, 6), (2, 0, 5, 6)])
def test_empty(shape):
    N, C, H, W = shape
    key, lr = torch.randn(N, C, H, W, requires_grad=True), torch.randn(N, C, 3, 4, requires_grad=True)
    mv, weight, bias = torch.randn(N, 2, 2, 2), torch.randn(3, C, 1, 3, 3), torch.randn(3, C)
    out = arseg_ops.creff(key, mv, lr, weight, bias)
    assert out.shape == key.shape
    out.sum().backward()
    assert key.grad.shape == key.shape and lr.grad.shape == lr.shape


def test_backward_matches_reference():
    case = (2, 4, 9, 13, 5, 7, 3, 4, 5)
    inputs = _inputs(case, torch.float64)
    grad_out = torch.randn_like(inputs[0])
    grads = []
    for fn in (arseg_ops.creff, reference.creff):
        leaves = [t.clone().requires_grad_() for t in inputs]
        fn(*leaves, kernel_size=5, **KW).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_gradcheck(kernel_size):
    # Small enough for the full Jacobian (every input element of all five inputs, mv included).
    inputs = _inputs((1, 2, 4, 5, 3, 3, 2, 2, kernel_size), torch.float64, motion=0.7, requires_grad=True)
    fn = lambda *a: arseg_ops.creff(*a, kernel_size=kernel_size, scale=0.8, mv_scale=(1.1, 0.9))  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_opcheck():
    inputs = _inputs((2, 3, 5, 6, 3, 4, 2, 3, 3), torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.arseg_ops.creff.default, (*inputs, 3, 0.5, 1.2, 0.8))
    cl = [inputs[0].detach().to(memory_format=torch.channels_last)] + [t.detach() for t in inputs[1:]]
    torch.library.opcheck(torch.ops.arseg_ops.creff.default, (*cl, 3, 0.5, 1.0, 1.0))


def test_torch_compile_fullgraph():
    def step(key, mv, lr, weight, bias):
        return (arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=3, mv_scale=0.5) * 2).square().sum()

    testing.assert_compiled_matches_eager(step, _inputs((1, 4, 7, 9, 4, 5, 2, 3, 3)))


def test_torch_compile_dynamic_shapes():
    """Default arguments (kernel_size, scale and mv_scale: symbolic under dynamic=True) and changing shapes."""
    def step(key, mv, lr, weight, bias):
        return (arseg_ops.creff(key, mv, lr, weight, bias) * 2).square().sum()

    # Sizes of the first call all differ (and are > 1; N = 2 is mv's channel count, so N stays 2): Dynamo gives
    # equal sizes one symbol and specializes 0 and 1. C stays 5: the backward's depthwise convolutions
    # (groups=C, an int to aten) specialize it.
    cases = [(2, 5, 12, 14, 6, 8, 4, 9, 7), (2, 5, 10, 17, 5, 9, 3, 6, 7), (2, 5, 13, 11, 7, 6, 6, 4, 7)]
    # float64: the weight gradients sum over the image, beyond float32 assert_close tolerances.
    testing.assert_compiled_dynamic_matches_eager(step, [_inputs(c, torch.float64) for c in cases])


def _bad(**changes):
    key, mv, lr, weight, bias = _inputs((2, 4, 8, 10, 4, 5, 2, 3, 3))
    args = dict(key_feature=key, mv=mv, lr_feature=lr, weight=weight, bias=bias)
    kwargs = {}
    for name, value in changes.items():
        (args if name in args else kwargs)[name] = value(args[name]) if callable(value) else value
    return args, kwargs


BAD_INPUTS = [
    (dict(weight=lambda w: w[:, :, :, :2]), ValueError, "weight"),
    (dict(weight=lambda w: w[:2]), ValueError, "weight"),
    (dict(bias=lambda b: b[:, :3]), ValueError, "bias"),
    (dict(lr_feature=lambda t: t[:1]), ValueError, "lr_feature"),
    (dict(lr_feature=lambda t: t[:, :3]), ValueError, "lr_feature"),
    (dict(lr_feature=lambda t: torch.randn(2, 4, 9, 5)), ValueError, "lr_feature"),
    (dict(lr_feature=lambda t: torch.randn(2, 4, 4, 11)), ValueError, "lr_feature"),
    (dict(mv=lambda t: t[:1]), ValueError, "mv"),
    (dict(mv=lambda t: t[:, :1]), ValueError, "mv"),
    (dict(key_feature=lambda t: t[0]), ValueError, "key_feature"),
    (dict(kernel_size=4), ValueError, "kernel_size"),
    (dict(kernel_size=17), ValueError, "kernel_size"),
    (dict(kernel_size=3.0), TypeError, "kernel_size"),
    (dict(scale=float("nan")), ValueError, "scale"),
    (dict(mv_scale=(1.0, 2.0, 3.0)), ValueError, "mv_scale"),
    (dict(mv_scale="x"), TypeError, "mv_scale"),
    (dict(bias=lambda b: b.double()), TypeError, "bias"),
    (dict(weight=lambda w: w.half()), TypeError, "weight"),
    (dict(mv=lambda t: t.long()), TypeError, "mv"),
    (dict(key_feature=lambda t: t.numpy()), TypeError, "key_feature"),
]


@pytest.mark.parametrize("changes, error, name", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input(changes, error, name):
    args, kwargs = _bad(**changes)
    for fn in (arseg_ops.creff, reference.creff):
        with pytest.raises(error, match="'%s'" % name):
            fn(*args.values(), **kwargs)


TENSOR_ARGS = ("key_feature", "mv", "lr_feature", "weight", "bias")
BAD_TENSORS = [b for b in BAD_INPUTS if set(b[0]) <= set(TENSOR_ARGS) and b[2] != "key_feature" or b[0] is None]


@pytest.mark.parametrize("changes, error, name", BAD_TENSORS, ids=lambda v: str(v)[:40])
def test_bad_input_direct_op_call(changes, error, name):
    """The C++ checks guard direct torch.ops calls: a RuntimeError naming the argument, never a crash."""
    args, _ = _bad(**changes)
    with pytest.raises(RuntimeError, match="'%s'" % name):
        torch.ops.arseg_ops.creff(*args.values(), 3, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="'kernel_size'"):
        torch.ops.arseg_ops.creff(*_bad()[0].values(), 6, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("width", [512, 521])
def test_outputs_larger_than_the_caches(poison, width):
    """An output of >= 32 MiB is written with non-temporal stores of whole aligned cache lines (width 512: rows of
    whole lines; 521: rows that start mid-line), into a buffer with huge-page advice."""
    case = (1, 64, 260, width, 130, width // 2, 65, -(-width // 4), 7)
    inputs = _inputs(case)
    assert inputs[0].numel() * 4 >= 32 << 20
    out = arseg_ops.creff(*inputs, kernel_size=7, **KW)
    torch.testing.assert_close(out, _unfused_ops(*inputs, 7, KW["scale"], KW["mv_scale"]), **TOL[torch.float32])
