"""GPU check of the experimental (v2) local_attn kernels against the default ones, for gpu_check_v2.sh.

  python benchmarks/local_attn_v2_check.py time [deadline_s]   side-by-side timings, peak memory, max |diff|
  python benchmarks/local_attn_v2_check.py sanitize [small]    small calls for compute-sanitizer (v2 only)
  python benchmarks/local_attn_v2_check.py ncu                 one v2 forward at the headline shape for ncu

Timings are triton do_bench medians (ms, L2 flushed) of the default and the experimental kernels, measured in
the same process one right after the other; "peak" is the extra memory of one call (MB). Nothing here asserts
a speed: the numbers are for the person reading the log.
"""
import sys
import time

import torch

import arseg_ops
from arseg_ops._loader import experimental_kernels

DEV = "cuda"
CL = torch.channels_last
T0 = time.time()

# (label, N, C, H, W, K): the headline CReFF shape, BiSeNet's CReFF shape, small and large windows.
CASES = [
    ("C64 720x960 K7", 1, 64, 720, 960, 7),
    ("C256 90x120 K7", 1, 256, 90, 120, 7),
    ("C64 720x960 K3", 1, 64, 720, 960, 3),
    ("C64 720x960 K11", 1, 64, 720, 960, 11),
]


def variant(name):
    return experimental_kernels("local_attn") if name == "v2" else experimental_kernels()


def inputs(N, C, H, W, dtype, channels_last, grad):
    ts = [torch.randn(N, C, H, W, device=DEV, dtype=dtype) for _ in range(3)]
    if channels_last:
        ts = [t.contiguous(memory_format=CL) for t in ts]
    return [t.requires_grad_(grad) for t in ts]


def bench_ms(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=60, return_mode="median")


def peak_mb(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(label, N, C, H, W, K, dtype, channels_last):
    q, k, v = inputs(N, C, H, W, dtype, channels_last, grad=True)
    dout = torch.randn_like(v)

    def fwd():
        with torch.no_grad():
            return arseg_ops.local_attn(q, k, v, K)

    def fwd_bwd():
        out = arseg_ops.local_attn(q, k, v, K)
        return torch.autograd.grad(out, (q, k, v), dout)

    results = {}
    for name in ("default", "v2"):
        with variant(name):
            out = fwd()
            grads = fwd_bwd()
            results[name] = dict(out=out, grads=grads, fwd=bench_ms(fwd), fwd_bwd=bench_ms(fwd_bwd),
                                 peak_fwd=peak_mb(fwd), peak_fwd_bwd=peak_mb(fwd_bwd))
    d, e = results["default"], results["v2"]
    diff = max([(d["out"].float() - e["out"].float()).abs().max().item()] +
               [(a.float() - b.float()).abs().max().item() for a, b in zip(d["grads"], e["grads"])])
    layout = "NHWC" if channels_last else "NCHW"
    print("%-17s %-5s %-9s | fwd %7.3f -> %7.3f ms (x%5.2f) | fwd+bwd %7.3f -> %7.3f ms (x%5.2f) | "
          "peak fwd+bwd %7.1f -> %7.1f MB | max|diff| %.2e | v2 out layout ok: %s  [+%.0fs]"
          % (label, layout, str(dtype).replace("torch.", ""), d["fwd"], e["fwd"], d["fwd"] / e["fwd"],
             d["fwd_bwd"], e["fwd_bwd"], d["fwd_bwd"] / e["fwd_bwd"], d["peak_fwd_bwd"], e["peak_fwd_bwd"], diff,
             e["out"].is_contiguous(memory_format=CL) == channels_last or C == 1, time.time() - T0), flush=True)


def time_all(deadline):
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    for label, N, C, H, W, K in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                if time.time() - T0 > deadline:
                    print("SKIP (deadline)", label, dtype, channels_last)
                    continue
                try:
                    run_case(label, N, C, H, W, K, dtype, channels_last)
                except Exception as exc:  # a failing case is a result too; keep going
                    print("FAIL", label, dtype, "NHWC" if channels_last else "NCHW", type(exc).__name__,
                          str(exc)[:300], flush=True)
                torch.cuda.empty_cache()


def sanitize(small):
    """Every v2 kernel (K = 1..11, three dtypes, both layouts and paddings, vector and scalar staging)."""
    torch.manual_seed(0)
    dtypes = (torch.float32,) if small else (torch.float32, torch.float16, torch.bfloat16)
    shapes = ((2, 16, 8, 11, 19),) if small else ((1, 5, 3, 9, 13), (2, 16, 8, 11, 19), (1, 40, 33, 20, 35))
    with experimental_kernels("local_attn"):
        for dtype in dtypes:
            for N, C, Cv, H, W in shapes:
                for K in (7,) if small else (1, 3, 5, 7, 9, 11):
                    for channels_last in (False, True):
                        for pad in ("zeros",) if small else ("zeros", "exclude"):
                            q, k = inputs(N, C, H, W, dtype, channels_last, grad=True)[:2]
                            v = inputs(N, Cv, H, W, dtype, channels_last, grad=True)[0]
                            out = arseg_ops.local_attn(q, k, v, K, padding=pad)
                            out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    print("local_attn_v2_check sanitize: all calls done")


def ncu_target():
    """One v2 forward and backward at the headline shape (profile with --kernel-name regex:local_attn_v2)."""
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = inputs(1, 64, 720, 960, dtype, False, grad=True)
        with experimental_kernels("local_attn"):
            out = arseg_ops.local_attn(q, k, v, 7)
            out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    if mode == "time":
        time_all(float(sys.argv[2]) if len(sys.argv) > 2 else 1e9)
    elif mode == "sanitize":
        sanitize("small" in sys.argv[2:])
    elif mode == "ncu":
        ncu_target()
    else:
        raise SystemExit("usage: local_attn_v2_check.py time [deadline_s] | sanitize [small] | ncu")
