"""local_attn's CUDA kernels (v1 default, v2 experimental) run on the CPU emulator against the float64 reference."""
import functools

import pytest
import torch

from cuda_emu_support import (DTYPE_IDS, DTYPES, DTYPES_V2, check_forward_backward, cuda_emu, reference, rounded,
                              testing, tsan_subset)

pytestmark = cuda_emu


def _case(dtype, K, padding="zeros", N=2, C=5, Cv=3, H=6, W=7, channels_last=False, seed=0, scale=0.7, **options):
    gen = torch.Generator().manual_seed(seed)
    q, k = (rounded((N, C, H, W), dtype, gen, channels_last=channels_last) for _ in range(2))
    v = rounded((N, Cv, H, W), dtype, gen, channels_last=channels_last)
    experimental = options.pop("experimental", False)
    emulated = testing.cuda_emulated("local_attn", experimental=experimental, **options)
    fn = functools.partial(emulated, kernel_size=K, scale=scale, padding=padding)
    ref = functools.partial(reference.local_attn, kernel_size=K, scale=scale, padding=padding)
    out, grads = check_forward_backward(fn, ref, [q, k, v], dtype, "local_attn K=%d %s" % (K, padding))
    return emulated.kernels, out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 11, 13, 15])
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
def test_v1_default(dtype, K, padding):
    kernels, _, _ = _case(dtype, K, padding)
    assert kernels == ["local_attn_forward", "local_attn_backward"]


@pytest.mark.parametrize("dtype", DTYPES_V2, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("K", [1, 3, 5, 7, 9, 11])
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_v2_experimental(dtype, K, padding, channels_last):
    kernels, out, grads = _case(dtype, K, padding, channels_last=channels_last, experimental=True)
    assert kernels == ["local_attn_v2_forward", "local_attn_v2_backward"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert all(t.is_contiguous(memory_format=fmt) for t in (out,) + tuple(grads))


@pytest.mark.parametrize("dtype", DTYPES_V2, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_v2_backward_in_two_parts(dtype, channels_last):
    # K = 11's backward takes dP in two parts of the score columns (the O pass gives delta first): several
    # tiles per image and several channel chunks per pass (C, Cv above the 16 / 32 channels of one chunk).
    kernels, _, _ = _case(dtype, 11, C=20, Cv=40, H=17, W=19, N=1, channels_last=channels_last, experimental=True)
    assert kernels == ["local_attn_v2_forward", "local_attn_v2_backward"]


@pytest.mark.parametrize("C,Cv", [(1, 1), (3, 17), (16, 16), (33, 8)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_v2_channel_counts(C, Cv, channels_last):
    _case(torch.float32, 7, C=C, Cv=Cv, channels_last=channels_last, experimental=True)
    _case(torch.bfloat16, 5, C=C, Cv=Cv, channels_last=channels_last, experimental=True)


@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("H,W", [(1, 1), (1, 9), (13, 2), (17, 19)])
def test_image_sizes(experimental, H, W):
    _case(torch.float32, 7, H=H, W=W, N=3, experimental=experimental)


@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
def test_channels_last_input_to_v1_and_v2(experimental):
    # v1 runs on an NCHW copy and returns channels_last like v2 (the layout rule of _ops.py).
    kernels, out, _ = _case(torch.float32, 3, channels_last=True, experimental=experimental)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert kernels[0] == ("local_attn_v2_forward" if experimental else "local_attn_forward")


@pytest.mark.parametrize("dtype", DTYPES_V2, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_v2_misaligned_buffers(dtype, channels_last):
    _case(dtype, 7, C=8, Cv=8, channels_last=channels_last, experimental=True, misaligned=True)


@tsan_subset
@pytest.mark.parametrize("order", ["reverse", "random"])
@pytest.mark.parametrize("experimental", [False, True], ids=["v1", "v2"])
def test_thread_orders(order, experimental):
    _case(torch.float32, 7, experimental=experimental, order=order, seed=3)
    _case(torch.float16, 5, channels_last=True, experimental=experimental, order=order, seed=4)


@pytest.mark.parametrize("sm_count", [1, 132])
def test_launch_heuristics(sm_count):
    _case(torch.float32, 7, N=3, experimental=True, sm_count=sm_count)
    _case(torch.float64, 7, N=3, sm_count=sm_count)


def test_large_logits_stay_finite():
    # scale 30 on unit-variance inputs: logits of several hundred, where an unshifted softmax overflows.
    _case(torch.float32, 7, scale=30.0, experimental=True)
    _case(torch.float32, 7, scale=30.0)


def test_errors():
    with pytest.raises(ValueError, match="unknown op"):
        testing.cuda_emulated("local_atn")
    q = torch.ones(1, 2, 3, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="int32"):
        testing.cuda_emulated("local_attn")(q, q, q)
    with pytest.raises(ValueError, match="order"):
        testing.cuda_emulated("local_attn", order="sideways")
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises((ValueError, RuntimeError), match="kernel_size"):
        testing.cuda_emulated("local_attn")(x, x, x, kernel_size=4)
