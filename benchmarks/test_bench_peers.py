"""local_attn against the peers users pick instead of it, in the groups of test_bench_local_attn.py.

Run both files in one pytest call to get each group side by side (fused, reference and the peers on the same
inputs); summarize.py prints every case as a multiple of the fused kernel and as % of its roofline.

- flex: FlexAttention (compiled) with the 2D neighbourhood BlockMask built from the window geometry
  (arseg_ops/bench/peers.py), timed in its own (B, 1, H*W, C) layout; it computes padding="exclude" (the same
  work as the fused kernel's "zeros"). On CPU it runs forward only: FlexAttention has no CPU backward, so that
  case is reported as skipped with the reason.
- flex_layout: the NCHW <-> (B, 1, H*W, C) conversions Flex needs around it, timed on their own.
- compiled_reference: torch.compile of the unfold reference (reference.local_attn).
"""
import pytest

from arseg_ops import bench
from workloads import CREFF_SHAPES, DEVICES, HAS_CUDA, QUICK, shape_for

# A quick run (the smoke test) compiles each peer once: forward only, k=7, the PSPNet-18 workload.
PASSES = ["forward"] if QUICK else list(bench.PASSES)
WORKLOADS = ["psp18"] if QUICK else ["psp18", "bisenet18"]


def _dtypes():
    return ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(not HAS_CUDA, reason="CUDA only"))]


@pytest.mark.parametrize("impl", bench.LOCAL_ATTN_PEERS)
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("device", DEVICES)
def test_local_attn_peer(measure, device, pass_, dtype, workload, impl):
    if dtype != "float32" and device == "cpu":
        pytest.skip("half precision is benchmarked on CUDA")
    c, h, w = shape_for(CREFF_SHAPES, device)[workload]
    kernel_size = 7
    case = bench.Case("local_attn", impl, pass_, (h, w), c, kernel_size, dtype=dtype, device=device)
    measure(case, "local_attn %s k=%d %dx%dx%d %s %s" % (pass_, kernel_size, c, h, w, dtype, device))
