"""mv_warp: the fused block-motion warp vs the reference (dense flow expanded, four gathers) on the same inputs.

Motion comes as dense flow (block 1) or per 4x4 / 16x16-pixel block (H.264's smallest and largest partitions).
On CUDA two more baselines join each forward group: the unfused PyTorch way (dense flow + grid_sample) and a
plain device copy of the feature (the same bytes moved, no sampling: what a memory-bound warp can approach).
The CPU group "mv_warp forward block=4 64x360x480 float32 cpu" is the core issue's >= 1.5x measurement.
Backward differentiates the feature only: codec motion carries no gradient.
"""
import pytest

from arseg_ops import bench
from workloads import DEVICES, MV_WARP_SHAPES, shape_for

IMPLS = ["fused", "reference", "grid_sample", "copy"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("block", [1, 4, 16], ids=["dense", "block4", "block16"])
@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("device", DEVICES)
def test_mv_warp(measure, device, pass_, block, impl):
    if impl in ("grid_sample", "copy") and device != "cuda":
        pytest.skip("the grid_sample and copy baselines are CUDA comparisons")
    if impl == "copy" and pass_ != "forward":
        pytest.skip("a copy has no backward worth comparing")
    c, h, w = shape_for(MV_WARP_SHAPES, device)
    case = bench.Case("mv_warp", impl, pass_, (h, w), c, block=block, device=device)
    measure(case, "mv_warp %s block=%d %dx%dx%d float32 %s" % (pass_, block, c, h, w, device))
