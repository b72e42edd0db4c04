"""local_attn: the fused kernel vs the unfold reference on the same inputs, per CReFF workload and window size.

Groups pair `fused` with `reference` for one (pass, workload, k, dtype, device); `forward_backward` is one
training step of the op, `backward` the gradients alone through a graph built once. The CPU group
"local_attn forward k=7 64x180x240 float32 cpu" (and its forward_backward) is the core issue's acceptance
measurement: >= 3x forward, >= 2x forward+backward, >= 10x less peak extra memory.
"""
import pytest

from arseg_ops import bench
from workloads import CREFF_SHAPES, DEVICES, HAS_CUDA, KERNEL_SIZES, shape_for


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
