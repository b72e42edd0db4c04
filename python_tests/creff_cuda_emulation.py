"""Thread-level emulation of the fused CReFF CUDA kernel (csrc/cuda/creff_forward.cu), in numpy float64.

No GPU runs where the kernel is developed, so this module checks its index arithmetic on the CPU: the 8 x 32
tile loop, the three shared-memory regions (hr: tile + attention halo + conv halo; kv: tile + attention halo;
lr: tile + conv halo) and their flat offsets, the per-position taps, the chunked channel loop with channels past
C staged as 0, the flat weight layout, each thread's kv/lr offsets and the store. Every shared-memory read is
checked to stay inside its own channel's plane and every global read inside its tensor; every output element
must be written exactly once. Arithmetic is float64 (no rounding to the element type): it checks the mapping,
not the precision. Keep it in step with creff_forward.cu (test_creff_cuda_emulation.py runs it).
"""
import numpy as np

TILE_H, TILE_W = 8, 32  # attn::kTileH, kTileW
THREADS = TILE_H * TILE_W
WSTRIDE = 10  # CreffTile::WSTRIDE


class Geometry:
    """CreffTile<acc_t, K>: CC = 4 for float accumulation, 1 for double."""

    def __init__(self, K, CC):
        self.K, self.R, self.KK, self.CC = K, K // 2, K * K, CC
        self.KVH, self.KVW = TILE_H + 2 * self.R, TILE_W + 2 * self.R
        self.HRH, self.HRW = self.KVH + 2, self.KVW + 2
        self.LRH, self.LRW = TILE_H + 2, TILE_W + 2
        self.KV_PLANE, self.HR_PLANE, self.LR_PLANE = self.KVH * self.KVW, self.HRH * self.HRW, self.LRH * self.LRW


def inside(y, x, H, W):
    return (y >= 0) & (y < H) & (x >= 0) & (x < W)


def read(arr, idx, lo=0, hi=None):
    """arr[idx] after checking lo <= idx < hi (default: the whole array)."""
    hi = arr.shape[0] if hi is None else hi
    idx = np.asarray(idx)
    assert ((idx >= lo) & (idx < hi)).all(), f"read outside [{lo}, {hi}): {idx.min()}..{idx.max()}"
    return arr[idx]


def sample_taps(xs, ys, H, W):
    """mv_warp_math.h sample_taps for bilinear / zeros: (idx[4], w[4]), absent taps index 0 weight 0."""
    idx, w = np.zeros((4, xs.size), np.int64), np.zeros((4, xs.size))
    ok = np.isfinite(xs) & np.isfinite(ys) & ~((xs <= -1) | (ys <= -1) | (xs >= W) | (ys >= H))
    x0f, y0f = np.floor(np.where(ok, xs, 0.0)), np.floor(np.where(ok, ys, 0.0))
    fx, fy = np.where(ok, xs, 0.0) - x0f, np.where(ok, ys, 0.0) - y0f
    x0, y0 = x0f.astype(np.int64), y0f.astype(np.int64)
    for a, wy in enumerate((1 - fy, fy)):
        for b, wx in enumerate((1 - fx, fx)):
            yi, xi = y0 + a, x0 + b
            m = ok & inside(yi, xi, H, W)
            idx[2 * a + b] = np.where(m, yi * W + xi, 0)
            w[2 * a + b] = np.where(m, wy * wx, 0.0)
    return idx, w


def align_corners_tap(d, in_size, out_size):
    """creff_math.h align_corners_tap, vectorised over d >= 0."""
    if in_size == out_size:
        return d, d, np.ones(d.shape), np.zeros(d.shape)
    ratio = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = ratio * d
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < in_size - 1)
    l1 = np.clip(src - i0, 0.0, 1.0)
    return i0, i1, 1.0 - l1, l1


def depthwise3x3(flat, row0, stride, x, wt, bias, plane_lo, plane_hi):
    """creff_math.h depthwise3x3 on rows row0, row0 + stride, row0 + 2 * stride of a flat shared array."""
    s = np.array(bias, dtype=np.float64) + np.zeros(np.shape(row0))
    for i in range(3):
        for j in range(3):
            s = s + wt[3 * i + j] * read(flat, row0 + i * stride + x + j - 1, plane_lo, plane_hi)
    return s


