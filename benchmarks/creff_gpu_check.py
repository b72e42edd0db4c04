"""GPU check of the experimental fused creff CUDA kernel (run by benchmarks/gpu_check_creff.sh on a GPU machine).

    python3 benchmarks/creff_gpu_check.py sanitize   # one small fused call per dtype (for compute-sanitizer)
    python3 benchmarks/creff_gpu_check.py time       # default vs fused, 1 x 64 x 720 x 960 (lr 360 x 480), K = 7

Timings: CUDA events, median of 20 after 5 warm-ups, default and fused side by side in one process, with the
peak memory allocated by one call (torch.cuda.max_memory_allocated above the inputs).
"""
import statistics
import sys

import torch

import arseg_ops
from arseg_ops import testing


def inputs(N, C, H, W, h, w, dtype, blocks=(45, 60)):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * s).to(dtype)

    return r(N, C, H, W), r(N, 2, *blocks, s=4.0), r(N, C, h, w), r(3, C, 1, 3, 3, s=0.3), r(3, C, s=0.3)


def call(fused, args, K=7):
    with testing.experimental_kernels(*(["creff"] if fused else [])):
        return arseg_ops.creff(*args, kernel_size=K, scale=0.125)


def sanitize():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for K in (3, 7):
            args = inputs(2, 5, 13, 37, 7, 19, dtype, blocks=(3, 5))
            out = call(True, args, K)
            torch.cuda.synchronize()
            print("sanitize", dtype, "K", K, "ok", bool(torch.isfinite(out).all()))


def time_one(fused, args, reps=20):
    for _ in range(5):
        call(fused, args)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(fused, args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def time_all():
    print(torch.cuda.get_device_name(), torch.__version__)
    for dtype in (torch.float32, torch.bfloat16):
        args = inputs(1, 64, 720, 960, 360, 480, dtype)
        d = call(False, args)
        f = call(True, args)
        err = (d.double() - f.double()).abs().max().item()
        (td, md), (tf, mf) = time_one(False, args), time_one(True, args)
        print(f"creff 1x64x720x960 {dtype}: default {td:.3f} ms ({md:.0f} MiB peak), fused {tf:.3f} ms "
              f"({mf:.0f} MiB peak), ratio {td / tf:.2f}x, max |default - fused| {err:.3g}")


if __name__ == "__main__":
    {"sanitize": sanitize, "time": time_all}[sys.argv[1]]()
