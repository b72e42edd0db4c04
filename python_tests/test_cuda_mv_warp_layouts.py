"""CUDA mv_warp with channels_last (NHWC) tensors, and what only the opt-in v2 kernels do (skipped without a GPU).

Every test runs the default kernels and the v2 kernels (`warp_kernels` fixture). The v2 kernels read and write
channels_last tensors in place (NHWC kernels, 16-byte channel vectors when C allows) and return channels_last
outputs; the default kernels copy to NCHW and return NCHW. Values must not depend on the layout or the kernels.
Shapes cover the vector and scalar paths (C a multiple of 16/element-size or not, W a multiple of 4 or not),
tiles that straddle the image edge, small images with many channels (split across CTAs), and motion large and
uneven enough that taps fall outside v2's shared-memory window (its global-atomic path).
"""
import pytest
import torch

import arseg_ops
from arseg_ops import reference
from test_cuda_kernels import LOW, check_low_precision, cuda_test, rand, warp_at_dtype, warp_with_float64_reference

LAYOUT_SHAPES = [  # N, C, H, W, Hb, Wb
    (2, 8, 11, 36, 3, 9),     # C % 4 == 0, W % 4 == 0: vector paths (fp32)
    (1, 6, 9, 13, 9, 13),     # dense flow, C and W odd sizes: scalar paths
    (1, 64, 19, 70, 5, 18),   # several window tiles, 16-channel passes
    (2, 300, 5, 7, 2, 2),     # small image, many channels: channel slices
    (1, 3, 40, 33, 1, 1),     # one block: global motion
]


def channels_last(t):
    return t.detach().to(memory_format=torch.channels_last).requires_grad_(t.requires_grad)


def keeps_channels_last(warp_kernels):
    return warp_kernels == "experimental"


def assert_format(t, channels_last_expected):
    fmt = torch.channels_last if channels_last_expected else torch.contiguous_format
    assert t.is_contiguous(memory_format=fmt), f"expected {fmt}, got strides {t.stride()}"


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)
def test_mv_warp_channels_last_matches_float64(shape, padding_mode, mode, dtype, poison, warp_kernels):
    N, C, H, W, Hb, Wb = shape
    feature = channels_last(rand(N, C, H, W, dtype=dtype).requires_grad_())
    mv = rand(N, 2, Hb, Wb, dtype=dtype, scale=3.0).requires_grad_()
    kw = dict(scale=(1.25, 0.75), mode=mode, padding_mode=padding_mode)
    out, grads, ref, ref_grads, _ = warp_with_float64_reference(feature, mv, kw)
    assert_format(out, keeps_channels_last(warp_kernels))
    assert_format(grads[0], keeps_channels_last(warp_kernels))  # the gradient of a channels_last output
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0].double(), ref_grads[0], atol=tol, rtol=tol)
    torch.testing.assert_close(grads[1].double(), ref_grads[1], atol=tol * 10 * max(1, C // 64), rtol=tol)


@cuda_test
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mv_warp_low_precision_layouts(layout, dtype, poison, warp_kernels):
    feature = rand(2, 32, 21, 40, dtype=dtype)  # C = 32: 16-byte vectors of 8 halves
    feature = (channels_last(feature) if layout == "channels_last" else feature).requires_grad_()
    mv = rand(2, 2, 6, 10, dtype=dtype, scale=2.5).requires_grad_()
    kw = dict(scale=(1.0, 0.5), mode="bilinear", padding_mode="zeros")
    out, grads, ref, ref_grads, dout = warp_with_float64_reference(feature, mv, kw)
    assert_format(out, layout == "channels_last" and keeps_channels_last(warp_kernels))
    fl, ml = (t.detach().contiguous().requires_grad_() for t in (feature, mv))
    low = warp_at_dtype(fl, ml, 1.0, 0.5, "bilinear", "zeros")
    low_grads = torch.autograd.grad(low, (fl, ml), dout.contiguous())
    check_low_precision(out, low, ref, "out")
    check_low_precision(grads[0], low_grads[0], ref_grads[0], "dfeature")
    check_low_precision(grads[1], low_grads[1], ref_grads[1], "dmv")


@cuda_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mv_warp_large_uneven_motion(layout, poison, warp_kernels):
    """Neighbouring 4x4 blocks moving up to ~40 pixels apart: many taps land outside v2's shared window."""
    feature = rand(1, 20, 48, 96)
    feature = (channels_last(feature) if layout == "channels_last" else feature).requires_grad_()
    mv = rand(1, 2, 12, 24, scale=12.0).requires_grad_()
    out, grads, ref, ref_grads, _ = warp_with_float64_reference(feature, mv, dict(scale=1.0))
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[0].double(), ref_grads[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[1].double(), ref_grads[1], atol=1e-3, rtol=1e-4)


@cuda_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mv_warp_backward_mv_is_deterministic(layout, warp_kernels):
    feature = rand(2, 48, 30, 44)
    feature = channels_last(feature) if layout == "channels_last" else feature
    mv = rand(2, 2, 8, 11, scale=2.5)
    grad = torch.randn_like(feature)
    args = (0.75, 1.25, "bilinear", "border")
    first = torch.ops.arseg_ops.mv_warp_backward_mv(grad, feature, mv, *args)
    second = torch.ops.arseg_ops.mv_warp_backward_mv(grad, feature, mv, *args)
    assert torch.equal(first, second)


@cuda_test
def test_mv_warp_ambiguous_layouts_stay_nchw(warp_kernels):
    """C == 1 tensors are NCHW-contiguous and channels_last at once: the output is plain contiguous."""
    feature = rand(2, 1, 9, 10).to(memory_format=torch.channels_last)
    mv = rand(2, 2, 3, 5)
    out = arseg_ops.mv_warp(feature, mv)
    assert out.is_contiguous()
    torch.testing.assert_close(out, reference.mv_warp(feature, mv))


@cuda_test
def test_mv_warp_channels_last_compile_and_opcheck(warp_kernels):
    feature = rand(1, 8, 6, 12, dtype=torch.float64).to(memory_format=torch.channels_last)
    mv = (rand(1, 2, 2, 3, dtype=torch.float64) + 0.37)
    args = (0.5, 1.5, "bilinear", "border")
    f, m = feature.clone().requires_grad_(), mv.clone().requires_grad_()
    torch.library.opcheck(torch.ops.arseg_ops.mv_warp.default, (f, m) + args)
    grad = torch.randn_like(feature)
    torch.library.opcheck(torch.ops.arseg_ops.mv_warp_backward_feature.default, (grad, mv) + args)
    torch.library.opcheck(torch.ops.arseg_ops.mv_warp_backward_mv.default, (grad, feature, mv) + args)
    assert torch.autograd.gradcheck(lambda a, b: arseg_ops.mv_warp(a, b, scale=0.5), (f, m))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: arseg_ops.mv_warp(a, b, scale=0.5), fullgraph=True)
    eager = arseg_ops.mv_warp(feature, mv, scale=0.5)
    got = compiled(feature, mv)
    assert got.stride() == eager.stride()
    torch.testing.assert_close(got, eager)
