"""mv_warp: the fused kernels against arseg_ops.reference, against grid_sample, and its gradients."""
import pytest
import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import reference, testing

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border"]
# (N, C, H, W, Hb, Wb): dense flow, 4x4-pixel blocks, uneven grids, more blocks than pixels, 1x1 images.
SHAPES = [
    (2, 3, 8, 12, 8, 12),
    (1, 5, 16, 20, 4, 5),
    (2, 4, 9, 13, 3, 5),
    (1, 2, 5, 7, 11, 9),
    (3, 1, 1, 1, 1, 1),
    (1, 6, 7, 1, 2, 1),
]


def _inputs(shape, device, dtype, motion=3.0):
    N, C, H, W, Hb, Wb = shape
    feature = torch.randn(N, C, H, W, device=device, dtype=dtype)
    mv = torch.randn(N, 2, Hb, Wb, device=device, dtype=dtype) * motion
    return feature, mv


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(device, poison, shape, mode, padding_mode, dtype):
    feature, mv = _inputs(shape, device, dtype)
    kw = dict(scale=(1.5, 0.75), mode=mode, padding_mode=padding_mode)
    out = arseg_ops.mv_warp(feature, mv, **kw)
    assert out.shape == feature.shape and out.dtype == dtype and out.is_contiguous()
    testing.assert_close(out, reference.mv_warp(feature, mv, **kw))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_backward_matches_reference(device, mode, padding_mode):
    feature, mv = _inputs((2, 4, 9, 13, 3, 5), device, torch.float64)
    grad = torch.randn_like(feature)
    kw = dict(scale=(0.8, 1.25), mode=mode, padding_mode=padding_mode)
    grads = []
    for fn in (arseg_ops.mv_warp, reference.mv_warp):
        f, m = feature.clone().requires_grad_(), mv.clone().requires_grad_()
        fn(f, m, **kw).backward(grad)
        # `nearest` is piecewise constant: the reference has no path to mv at all (grad None = zeros).
        grads.append((f.grad, m.grad if m.grad is not None else torch.zeros_like(m)))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("blocks", [(2, 3), (5, 7)])
def test_gradcheck(device, mode, padding_mode, blocks):
    feature, mv = _inputs((2, 3, 5, 7) + blocks, device, torch.float64, motion=1.7)
    feature.requires_grad_()
    mv.requires_grad_()
    fn = lambda f, m: arseg_ops.mv_warp(f, m, scale=(1.3, 0.8), mode=mode, padding_mode=padding_mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (feature, mv))


def test_zero_motion_is_identity(device, poison):
    feature = torch.randn(2, 3, 11, 13, device=device)
    for mode in MODES:
        for padding_mode in PADDINGS:
            mv = torch.zeros(2, 2, 3, 4, device=device)
            out = arseg_ops.mv_warp(feature, mv, scale=2.5, mode=mode, padding_mode=padding_mode)
            assert torch.equal(out, feature)


def test_integer_shift(device):
    """mv = (+1, 0): pixel x takes x+1; the last column is 0 (zeros) or the edge value (border)."""
    feature = torch.randn(1, 2, 4, 6, device=device)
    mv = torch.zeros(1, 2, 1, 1, device=device)
    mv[:, 0] = 1.0
    out = arseg_ops.mv_warp(feature, mv)
    torch.testing.assert_close(out[..., :-1], feature[..., 1:])
    assert torch.all(out[..., -1] == 0)
    out = arseg_ops.mv_warp(feature, mv, padding_mode="border")
    torch.testing.assert_close(out[..., -1], feature[..., -1])


