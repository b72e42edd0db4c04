"""Codec motion vectors -> dense block-grid motion, and its accumulation back to the keyframe.

Conventions (those of arseg_ops.mv_warp): a field `mv` of shape (2, Hb, Wb) holds (dx, dy) in pixels, and
pixel p of the current frame came from p + mv in the reference frame ("pull"). Cell (i, j) of the grid with
block size bs covers pixels [j*bs, (j+1)*bs) x [i*bs, (i+1)*bs); its centre is at pixel
(j*bs + (bs-1)/2, i*bs + (bs-1)/2) with pixel centres at integer coordinates.

Everything here is vectorized over vectors and cells; there is no Python loop over vectors.
"""
import numpy as np

import torch
import torch.nn.functional as F

# H.264 partitions start on multiples of 4 pixels (FFmpeg exports them at 8x8 granularity at the finest), so a
# grid of 4x4-pixel units represents every exported block exactly.
_UNIT = 4


def _size_groups(w, h):
    """(block width, block height, indices) for each block size present (H.264: 16x16, 16x8, 8x16, 8x8)."""
    size_key = w * 256 + h  # w, h are uint8 in AVMotionVector
    for key in np.flatnonzero(np.bincount(size_key)):
        bw, bh = divmod(int(key), 256)
        yield bw, bh, np.flatnonzero(size_key == key)


