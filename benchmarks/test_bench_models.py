"""The ops inside the networks: CReFF as a module from the keyframe feature and motion (the fused arseg_ops.creff
vs the unfused chain with the unfold reference attention; test_bench_creff.py has fused vs unfused) and one AR-Seg
PSPNet-18 step, keyframe (HR network) vs non-keyframe (LR network at 0.5x + warp + CReFF), random weights."""
import pytest

from arseg_ops import bench
from workloads import ARSEG_IMAGE_SIZES, CREFF_SHAPES, DEVICES, shape_for


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("workload", ["psp18", "bisenet18"])
@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("device", DEVICES)
def test_creff_module(measure, device, pass_, workload, impl):
    c, h, w = shape_for(CREFF_SHAPES, device)[workload]
    case = bench.Case("creff", impl, pass_, (h, w), c, 7, device=device)
    measure(case, "CReFF %s %s %dx%dx%d float32 %s" % (pass_, workload, c, h, w, device))


@pytest.mark.parametrize("step", ["keyframe", "non_keyframe"])
@pytest.mark.parametrize("device", DEVICES)
def test_arseg_psp18_step(measure, device, step):
    h, w = shape_for(ARSEG_IMAGE_SIZES, device)
    case = bench.Case("arseg_step", step, "forward", (h, w), 3, device=device, backbone="psp18")
    measure(case, "AR-Seg psp18 step %dx%d float32 %s" % (h, w, device))
