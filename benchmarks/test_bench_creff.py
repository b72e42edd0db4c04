"""Fused CReFF (arseg_ops.creff) against the unfused chain, and what it buys an AR-Seg step.

- creff: from the keyframe feature, the block motion and the LR feature (half the height and width) to the
  fused feature; "fused" is one arseg_ops.creff call, "unfused" the op-by-op chain (mv_warp, resize, three
  depthwise convs, local_attn, add). PSPNet-18's 64 channels at the CamVid size (CUDA) and at the issue's two
  CPU sizes (64x180x240 and the full 64x720x960), BiSeNet-18's 256 channels at 1/8.
- arseg_step: keyframe (HR network) vs non-keyframe (LR network at 0.5x + CReFF), fused and unfused, for both
  backbones. GOP-12 average / keyframe = (1 + 11 * non_keyframe / keyframe) / 12: summarize the JSON with
  benchmarks/summarize.py and read the ratios off one group (cases of a group run side by side).
"""
import pytest

from arseg_ops import bench
from workloads import ARSEG_IMAGE_SIZES, CREFF_SHAPES, DEVICES, QUICK, shape_for

# The CPU targets are stated at 64x180x240 and 64x720x960 (PSPNet-18 at full CamVid resolution).
CREFF_WORKLOADS = ["psp18", "bisenet18", "psp18_full"]
FULL_SHAPE = (8, 24, 32) if QUICK else (64, 720, 960)


def _creff_shape(device, workload):
    if workload == "psp18_full":
        return FULL_SHAPE
    return shape_for(CREFF_SHAPES, device)[workload]


@pytest.mark.parametrize("impl", ["fused", "unfused"])
@pytest.mark.parametrize("workload", CREFF_WORKLOADS)
@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("device", DEVICES)
def test_creff(measure, device, pass_, workload, impl):
    if workload == "psp18_full" and device != "cpu":
        pytest.skip("the full-size case is a CPU case (the CUDA psp18 case is full size already)")
    c, h, w = _creff_shape(device, workload)
    case = bench.Case("creff", impl, pass_, (h, w), c, 7, device=device)
    measure(case, "creff %s %s %dx%dx%d float32 %s" % (pass_, workload, c, h, w, device))


@pytest.mark.parametrize("step", ["keyframe", "non_keyframe", "non_keyframe_unfused"])
@pytest.mark.parametrize("backbone", ["psp18", "bisenet18"])
@pytest.mark.parametrize("device", DEVICES)
def test_arseg_step(measure, device, backbone, step):
    h, w = shape_for(ARSEG_IMAGE_SIZES, device)
    case = bench.Case("arseg_step", step, "forward", (h, w), 3, device=device, backbone=backbone)
    measure(case, "arseg_step %s %dx%d float32 %s" % (backbone, h, w, device))
