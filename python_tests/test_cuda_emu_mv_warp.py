"""mv_warp's CUDA kernels (v1 default, v2 experimental) run on the CPU emulator against the float64 reference."""
import functools

import pytest
import torch

import arseg_ops
from cuda_emu_support import (DTYPE_IDS, DTYPES, assert_matches, check_forward_backward, cuda_emu, reference,
                              rounded, testing, tsan_subset)
from cuda_emu_support import motion as block_motion

pytestmark = cuda_emu

KERNELS = {False: ["mv_warp_forward", "mv_warp_backward_feature", "mv_warp_backward_mv"],
           True: ["mv_warp_v2_forward", "mv_warp_v2_backward_feature", "mv_warp_v2_backward_mv"]}


def _case(dtype, mode="bilinear", padding_mode="zeros", N=2, C=5, H=9, W=10, Hb=3, Wb=5, channels_last=False,
          motion=2.5, scale=(1.0, 1.0), seed=0, **options):
    gen = torch.Generator().manual_seed(seed)
    feature = rounded((N, C, H, W), dtype, gen, channels_last=channels_last)
    mv = block_motion((N, 2, Hb, Wb), dtype, gen, scale=motion)
    experimental = options.pop("experimental", False)
    emulated = testing.cuda_emulated("mv_warp", experimental=experimental, **options)
    kw = dict(scale=scale, mode=mode, padding_mode=padding_mode)
    # Nearest sampling is piecewise constant in mv: its mv gradient is 0 and only the feature gradient is tested.
    if mode == "nearest":
        mv.requires_grad_(False)
    out, grads = check_forward_backward(functools.partial(emulated, **kw), functools.partial(reference.mv_warp, **kw),
                                        [feature, mv], dtype, "mv_warp %s %s" % (mode, padding_mode))
    return emulated.kernels, out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
def test_modes_and_dtypes(dtype, mode, padding_mode, experimental):
    kernels, _, _ = _case(dtype, mode, padding_mode, experimental=experimental)
    expected = KERNELS[experimental] if mode == "bilinear" else KERNELS[experimental][:2]
    assert kernels == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("C", [1, 3, 8, 17])
@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
def test_channels_last(dtype, C, experimental):
    _, out, grads = _case(dtype, C=C, channels_last=True, experimental=experimental)
    # v2 keeps a strictly channels_last layout (C == 1 tensors are NCHW-contiguous too); v1 returns NCHW.
    strict = C > 1
    fmt = torch.channels_last if experimental and strict else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (3, 2, 1, 12, 1, 4), (1, 4, 13, 1, 13, 1), (2, 3, 16, 16, 4, 4)],
                         ids=["1x1", "row", "column", "4px-blocks"])
def test_image_and_block_grids(experimental, shape):
    N, C, H, W, Hb, Wb = shape
    _case(torch.float32, N=N, C=C, H=H, W=W, Hb=Hb, Wb=Wb, experimental=experimental)


@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_far_motion_and_scales(experimental, padding_mode):
    _case(torch.float32, padding_mode=padding_mode, motion=500.0, experimental=experimental)
    _case(torch.float32, padding_mode=padding_mode, scale=(0.5, -0.25), experimental=experimental)


@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_nan_motion_matches_cpu_kernel(experimental, channels_last):
    # NaN motion: the CUDA kernels and the CPU kernel share mv_warp_math.h, so they agree element for element.
    gen = torch.Generator().manual_seed(5)
    feature = rounded((2, 4, 6, 8), torch.float32, gen, channels_last=channels_last).detach()
    mv = rounded((2, 2, 2, 4), torch.float32, gen, scale=2.0).detach()
    mv[0, 0, 1, 2] = float("nan")
    mv[1, 1, 0, 0] = float("nan")
    emulated = testing.cuda_emulated("mv_warp", experimental=experimental)
    for padding_mode in ("zeros", "border"):
        out = emulated(feature, mv, padding_mode=padding_mode)
        cpu = arseg_ops.mv_warp(feature.double(), mv.double(), padding_mode=padding_mode)
        assert_matches(out, cpu, 2e-5, "NaN motion " + padding_mode)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_v2_misaligned_buffers(dtype, channels_last):
    _case(dtype, C=8, channels_last=channels_last, experimental=True, misaligned=True)


@pytest.mark.parametrize("sm_count", [1, 132])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_launch_heuristics(sm_count, channels_last):
    # backward_mv splits channels over slices by the SM count: a 1-SM device takes the unsplit path.
    _case(torch.float32, N=1, C=24, H=8, W=8, channels_last=channels_last, experimental=True, sm_count=sm_count)
    _case(torch.float64, N=3, channels_last=channels_last, sm_count=sm_count)


@tsan_subset
@pytest.mark.parametrize("order", ["reverse", "random"])
@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
def test_thread_orders(order, experimental):
    _case(torch.float32, experimental=experimental, order=order, seed=7)
    _case(torch.bfloat16, C=8, channels_last=True, experimental=experimental, order=order, seed=8)
    # One SM: few blocks, so each pixel's channel vectors are split over several lanes and a thread reads taps
    # that other threads wrote (the barrier between writing and reading them is tested only here).
    _case(torch.float32, C=32, channels_last=True, experimental=experimental, order=order, seed=9, sm_count=1)
