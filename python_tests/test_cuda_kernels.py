"""CUDA kernels of mv_warp and local_attn against float64 references (skipped without a GPU and a CUDA build).

Tolerances: float32/float64 against the float64 reference directly. float16/bfloat16 follow the rule "error no
worse than 2x that of the same computation done in PyTorch at that precision, both against float64": the
PyTorch-at-precision computations below run in the low dtype without upcasting (unfold for local_attn, a dense
flow + grid_sample for mv_warp). Big shapes are marked `slow` so sanitizer runs can deselect them.
"""
import pytest
import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import reference, testing
from arseg_ops.testing import cuda_available

HAS_CUDA = cuda_available()

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")]
LOW = [torch.float16, torch.bfloat16]


def cuda_test(fn):
    for mark in CUDA:
        fn = mark(fn)
    return fn


def rand(*shape, dtype=torch.float32, device="cuda", scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


max_err = testing.max_abs_error


# ---- PyTorch at low precision (no upcasting) ----


def attn_at_dtype(q, k, v, K, scale, padding):
    N, C, H, W = q.shape
    KK = K * K
    k_unf = F.unfold(k, K, padding=K // 2).view(N, C, KK, H, W)
    logits = (q.unsqueeze(2) * k_unf).sum(1) * scale
    if padding == "exclude":
        inside = F.unfold(torch.ones(1, 1, H, W, device=q.device, dtype=q.dtype), K, padding=K // 2) > 0
        logits = logits.masked_fill(~inside.view(1, KK, H, W), float("-inf"))
    attn = torch.softmax(logits, dim=1)
    v_unf = F.unfold(v, K, padding=K // 2).view(N, v.shape[1], KK, H, W)
    return (attn.unsqueeze(1) * v_unf).sum(2)


def warp_at_dtype(feature, mv, sx, sy, mode, padding_mode):
    N, C, H, W = feature.shape
    Hb, Wb = mv.shape[2:]
    by = torch.arange(H, device=feature.device) * Hb // H
    bx = torch.arange(W, device=feature.device) * Wb // W
    flow = mv[:, :, by][:, :, :, bx]
    xs = torch.arange(W, device=feature.device, dtype=feature.dtype).view(1, 1, W) + sx * flow[:, 0]
    ys = torch.arange(H, device=feature.device, dtype=feature.dtype).view(1, H, 1) + sy * flow[:, 1]
    grid = torch.stack([2 * xs / (W - 1) - 1, 2 * ys / (H - 1) - 1], dim=-1)  # align_corners: centres at ints
    return F.grid_sample(feature, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


check_low_precision = testing.assert_low_precision_close  # ours at most 2x as far from float64 as PyTorch


def attn_inputs(N, C, Cv, H, W, dtype, grad=False):
    q, k, v = rand(N, C, H, W, dtype=dtype), rand(N, C, H, W, dtype=dtype), rand(N, Cv, H, W, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


# ---- build info (runs everywhere) ----


def test_build_info_has_expected_keys():
    info = arseg_ops.build_info()
    expected = {"backends", "cuda", "cuda_archs", "cuda_version", "torch_version", "torch_runtime_version",
                "cuda_available"}
    assert expected <= set(info)
    assert "cpu" in info["backends"]
    assert info["cuda"] == ("cuda" in info["backends"])
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_version"]


# ---- local_attn (each test runs with the default and with the experimental kernels: the attn_kernels fixture) ----

ATTN_SHAPES = [  # N, C, Cv, H, W: tile-unaligned sizes, 1x1 images, C = 1, 3, 64, 256, 513
    (1, 1, 1, 1, 1),
    (2, 3, 5, 7, 9),
    (1, 64, 64, 9, 33),
    (8, 4, 3, 5, 6),
    (1, 256, 16, 3, 40),
    (1, 16, 513, 4, 3),
    (1, 513, 2, 2, 5),
]


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 15])
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=str)
def test_local_attn_forward_matches_float64(shape, K, padding, dtype, poison, attn_kernels):
    q, k, v = attn_inputs(*shape, dtype)
    out = arseg_ops.local_attn(q, k, v, K, scale=0.3, padding=padding)
    ref = reference.local_attn(q.double(), k.double(), v.double(), K, scale=0.3, padding=padding)
    tol = 1e-10 if dtype == torch.float64 else 1e-4  # fp32: C up to 513 summed in float32
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("K", [3, 7, 11])
def test_local_attn_backward_matches_reference_autograd(K, padding, dtype, poison, attn_kernels):
    q, k, v = attn_inputs(2, 5, 6, 11, 35, dtype, grad=True)
    out = arseg_ops.local_attn(q, k, v, K, scale=0.5, padding=padding)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.local_attn(q64, k64, v64, K, scale=0.5, padding=padding)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    if dtype in LOW:
        ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
        low = attn_at_dtype(ql, kl, vl, K, 0.5, padding)
        low_grads = torch.autograd.grad(low, (ql, kl, vl), dout)
        check_low_precision(out, low, ref, "out")
        for name, g, gl, gr in zip("qkv", grads, low_grads, ref_grads):
            check_low_precision(g, gl, gr, "d" + name)
    else:
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
        for g, gr in zip(grads, ref_grads):
            torch.testing.assert_close(g.double(), gr, atol=tol, rtol=tol)


@cuda_test
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("K", [1, 5, 7, 9])
def test_local_attn_low_precision_forward(K, dtype, poison, attn_kernels):
    q, k, v = attn_inputs(2, 32, 24, 13, 37, dtype)
    out = arseg_ops.local_attn(q, k, v, K, scale=0.2)
    ref = reference.local_attn(q.double(), k.double(), v.double(), K, scale=0.2)
    check_low_precision(out, attn_at_dtype(q, k, v, K, 0.2, "zeros"), ref, "out")


@cuda_test
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("K", [3, 7, 9])
def test_local_attn_gradcheck_float64(K, padding, attn_kernels):
    q, k, v = attn_inputs(1, 2, 3, 5, 6, torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: arseg_ops.local_attn(a, b, c, K, scale=0.7, padding=padding),
                                    (q, k, v))


@cuda_test
@pytest.mark.parametrize("K", [7, 9])
def test_local_attn_backward_is_deterministic(K, attn_kernels):
    q, k, v = attn_inputs(2, 16, 16, 19, 41, torch.float32)
    dout = torch.randn_like(v)
    first = torch.ops.arseg_ops.local_attn_backward(dout, q, k, v, K, 1.0, "zeros")
    second = torch.ops.arseg_ops.local_attn_backward(dout, q, k, v, K, 1.0, "zeros")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@cuda_test
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("K", [5, 13])
def test_local_attn_cuda_matches_cpu(K, padding, attn_kernels):
    q, k, v = attn_inputs(2, 8, 4, 10, 17, torch.float32, grad=True)
    out = arseg_ops.local_attn(q, k, v, K, padding=padding)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    cpu = [t.detach().cpu().requires_grad_() for t in (q, k, v)]
    out_cpu = arseg_ops.local_attn(*cpu, K, padding=padding)
    grads_cpu = torch.autograd.grad(out_cpu, cpu, dout.cpu())
    torch.testing.assert_close(out.cpu(), out_cpu, atol=1e-5, rtol=1e-5)
    for g, gc in zip(grads, grads_cpu):
        torch.testing.assert_close(g.cpu(), gc, atol=1e-5, rtol=1e-5)


@cuda_test
def test_local_attn_opcheck_and_compile(attn_kernels):
    q, k, v = attn_inputs(1, 4, 3, 6, 7, torch.float32, grad=True)
    torch.library.opcheck(torch.ops.arseg_ops.local_attn.default, (q, k, v, 5, 0.5, "exclude"))
    dout = torch.randn(1, 3, 6, 7, device="cuda")
    detached = [t.detach() for t in (q, k, v)]  # the backward op has no autograd formula of its own
    torch.library.opcheck(torch.ops.arseg_ops.local_attn_backward.default, (dout, *detached, 5, 0.5, "exclude"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: arseg_ops.local_attn(a, b, c, 5, scale=0.5), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), arseg_ops.local_attn(q, k, v, 5, scale=0.5))


# ---- mv_warp (each test runs the default kernels and the opt-in v2 kernels: the `warp_kernels` fixture) ----

WARP_SHAPES = [  # N, C, H, W, Hb, Wb: blocks that do not divide the image, more blocks than pixels, 1x1
    (1, 1, 1, 1, 1, 1),
    (2, 3, 7, 9, 2, 3),
    (1, 64, 13, 33, 4, 9),
    (8, 5, 6, 5, 6, 7),
    (1, 513, 3, 4, 1, 2),
]


def warp_inputs(N, C, H, W, Hb, Wb, dtype, grad=False):
    feature = rand(N, C, H, W, dtype=dtype).requires_grad_(grad)
    mv = rand(N, 2, Hb, Wb, dtype=dtype, scale=2.5).requires_grad_(grad)
    return feature, mv


def warp_with_float64_reference(feature, mv, kw):
    """Our mv_warp and its gradients for a random dout, and the same through the float64 reference.

    In `nearest` mode the reference's output does not depend on mv at all (round() has no gradient path), so
    autograd reports mv as unused: its reference gradient is then exactly zero, which is what the kernel's
    mv gradient is compared with.
    """
    out = arseg_ops.mv_warp(feature, mv, **kw)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (feature, mv), dout)
    f64, m64 = (t.detach().double().requires_grad_() for t in (feature, mv))
    ref = reference.mv_warp(f64, m64, **kw)
    ref_grads = torch.autograd.grad(ref, (f64, m64), dout.double(), allow_unused=True)
    ref_grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(ref_grads, (f64, m64)))
    return out, grads, ref, ref_grads, dout


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("shape", WARP_SHAPES, ids=str)
def test_mv_warp_forward_backward_match_float64(shape, mode, padding_mode, dtype, poison, warp_kernels):
    feature, mv = warp_inputs(*shape, dtype, grad=True)
    kw = dict(scale=(0.75, 1.25), mode=mode, padding_mode=padding_mode)
    out, grads, ref, ref_grads, dout = warp_with_float64_reference(feature, mv, kw)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0].double(), ref_grads[0], atol=tol, rtol=tol)
    if mode == "nearest":  # piecewise constant: exactly zero
        assert torch.equal(grads[1], torch.zeros_like(grads[1]))
    else:
        torch.testing.assert_close(grads[1].double(), ref_grads[1], atol=tol * 10, rtol=tol)


