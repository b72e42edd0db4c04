"""local_attn: the fused kernel vs the unfold reference on the same inputs, per CReFF workload and window size.

Groups pair `fused` with `reference` for one (pass, workload, k, dtype, device); `forward_backward` is one
training step of the op, `backward` the gradients alone through a graph built once. The CPU group
"local_attn forward k=7 64x180x240 float32 cpu" (and its forward_backward) is the core issue's acceptance
measurement: >= 3x forward, >= 2x forward+backward, >= 10x less peak extra memory.
"""
import pytest

from arseg_ops import bench
from workloads import CREFF_SHAPES, DEVICES, HAS_CUDA, KERNEL_SIZES, QUICK, shape_for


def _dtypes():
    # bfloat16 is a CUDA feature of the kernels; the reference computes it in float32 like the kernel does.
    return ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(not HAS_CUDA, reason="CUDA only"))]


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES, ids=lambda k: "k%d" % k)
@pytest.mark.parametrize("workload", ["psp18", "bisenet18"])
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("pass_", bench.ALL_PASSES)
@pytest.mark.parametrize("device", DEVICES)
def test_local_attn(measure, device, pass_, dtype, workload, kernel_size, impl):
    if dtype != "float32" and device == "cpu":
        pytest.skip("half precision is benchmarked on CUDA")
    c, h, w = shape_for(CREFF_SHAPES, device)[workload]
    case = bench.Case("local_attn", impl, pass_, (h, w), c, kernel_size, dtype=dtype, device=device)
    measure(case, "local_attn %s k=%d %dx%dx%d %s %s" % (pass_, kernel_size, c, h, w, dtype, device))


# Peaked attention: key = query + small noise, so each pixel's own position dominates its window. With a large
# `scale` the other logits trail the maximum by hundreds and their exponentials underflow; on x86 denormal
# arithmetic is ~100x slower, which once made the CPU kernels 5-16x slower here than on flat attention.
# `flat` (independent key) is the baseline in the same group: the two should take about the same time.
PEAKED_SCALES = [1.3] if QUICK else [0.05, 1.3]


@pytest.mark.parametrize("pass_", bench.PASSES)
@pytest.mark.parametrize("attention", ["flat", "peaked"])
@pytest.mark.parametrize("scale", PEAKED_SCALES, ids=lambda s: "scale%g" % s)
@pytest.mark.parametrize("device", DEVICES)
def test_local_attn_peaked(benchmark, device, scale, attention, pass_):
    import torch

    import arseg_ops

    c, h, w = shape_for(CREFF_SHAPES, device)["psp18"]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, c, h, w, generator=gen)
    noise = torch.randn(1, c, h, w, generator=gen)
    k = q + 0.1 * noise if attention == "peaked" else noise
    v = torch.randn(1, c, h, w, generator=gen)
    q, k, v = (t.to(device).requires_grad_(pass_ != "forward") for t in (q, k, v))
    grad_out = torch.randn(1, c, h, w, generator=gen).to(device)

    def run():
        if pass_ == "forward":
            with torch.no_grad():
                arseg_ops.local_attn(q, k, v, 7, scale=scale)
        else:
            out = arseg_ops.local_attn(q, k, v, 7, scale=scale)
            torch.autograd.grad(out, (q, k, v), grad_out)
        bench.synchronize(device)

    run()  # untimed first call
    benchmark.group = "local_attn %s k=7 %dx%dx%d scale=%g %s (peaked vs flat)" % (pass_, c, h, w, scale, device)
    benchmark.extra_info.update(op="local_attn", impl=attention, scale=scale, pass_=pass_, device=device)
    benchmark.pedantic(run, rounds=1 if QUICK else 5, iterations=1, warmup_rounds=0)