def _paint_aligned(w, h, x0, y0, dx, dy, units_h, units_w):
    """Fast path: each block is aligned to its own size and no two overlap (H.264 partitions always are).

    The unit grid, padded to whole 16x16 macroblocks, is viewed as (rows of blocks, nh, cols of blocks, nw)
    for each block size so that one fancy-index assignment per size paints all its blocks. Returns
    (field (2, units_h, units_w), covered) or None when the blocks do not fit this pattern.
    """
    rows, cols = -(-units_h // 4) * 4, -(-units_w // 4) * 4
    field = np.zeros((2, rows, cols), np.float32)
    covered = np.zeros((rows, cols), bool)
    painted = 0
    for bw, bh, sel in _size_groups(w, h):
        nw, nh = bw // _UNIT, bh // _UNIT
        bx, by = x0[sel], y0[sel]
        if (nw not in (1, 2, 4) or nh not in (1, 2, 4) or (bx % bw).any() or (by % bh).any()
                or bx.min() < 0 or by.min() < 0 or bx.max() + bw > cols * _UNIT or by.max() + bh > rows * _UNIT):
            return None
        bx, by = bx // bw, by // bh
        values = np.stack([dx[sel], dy[sel]], axis=1)[:, :, None, None]
        field.reshape(2, rows // nh, nh, cols // nw, nw)[:, by, :, bx, :] = values
        covered.reshape(rows // nh, nh, cols // nw, nw)[by, :, bx, :] = True
        painted += len(sel) * nw * nh
    if painted != np.count_nonzero(covered):  # overlapping blocks: let the general path average them
        return None
    return field[:, :units_h, :units_w], covered[:units_h, :units_w]


def _average_blocks(w, h, x0, y0, dx, dy, units_h, units_w):
    """General path: any block positions; a unit covered by several blocks takes their mean motion."""
    n = units_h * units_w
    idx_parts, owner_parts = [], []
    for bw, bh, sel in _size_groups(w, h):
        nw, nh = max(bw // _UNIT, 1), max(bh // _UNIT, 1)
        uy = (y0[sel] // _UNIT)[:, None] + np.repeat(np.arange(nh), nw)[None, :]
        ux = (x0[sel] // _UNIT)[:, None] + np.tile(np.arange(nw), nh)[None, :]
        inside = (uy >= 0) & (uy < units_h) & (ux >= 0) & (ux < units_w)
        idx_parts.append((uy * units_w + ux)[inside])
        owner_parts.append(np.broadcast_to(sel[:, None], uy.shape)[inside])
    idx, owner = np.concatenate(idx_parts), np.concatenate(owner_parts)
    count = np.bincount(idx, minlength=n)
    inv_count = 1.0 / np.maximum(count, 1)  # whole-array arithmetic: masked 2-D indexing is slow at 960x720
    field = np.stack([np.bincount(idx, weights=dx[owner], minlength=n) * inv_count,
                      np.bincount(idx, weights=dy[owner], minlength=n) * inv_count]).astype(np.float32)
    return field.reshape(2, units_h, units_w), (count > 0).reshape(units_h, units_w)


def rasterize(vectors, height, width, block_size):
    """Dense motion (2, ceil(H/bs), ceil(W/bs)) float32 and a bool mask of cells that got a vector.

    `vectors` is the structured array of FFmpeg AVMotionVector records (PyAV MotionVectors.to_ndarray()).
    Only vectors into the past (source < 0) are used: for P-frames that is every vector; for bi-predicted
    B-frame blocks the forward one. dst_x/dst_y is the block centre, so the block's top-left pixel is
    dst - size/2. Where several vectors cover a unit (never in P-frames), their mean is taken. Each cell takes
    the motion of the 4x4 unit containing its centre pixel: exact whenever block_size divides 8 (cells then lie
    inside one codec block); for other sizes a cell straddling two codec blocks takes the one at its centre.
    """
    bs = block_size
    cells_h, cells_w = -(-height // bs), -(-width // bs)
    units_h, units_w = -(-height // _UNIT), -(-width // _UNIT)
    field = np.zeros((2, units_h, units_w), np.float32)
    covered = np.zeros((units_h, units_w), bool)
    if vectors is not None and len(vectors):
        backward = vectors["source"] < 0
        past = vectors if backward.all() else vectors[backward]
        if len(past):
            w = past["w"].astype(np.int64)
            h = past["h"].astype(np.int64)
            x0 = past["dst_x"].astype(np.int64) - w // 2
            y0 = past["dst_y"].astype(np.int64) - h // 2
            scale = np.maximum(past["motion_scale"], 1).astype(np.float64)
            blocks = (w, h, x0, y0, past["motion_x"] / scale, past["motion_y"] / scale, units_h, units_w)
            painted = _paint_aligned(*blocks)
            field, covered = painted if painted is not None else _average_blocks(*blocks)
    if bs != _UNIT:
        # Unit containing each cell's centre pixel floor(i*bs + (bs-1)/2), clipped for the last partial cell.
        uy = np.minimum((np.arange(cells_h) * bs + (bs - 1) // 2) // _UNIT, units_h - 1)
        ux = np.minimum((np.arange(cells_w) * bs + (bs - 1) // 2) // _UNIT, units_w - 1)
        field = field[:, uy[:, None], ux[None, :]]
        covered = covered[uy[:, None], ux[None, :]]
    return np.ascontiguousarray(field), covered


def fill_holes(field, known):
    """Fill cells where `known` is False by repeated means of their already filled 4-neighbours.

    Each pass fills every unknown cell that has at least one known neighbour with the mean of those, so a hole
    is filled from its rim inwards. Unknown cells must hold 0 on entry (as rasterize leaves them), so a field
    with no known cell at all stays zero. Works in place on `field` (2, H, W) and returns it.
    """
    if known.all() or not known.any():
        return field
    known = known.copy()
    while not known.all():
        k = known.astype(np.float32)
        pad_k = np.pad(k, 1)
        pad_f = np.pad(field * k, ((0, 0), (1, 1), (1, 1)))
        counts = pad_k[:-2, 1:-1] + pad_k[2:, 1:-1] + pad_k[1:-1, :-2] + pad_k[1:-1, 2:]
        sums = pad_f[:, :-2, 1:-1] + pad_f[:, 2:, 1:-1] + pad_f[:, 1:-1, :-2] + pad_f[:, 1:-1, 2:]
        new = ~known & (counts > 0)
        field[:] = np.where(new, sums / np.maximum(counts, 1), field)
        known |= new
    return field


def accumulate(prev_to_key, mv, block_size):
    """mv_to_key_t(p) = mv_t(p) + mv_to_key_{t-1}(p + mv_t(p)) on the cell grid, in floating point.

    p is a cell centre; p + mv in pixels is (j + dx/bs, i + dy/bs) in cell coordinates because cell centres
    sit at i*bs + (bs-1)/2. The previous field is sampled bilinearly with border clamp. Tensors (2, Hb, Wb).
    """
    # grid_sample with align_corners=True puts cell centres at normalized -1..1 and padding "border" clamps
    # the coordinates to the grid, which is this sampling exactly (the op arseg_ops.mv_warp(prev[None],
    # mv[None], scale=1/bs, padding_mode="border") computes the same, measured ~1.5x slower on one core).
    _, h, w = mv.shape
    gx = (torch.arange(w, dtype=mv.dtype) + mv[0] / block_size) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (torch.arange(h, dtype=mv.dtype)[:, None] + mv[1] / block_size) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[None]
    sampled = F.grid_sample(prev_to_key[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return mv + sampled[0]
