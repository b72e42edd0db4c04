"""Lane-level emulation of the v2 local_attn CUDA kernels (csrc/cuda/local_attn_v2_*), in numpy float64.

No GPU runs where these kernels are developed, so this module checks their index math on the CPU: the tiling
(M/N regions, warp halos, n_row, pair_at masks), the staging, the per-lane MMA fragment loads (transcribed from
local_attn_v2_mma.cuh / local_attn_v2_device.cuh) fed to an mma implemented from the PTX ISA fragment layouts
(m16n8k16 for 16-bit types, m16n8k8 TF32 with the key permutation of the weighted product), the softmax and the
two backward passes. Arithmetic is float64 (no rounding to the element type): it checks the mapping, not the
precision. Keep it in step with the kernels when their tiling changes (test_cuda_local_attn_v2.py runs it).
"""
import numpy as np

LANES = [(l >> 2, l & 3) for l in range(32)]

# ---- PTX mma semantics from fragments ----
def mma16(afr, bfr, c):  # afr[lane] = 4 regs x 2 vals; bfr[lane] = 2 regs x 2 vals; c[lane] = 4
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for l, (g, t) in enumerate(LANES):
        for r, (row, col) in enumerate([(g, 2*t), (g+8, 2*t), (g, 2*t+8), (g+8, 2*t+8)]):
            A[row, col], A[row, col+1] = afr[l][r]
        for r, k in enumerate([2*t, 2*t+8]):
            B[k, g], B[k+1, g] = bfr[l][r]
    D = A @ B
    for l, (g, t) in enumerate(LANES):
        c[l] = [c[l][0] + D[g, 2*t], c[l][1] + D[g, 2*t+1], c[l][2] + D[g+8, 2*t], c[l][3] + D[g+8, 2*t+1]]

def mma8(afr, bfr, c):  # tf32 m16n8k8: afr[lane] = 4 vals, bfr[lane] = 2 vals (hi+lo sums emulated exactly)
    A = np.zeros((16, 8)); B = np.zeros((8, 8))
    for l, (g, t) in enumerate(LANES):
        for r, (row, col) in enumerate([(g, t), (g+8, t), (g, t+4), (g+8, t+4)]):
            A[row, col] = afr[l][r]
        B[t, g], B[t+4, g] = bfr[l]
    D = A @ B
    for l, (g, t) in enumerate(LANES):
        c[l] = [c[l][0] + D[g, 2*t], c[l][1] + D[g, 2*t+1], c[l][2] + D[g+8, 2*t], c[l][3] + D[g+8, 2*t+1]]

