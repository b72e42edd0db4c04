"""creff on the CUDA emulator: the experimental fused kernel, and the default composition, against float64."""
import functools

import pytest
import torch

from cuda_emu_support import (DTYPE_IDS, DTYPES, check_forward_backward, cuda_emu, motion, reference, rounded, testing,
                              tsan_subset)

pytestmark = cuda_emu

# Issue targets for the experimental creff vs float64 (forward and backward): float32 2e-4, bfloat16 3e-2.
CREFF_GRAD_TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _case(dtype, K=7, N=2, C=5, H=8, W=10, h=4, w=5, Hb=2, Wb=5, channels_last=False, mv_scale=(0.5, 0.5), seed=0,
          mv_grad=True, **options):
    """mv_grad=False: codec motion (no gradient), so the experimental backward is the fused creff_backward."""
    gen = torch.Generator().manual_seed(seed)
    key = rounded((N, C, H, W), dtype, gen, channels_last=channels_last)
    mv = motion((N, 2, Hb, Wb), dtype, gen, scale=3.0).requires_grad_(mv_grad)
    lr = rounded((N, C, h, w), dtype, gen, channels_last=channels_last)
    weight = rounded((3, C, 1, 3, 3), dtype, gen, scale=0.4)
    bias = rounded((3, C), dtype, gen, scale=0.1)
    experimental = options.pop("experimental", False)
    emulated = testing.cuda_emulated("creff", experimental=experimental, **options)
    kw = dict(kernel_size=K, scale=0.5, mv_scale=mv_scale)
    out, grads = check_forward_backward(functools.partial(emulated, **kw), functools.partial(reference.creff, **kw),
                                        [key, mv, lr, weight, bias], dtype, "creff K=%d" % K,
                                        grad_tol=CREFF_GRAD_TOL)
    return emulated.kernels, out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 11])
def test_fused_experimental(dtype, K):
    kernels, _ = _case(dtype, K, experimental=True)
    # The fused kernel covers odd K up to 11, up to 7 for float64 (its tile would not fit shared memory).
    assert kernels[0] == ("creff_forward" if K <= (7 if dtype == torch.float64 else 11) else "composed")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_default_is_the_composition(dtype):
    kernels, _ = _case(dtype)
    assert kernels[:3] == ["composed", "mv_warp_forward", "local_attn_forward"]


@pytest.mark.parametrize("experimental", [False, True], ids=["default", "experimental"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("C", [3, 8])  # 8: whole vector chunks; 3: the element-wise path
def test_channels_last(experimental, dtype, C):
    kernels, out = _case(dtype, C=C, channels_last=True, experimental=experimental)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert kernels[0] == ("creff_forward" if experimental else "composed")


@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 11])
def test_fused_channels_last_kernel_sizes(K):
    _case(torch.float32, K, C=8, channels_last=True, experimental=True)
    _case(torch.float16, K, C=4, N=1, channels_last=True, experimental=True, misaligned=True)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1, 1, 1), (3, 3, 9, 7, 9, 7, 3, 1), (1, 17, 12, 16, 3, 4, 3, 4)],
                         ids=["1x1", "same-size-lr", "odd-C"])
@pytest.mark.parametrize("experimental", [False, True], ids=["default", "experimental"])
def test_sizes(shape, experimental):
    N, C, H, W, h, w, Hb, Wb = shape
    _case(torch.float32, N=N, C=C, H=H, W=W, h=h, w=w, Hb=Hb, Wb=Wb, experimental=experimental)


def test_fused_misaligned_and_scales():
    _case(torch.float32, experimental=True, misaligned=True)
    _case(torch.float32, C=8, channels_last=True, experimental=True, misaligned=True)
    _case(torch.float32, experimental=True, mv_scale=(1.0, -2.0))


@tsan_subset
@pytest.mark.parametrize("order", ["reverse", "random"])
def test_thread_orders(order):
    _case(torch.float32, experimental=True, order=order, seed=2)
    _case(torch.bfloat16, K=3, experimental=True, order=order, seed=3, sm_count=1)
    _case(torch.float32, K=5, C=8, channels_last=True, experimental=True, order=order, seed=4)


# ---- the fused backward (creff_backward.cu): codec motion, so every gradient but mv's ----

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 11])
def test_fused_backward(dtype, K):
    kernels, _ = _case(dtype, K, experimental=True, mv_grad=False)
    # The fused backward covers what the fused forward does (odd K up to 11, 7 for float64); d key_feature then
    # goes through the mv_warp op's backward kernel.
    fused = K <= (7 if dtype == torch.float64 else 11)
    assert kernels[:3] == (["creff_forward", "creff_backward", "mv_warp_v2_backward_feature"] if fused else
                           ["composed", "mv_warp_v2_forward", "local_attn_forward"])
    assert fused or "creff_backward" not in kernels


def test_default_backward_is_the_composition():
    kernels, _ = _case(torch.float32, mv_grad=False)
    assert "creff_backward" not in kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_fused_backward_channels_last(dtype):
    kernels, _ = _case(dtype, C=8, channels_last=True, experimental=True, mv_grad=False)
    assert kernels[1] == "creff_backward"


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1, 1, 1), (3, 3, 9, 7, 9, 7, 3, 1), (1, 17, 12, 16, 3, 4, 3, 4),
                                   (2, 6, 19, 70, 7, 30, 5, 18)],
                         ids=["1x1", "same-size-lr", "odd-C", "several-tiles"])
def test_fused_backward_sizes(shape):
    N, C, H, W, h, w, Hb, Wb = shape
    kernels, _ = _case(torch.float32, N=N, C=C, H=H, W=W, h=h, w=w, Hb=Hb, Wb=Wb, experimental=True, mv_grad=False)
    assert kernels[1] == "creff_backward"


def test_fused_backward_misaligned_and_scales():
    _case(torch.float32, experimental=True, mv_grad=False, misaligned=True)
    _case(torch.float64, K=5, experimental=True, mv_grad=False, mv_scale=(1.0, -2.0))


@tsan_subset
@pytest.mark.parametrize("order", ["reverse", "random"])
def test_fused_backward_thread_orders(order):
    _case(torch.float32, K=5, C=6, H=12, W=40, experimental=True, mv_grad=False, order=order, seed=5)