def test_block_lookup(device):
    """Each 4x4 block of pixels moves by its own vector: block (by, bx) = (floor(y*Hb/H), floor(x*Wb/W))."""
    H, W, Hb, Wb = 8, 12, 2, 3
    feature = torch.randn(1, 1, H, W, device=device, dtype=torch.float64)
    mv = torch.randint(-2, 3, (1, 2, Hb, Wb), device=device).double()
    out = arseg_ops.mv_warp(feature, mv, padding_mode="border")
    for y in range(H):
        for x in range(W):
            dx, dy = mv[0, :, y * Hb // H, x * Wb // W].tolist()
            sx, sy = min(max(x + dx, 0), W - 1), min(max(y + dy, 0), H - 1)
            assert out[0, 0, y, x].item() == feature[0, 0, int(sy), int(sx)].item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_dense_flow_matches_grid_sample(device, mode, padding_mode):
    """An independent check of the coordinate convention: dense flow == grid_sample(align_corners=True)."""
    N, C, H, W = 2, 3, 10, 14
    feature = torch.randn(N, C, H, W, device=device, dtype=torch.float64)
    flow = torch.randn(N, 2, H, W, device=device, dtype=torch.float64) * 2.5
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    gx = (xs + flow[:, 0]) / (W - 1) * 2 - 1
    gy = (ys + flow[:, 1]) / (H - 1) * 2 - 1
    expected = F.grid_sample(feature, torch.stack([gx, gy], -1), mode=mode, padding_mode=padding_mode,
                             align_corners=True)
    out = arseg_ops.mv_warp(feature, flow, mode=mode, padding_mode=padding_mode)
    torch.testing.assert_close(out, expected)


def test_scale_number_equals_pair(device):
    feature, mv = _inputs((1, 2, 6, 8, 3, 4), device, torch.float64)
    torch.testing.assert_close(arseg_ops.mv_warp(feature, mv, scale=0.5), arseg_ops.mv_warp(feature, mv, scale=(0.5, 0.5)))


def test_non_contiguous_inputs(device):
    feature, mv = _inputs((2, 6, 10, 12, 5, 6), device, torch.float32)
    expected = reference.mv_warp(feature, mv)
    f_cl = feature.to(memory_format=torch.channels_last)
    mv_t = mv.transpose(2, 3).contiguous().transpose(2, 3)
    assert not f_cl.is_contiguous() and not mv_t.is_contiguous()
    torch.testing.assert_close(arseg_ops.mv_warp(f_cl, mv_t), expected)
    # strided views: every other channel and column
    big = torch.randn(2, 12, 10, 24, device=device)
    view = big[:, ::2, :, ::2]
    torch.testing.assert_close(arseg_ops.mv_warp(view, mv), reference.mv_warp(view.contiguous(), mv))


def test_non_finite_motion_samples_nothing(device):
    feature = torch.randn(1, 2, 4, 5, device=device)
    mv = torch.zeros(1, 2, 1, 2, device=device)
    mv[0, 0, 0, 0] = float("nan")
    mv[0, 1, 0, 1] = float("inf")
    for padding_mode in PADDINGS:
        out = arseg_ops.mv_warp(feature, mv, padding_mode=padding_mode)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, reference.mv_warp(feature, mv, padding_mode=padding_mode))


def test_non_finite_feature_does_not_leak(device):
    """Pixels that sample outside the image stay 0 (and their gradients finite) when feature[0, 0] is inf."""
    feature = torch.randn(1, 2, 4, 5, device=device, dtype=torch.float64)
    feature[:, :, 0, 0] = float("inf")
    mv = torch.zeros(1, 2, 1, 2, device=device, dtype=torch.float64)
    mv[0, 0, 0, 1] = 10.0  # right half samples far outside
    f, m = feature.clone().requires_grad_(), mv.clone().requires_grad_()
    out = arseg_ops.mv_warp(f, m)
    assert torch.all(out[..., 3:] == 0)
    torch.testing.assert_close(out, reference.mv_warp(feature, mv))
    grad = torch.randn_like(out)
    grad[:, :, 0, 0] = float("nan")
    out.backward(grad)
    assert torch.isfinite(f.grad[..., 1:]).all() and torch.isfinite(m.grad[..., 1]).all()


def test_huge_motion_is_outside(device):
    feature = torch.randn(1, 2, 4, 5, device=device)
    mv = torch.full((1, 2, 1, 1), 1e30, device=device)
    assert torch.all(arseg_ops.mv_warp(feature, mv) == 0)
    torch.testing.assert_close(arseg_ops.mv_warp(feature, mv, padding_mode="border"),
                               feature[..., -1:, -1:].expand_as(feature))


