// Tile regions of the fused CReFF kernels (creff_forward.cu, creff_backward.cu), nvcc only: a CTA of 32 x 8
// threads owns an 8 x 32 tile and stages what it needs on the tile plus a margin, one CC-channel chunk at a time:
// the warp's bilinear taps, hr (key_feature gathered through them), lr (lr_feature resized, align_corners), a
// plane of an (N, C, H, W) tensor, the three convs' weights, and depthwise convs of a staged region. Every
// staged value past the last channel or outside the image is 0 (the zero padding of the warp, the convs and
// local_attn). NCHW tensors; 32-bit offsets inside a plane, 64-bit plane offsets.
#pragma once

#include "../creff_math.h"
#include "local_attn_device.cuh"

namespace arseg {
namespace cuda {
namespace creff_tiles {

using namespace attn;

__device__ __forceinline__ int rank_in_cta() { return threadIdx.y * kTileW + threadIdx.x; }

// The tile plus a margin of M pixels on every side; position (ry, rx) is image pixel (y0 - M + ry, x0 - M + rx).
template <int M>
struct Region {
  static constexpr int H = kTileH + 2 * M, W = kTileW + 2 * M, PLANE = H * W;
};

// Offset in Region<M> of this thread's pixel moved by (dy, dx).
template <int M>
__device__ __forceinline__ int offset_in(int dy, int dx) {
  return (threadIdx.y + M + dy) * Region<M>::W + threadIdx.x + M + dx;
}

// Channels per chunk of the attention kernels (forward, and the backward's query and key kernels): as many as
// 48 KB of static shared memory allow (creff_fused_supported has the sizes).
template <typename acc_t, int K>
struct AttnChunk {
  static constexpr int CC = sizeof(acc_t) == 8 ? 1 : (K <= 7 ? 4 : 2);
};

// The warp's four bilinear taps of every Region<M> position (weight 0 outside the image: hr = 0 there).
template <typename acc_t, int M>
struct RegionTaps {
  int idx[4][Region<M>::PLANE];
  acc_t w[4][Region<M>::PLANE];
};

template <typename T, typename acc_t, int M>
__device__ void stage_taps(RegionTaps<acc_t, M>& taps, const CreffParams& p, const T* __restrict__ mv, int64_t n,
                           int y0, int x0) {
  using G = Region<M>;
  for (int i = rank_in_cta(); i < G::PLANE; i += kThreads) {
    const int ry = i / G::W, rx = i - ry * G::W;
    const int gy = y0 - M + ry, gx = x0 - M + rx;
    Taps<acc_t> t;
    clear_taps(t);
    if (inside(gy, gx, p.H, p.W)) {
      const int64_t by = block_of(gy, p.H, p.Hb), bx = block_of(gx, p.W, p.Wb);
      const T* m = mv + (n * 2 * p.Hb + by) * p.Wb + bx;  // dx; dy is one block plane further
      const acc_t xs = sample_coord(static_cast<acc_t>(gx), static_cast<acc_t>(p.mv_scale_x), to_acc(m[0]));
      const acc_t ys = sample_coord(static_cast<acc_t>(gy), static_cast<acc_t>(p.mv_scale_y), to_acc(m[p.Hb * p.Wb]));
      sample_taps(xs, ys, p.H, p.W, WarpMode::Bilinear, WarpPadding::Zeros, t);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      taps.idx[k][i] = static_cast<int>(t.idx[k]);
      taps.w[k][i] = t.w[k];
    }
  }
}

// dst[c] = hr (key_feature warped) on Region<M>, channels [c0, c0 + CC); 0 past C and outside the image.
template <typename T, typename acc_t, int M, int CC>
__device__ void gather_hr(acc_t (&dst)[CC][Region<M>::PLANE], const RegionTaps<acc_t, M>& taps,
                          const CreffParams& p, const T* __restrict__ key, int64_t n, int64_t c0) {
  using G = Region<M>;
  const int64_t HW = p.H * p.W;
  for (int i = rank_in_cta(); i < CC * G::PLANE; i += kThreads) {
    const int c = i / G::PLANE, r = i - c * G::PLANE;
    acc_t v = acc_t(0);
    if (c0 + c < p.C) {
      const T* plane = key + (n * p.C + c0 + c) * HW;
#pragma unroll
      for (int k = 0; k < 4; ++k) v += tap_product(taps.w[k][r], to_acc(plane[taps.idx[k][r]]));
    }
    dst[c][r] = v;
  }
}

// dst[c] = lr_feature resized to (H, W) (align_corners) on Region<M>; 0 past C and outside the image.
template <typename T, typename acc_t, int M, int CC>
__device__ void resize_lr(acc_t (&dst)[CC][Region<M>::PLANE], const CreffParams& p, const T* __restrict__ lrf,
                          int64_t n, int64_t c0, int y0, int x0) {
  using G = Region<M>;
  const int w = static_cast<int>(p.w);
  const int64_t hw = p.h * p.w;
  for (int i = rank_in_cta(); i < CC * G::PLANE; i += kThreads) {
    const int c = i / G::PLANE, r = i - c * G::PLANE, ry = r / G::W, rx = r - ry * G::W;
    const int gy = y0 - M + ry, gx = x0 - M + rx;
    acc_t v = acc_t(0);
    if (c0 + c < p.C && inside(gy, gx, p.H, p.W)) {
      const T* plane = lrf + (n * p.C + c0 + c) * hw;
      const LinearTap<acc_t> ty = align_corners_tap<acc_t>(gy, p.h, p.H);
      const LinearTap<acc_t> tx = align_corners_tap<acc_t>(gx, p.w, p.W);
      const int r0 = static_cast<int>(ty.i0) * w, r1 = static_cast<int>(ty.i1) * w;
      const int x0i = static_cast<int>(tx.i0), x1i = static_cast<int>(tx.i1);
      v = bilinear_mix(to_acc(plane[r0 + x0i]), to_acc(plane[r0 + x1i]), to_acc(plane[r1 + x0i]),
                       to_acc(plane[r1 + x1i]), ty, tx);
    }
    dst[c][r] = v;
  }
}

// dst[c] = a plane of the (N, C, H, W) tensor `src` on Region<M>; 0 past C and outside the image.
template <typename S, typename acc_t, int M, int CC>
__device__ void stage_plane(acc_t (&dst)[CC][Region<M>::PLANE], const CreffParams& p, const S* __restrict__ src,
                            int64_t n, int64_t c0, int y0, int x0) {
  using G = Region<M>;
  for (int i = rank_in_cta(); i < CC * G::PLANE; i += kThreads) {
    const int c = i / G::PLANE, r = i - c * G::PLANE, ry = r / G::W, rx = r - ry * G::W;
    const int gy = y0 - M + ry, gx = x0 - M + rx;
    acc_t v = acc_t(0);
    if (c0 + c < p.C && inside(gy, gx, p.H, p.W)) v = to_acc(src[(n * p.C + c0 + c) * p.H * p.W + gy * p.W + gx]);
    dst[c][r] = v;
  }
}

// wt[conv][c] = the 9 weights then the bias of conv 0 (q), 1 (k), 2 (v) for channel c0 + c; 0 past C.
template <typename T, typename acc_t, int CC>
__device__ void stage_weights(acc_t (&wt)[3][CC][10], const CreffParams& p, const T* __restrict__ weight,
                              const T* __restrict__ bias, int64_t c0) {
  for (int i = rank_in_cta(); i < 3 * CC * 10; i += kThreads) {
    const int conv = i / (CC * 10), r = i - conv * CC * 10, c = r / 10, t = r - c * 10;
    acc_t v = acc_t(0);
    if (c0 + c < p.C) {
      const int64_t oc = conv * p.C + c0 + c;
      v = to_acc(t < 9 ? weight[oc * 9 + t] : bias[oc]);
    }
    wt[conv][c][t] = v;
  }
}

// dst[c] = depthwise conv of src[c] on Region<M> (src on Region<M + 1>); 0 outside the image (local_attn's
// zero padding of q / k / v).
template <typename acc_t, int M, int CC>
__device__ void conv_region(acc_t (&dst)[CC][Region<M>::PLANE], const acc_t (&src)[CC][Region<M + 1>::PLANE],
                            const acc_t (&wt)[CC][10], const CreffParams& p, int y0, int x0) {
  using G = Region<M>;
  constexpr int SW = Region<M + 1>::W;
  for (int i = rank_in_cta(); i < CC * G::PLANE; i += kThreads) {
    const int c = i / G::PLANE, r = i - c * G::PLANE, ry = r / G::W, rx = r - ry * G::W;
    acc_t v = acc_t(0);
    if (inside(y0 - M + ry, x0 - M + rx, p.H, p.W)) {
      const acc_t* row = &src[c][ry * SW];  // rows ry .. ry + 2 of src are centred on dst row ry
      v = depthwise3x3(row, row + SW, row + 2 * SW, rx + 1, wt[c], wt[c][9]);
    }
    dst[c][r] = v;
  }
}

// The conv of this thread's own pixel, src on Region<1>.
template <typename acc_t>
__device__ __forceinline__ acc_t conv_own(const acc_t* src, const acc_t* wt) {
  const acc_t* row = src + threadIdx.y * Region<1>::W;
  return depthwise3x3(row, row + Region<1>::W, row + 2 * Region<1>::W, threadIdx.x + 1, wt, wt[9]);
}

}  // namespace creff_tiles
}  // namespace cuda
}  // namespace arseg
