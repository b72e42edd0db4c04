"""The fused CReFF CUDA kernel's tiling and index arithmetic, emulated on the CPU (creff_cuda_emulation.py),
against the unfused float64 chain written with arseg_ops.reference. Runs everywhere (no GPU needed)."""
import pytest
import torch
import torch.nn.functional as F

from arseg_ops import reference
from creff_cuda_emulation import emulate_creff


def unfused_chain(key, mv, lrf, weight, bias, K, scale, sx, sy):
    C, H, W = key.shape[1:]
    hr = reference.mv_warp(key, mv, scale=(sx, sy), mode="bilinear", padding_mode="zeros")
    lr = F.interpolate(lrf, size=(H, W), mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((lr, hr, hr)))
    return lr + reference.local_attn(q, k, v, K, scale=scale, padding="zeros")


@pytest.mark.parametrize("K,CC,shape", [
    (1, 4, (2, 5, 13, 37, 7, 19, 3, 5)),   # several tiles both ways, C not a multiple of the chunk
    (3, 1, (1, 3, 9, 33, 9, 33, 2, 2)),    # double's chunk of 1; lr as large as the output (identity resize)
    (5, 4, (1, 4, 8, 32, 4, 16, 1, 1)),    # exactly one tile
    (7, 4, (1, 6, 17, 40, 5, 11, 3, 4)),   # the AR-Seg window, halo wider than the tile remainder
    (7, 1, (1, 2, 3, 5, 1, 1, 1, 1)),      # image smaller than the window, single-pixel lr
])
def test_emulated_fused_kernel_matches_unfused_chain(K, CC, shape):
    N, C, H, W, h, w, Hb, Wb = shape
    g = torch.Generator().manual_seed(K * 100 + CC)
    key = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    mv = torch.randn(N, 2, Hb, Wb, generator=g, dtype=torch.float64) * 4  # motion outside the image too
    lrf = torch.randn(N, C, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(3, C, 1, 3, 3, generator=g, dtype=torch.float64) * 0.5
    bias = torch.randn(3, C, generator=g, dtype=torch.float64) * 0.5
    sx, sy, scale = 1.5, 0.75, 0.7
    got = emulate_creff(*(t.numpy() for t in (key, mv, lrf, weight, bias)), K, scale, sx, sy, CC)
    want = unfused_chain(key, mv, lrf, weight, bias, K, scale, sx, sy)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-10, rtol=1e-10)