@cuda_test
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_mv_warp_low_precision(padding_mode, mode, dtype, poison, warp_kernels):
    feature, mv = warp_inputs(2, 16, 21, 37, 5, 9, dtype, grad=True)
    kw = dict(scale=(1.0, 0.5), mode=mode, padding_mode=padding_mode)
    out, grads, ref, ref_grads, dout = warp_with_float64_reference(feature, mv, kw)
    fl, ml = (t.detach().clone().requires_grad_() for t in (feature, mv))
    low = warp_at_dtype(fl, ml, 1.0, 0.5, mode, padding_mode)
    low_grads = torch.autograd.grad(low, (fl, ml), dout, allow_unused=True)
    check_low_precision(out, low, ref, "out")
    check_low_precision(grads[0], low_grads[0], ref_grads[0], "dfeature")
    if mode == "bilinear":
        check_low_precision(grads[1], low_grads[1], ref_grads[1], "dmv")
    else:  # piecewise constant: the reference gradient is exactly zero, and so must ours be
        assert torch.equal(grads[1].double(), ref_grads[1])


@cuda_test
def test_mv_warp_non_finite_motion_samples_nothing(poison, warp_kernels):
    feature = rand(1, 3, 4, 5)
    mv = torch.zeros(1, 2, 2, 2, device="cuda")
    mv[0, 0, 0, 0] = float("nan")
    mv[0, 1, 1, 1] = float("inf")
    out = arseg_ops.mv_warp(feature, mv)
    torch.testing.assert_close(out, reference.mv_warp(feature, mv))
    torch.testing.assert_close(out.cpu(), arseg_ops.mv_warp(feature.cpu(), mv.cpu()))


