"""The FlexAttention peer of the benchmarks: its analytic neighbourhood block mask and its results.

The block mask is built from the window geometry (arseg_ops.bench.peers), not by create_block_mask: here it is
compared with the brute-force neighbourhood mask on small grids, at the block level (exactly the key blocks
some query of the block can see) and at the token level (block mask AND mask_mod == the neighbourhood), and
FlexAttention with it is compared with reference.local_attn(padding="exclude"). Skipped where torch has no
FlexAttention.
"""
import pytest
import torch

from arseg_ops import bench, reference
from arseg_ops.bench import peers
from arseg_ops.cli import bench_peers

pytestmark = pytest.mark.skipif(not peers.flex_available(), reason="torch.nn.attention.flex_attention unavailable")

GRIDS = [  # H, W, kernel_size, block: blocks within a row, blocks spanning rows, windows wider than the image
    (7, 40, 5, 16),
    (9, 11, 7, 16),
    (12, 10, 3, 128),
    (5, 3, 7, 8),
    (1, 33, 15, 4),
]


def brute_force_mask(height, width, kernel_size):
    r = kernel_size // 2
    rows = torch.arange(height * width) // width
    cols = torch.arange(height * width) % width
    return ((rows[:, None] - rows[None]).abs() <= r) & ((cols[:, None] - cols[None]).abs() <= r)


def block_level(mask, block):
    length = mask.shape[0]
    nb = -(-length // block)
    padded = torch.zeros(nb * block, nb * block, dtype=torch.bool)
    padded[:length, :length] = mask
    return padded.view(nb, block, nb, block).any(dim=3).any(dim=1)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_analytic_block_mask_equals_brute_force(grid):
    height, width, kernel_size, block = grid
    truth = brute_force_mask(height, width, kernel_size)
    bm = peers.neighbourhood_block_mask(height, width, kernel_size, block)
    blocks = bm.to_dense()[0, 0].bool()
    expected_blocks = block_level(truth, block)
    assert torch.equal(blocks, expected_blocks)
    # Token level: what Flex computes = listed blocks AND mask_mod.
    length = height * width
    q, kv = torch.arange(length)[:, None], torch.arange(length)[None]
    listed = blocks[q // block, kv // block]
    tokens = listed & peers.neighbourhood_mask_mod(width, kernel_size)(0, 0, q, kv)
    assert torch.equal(tokens, truth)


def test_kv_blocks_are_sorted_and_unique():
    num, idx = peers.neighbourhood_kv_blocks(30, 50, 7, 16)
    for row, n in zip(idx.tolist(), num.tolist()):
        assert row[:n] == sorted(set(row[:n]))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("grid", [(6, 9, 3, 16), (5, 7, 5, 8)], ids=str)
def test_flex_attention_with_the_mask_is_local_attn_exclude(grid):
    """Eager FlexAttention (its unfused reference path, fine on CPU at this size) in its own layout."""
    from torch.nn.attention.flex_attention import flex_attention

    height, width, kernel_size, block = grid
    q, k, v = (torch.randn(2, 4, height, width, dtype=torch.float64) for _ in range(3))
    bm = peers.neighbourhood_block_mask(height, width, kernel_size, block)
    out = flex_attention(*(peers.to_sequence(t) for t in (q, k, v)), block_mask=bm, scale=0.5)
    got = peers.from_sequence(out, height, width)
    expected = reference.local_attn(q, k, v, kernel_size, scale=0.5, padding="exclude")
    torch.testing.assert_close(got, expected)


def test_peers_table_reports_skipped_cases_and_roofline():
    """`arseg bench --peers`: a peer that cannot run (Flex backward on CPU) is a row saying why, not a crash."""
    case = bench.Case("local_attn", "fused", "forward_backward", (8, 8), 4, 3, device="cpu")
    timed = dict(median_s=2e-3, iqr_s=1e-4, peak_extra_bytes=1e6)
    results = {"flex": {"skipped": "FlexAttention has no CPU backward"}, "fused": timed,
               "compiled_reference": dict(timed, median_s=6e-3)}
    headers, rows = bench_peers.table([(case, results)])
    assert [r[1] for r in rows] == [bench_peers.NAMES[i] for i in ("fused", "flex", "compiled_reference")]
    assert "skipped: FlexAttention has no CPU backward" in rows[1][2]
    assert rows[2][3] == "3.00x" and rows[0][4].endswith("%")
