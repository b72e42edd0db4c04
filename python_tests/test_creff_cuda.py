"""creff on CUDA: the default path (composition of the verified CUDA ops) and the experimental fused kernel
(ARSEG_EXPERIMENTAL_KERNELS=creff) against the float64 unfused chain (arseg_ops.reference.creff) and the CPU op.

Skipped without a GPU and a CUDA build, and where arseg_ops.creff does not exist (it comes with the `creff`
branch), so the file collects everywhere. float32/float64 compare with the float64 truth directly; float16/bfloat16
follow the 2x-PyTorch rule (assert_low_precision_close) against the chain done by PyTorch at that precision.
"""
import pytest
import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import reference, testing
from arseg_ops.testing import cuda_available

HAS_CUDA = cuda_available()

HAS_CREFF = hasattr(arseg_ops, "creff") and hasattr(reference, "creff")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build"),
    pytest.mark.skipif(not HAS_CREFF, reason="arseg_ops.creff is not in this build"),
]

# "default": composition of the verified ops; "fused": the experimental kernel (odd K up to 11; float64 up to 7,
# beyond which it falls back to the default).
PATHS = ["default", "fused"]
LOW = [torch.float16, torch.bfloat16]


def run_creff(path, *args, **kwargs):
    with testing.experimental_kernels(*(["creff"] if path == "fused" else [])):  # none: the default path
        with testing.poison_outputs():
            return arseg_ops.creff(*args, **kwargs)


def creff_inputs(N=2, C=5, H=13, W=37, h=7, w=19, blocks=(3, 5), motion=4.0, dtype=torch.float32,
                 device="cuda"):
    """Random O(1) inputs; the motion (up to +-motion pixels) points outside the image near the borders, H and W
    are not multiples of the block grid, the image spans several 8 x 32 tiles, C is not a multiple of a chunk."""
    g = torch.Generator().manual_seed(1234)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    return (r(N, C, H, W), r(N, 2, *blocks, s=motion), r(N, C, h, w), r(3, C, 1, 3, 3, s=0.5), r(3, C, s=0.5))


def truth(args, **kwargs):
    return reference.creff(*(t.detach().cpu().double() for t in args), **kwargs)


def chain_at_dtype(args, kernel_size, scale, mv_scale):
    """The unfused chain in PyTorch at the inputs' precision (no upcasting): grid_sample warp, interpolate,
    grouped convs, unfold attention."""
    from test_cuda_kernels import attn_at_dtype, warp_at_dtype

    key, mv, lr_feature, weight, bias = args
    C, H, W = key.shape[1:]
    hr = warp_at_dtype(key, mv, mv_scale[0], mv_scale[1], "bilinear", "zeros")
    lr = F.interpolate(lr_feature, size=(H, W), mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((lr, hr, hr)))
    return lr + attn_at_dtype(q, k, v, kernel_size, scale, "zeros")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel_size", [1, 3, 7, 9, 11])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_creff_cuda_matches_float64_chain(path, kernel_size, dtype):
    args = creff_inputs(dtype=dtype)
    kw = dict(kernel_size=kernel_size, scale=0.7, mv_scale=(1.5, 0.75))
    out = run_creff(path, *args, **kw)
    assert out.dtype == dtype and out.is_cuda and not out.isnan().any()
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.cpu().double(), truth(args, **kw), **tol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel_size", [3, 7, 11])
@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
def test_creff_cuda_low_precision(path, kernel_size, dtype):
    args = creff_inputs(dtype=dtype)
    kw = dict(kernel_size=kernel_size, scale=0.7, mv_scale=(1.5, 0.75))
    out = run_creff(path, *args, **kw)
    assert out.dtype == dtype and not out.isnan().any()
    theirs = chain_at_dtype(args, kernel_size, 0.7, (1.5, 0.75))
    testing.assert_low_precision_close(out, theirs, truth(args, **kw), f"creff {path} K={kernel_size}")


