"""Peers of the fused local_attn that users compare it with: FlexAttention and torch.compile of the reference.

FlexAttention (torch.nn.attention.flex_attention) runs attention over a sequence (B, heads, L, D) with a mask.
Local k x k attention on an H x W image is attention over the L = H*W pixels (row-major) where pixel q sees key
pixel j iff |row(q) - row(j)| <= R and |col(q) - col(j)| <= R (R = k // 2). Pixels outside the image do not
exist in the sequence, so Flex computes local_attn with padding="exclude". It needs a BlockMask: for every block
of BLOCK query tokens, the key blocks it may touch. `create_block_mask` finds them by evaluating the mask over
all L x L token pairs (4.8e11 at 720x960: far too slow), so `neighbourhood_block_mask` derives them from the
window geometry instead, in O(query blocks x window rows) (plus the (Q, KV)-block transpose that
BlockMask.from_kv_blocks does itself).

Layout: Flex wants (B, 1, L, C) tensors; the benchmarks time it in that layout, and the conversion from and to
NCHW as a separate case (`to_sequence` / `from_sequence`).
"""
import functools

import torch

from .. import reference


def flex_available():
    """True when this torch has FlexAttention (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def neighbourhood_mask_mod(width, kernel_size):
    """Token-level mask of 2D k x k neighbourhood attention on a row-major image `width` pixels wide."""
    r = kernel_size // 2

    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx // width - kv_idx // width).abs() <= r) & ((q_idx % width - kv_idx % width).abs() <= r)
    return mask_mod


def neighbourhood_kv_blocks(height, width, kernel_size, block, device="cpu"):
    """(kv_num_blocks (Q,), kv_indices (Q, M)): for each block of `block` query tokens, the sorted key blocks
    that hold at least one key inside the window of at least one of its queries (exactly those, no superset).

    A query block covers a run of consecutive pixels: at most (block - 1) // width + 2 row segments. A segment
    (row r, columns a..b) sees, in each key row r - R .. r + R, exactly the columns a - R .. b + R (clipped to the
    image): one contiguous token range, hence a contiguous range of key blocks. The union over segments and key
    rows, deduplicated, is the answer. Entries of kv_indices past kv_num_blocks are padding (the value Q_kv).
    """
    r = kernel_size // 2
    length = height * width
    nq = -(-length // block)
    nkv = nq
    q = torch.arange(nq, device=device)
    first, last = q * block, torch.clamp(q * block + block, max=length) - 1
    segments = (block - 1) // width + 2
    seg_row = (first // width)[:, None] + torch.arange(segments, device=device)  # (Q, S)
    seg_ok = seg_row <= (last // width)[:, None]
    a = torch.where(seg_row == (first // width)[:, None], (first % width)[:, None], 0)
    b = torch.where(seg_row == (last // width)[:, None], (last % width)[:, None], width - 1)
    key_row = seg_row[..., None] + torch.arange(-r, r + 1, device=device)  # (Q, S, 2R+1)
    ok = seg_ok[..., None] & (key_row >= 0) & (key_row < height)
    lo = key_row * width + torch.clamp(a - r, min=0)[..., None]
    hi = key_row * width + torch.clamp(b + r, max=width - 1)[..., None]
    blo, bhi = lo // block, hi // block
    span = int((bhi - blo).max().item()) + 1 if ok.any() else 1
    cand = blo[..., None] + torch.arange(span, device=device)  # (Q, S, 2R+1, span)
    cand = torch.where(ok[..., None] & (cand <= bhi[..., None]), cand, nkv).reshape(nq, -1)
    cand, _ = cand.sort(dim=1)
    dup = torch.zeros_like(cand, dtype=torch.bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand, _ = torch.where(dup, nkv, cand).sort(dim=1)
    num = (cand < nkv).sum(dim=1)
    width_needed = int(num.max().item())
    return num.to(torch.int32), cand[:, :width_needed].to(torch.int32)


def neighbourhood_block_mask(height, width, kernel_size, block=128, device="cpu"):
    """FlexAttention BlockMask of k x k neighbourhood attention over an H x W image, built from the geometry.

    Every listed key block is a partial block (mask_mod decides per token): with a window of at most 15
    columns no 128-token block pair is entirely inside the window.
    """
    from torch.nn.attention.flex_attention import BlockMask

    num, idx = neighbourhood_kv_blocks(height, width, kernel_size, block, device)
    nq = num.shape[0]
    # from_kv_blocks transposes through a dense (Q, KV) map whose width is kv_indices' last dimension.
    full = torch.zeros(nq, nq, dtype=torch.int32, device=device)
    m = min(idx.shape[1], nq)
    full[:, :m] = torch.where(idx[:, :m] < nq, idx[:, :m], 0)
    length = height * width
    return BlockMask.from_kv_blocks(num[None, None], full[None, None], BLOCK_SIZE=block,
                                    mask_mod=neighbourhood_mask_mod(width, kernel_size), seq_lengths=(length, length))


def to_sequence(t):
    """(N, C, H, W) -> (N, 1, H*W, C) contiguous: FlexAttention's layout (one head)."""
    return t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def from_sequence(t, height, width):
    """(N, 1, H*W, C) -> (N, C, H, W) contiguous."""
    n, _, _, c = t.shape
    return t.squeeze(1).transpose(1, 2).reshape(n, c, height, width).contiguous()


@functools.lru_cache(maxsize=None)
def compiled_flex_attention():
    """flex_attention compiled once per process (its documentation requires compiling for the fused kernel)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_local_attn(block_mask, scale=1.0):
    """f(q, k, v) on (B, 1, L, C) tensors: compiled FlexAttention with the neighbourhood block mask."""
    flex = compiled_flex_attention()
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask, scale=scale)


def compiled_reference_local_attn(kernel_size, padding="zeros"):
    """torch.compile(reference.local_attn) for one window size (the unfold reference, fused by Inductor)."""
    compiled = torch.compile(reference.local_attn, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, kernel_size, padding=padding)
