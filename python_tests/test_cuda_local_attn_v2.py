"""local_attn in channels_last, and the experimental (v2) CUDA kernels beyond test_cuda_kernels.py.

The v2 kernels are opt-in (arseg_ops._loader.experimental_kernels("local_attn")); every CUDA test here runs with
the default kernels and with them (the attn_kernels fixture). Shapes are chosen for the v2 tiling: tiles of 8 x 8
or 8 x 16 pixels, channel chunks of 32 (16-bit) or 16 (float) channels, 16-byte vectors in channels_last when the
channel counts are multiples of 8 (16-bit) or 4 (float) and scalar staging otherwise. The CPU tests at the end
check the layout contract of the fake kernels without a GPU.
"""
import pytest
import torch

import arseg_ops
from arseg_ops import reference
from test_cuda_kernels import LOW, attn_at_dtype, check_low_precision, cuda_test, rand

CL = torch.channels_last

# N, C, Cv, H, W: vector staging (C, Cv multiples of 8), scalar staging (odd counts), several chunks of both,
# an image smaller than one tile, a tile-unaligned image with several tiles in both directions.
V2_SHAPES = [
    (2, 16, 8, 11, 19),
    (1, 5, 3, 6, 7),
    (1, 72, 40, 9, 17),
    (3, 33, 65, 3, 4),
    (1, 8, 24, 21, 35),
]


def layout_inputs(shape, dtype, channels_last, grad=False):
    N, C, Cv, H, W = shape
    tensors = [rand(N, C, H, W, dtype=dtype), rand(N, C, H, W, dtype=dtype), rand(N, Cv, H, W, dtype=dtype)]
    if channels_last:
        tensors = [t.contiguous(memory_format=CL) for t in tensors]
    return [t.requires_grad_(grad) for t in tensors]


def grads_and_reference(q, k, v, K, scale, padding):
    out = arseg_ops.local_attn(q, k, v, K, scale=scale, padding=padding)
    dout = torch.randn(out.shape, device=out.device).to(out.dtype).contiguous(memory_format=CL)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.local_attn(q64, k64, v64, K, scale=scale, padding=padding)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    return out, grads, ref.detach(), ref_grads, dout


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("padding", ["zeros", "exclude"])
@pytest.mark.parametrize("K", [3, 7, 9, 11])
@pytest.mark.parametrize("shape", V2_SHAPES, ids=str)
def test_local_attn_channels_last_forward_backward(shape, K, padding, dtype, poison, attn_kernels):
    q, k, v = layout_inputs(shape, dtype, channels_last=True, grad=True)
    out, grads, ref, ref_grads, dout = grads_and_reference(q, k, v, K, 0.4, padding)
    assert out.is_contiguous(memory_format=CL), "channels_last inputs give a channels_last output"
    for g in grads:
        assert g.is_contiguous(memory_format=CL), "and channels_last gradients"
    if dtype in LOW:
        ql, kl, vl = (t.detach().contiguous().requires_grad_() for t in (q, k, v))
        low = attn_at_dtype(ql, kl, vl, K, 0.4, padding)
        low_grads = torch.autograd.grad(low, (ql, kl, vl), dout.contiguous())
        check_low_precision(out, low, ref, "out")
        for name, g, gl, gr in zip("qkv", grads, low_grads, ref_grads):
            check_low_precision(g, gl, gr, "d" + name)
    else:
        torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
        for g, gr in zip(grads, ref_grads):
            torch.testing.assert_close(g.double(), gr, atol=1e-4, rtol=1e-4)


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [1, 5, 7])
def test_local_attn_channels_last_matches_nchw(K, dtype, attn_kernels):
    """The two layouts run different staging code (v2) or copies (default); the results must agree."""
    q, k, v = layout_inputs((2, 24, 16, 13, 18), dtype, channels_last=False)
    out = arseg_ops.local_attn(q, k, v, K, scale=0.3)
    out_cl = arseg_ops.local_attn(*(t.contiguous(memory_format=CL) for t in (q, k, v)), K, scale=0.3)
    assert out.is_contiguous() and out_cl.is_contiguous(memory_format=CL)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out_cl, out, atol=tol, rtol=tol)