@pytest.mark.parametrize("kernel_size", [5, 7, 9, 11])
def test_creff_fused_matches_cpu_op_wide_channels(kernel_size):
    # 64 channels (16 chunks of the fused kernel), several tiles in both directions, lr at a quarter of the pixels.
    args = creff_inputs(N=1, C=64, H=21, W=70, h=11, w=35, blocks=(2, 5), motion=6.0)
    kw = dict(kernel_size=kernel_size, scale=0.125, mv_scale=2.0)
    fused = run_creff("fused", *args, **kw)
    cpu = arseg_ops.creff(*(t.cpu() for t in args), **kw)
    torch.testing.assert_close(fused.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_creff_cuda_channels_last(path):
    args = list(creff_inputs(dtype=torch.float32))
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    args[2] = args[2].contiguous(memory_format=torch.channels_last)
    kw = dict(kernel_size=3, scale=0.7, mv_scale=1.0)
    out = run_creff(path, *args, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu().double(), truth(args, **kw), atol=1e-4, rtol=1e-4)


def test_creff_cuda_single_pixel_lr_and_image_smaller_than_a_tile():
    # h = w = 1 (lr is a constant per channel), an image smaller than the window and than one tile.
    args = creff_inputs(N=1, C=3, H=2, W=3, h=1, w=1, blocks=(1, 1), motion=1.0, dtype=torch.float64)
    for path in PATHS:
        out = run_creff(path, *args, kernel_size=7, scale=1.0)
        torch.testing.assert_close(out.cpu(), truth(args, kernel_size=7, scale=1.0), atol=1e-10, rtol=1e-10)


def test_creff_fused_is_deterministic():
    args = creff_inputs(C=16, H=19, W=45)
    a = run_creff("fused", *args, kernel_size=7, scale=0.5)
    b = run_creff("fused", *args, kernel_size=7, scale=0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_creff_cuda_rejects_bad_weight(path):
    key, mv, lr_feature, weight, bias = creff_inputs()
    with pytest.raises((ValueError, RuntimeError), match="weight"):
        run_creff(path, key, mv, lr_feature, weight[:2], bias)


# ---- creff_backward on CUDA: the op composition (default) and the fused kernels (creff_backward.cu, opt-in) ----

def run_creff_backward(path, grad, args, kernel_size, scale, mv_scale, extra=()):
    names = (["creff"] if path == "fused" else []) + list(extra)
    with testing.experimental_kernels(*names):
        with testing.poison_outputs():
            return torch.ops.arseg_ops.creff_backward(grad, *args, kernel_size, scale, *mv_scale)


def truth_grads(grad, args, **kw):
    key, mv, lr_feature, weight, bias = (t.detach().cpu().double() for t in args)
    leaves = [t.requires_grad_() for t in (key, lr_feature, weight, bias)]
    out = reference.creff(key, mv, lr_feature, weight, bias, **kw)
    return torch.autograd.grad(out, leaves, grad.cpu().double())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel_size", [1, 3, 7, 9, 11])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_creff_backward_cuda_matches_float64_autograd(path, kernel_size, dtype):
    args = creff_inputs(dtype=dtype)
    grad = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grad = grad.to(device="cuda", dtype=dtype)
    got = run_creff_backward(path, grad, args, kernel_size, 0.7, (1.5, 0.75))
    want = truth_grads(grad, args, kernel_size=kernel_size, scale=0.7, mv_scale=(1.5, 0.75))
    for name, g, w in zip(("key_feature", "lr_feature", "weight", "bias"), got, want):
        assert g.dtype == dtype and g.is_cuda and not g.isnan().any(), name
        rel = (g.cpu().double() - w).abs().max() / w.abs().max()
        assert rel <= (1e-10 if dtype == torch.float64 else 2e-4), "%s: relative error %.3g" % (name, rel)


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
def test_creff_backward_fused_low_precision(dtype):
    args = creff_inputs(dtype=dtype)
    grad = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(8)).to(device="cuda", dtype=dtype)
    got = run_creff_backward("fused", grad, args, 7, 0.7, (1.5, 0.75))
    want = truth_grads(grad, args, kernel_size=7, scale=0.7, mv_scale=(1.5, 0.75))
    for g, w in zip(got, want):
        assert (g.cpu().double() - w).abs().max() / w.abs().max() <= 3e-2


def test_creff_backward_fused_is_deterministic_and_channels_last():
    args = list(creff_inputs(C=16, H=19, W=45))
    grad = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(9)).cuda()
    # With the experimental mv_warp too, its backward is the gather (v2) kernel: no atomics anywhere.
    a = run_creff_backward("fused", grad, args, 7, 0.5, (1.0, 1.0), extra=["mv_warp"])
    b = run_creff_backward("fused", grad, args, 7, 0.5, (1.0, 1.0), extra=["mv_warp"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for i in (0, 2):
        args[i] = args[i].contiguous(memory_format=torch.channels_last)
    c = run_creff_backward("fused", grad.contiguous(memory_format=torch.channels_last), args, 7, 0.5, (1.0, 1.0))
    assert c[0].is_contiguous(memory_format=torch.channels_last) and c[1].is_contiguous(memory_format=torch.channels_last)
    for x, y in zip(a, c):
        torch.testing.assert_close(x, y.contiguous(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_creff_backward_cuda_opcheck_and_autograd(path):
    args = creff_inputs(N=1, C=3, H=9, W=11, h=5, w=6, blocks=(2, 3), dtype=torch.float64)
    grad = torch.randn(args[0].shape, dtype=torch.float64, device="cuda")
    with testing.experimental_kernels(*(["creff"] if path == "fused" else [])):
        torch.library.opcheck(torch.ops.arseg_ops.creff_backward.default, (grad, *args, 3, 0.5, 1.2, 0.8))
        leaves = [t.clone().requires_grad_() for t in (args[0], args[2], args[3], args[4])]
        out = arseg_ops.creff(leaves[0], args[1], *leaves[1:], kernel_size=3, scale=0.5, mv_scale=(1.2, 0.8))
        got = torch.autograd.grad(out, leaves, grad)
    want = truth_grads(grad, args, kernel_size=3, scale=0.5, mv_scale=(1.2, 0.8))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-10, rtol=1e-10)
