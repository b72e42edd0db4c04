"""Shared by the emulated-CUDA tests (marker cuda_emu): the skip rule, inputs, float64 truth and error measures.

The emulated kernels run on inputs already rounded to the kernel's dtype; the truth is the float64 reference
(arseg_ops.reference) on exactly those values, and gradients are the reference's autograd gradients for the same
(rounded) output gradient. Errors are max |emulated - truth| / max(1, max |truth|).
"""
import pytest
import torch

from arseg_ops import reference, testing

try:
    from arseg_ops import _cuda_emu

    _cuda_emu.source_dir()
    _compiler_ok = _cuda_emu.shutil.which("g++") is not None
    _REASON = None if _compiler_ok else "the CUDA emulator needs g++"
except RuntimeError as e:  # no source checkout
    _REASON = str(e)

import platform

if platform.machine() not in ("x86_64", "AMD64"):
    _REASON = "the CUDA emulator runs on x86-64 only"

# Every emulated test: marker cuda_emu, skipped (with the reason) only where the emulator cannot exist.
cuda_emu = [pytest.mark.cuda_emu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
# The subset that also runs under ThreadSanitizer in CI (every kernel reached at least once).
tsan_subset = pytest.mark.cuda_emu_tsan

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPES_V2 = [torch.float32, torch.float16, torch.bfloat16]  # the v2 local_attn kernels have no float64
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
# Relative error bounds against the float64 truth: the rounding of the element type (and of the tensor cores'
# 16-bit P / 3xTF32 products), not mapping errors, which are O(1).
FORWARD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def rounded(shape, dtype, gen, scale=1.0, channels_last=False):
    """Random normal values of `dtype` (never zeros), in the requested layout, with requires_grad."""
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def motion(shape, dtype, gen, scale=2.5):
    """Block motion whose fractional part stays in [0.3, 0.7] after rounding to `dtype`: bilinear sampling has a
    kink at whole-pixel positions (one-sided derivatives), where kernel and reference may take different sides,
    and coarse 16-bit motion would land on them often."""
    whole = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).round()
    frac = 0.3 + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float64)
    return (whole + frac).to(dtype).requires_grad_()


def truth(t):
    """A float64 leaf with the same values as `t`, for the reference."""
    return t.detach().double().requires_grad_()


def rel_error(actual, expected):
    expected = expected.detach().double()
    actual = actual.detach().double()
    assert actual.shape == expected.shape
    if actual.numel() == 0:
        return 0.0
    nan = torch.isnan(actual) | torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), "NaN where the truth has none (or the reverse)"
    diff = (actual - expected).abs().masked_fill(nan, 0).max().item()
    return diff / max(1.0, expected.masked_fill(nan, 0).abs().max().item())


def assert_matches(actual, expected, tol, what):
    err = rel_error(actual, expected)
    assert err <= tol, "%s: relative error %.3g > %.3g" % (what, err, tol)


def check_forward_backward(emulated, ref_fn, inputs, dtype, what, grad_tol=None):
    """Runs the emulated op and the reference on the same values, then compares outputs and every gradient."""
    out = emulated(*inputs)
    refs = [truth(t) if isinstance(t, torch.Tensor) else t for t in inputs]
    ref_out = ref_fn(*refs)
    assert_matches(out, ref_out, FORWARD_TOL[dtype], what + " forward")
    gen = torch.Generator().manual_seed(99)
    # The output gradient in the output's layout, as autograd hands it to a channels_last op in a channels_last net.
    grad = torch.empty_like(out.detach()).copy_(torch.randn(out.shape, generator=gen, dtype=torch.float64))
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    ref_tensors = [r for t, r in zip(inputs, refs) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, tensors, grad)
    ref_grads = torch.autograd.grad(ref_out, ref_tensors, grad.double())
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == dtype, "%s: gradient %d has dtype %s" % (what, i, g.dtype)
        assert_matches(g, r, (grad_tol or GRAD_TOL)[dtype], "%s grad of input %d" % (what, i))
    return out, grads


__all__ = ["cuda_emu", "tsan_subset", "DTYPES", "DTYPES_V2", "DTYPE_IDS", "rounded", "motion", "truth", "rel_error",
           "assert_matches", "check_forward_backward", "reference", "testing"]