@cuda_test
def test_mv_warp_gradcheck_opcheck_compile(warp_kernels):
    feature, mv = warp_inputs(1, 2, 5, 6, 2, 3, torch.float64, grad=True)
    mv = (mv.detach() + 0.37).requires_grad_()  # keep samples off the integer grid (kinks)
    assert torch.autograd.gradcheck(lambda f, m: arseg_ops.mv_warp(f, m, scale=0.5), (feature, mv))
    args = (feature, mv, 0.5, 1.5, "bilinear", "border")
    torch.library.opcheck(torch.ops.arseg_ops.mv_warp.default, args)
    torch._dynamo.reset()
    compiled = torch.compile(lambda f, m: arseg_ops.mv_warp(f, m, scale=0.5), fullgraph=True)
    torch.testing.assert_close(compiled(feature, mv), arseg_ops.mv_warp(feature, mv, scale=0.5))


@cuda_test
def test_mv_warp_cuda_matches_cpu(warp_kernels):
    feature, mv = warp_inputs(3, 7, 15, 22, 4, 6, torch.float32, grad=True)
    out = arseg_ops.mv_warp(feature, mv, scale=0.8)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (feature, mv), dout)
    fc, mc = (t.detach().cpu().requires_grad_() for t in (feature, mv))
    out_cpu = arseg_ops.mv_warp(fc, mc, scale=0.8)
    grads_cpu = torch.autograd.grad(out_cpu, (fc, mc), dout.cpu())
    torch.testing.assert_close(out.cpu(), out_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0].cpu(), grads_cpu[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1].cpu(), grads_cpu[1], atol=1e-3, rtol=1e-4)


@cuda_test
@pytest.mark.slow
def test_mv_warp_more_than_2_31_elements():
    N, C, H, W = 1, 1, 46400, 46400  # one plane of 2.15e9 elements: flat indices need 64 bits
    assert N * C * H * W > 2**31
    need = 2 * N * C * H * W * 2 + (1 << 30)  # feature + output in float16, plus slack
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip("not enough free GPU memory for a >2^31-element tensor")
    feature = torch.empty(N, C, H, W, device="cuda", dtype=torch.float16)
    feature.view(H, W).copy_(torch.arange(W, device="cuda", dtype=torch.float16).expand(H, W))
    feature[0, 0, -3:] = torch.randn(3, W, device="cuda", dtype=torch.float16)
    mv = torch.tensor([1.0, -1.0], device="cuda", dtype=torch.float16).view(1, 2, 1, 1)  # integer shift
    out = arseg_ops.mv_warp(feature, mv)
    # out[y, x] = feature[y - 1, x + 1] (exact: integer motion); check the last rows, past index 2^31.
    torch.testing.assert_close(out[0, 0, -2:, :-1], feature[0, 0, -3:-1, 1:], atol=0, rtol=0)
    assert torch.all(out[0, 0, -2:, -1] == 0) and torch.all(out[0, 0, 0] == 0)