def emulate_creff(key, mv, lrf, weight, bias, K, scale, sx, sy, CC):
    """The fused kernel, CTA by CTA and thread by thread (threads vectorised). Inputs: float64 numpy arrays."""
    N, C, H, W = key.shape
    h, w = lrf.shape[2:]
    Hb, Wb = mv.shape[2:]
    G = Geometry(K, CC)
    key_f, mv_f, lr_f, w_f, b_f = (a.reshape(-1) for a in (key, mv, lrf, weight, bias))
    HW, hw = H * W, h * w
    out = np.full(N * C * HW, np.nan)
    writes = np.zeros(N * C * HW, np.int64)
    tid = np.arange(THREADS)
    ty, tx = tid // TILE_W, tid % TILE_W
    own_kv = (ty + G.R) * G.KVW + tx + G.R
    own_lr = ty * G.LRW + tx

    def stage_chunk(n, c0, y0, x0, tap_idx, tap_w):
        hr = np.zeros(CC * G.HR_PLANE)
        i = np.arange(CC * G.HR_PLANE)
        c, r = i // G.HR_PLANE, i % G.HR_PLANE
        live = c0 + c < C
        plane = (n * C + c0 + c) * HW
        for k in range(4):
            f = read(key_f, np.where(live, plane + tap_idx[k][r], 0))
            hr += np.where(live & (tap_w[k][r] != 0), tap_w[k][r] * f, 0.0)
        lr = np.zeros(CC * G.LR_PLANE)
        i = np.arange(CC * G.LR_PLANE)
        c, r = i // G.LR_PLANE, i % G.LR_PLANE
        ly, lx = r // G.LRW, r % G.LRW
        gy, gx = y0 - 1 + ly, x0 - 1 + lx
        m = (c0 + c < C) & inside(gy, gx, H, W)
        if m.any():
            c, gy, gx = c[m], gy[m], gx[m]
            y_i0, y_i1, y_l0, y_l1 = align_corners_tap(gy, h, H)
            x_i0, x_i1, x_l0, x_l1 = align_corners_tap(gx, w, W)
            base = (n * C + c0 + c) * hw
            assert ((y_i0 >= 0) & (y_i1 < h) & (x_i0 >= 0) & (x_i1 < w)).all(), "lr tap outside its plane"
            px = [read(lr_f, base + yy * w + xx) for yy in (y_i0, y_i1) for xx in (x_i0, x_i1)]
            lr[m] = y_l0 * (x_l0 * px[0] + x_l1 * px[1]) + y_l1 * (x_l0 * px[2] + x_l1 * px[3])
        wt = np.zeros(3 * CC * WSTRIDE)
        for i in range(3 * CC * WSTRIDE):
            conv, r = divmod(i, CC * WSTRIDE)
            c, t = divmod(r, WSTRIDE)
            if c0 + c < C:
                oc = conv * C + c0 + c
                wt[i] = read(w_f, oc * 9 + t) if t < 9 else read(b_f, oc)
        return hr, lr, wt

    def conv_kv_region(hr, wt, conv, y0, x0):
        i = np.arange(CC * G.KV_PLANE)
        c, r = i // G.KV_PLANE, i % G.KV_PLANE
        ky, kx = r // G.KVW, r % G.KVW
        kv = np.zeros(i.size)
        m = inside(y0 - G.R + ky, x0 - G.R + kx, H, W)
        for cc in range(CC):
            sel = m & (c == cc)
            wts = wt[(conv * CC + cc) * WSTRIDE:(conv * CC + cc + 1) * WSTRIDE]
            kv[sel] = depthwise3x3(hr, cc * G.HR_PLANE + ky[sel] * G.HRW, G.HRW, kx[sel] + 1, wts, wts[9],
                                   cc * G.HR_PLANE, (cc + 1) * G.HR_PLANE)
        return kv

    def window(j):
        return j // K - G.R, j % K - G.R

    for n in range(N):
        for y0 in range(0, H, TILE_H):
            for x0 in range(0, W, TILE_W):
                py, px = y0 + ty, x0 + tx
                active = (py < H) & (px < W)
                off = py * W + px
                # stage_taps
                i = np.arange(G.HR_PLANE)
                hy, hx = i // G.HRW, i % G.HRW
                gy, gx = y0 - G.R - 1 + hy, x0 - G.R - 1 + hx
                ins = inside(gy, gx, H, W)
                by, bx = np.where(ins, gy, 0) * Hb // H, np.where(ins, gx, 0) * Wb // W
                mi = (n * 2 * Hb + by) * Wb + bx
                xs = gx + sx * read(mv_f, mi)
                ys = gy + sy * read(mv_f, mi + Hb * Wb)
                tap_idx, tap_w = sample_taps(xs, ys, H, W)
                tap_idx[:, ~ins], tap_w[:, ~ins] = 0, 0.0
                assert ((tap_idx >= 0) & (tap_idx < HW)).all()
                # pass 1
                logits = np.zeros((G.KK, THREADS))
                for c0 in range(0, C, CC):
                    hr, lr, wt = stage_chunk(n, c0, y0, x0, tap_idx, tap_w)
                    kv = conv_kv_region(hr, wt, 1, y0, x0)
                    q = [depthwise3x3(lr, c * G.LR_PLANE + own_lr, G.LRW, 1, wt[c * WSTRIDE:(c + 1) * WSTRIDE],
                                      wt[c * WSTRIDE + 9], c * G.LR_PLANE, (c + 1) * G.LR_PLANE) for c in range(CC)]
                    for j in range(G.KK):
                        dy, dx = window(j)
                        for c in range(CC):
                            logits[j] += q[c] * read(kv, c * G.KV_PLANE + own_kv + dy * G.KVW + dx,
                                                     c * G.KV_PLANE, (c + 1) * G.KV_PLANE)
                # softmax_in_place with the zeros padding
                for j in range(G.KK):
                    dy, dx = window(j)
                    logits[j] = np.where(inside(py + dy, px + dx, H, W), logits[j] * scale, 0.0)
                p = np.exp(logits - logits.max(0))
                p /= p.sum(0)
                # pass 2
                for c0 in range(0, C, CC):
                    hr, lr, wt = stage_chunk(n, c0, y0, x0, tap_idx, tap_w)
                    kv = conv_kv_region(hr, wt, 2, y0, x0)
                    for c in range(CC):
                        o = np.zeros(THREADS)
                        for j in range(G.KK):
                            dy, dx = window(j)
                            o += p[j] * read(kv, c * G.KV_PLANE + own_kv + dy * G.KVW + dx, c * G.KV_PLANE,
                                             (c + 1) * G.KV_PLANE)
                        if c0 + c < C:
                            dest = (n * C + c0 + c) * HW + off[active]
                            lr_own = read(lr, c * G.LR_PLANE + own_lr + G.LRW + 1, c * G.LR_PLANE,
                                          (c + 1) * G.LR_PLANE)
                            out[dest] = lr_own[active] + o[active]
                            writes[dest] += 1
    assert (writes == 1).all(), "every output element must be written exactly once"
    return out.reshape(N, C, H, W)
