"""local_attn: the fused kernels against arseg_ops.reference, gradients, opcheck and torch.compile."""
import pytest
import torch

import arseg_ops
from arseg_ops import reference, testing

PADDINGS = ["zeros", "exclude"]
# (N, C, Cv, H, W, kernel_size): windows larger than the image, 1x1 images, C=1, Cv != C, wide and tall.
CASES = [
    (2, 4, 3, 9, 11, 3),
    (1, 8, 8, 12, 10, 7),
    (2, 3, 5, 5, 4, 7),
    (1, 2, 2, 6, 17, 15),
    (3, 1, 2, 1, 1, 5),
    (1, 5, 1, 13, 1, 3),
    (1, 6, 4, 7, 8, 1),
    (2, 16, 9, 8, 8, 11),
]


def _inputs(case, device, dtype, requires_grad=False):
    N, C, Cv, H, W, _ = case
    q = torch.randn(N, C, H, W, device=device, dtype=dtype)
    k = torch.randn(N, C, H, W, device=device, dtype=dtype)
    v = torch.randn(N, Cv, H, W, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(device, poison, case, padding, dtype):
    q, k, v = _inputs(case, device, dtype)
    kernel_size = case[-1]
    out = arseg_ops.local_attn(q, k, v, kernel_size, scale=0.35, padding=padding)
    assert out.shape == v.shape and out.dtype == dtype and out.is_contiguous()
    expected = reference.local_attn(q, k, v, kernel_size, scale=0.35, padding=padding)
    testing.assert_close(out, expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_backward_matches_reference(device, poison, case, padding):
    kernel_size = case[-1]
    grads = []
    inputs = _inputs(case, device, torch.float64)
    grad_out = torch.randn_like(inputs[2])
    for fn in (arseg_ops.local_attn, reference.local_attn):
        q, k, v = [t.clone().requires_grad_() for t in inputs]
        fn(q, k, v, kernel_size, scale=0.6, padding=padding).backward(grad_out)
        grads.append((q.grad, k.grad, v.grad))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_gradcheck(device, padding, kernel_size):
    q, k, v = _inputs((2, 3, 2, 5, 6, kernel_size), device, torch.float64, requires_grad=True)
    fn = lambda q, k, v: arseg_ops.local_attn(q, k, v, kernel_size, scale=0.7, padding=padding)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_zero_padding_semantics(device):
    """Zero padding: outside positions are in the softmax with logit 0 and value 0 (AR-Seg's CReFF)."""
    q, k, v = _inputs((1, 2, 1, 1, 1, 3), device, torch.float64)
    s = (q * k).sum().item()
    # 1x1 image, 3x3 window: the centre plus 8 outside positions with logit 0.
    expected = torch.exp(torch.tensor(s)) / (torch.exp(torch.tensor(s)) + 8) * v.item()
    torch.testing.assert_close(arseg_ops.local_attn(q, k, v, 3).cpu().flatten(), expected.reshape(1).double())
    # exclude: the centre alone gets weight 1
    torch.testing.assert_close(arseg_ops.local_attn(q, k, v, 3, padding="exclude"), v)


def test_kernel_size_one_is_identity(device):
    q, k, v = _inputs((2, 3, 4, 5, 6, 1), device, torch.float32)
    for padding in PADDINGS:
        assert torch.equal(arseg_ops.local_attn(q, k, v, 1, padding=padding), v)


def test_scale(device):
    q, k, v = _inputs((1, 4, 3, 6, 7, 5), device, torch.float64)
    torch.testing.assert_close(arseg_ops.local_attn(q, k, v, 5, scale=0.25), arseg_ops.local_attn(q * 0.25, k, v, 5))
    # scale 0: uniform weights over all k*k positions (zeros) or over the inside ones (exclude)
    for padding in PADDINGS:
        torch.testing.assert_close(arseg_ops.local_attn(q, k, v, 5, scale=0.0, padding=padding),
                                   reference.local_attn(q, k, v, 5, scale=0.0, padding=padding))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_peaked_attention_matches_reference(device, poison, dtype):
    """key ~ query with a large scale: all but the own position's weight underflow (below the smallest normal
    number), the case the CPU kernels flush to exactly 0 instead of computing slowly with denormals."""
    q, _, v = _inputs((1, 16, 6, 9, 10, 7), device, dtype)
    k = q + 0.05 * torch.randn_like(q)
    scale = 8.0 if dtype == torch.float32 else 60.0  # logit gaps of ~100 (float) / ~900 (double)
    grad_out = torch.randn_like(v)
    results = []
    for fn in (arseg_ops.local_attn, reference.local_attn):
        a = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*a, 7, scale=scale)
        results.append((out,) + torch.autograd.grad(out, a, grad_out))
    for got, expected in zip(*results):
        assert torch.isfinite(got).all()
        testing.assert_close(got, expected)


def test_denormal_flushing_stays_inside_the_kernel():
    """The CPU kernels flush denormals to zero in their worker threads only: the caller's thread (which also
    runs a share of the work) gets its floating-point mode back."""
    q = torch.randn(1, 16, 12, 12)
    arseg_ops.local_attn(q, q, torch.randn(1, 4, 12, 12), 7, scale=8.0).sum()
    tiny = torch.full((64,), 1e-40)  # float32 denormals
    assert (tiny * 2).ne(0).all()
    assert ((tiny * 2) / tiny).eq(2).all()


def test_non_contiguous_inputs(device):
    q, k, v = _inputs((2, 6, 5, 9, 10, 3), device, torch.float32)
    expected = reference.local_attn(q, k, v, 3)
    q_cl, k_cl = q.to(memory_format=torch.channels_last), k.to(memory_format=torch.channels_last)
    v_t = v.transpose(2, 3).contiguous().transpose(2, 3)
    assert not (q_cl.is_contiguous() or k_cl.is_contiguous() or v_t.is_contiguous())
    torch.testing.assert_close(arseg_ops.local_attn(q_cl, k_cl, v_t, 3), expected)
    big = torch.randn(2, 10, 9, 20, device=device)[:, 1:7, :, ::2]
    torch.testing.assert_close(arseg_ops.local_attn(big, k, v, 3), reference.local_attn(big.contiguous(), k, v, 3))


@pytest.mark.parametrize("case", [(0, 3, 2, 4, 5, 3), (2, 3, 0, 4, 5, 3), (1, 0, 2, 4, 5, 3), (1, 3, 2, 0, 5, 3)])
def test_empty_and_degenerate(device, case):
    q, k, v = _inputs(case, device, torch.float64, requires_grad=True)
    out = arseg_ops.local_attn(q, k, v, 3)
    assert out.shape == v.shape
    torch.testing.assert_close(out, reference.local_attn(q, k, v, 3))
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    q, k, v = _inputs((2, 8, 6, 9, 11, 7), device, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = arseg_ops.local_attn(q, k, v, 7)
    assert out.dtype == dtype
    expected = reference.local_attn(q.float(), k.float(), v.float(), 7).to(dtype)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_opcheck(device):
    q, k, v = _inputs((2, 3, 2, 5, 6, 3), device, torch.float64)
    ops = torch.ops.arseg_ops
    for padding in PADDINGS:
        req = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.library.opcheck(ops.local_attn.default, (*req, 3, 0.5, padding))
        torch.library.opcheck(ops.local_attn_backward.default, (torch.randn_like(v), q, k, v, 3, 0.5, padding))


def test_torch_compile_fullgraph(device):
    def step(q, k, v):
        return (arseg_ops.local_attn(q, k, v, 3, padding="zeros") + v).square().sum()

    testing.assert_compiled_matches_eager(step, _inputs((1, 4, 3, 7, 9, 3), device, torch.float32))


def test_torch_compile_dynamic_shapes(device):
    """Default arguments (kernel_size=7, scale=1.0: a symbolic float under dynamic=True) and changing shapes."""
    def step(q, k, v):
        return (arseg_ops.local_attn(q, k, v) + v).square().sum()

    # Sizes of the first call all differ (and are > 1): Dynamo gives equal sizes one symbol and specializes 0 and 1.
    cases = [(2, 4, 5, 9, 11, 7), (2, 6, 3, 10, 8, 7), (2, 3, 4, 12, 13, 7)]
    testing.assert_compiled_dynamic_matches_eager(step, [_inputs(c, device, torch.float32) for c in cases])


def test_torch_compile_dynamic_non_finite_scale(device):
    """A traced (symbolic) scale cannot be checked while tracing: the kernel's own check still names it."""
    compiled = torch.compile(lambda q, s: arseg_ops.local_attn(q, q, q, 3, scale=s), fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    q = torch.randn(2, 4, 6, 7, device=device)
    testing.assert_close(compiled(q, 0.5), reference.local_attn(q, q, q, 3, scale=0.5))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="'scale' must be finite"):
            compiled(q, bad)


def test_backward_memory_is_bounded(device):
    """The backward keeps O(N*H*W*k*k) scratch, never the unfolded C*k*k*H*W copies (checked on CPU by
    looking at the largest allocation the profiler sees)."""
    if device != "cpu":
        pytest.skip("CPU allocation check")
    N, C, H, W, K = 1, 32, 24, 24, 7
    q, k, v = _inputs((N, C, C, H, W, K), device, torch.float32, requires_grad=True)
    with torch.profiler.profile(profile_memory=True) as prof:
        arseg_ops.local_attn(q, k, v, K).sum().backward()
    unfolded_bytes = N * C * K * K * H * W * 4
    peak = max((e.cpu_memory_usage for e in prof.key_averages()), default=0)
    assert peak < unfolded_bytes / 4, (peak, unfolded_bytes)


# The CPU forward is compiled for three instruction sets and runs the best one the CPU has; ARSEG_CPU_ISA caps it
# (a cap above what the CPU has runs the best available one).
ISAS = ["baseline", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_every_instruction_set_over_strips_and_segments(monkeypatch, poison, isa, padding):
    """float64 with enough channels and columns for two column strips and two row segments (the tasks of the CPU
    forward: their halos of K/2 columns and rows come from the neighbours' data)."""
    monkeypatch.setenv("ARSEG_CPU_ISA", isa)
    q, k, v = _inputs((1, 48, 8, 84, 300, 7), "cpu", torch.float64)
    out = arseg_ops.local_attn(q, k, v, 7, scale=0.3, padding=padding)
    testing.assert_close(out, reference.local_attn(q, k, v, 7, scale=0.3, padding=padding))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_every_instruction_set_float32_layouts(monkeypatch, poison, isa, padding):
    """float32 (the vector exp), channels_last (read and written without copies), views, bfloat16, and a kernel
    size without its own specialisation (9)."""
    monkeypatch.setenv("ARSEG_CPU_ISA", isa)
    q, k, v = _inputs((2, 16, 5, 21, 37, 9), "cpu", torch.float32)
    expected = reference.local_attn(q, k, v, 9, scale=0.5, padding=padding)
    cl = [t.to(memory_format=torch.channels_last) for t in (q, k, v)]
    out = arseg_ops.local_attn(*cl, 9, scale=0.5, padding=padding)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    testing.assert_close(out, expected)
    views = [torch.nn.functional.pad(t, (1, 2)).narrow(3, 1, t.shape[3]) for t in (q, k, v)]
    testing.assert_close(arseg_ops.local_attn(*views, 9, scale=0.5, padding=padding), expected)
    low = [t.bfloat16() for t in (q, k, v)]
    torch.testing.assert_close(arseg_ops.local_attn(*low, 9, scale=0.5, padding=padding),
                               reference.local_attn(*[t.float() for t in low], 9, scale=0.5,
                                                    padding=padding).bfloat16(), atol=2e-2, rtol=2e-2)


def test_channels_last_gradients_and_fake_kernel(device):
    """channels_last in, channels_last out, forward and backward (CPU and CUDA), and the fake kernels (what
    torch.compile plans with) describe the same layouts."""
    q, k, v = _inputs((2, 6, 4, 9, 10, 3), device, torch.float64)
    cl = [t.to(memory_format=torch.channels_last).requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(v).to(memory_format=torch.channels_last)
    out = arseg_ops.local_attn(*cl, 3, padding="exclude")
    out.backward(grad)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert all(t.grad.is_contiguous(memory_format=torch.channels_last) for t in cl)
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    reference.local_attn(*ref, 3, padding="exclude").backward(grad)
    for got, expected in zip(cl, ref):
        torch.testing.assert_close(got.grad, expected.grad)
    ops = torch.ops.arseg_ops
    checks = ("test_faketensor", "test_aot_dispatch_dynamic")  # fake vs real: sizes and strides
    torch.library.opcheck(ops.local_attn.default, (*[t.detach().requires_grad_() for t in cl], 3, 0.5, "zeros"),
                          test_utils=checks)
    torch.library.opcheck(ops.local_attn_backward.default, (grad, *[t.detach() for t in cl], 3, 0.5, "zeros"),
                          test_utils=checks)