@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 2, 2), (2, 0, 4, 5, 2, 2), (1, 3, 0, 5, 2, 2)])
def test_empty(device, shape):
    feature, mv = _inputs(shape, device, torch.float32)
    feature.requires_grad_()
    mv.requires_grad_()
    out = arseg_ops.mv_warp(feature, mv)
    assert out.shape == feature.shape
    out.sum().backward()
    assert feature.grad.shape == feature.shape and torch.all(mv.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    """Half inputs are accumulated in float32: as accurate as the float32 result rounded once."""
    feature, mv = _inputs((2, 3, 9, 13, 3, 5), device, torch.float32)
    feature, mv = feature.to(dtype), mv.to(dtype)
    out = arseg_ops.mv_warp(feature, mv)
    assert out.dtype == dtype
    expected = reference.mv_warp(feature.float(), mv.float()).to(dtype)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_opcheck(device):
    feature, mv = _inputs((2, 3, 6, 8, 3, 4), device, torch.float64)
    ops = torch.ops.arseg_ops
    for mode in MODES:
        for padding_mode in PADDINGS:
            args = (1.25, 0.5, mode, padding_mode)
            torch.library.opcheck(ops.mv_warp.default, (feature.clone().requires_grad_(), mv.clone().requires_grad_()) + args)
            grad = torch.randn_like(feature)
            torch.library.opcheck(ops.mv_warp_backward_feature.default, (grad, mv) + args)
            torch.library.opcheck(ops.mv_warp_backward_mv.default, (grad, feature, mv) + args)


def test_output_memory_format_matches_fake_kernel(device, warp_kernels):
    """channels_last input: the real kernels and the fake kernel (what torch.compile plans with) agree on the
    output's memory format, per device and kernel switch. CPU and the opt-in v2 CUDA kernels keep channels_last."""
    feature, mv = _inputs((2, 6, 10, 12, 5, 6), device, torch.float32)
    f_cl = feature.to(memory_format=torch.channels_last)
    ops = torch.ops.arseg_ops
    args = (1.0, 0.5, "bilinear", "zeros")
    out = arseg_ops.mv_warp(f_cl, mv, scale=(1.0, 0.5))
    keeps = device == "cpu" or warp_kernels == "experimental"
    assert out.is_contiguous(memory_format=torch.channels_last if keeps else torch.contiguous_format)
    torch.testing.assert_close(out, reference.mv_warp(feature, mv, scale=(1.0, 0.5)))
    grad = torch.randn_like(feature).to(memory_format=torch.channels_last)
    checks = ("test_faketensor", "test_aot_dispatch_dynamic")  # fake vs real: sizes and strides
    torch.library.opcheck(ops.mv_warp.default, (f_cl.clone().requires_grad_(), mv.clone().requires_grad_()) + args,
                          test_utils=checks)
    torch.library.opcheck(ops.mv_warp_backward_feature.default, (grad, mv) + args, test_utils=checks)


def test_torch_compile_dynamic_shapes(device):
    """Default arguments (scale=1.0 is traced as a symbolic float under dynamic=True) and shapes that change."""
    def step(f, m):
        return (arseg_ops.mv_warp(f, m) * 2).square().sum()

    # Sizes of the first call all differ (and are > 1): Dynamo gives equal sizes one symbol and specializes 0 and 1.
    shapes = [(2, 4, 9, 13, 5, 6), (2, 3, 11, 8, 4, 3), (2, 5, 12, 10, 6, 5)]
    testing.assert_compiled_dynamic_matches_eager(step, [_inputs(s, device, torch.float32) for s in shapes])


def test_torch_compile_fullgraph(device):
    def step(f, m):
        return (arseg_ops.mv_warp(f, m, scale=0.5, padding_mode="border") * 2).sum()

    testing.assert_compiled_matches_eager(step, _inputs((1, 4, 8, 10, 2, 5), device, torch.float32))


@pytest.mark.skipif("not config.getoption('--run-large', default=False)", reason="needs ~20 GB; run with --run-large")
def test_more_than_2_31_elements(device):
    """64-bit indexing: the last image of a batch lies past element 2^31."""
    H, W = 32768, 32769
    feature = torch.empty(2, 1, H, W, device=device, dtype=torch.float16)
    feature[1, 0, -1, -2:] = torch.tensor([1.0, 2.0], dtype=torch.float16)
    mv = torch.zeros(2, 2, 1, 1, device=device, dtype=torch.float16)
    mv[1, 0] = 1.0
    out = arseg_ops.mv_warp(feature, mv)
    assert feature.numel() > 2**31
    assert out[1, 0, -1, -2].item() == 2.0 and out[1, 0, -1, -1].item() == 0.0


ISAS = ["baseline", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_instruction_set_and_layout(monkeypatch, poison, isa, layout, dtype):
    """The CPU kernels are compiled per instruction set (ARSEG_CPU_ISA caps the one that runs): 4-pixel blocks
    (the AVX-512 build's four-run vectors in float32), motion pointing outside at the top, border padding and
    nearest; values and both gradients, channels_last kept without copies."""
    monkeypatch.setenv("ARSEG_CPU_ISA", isa)
    feature, mv = _inputs((2, 5, 24, 36, 6, 9), "cpu", dtype, motion=4.0)
    mv[:, 1, 0] -= 3.0
    if layout == "channels_last":
        feature = feature.to(memory_format=torch.channels_last)
    for mode, padding_mode in (("bilinear", "zeros"), ("bilinear", "border"), ("nearest", "zeros")):
        kw = dict(scale=(1.25, 0.75), mode=mode, padding_mode=padding_mode)
        grad = torch.randn_like(feature)
        f, m = feature.clone().requires_grad_(), mv.clone().requires_grad_()
        out = arseg_ops.mv_warp(f, m, **kw)
        out.backward(grad)
        keeps = layout == "channels_last"
        assert out.is_contiguous(memory_format=torch.channels_last if keeps else torch.contiguous_format)
        assert f.grad.is_contiguous(memory_format=torch.channels_last if keeps else torch.contiguous_format)
        rf, rm = feature.contiguous().clone().requires_grad_(), mv.clone().requires_grad_()
        expected = reference.mv_warp(rf, rm, **kw)
        expected.backward(grad)
        tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(out, expected, **tol)
        torch.testing.assert_close(f.grad, rf.grad, **tol)
        torch.testing.assert_close(m.grad, rm.grad if rm.grad is not None else torch.zeros_like(mv), **tol)


@pytest.mark.parametrize("width", [512, 521])
def test_outputs_larger_than_the_caches(poison, width):
    """Outputs of >= 32 MiB get huge-page advice for their fresh buffer (width 512: rows of whole cache lines; 521:
    rows that start mid-line). 4x4-pixel blocks, so the AVX-512 kernel gathers four runs at a time."""
    feature = torch.randn(1, 64, 260, width)
    mv = torch.randn(1, 2, 65, -(-width // 4)) * 3.0
    assert feature.numel() * 4 >= 32 << 20
    testing.assert_close(arseg_ops.mv_warp(feature, mv), reference.mv_warp(feature, mv))
