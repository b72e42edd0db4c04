"""Codec motion vectors -> dense block-grid motion, and its accumulation back to the keyframe.

Conventions (those of arseg_ops.mv_warp): a field `mv` of shape (2, Hb, Wb) holds (dx, dy) in pixels, and
pixel p of the current frame came from p + mv in the reference frame ("pull"). Cell (i, j) of the grid with
block size bs covers pixels [j*bs, (j+1)*bs) x [i*bs, (i+1)*bs); its centre is at pixel
(j*bs + (bs-1)/2, i*bs + (bs-1)/2) with pixel centres at integer coordinates.

Everything here is vectorized over vectors and cells; there is no Python loop over vectors.
"""
import numpy as np

from ._ops import mv_warp

# H.264 partitions start on multiples of 4 pixels (FFmpeg exports them at 8x8 granularity at the finest), so a
# grid of 4x4-pixel units represents every exported block exactly.
_UNIT = 4


def _block_coverage(w, h, x0, y0, units_w, units_h):
    """Flat unit-grid indices covered by each block, with the index of the block they belong to.

    Blocks come in a handful of sizes (16x16, 16x8, 8x16, 8x8 in H.264), so blocks are grouped by size and
    each group is expanded with one broadcast.
    """
    idx_parts, owner_parts = [], []
    size_key = w * 256 + h  # w, h are uint8 in AVMotionVector
    for key in np.flatnonzero(np.bincount(size_key)):
        bw, bh = divmod(int(key), 256)
        sel = np.flatnonzero(size_key == key)
        nw, nh = max(bw // _UNIT, 1), max(bh // _UNIT, 1)
        uy = (y0[sel] // _UNIT)[:, None] + np.repeat(np.arange(nh), nw)[None, :]
        ux = (x0[sel] // _UNIT)[:, None] + np.tile(np.arange(nw), nh)[None, :]
        inside = (uy >= 0) & (uy < units_h) & (ux >= 0) & (ux < units_w)
        idx_parts.append((uy * units_w + ux)[inside])
        owner_parts.append(np.broadcast_to(sel[:, None], uy.shape)[inside])
    return np.concatenate(idx_parts), np.concatenate(owner_parts)


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
    n = units_h * units_w
    field = np.zeros((2, n), np.float32)
    count = np.zeros(n, np.int64)
    if vectors is not None and len(vectors):
        backward = vectors["source"] < 0
        past = vectors if backward.all() else vectors[backward]
        if len(past):
            w = past["w"].astype(np.int64)
            h = past["h"].astype(np.int64)
            x0 = past["dst_x"].astype(np.int64) - w // 2
            y0 = past["dst_y"].astype(np.int64) - h // 2
            scale = np.maximum(past["motion_scale"], 1).astype(np.float64)
            idx, owner = _block_coverage(w, h, x0, y0, units_w, units_h)
            count = np.bincount(idx, minlength=n)
            # Whole-array arithmetic: masked 2-D indexing costs milliseconds at 960x720.
            inv_count = 1.0 / np.maximum(count, 1)
            field[0] = np.bincount(idx, weights=(past["motion_x"] / scale)[owner], minlength=n) * inv_count
            field[1] = np.bincount(idx, weights=(past["motion_y"] / scale)[owner], minlength=n) * inv_count
    field = field.reshape(2, units_h, units_w)
    covered = (count > 0).reshape(units_h, units_w)
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
    # arseg_ops.mv_warp on the cell grid is exactly this: with Hb = H its block lookup is the identity, it samples
    # at (j + sx*dx, i + sy*dy) with cell centres at integers, and "border" clamps the coordinates to the grid.
    return mv + mv_warp(prev_to_key[None], mv[None], scale=1.0 / block_size, padding_mode="border")[0]