@cuda_test
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [3, 7, 9])
def test_local_attn_forward_backward_bitwise_reproducible(K, dtype, channels_last, attn_kernels):
    q, k, v = layout_inputs((2, 40, 24, 19, 41), dtype, channels_last)
    dout = torch.randn_like(v)
    outs = [torch.ops.arseg_ops.local_attn(q, k, v, K, 1.0, "zeros") for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    first, second = (torch.ops.arseg_ops.local_attn_backward(dout, q, k, v, K, 1.0, "zeros") for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_local_attn_mixed_layouts_and_odd_sizes(dtype, attn_kernels):
    """Only the query decides the layout; key/value in the other layout are converted, not misread."""
    q, k, v = layout_inputs((1, 12, 6, 10, 9), dtype, channels_last=True)
    k, v = k.contiguous(), v.contiguous()
    out = arseg_ops.local_attn(q, k, v, 5, scale=0.5, padding="exclude")
    assert out.is_contiguous(memory_format=CL)
    ref = reference.local_attn(q.double(), k.double(), v.double(), 5, scale=0.5, padding="exclude")
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@cuda_test
@pytest.mark.parametrize("K", [7, 13])
def test_local_attn_channels_last_opcheck_and_compile(K, attn_kernels):
    """Fake and real kernels must agree on the output strides (opcheck compares them) in channels_last."""
    q, k, v = layout_inputs((1, 8, 4, 6, 7), torch.float32, channels_last=True, grad=True)
    torch.library.opcheck(torch.ops.arseg_ops.local_attn.default, (q, k, v, K, 0.5, "zeros"))
    dout = torch.randn(1, 4, 6, 7, device="cuda").contiguous(memory_format=CL)
    detached = [t.detach() for t in (q, k, v)]
    torch.library.opcheck(torch.ops.arseg_ops.local_attn_backward.default, (dout, *detached, K, 0.5, "zeros"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: arseg_ops.local_attn(a, b, c, K, scale=0.5), fullgraph=True)
    result = compiled(q, k, v)
    assert result.is_contiguous(memory_format=CL)
    torch.testing.assert_close(result, arseg_ops.local_attn(q, k, v, K, scale=0.5))


# ---- CPU: the layout contract without a GPU ----


def test_local_attn_cpu_channels_last_stays_channels_last_and_matches_fake():
    """On CPU a channels_last query gives channels_last outputs, as on CUDA (the fake kernel must say the same)."""
    q, k, v = (t.contiguous(memory_format=CL) for t in (torch.randn(1, 6, 5, 7), torch.randn(1, 6, 5, 7),
                                                         torch.randn(1, 3, 5, 7)))
    out = arseg_ops.local_attn(q, k, v, 3)
    assert out.is_contiguous(memory_format=CL) and not out.is_contiguous()
    torch.testing.assert_close(out, reference.local_attn(q, k, v, 3))
    torch.library.opcheck(torch.ops.arseg_ops.local_attn.default, (q, k, v, 3, 1.0, "zeros"))
    dout = torch.randn(1, 3, 5, 7).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.arseg_ops.local_attn_backward.default, (dout, q, k, v, 3, 1.0, "zeros"))


def test_local_attn_fake_kernels_describe_cuda_layouts():
    """The fake kernels on (fake) CUDA tensors, no GPU needed: a channels_last query gives channels_last outputs
    and gradients; NCHW and ambiguous queries (C == 1 is contiguous in both formats) give NCHW."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    mode = FakeTensorMode()

    def fake_cuda(*shape, channels_last):
        meta = torch.empty(*shape, device="meta")
        return FakeTensor(mode, meta.contiguous(memory_format=CL) if channels_last else meta, torch.device("cuda"))

    for C, channels_last, expect_cl in [(4, True, True), (4, False, False), (1, True, False)]:
        q = fake_cuda(1, C, 5, 6, channels_last=channels_last)
        v = fake_cuda(1, 3, 5, 6, channels_last=False)
        with mode:
            out = torch.ops.arseg_ops.local_attn(q, q, v, 3, 1.0, "zeros")
            grads = torch.ops.arseg_ops.local_attn_backward(out, q, q, v, 3, 1.0, "zeros")
        for t in (out, *grads):
            assert t.device.type == "cuda"
            assert t.is_contiguous(memory_format=CL) if expect_cl else t.is_contiguous(), (C, channels_last)
            assert expect_cl == (not t.is_contiguous())
