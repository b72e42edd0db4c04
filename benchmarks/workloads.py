"""Devices and workload shapes of the benchmark suite (imported by the test files and conftest.py)."""
import os

import pytest
import torch

import arseg_ops

QUICK = os.environ.get("ARSEG_BENCH_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
HAS_CUDA = torch.cuda.is_available() and arseg_ops.build_info()["cuda"]

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not HAS_CUDA, reason="needs a CUDA device and an arseg_ops build with CUDA kernels")]),
]

# local_attn windows: AR-Seg's 7 and its neighbours (a quick run only needs one to exercise the code paths).
KERNEL_SIZES = [7] if QUICK else [3, 7, 11]

# CReFF inputs (C, H, W): PSPNet-18 fuses 64 channels at the CamVid image size 720x960, BiSeNet-18 256 channels
# at 1/8 of it. On CPU both keep C and take 1/4 of the height and width (1/16 of the pixels).
CREFF_SHAPES = {
    "cuda": {"psp18": (64, 720, 960), "bisenet18": (256, 90, 120)},
    "cpu": {"psp18": (64, 180, 240), "bisenet18": (256, 45, 60)},
    "quick": {"psp18": (8, 12, 16), "bisenet18": (16, 6, 8)},
}
# mv_warp of the HR feature: on CPU 64x360x480, the size the core issue's >= 1.5x target is stated for.
MV_WARP_SHAPES = {"cuda": (64, 720, 960), "cpu": (64, 360, 480), "quick": (8, 24, 32)}
# AR-Seg steps take the image: the full CamVid frame on CUDA, a quarter of each side on CPU.
ARSEG_IMAGE_SIZES = {"cuda": (720, 960), "cpu": (180, 240), "quick": (32, 32)}


def shape_for(table, device):
    return table["quick" if QUICK else device]
