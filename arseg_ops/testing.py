"""Test utilities for arseg and for code built on it: output poisoning, kernel switches, tolerances, comparisons.

    from arseg_ops import testing
    with testing.poison_outputs():                 # every op output starts as NaN: unwritten elements show up
        out = arseg_ops.local_attn(q, k, v)
    testing.assert_close(out, reference.local_attn(q, k, v))          # tolerance chosen by dtype
    testing.assert_low_precision_close(out16, torch16, truth64, "fwd")  # the 2x-PyTorch rule for fp16/bf16

The arseg test suite (python_tests/) uses exactly these; downstream projects may too.
"""
import torch

from ._cuda_emu import CudaEmulationError
from ._loader import build_info, experimental_kernels, poison_outputs

__all__ = ["poison_outputs", "experimental_kernels", "cuda_available", "cuda_emulated", "CudaEmulationError",
           "TOLERANCES", "tolerance", "assert_close", "max_abs_error", "assert_low_precision_close",
           "assert_compiled_matches_eager", "assert_compiled_dynamic_matches_eager"]

# Kernel vs reference, same dtype, O(1) random inputs. float32 sums of a few hundred products (C*k*k terms)
# differ from the reference's order of summation by a few ulps of the largest partial sum.
TOLERANCES = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def cuda_available():
    """True when a CUDA device is visible and the installed arseg_ops was built with CUDA kernels."""
    return torch.cuda.is_available() and build_info()["cuda"]


def cuda_emulated(op, *, experimental=False, order="forward", seed=1, sm_count=132, misaligned=False,
                  sanitize=None):
    """`arseg_ops.<op>` ("mv_warp", "local_attn", "creff") run by the project's CUDA kernels on a CPU emulator.

    The returned callable has the op's signature, takes CPU tensors and runs the kernels the CUDA glue would choose:
    the verified defaults, or with experimental=True the opt-in set (ARSEG_EXPERIMENTAL_KERNELS=all); outputs come
    back in the memory format the CUDA op returns. It is differentiable: backward runs the emulated backward
    kernels. `.kernels` lists the kernels each call ran ("composed" where creff composes the unfused ops).
    The emulated device: threads of a block scheduled in `order` ("forward", "reverse", "random" with `seed`),
    `sm_count` multiprocessors (132: an H100; 1 shows other launch heuristics), `misaligned=True` offsets every
    buffer by one element (the kernels' scalar paths). sanitize: None (ARSEG_CUDA_EMU_SANITIZE, default plain),
    "plain", "address" (ASan + UBSan) or "thread" (TSan). The first call builds the emulator from the checkout's
    csrc/ (cached; see arseg_ops/_cuda_emu.py). Errors the emulator or a sanitizer finds raise CudaEmulationError.
    Needs a source checkout, g++ and x86-64 Linux; no GPU, no nvcc.
    """
    from . import _cuda_emu, _emulated_ops
    return _emulated_ops.make(op, experimental, _cuda_emu.Options(order, seed, sm_count, misaligned, sanitize))


def tolerance(dtype):
    """{'atol', 'rtol'} for comparing a kernel's output of `dtype` with a reference computed at the same dtype."""
    if dtype not in TOLERANCES:
        raise ValueError("tolerance: no tolerance for %s (float32, float64, float16, bfloat16)" % (dtype,))
    return dict(TOLERANCES[dtype])


def assert_close(actual, expected, *, msg=None, **overrides):
    """torch.testing.assert_close with the tolerance of actual's dtype (overridable), exact dtype match."""
    tol = tolerance(actual.dtype)
    tol.update(overrides)
    torch.testing.assert_close(actual, expected, msg=msg, **tol)


def max_abs_error(a, b):
    """max |a - b| in float64 (0 for empty tensors)."""
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_low_precision_close(ours, theirs, truth, what):
    """The rule for float16/bfloat16 kernels: `ours` may be at most 2x as far from the float64 `truth` as
    `theirs` (the same computation done by PyTorch at that precision), plus one rounding of the largest value
    (when both are exact)."""
    eps = torch.finfo(ours.dtype).eps
    floor = eps * max(1.0, truth.abs().max().item())
    err_ours, err_theirs = max_abs_error(ours, truth), max_abs_error(theirs, truth)
    assert err_ours <= 2 * err_theirs + floor, f"{what}: error {err_ours:.3g} vs PyTorch {err_theirs:.3g}"


def _assert_same_value_and_gradients(compiled, fn, inputs):
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    out_compiled, out_eager = compiled(*a), fn(*b)
    torch.testing.assert_close(out_compiled, out_eager)
    out_compiled.backward()
    out_eager.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


def assert_compiled_matches_eager(fn, inputs):
    """torch.compile(fn, fullgraph=True) gives fn's value and the same gradients for every input (fn returns a
    scalar; each call gets fresh leaf copies of `inputs`)."""
    torch._dynamo.reset()
    _assert_same_value_and_gradients(torch.compile(fn, fullgraph=True), fn, inputs)


def assert_compiled_dynamic_matches_eager(fn, input_sets):
    """torch.compile(fn, fullgraph=True, dynamic=True) on input lists whose shapes change from one call to the next:
    the value and the gradients of every call match eager, and Dynamo traced fn once (one graph with symbolic
    shapes and symbolic float arguments served every call: nothing was compiled after the first call)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    first, *rest = input_sets
    _assert_same_value_and_gradients(compiled, fn, first)
    traced = counter.frame_count  # (Dynamo may hand the backend an empty graph besides fn's)
    for inputs in rest:
        _assert_same_value_and_gradients(compiled, fn, inputs)
    assert counter.frame_count == traced, "torch.compile(dynamic=True) recompiled for new shapes"