class Geo:
    def __init__(s, K, WY, WX, kind):
        s.kind = kind; s.R = K // 2; s.WH = 4 + 2*s.R; s.NK = s.WH**2
        s.kKeyStep = 16 if kind == "16" else 8; s.kChanStep = s.kKeyStep
        s.NKP = -(-s.NK // s.kKeyStep) * s.kKeyStep; s.NT = s.NKP // 8
        s.TH, s.TW = 4*WY, 4*WX; s.HH, s.HW = s.TH + 2*s.R, s.TW + 2*s.R
        s.MROWS, s.NROWS = s.TH*s.TW, s.HH*s.HW
        s.CH = 32 if kind == "16" else 16; s.CT = s.CH // 8; s.WX = WX; s.warps = WY*WX

def m_pixel(G, y0, x0, r):
    w, m = r >> 4, r & 15; wy, wx = w // G.WX, w % G.WX
    return y0 + wy*4 + (m >> 2), x0 + wx*4 + (m & 3)
def n_pixel(G, y0, x0, r):
    hy = r // G.HW; return y0 - G.R + hy, x0 - G.R + r - hy*G.HW
def n_row(G, wy, wx, n):
    hy, hx = n // G.WH, n % G.WH
    return (wy + hy)*G.HW + wx + hx if n < G.NK else 0
def inside(y, x, H, W): return 0 <= y < H and 0 <= x < W
def pair_at(G, y0, x0, wy, wx, g, t, j, e):
    m = g + 8*(e >> 1); n = 8*j + 2*t + (e & 1)
    my, mx, ny, nx = m >> 2, m & 3, n // G.WH, n % G.WH
    window = n < G.NK and 0 <= ny - my <= 2*G.R and 0 <= nx - mx <= 2*G.R
    return (y0+wy+my, x0+wx+mx, y0+wy-G.R+ny, x0+wx-G.R+nx, window)

def stage(G, img, c0, rows, pix, H, W):
    C = img.shape[0]; buf = np.zeros((rows, G.CH))
    for r in range(rows):
        y, x = pix(r)
        for c in range(G.CH):
            if inside(y, x, H, W) and c0 + c < C: buf[r, c] = img[c0+c, y, x]
    return buf

def dot_chunk(G, S, M, N, warp, wy, wx):
    for k in range(G.CH // G.kChanStep):
        ch = k*G.kChanStep
        afr = []
        for g, t in LANES:
            r0, r1 = M[warp*16 + g], M[warp*16 + g + 8]
            if G.kind == "16":
                afr.append([(r0[ch+2*t], r0[ch+2*t+1]), (r1[ch+2*t], r1[ch+2*t+1]), (r0[ch+8+2*t], r0[ch+9+2*t]), (r1[ch+8+2*t], r1[ch+9+2*t])])
            else:
                afr.append([r0[ch+t], r1[ch+t], r0[ch+t+4], r1[ch+t+4]])
        for j in range(G.NT):
            bfr = []
            for g, t in LANES:
                key = N[n_row(G, wy, wx, 8*j + g)]
                bfr.append([(key[ch+2*t], key[ch+2*t+1]), (key[ch+8+2*t], key[ch+9+2*t])] if G.kind == "16" else [key[ch+t], key[ch+t+4]])
            c = [S[l][j] for l in range(32)]
            (mma16 if G.kind == "16" else mma8)(afr, bfr, c)
            for l in range(32): S[l][j] = c[l]

def weighted_chunk(G, P, N, wy, wx):
    O = [[[0.0]*4 for _ in range(G.CT)] for _ in range(32)]
    for s in range(G.NKP // G.kKeyStep):
        afr, rows = [], []
        for l, (g, t) in enumerate(LANES):
            if G.kind == "16":
                a, b = P[l][2*s], P[l][2*s+1]
                afr.append([(a[0], a[1]), (a[2], a[3]), (b[0], b[1]), (b[2], b[3])])
                kis = [2*t + (i & 1) + (i >> 1)*8 for i in range(4)]
            else:
                afr.append([P[l][s][0], P[l][s][2], P[l][s][1], P[l][s][3]])
                kis = [2*t + i for i in range(2)]
            rows.append([N[n_row(G, wy, wx, s*G.kKeyStep + k)] for k in kis])
        for o in range(G.CT):
            bfr = []
            for l, (g, t) in enumerate(LANES):
                rr = rows[l]; ch = 8*o + g
                bfr.append([(rr[0][ch], rr[1][ch]), (rr[2][ch], rr[3][ch])] if G.kind == "16" else [rr[0][ch], rr[1][ch]])
            c = [O[l][o] for l in range(32)]
            (mma16 if G.kind == "16" else mma8)(afr, bfr, c)
            for l in range(32): O[l][o] = c[l]
    return O

def write_rows(G, Mout, O, warp):
    for l, (g, t) in enumerate(LANES):
        for o in range(G.CT):
            c = 8*o + 2*t
            Mout[warp*16+g, c], Mout[warp*16+g, c+1] = O[l][o][0], O[l][o][1]
            Mout[warp*16+g+8, c], Mout[warp*16+g+8, c+1] = O[l][o][2], O[l][o][3]

def store(G, out, Mout, c0, y0, x0, H, W):
    for r in range(G.MROWS):
        y, x = m_pixel(G, y0, x0, r)
        for c in range(G.CH):
            if inside(y, x, H, W) and c0 + c < out.shape[0]: out[c0+c, y, x] = Mout[r, c]

def warp_origin(G, warp): return (warp // G.WX)*4, (warp % G.WX)*4

def softmax_rows(G, S, y0, x0, wy, wx, H, W, scale, pad):
    lse = [[0, 0] for _ in range(32)]
    for l, (g, t) in enumerate(LANES):
        for j in range(G.NT):
            for e in range(4):
                ry, rx, cy, cx, win = pair_at(G, y0, x0, wy, wx, g, t, j, e)
                S[l][j][e] = -np.inf if not win else (S[l][j][e]*scale if inside(cy, cx, H, W) else pad)
    for g in range(8):
        quad = [4*g + t for t in range(4)]
        for h in range(2):
            vals = [S[l][j][e] for l in quad for j in range(G.NT) for e in range(4) if e >> 1 == h]
            mx = max(vals); mx = 0 if mx == -np.inf else mx
            ssum = sum(np.exp(v - mx) for v in vals)
            inv = 1 / ssum if ssum > 0 else 0.0  # rows of out-of-image pixels only
            for l in quad:
                lse[l][h] = mx + np.log(ssum) if ssum > 0 else -np.inf
                for j in range(G.NT):
                    for e in range(4):
                        if e >> 1 == h: S[l][j][e] = np.exp(S[l][j][e] - mx) * inv
    return lse

# ---- the kernels: forward, query-centred and key-centred backward passes, chunk by chunk ----

def tiles(G, H, W):
    for ty in range(-(-H // G.TH)):
        for tx in range(-(-W // G.TW)):
            yield ty*G.TH, tx*G.TW

def forward(G, q, k, v, K, scale, padding):
    C, H, W = q.shape; Cv = v.shape[0]; CH = G.CH
    pad = 0.0 if padding == "zeros" else -np.inf
    out = np.full((Cv, H, W), np.nan)
    nC, nV = -(-C // CH), -(-Cv // CH)
    for y0, x0 in tiles(G, H, W):
        mpix = lambda r: m_pixel(G, y0, x0, r); npix = lambda r: n_pixel(G, y0, x0, r)
        S = {w: [[[0.0]*4 for _ in range(G.NT)] for _ in range(32)] for w in range(G.warps)}
        for s in range(nC):
            M = stage(G, q, s*CH, G.MROWS, mpix, H, W); N = stage(G, k, s*CH, G.NROWS, npix, H, W)
            for w in range(G.warps): dot_chunk(G, S[w], M, N, w, *warp_origin(G, w))
        for w in range(G.warps): softmax_rows(G, S[w], y0, x0, *warp_origin(G, w), H, W, scale, pad)
        for s in range(nV):
            N = stage(G, v, s*CH, G.NROWS, npix, H, W); Mout = np.zeros((G.MROWS, CH))
            for w in range(G.warps): write_rows(G, Mout, weighted_chunk(G, S[w], N, *warp_origin(G, w)), w)
            store(G, out, Mout, s*CH, y0, x0, H, W)
    return out

def backward(G, dout, q, k, v, K, scale, padding):
    C, H, W = q.shape; Cv = v.shape[0]; CH = G.CH
    pad = 0.0 if padding == "zeros" else -np.inf
    nC, nV = -(-C // CH), -(-Cv // CH)
    dq = np.full(q.shape, np.nan); dk = np.full(k.shape, np.nan); dv = np.full(v.shape, np.nan)
    stats = np.full((H*W, 2), np.nan)
    for y0, x0 in tiles(G, H, W):  # query-centred
        mpix = lambda r: m_pixel(G, y0, x0, r); npix = lambda r: n_pixel(G, y0, x0, r)
        P = {w: [[[0.0]*4 for _ in range(G.NT)] for _ in range(32)] for w in range(G.warps)}
        D = {w: [[[0.0]*4 for _ in range(G.NT)] for _ in range(32)] for w in range(G.warps)}
        for s in range(nC):
            M = stage(G, q, s*CH, G.MROWS, mpix, H, W); N = stage(G, k, s*CH, G.NROWS, npix, H, W)
            for w in range(G.warps): dot_chunk(G, P[w], M, N, w, *warp_origin(G, w))
        lse = {w: softmax_rows(G, P[w], y0, x0, *warp_origin(G, w), H, W, scale, pad) for w in range(G.warps)}
        for s in range(nV):
            M = stage(G, dout, s*CH, G.MROWS, mpix, H, W); N = stage(G, v, s*CH, G.NROWS, npix, H, W)
            for w in range(G.warps): dot_chunk(G, D[w], M, N, w, *warp_origin(G, w))
        for w in range(G.warps):
            wy, wx = warp_origin(G, w)
            for g in range(8):
                quad = [4*g + t for t in range(4)]
                delta = [sum(P[w][l][j][e]*D[w][l][j][e] for l in quad for j in range(G.NT) for e in range(4) if e >> 1 == h) for h in range(2)]
                for l in quad:
                    t = l & 3
                    for j in range(G.NT):
                        for e in range(4):
                            ry, rx, cy, cx, win = pair_at(G, y0, x0, wy, wx, g, t, j, e)
                            D[w][l][j][e] = P[w][l][j][e]*(D[w][l][j][e] - delta[e >> 1])*scale if win and inside(cy, cx, H, W) else 0.0
                    if t == 0:
                        for h in range(2):
                            y, x = y0 + wy + ((g + 8*h) >> 2), x0 + wx + ((g + 8*h) & 3)
                            if inside(y, x, H, W): stats[y*W + x] = (lse[w][l][h], delta[h])
        for s in range(nC):
            N = stage(G, k, s*CH, G.NROWS, npix, H, W); Mout = np.zeros((G.MROWS, CH))
            for w in range(G.warps): write_rows(G, Mout, weighted_chunk(G, D[w], N, *warp_origin(G, w)), w)
            store(G, dq, Mout, s*CH, y0, x0, H, W)
    for y0, x0 in tiles(G, H, W):  # key-centred
        mpix = lambda r: m_pixel(G, y0, x0, r); npix = lambda r: n_pixel(G, y0, x0, r)
        hs = np.zeros((G.NROWS, 2))
        for r in range(G.NROWS):
            y, x = npix(r)
            if inside(y, x, H, W): hs[r] = stats[y*W + x]
        P = {w: [[[0.0]*4 for _ in range(G.NT)] for _ in range(32)] for w in range(G.warps)}
        D = {w: [[[0.0]*4 for _ in range(G.NT)] for _ in range(32)] for w in range(G.warps)}
        for s in range(nC):
            M = stage(G, k, s*CH, G.MROWS, mpix, H, W); N = stage(G, q, s*CH, G.NROWS, npix, H, W)
            for w in range(G.warps): dot_chunk(G, P[w], M, N, w, *warp_origin(G, w))
        for w in range(G.warps):
            wy, wx = warp_origin(G, w)
            for l, (g, t) in enumerate(LANES):
                for j in range(G.NT):
                    for e in range(4):
                        ry, rx, cy, cx, win = pair_at(G, y0, x0, wy, wx, g, t, j, e)
                        lse_ = hs[n_row(G, wy, wx, 8*j + 2*t + (e & 1)), 0]
                        real = win and inside(cy, cx, H, W) and inside(ry, rx, H, W)
                        P[w][l][j][e] = np.exp(P[w][l][j][e]*scale - lse_) if real else 0.0
        for s in range(nV):  # dv before dP, as the kernel
            N = stage(G, dout, s*CH, G.NROWS, npix, H, W); Mout = np.zeros((G.MROWS, CH))
            for w in range(G.warps): write_rows(G, Mout, weighted_chunk(G, P[w], N, *warp_origin(G, w)), w)
            store(G, dv, Mout, s*CH, y0, x0, H, W)
        for s in range(nV):
            M = stage(G, v, s*CH, G.MROWS, mpix, H, W); N = stage(G, dout, s*CH, G.NROWS, npix, H, W)
            for w in range(G.warps): dot_chunk(G, D[w], M, N, w, *warp_origin(G, w))
        for w in range(G.warps):
            wy, wx = warp_origin(G, w)
            for l, (g, t) in enumerate(LANES):
                for j in range(G.NT):
                    for e in range(4):
                        delta = hs[n_row(G, wy, wx, 8*j + 2*t + (e & 1)), 1]
                        D[w][l][j][e] = P[w][l][j][e]*(D[w][l][j][e] - delta)*scale
        for s in range(nC):
            N = stage(G, q, s*CH, G.NROWS, npix, H, W); Mout = np.zeros((G.MROWS, CH))
            for w in range(G.warps): write_rows(G, Mout, weighted_chunk(G, D[w], N, *warp_origin(G, w)), w)
            store(G, dk, Mout, s*CH, y0, x0, H, W)
    return dq, dk, dv

def run_against_reference(kind, K, WY, WX, C, Cv, H, W, padding, seed=0):
    """Max |error| of the emulated forward and backward against arseg_ops.reference (float64 autograd)."""
    import torch

    from arseg_ops import reference

    G = Geo(K, WY, WX, kind)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, c, H, W, dtype=torch.float64, generator=gen).requires_grad_() for c in (C, C, Cv))
    scale = 0.4
    ref = reference.local_attn(q, k, v, K, scale=scale, padding=padding)
    dout = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad(ref, (q, k, v), dout)
    arrays = [t[0].detach().numpy() for t in (q, k, v)]
    out = forward(G, *arrays, K, scale, padding)
    mine = backward(G, dout[0].numpy(), *arrays, K, scale, padding)
    return max(np.abs(a - b[0].detach().numpy()).max() for a, b in zip((out, *mine), (ref, *grads)))
