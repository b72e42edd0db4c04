// Row routines of the CPU local_attn math, shared by the local_attn kernels (local_attn_cpu.cpp) and any fused
// kernel that runs the same attention on rows it computes on the fly (e.g. a band of CReFF features).
//
// Everything works on one output row y of one image at a time, with x innermost: for each window position j
// (offset dy, dx) the loops run over the x range where x + dx is inside the image, so every inner loop is a
// contiguous, vectorizable pass over a row. Window weights of a row are a (k*k, W) slab, j-major.
//
// Inputs are described by Rows (pointer + strides + first row), so the same code reads a whole NCHW image or a
// band of rows. Which window rows exist is decided by the image height p.H, never by the buffer: rows outside
// [0, H) are padding (logit padding_logit(p.padding), value 0), exactly as in the standalone op. A band must
// therefore hold every image row in [y - k/2, y + k/2] for each row y it serves.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../op_params.h"
#include "cpu_fp.h"

namespace arseg {
namespace cpu {

// Element (c, y, x) of a stack of planes is at base[c * channel_stride + (y - row0) * row_stride + x].
//   whole image n of an (N, C, H, W) tensor: image_rows(data, n, C, H, W)
//   band of image rows [y0, y0 + R), channel-major, W wide: {band, R * W, W, y0}
//   (k*k, W) weight slabs of consecutive rows (j plays the channel): {slabs, W, k*k * W, first_row}
template <typename T>
struct Rows {
  T* base;
  int64_t channel_stride, row_stride, row0;
  T* row(int64_t c, int64_t y) const { return base + c * channel_stride + (y - row0) * row_stride; }
};

template <typename T>
Rows<T> image_rows(T* data, int64_t n, int64_t channels, int64_t H, int64_t W) {
  return {data + n * channels * H * W, H * W, W, 0};
}

// Window position j seen from row y: source row yy = y + dy, column shift dx, and the range [lo, hi) of x for
// which (yy, x + dx) is inside the image (empty when row yy is outside).
struct WindowRow {
  int64_t yy, dx, lo, hi;
  bool row_in;
};

inline WindowRow window_row(const LocalAttnParams& p, int j, int64_t y) {
  const int64_t yy = y + window_dy(j, p.kernel_size), dx = window_dx(j, p.kernel_size);
  const bool row_in = yy >= 0 && yy < p.H;
  return {yy, dx, row_in ? shifted_lo(dx) : p.W, row_in ? shifted_hi(dx, p.W) : p.W, row_in};
}

// out[j * W + x] = sum_c a[c][y][x] * b[c][y + dy_j][x + dx_j] over `channels` channels (0 where outside).
// Logits with (a, b) = (q, k); dP with (a, b) = (dout, v).
template <typename scalar_t, typename acc_t>
void window_dots(const LocalAttnParams& p, Rows<const scalar_t> a, Rows<const scalar_t> b, int64_t channels,
                 int64_t y, acc_t* out) {
  const int64_t W = p.W;
  std::fill(out, out + p.window() * W, acc_t(0));
  for (int j = 0; j < p.window(); ++j) {
    const WindowRow wr = window_row(p, j, y);
    if (!wr.row_in) continue;
    acc_t* o = out + j * W;
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t* ar = a.row(c, y);
      const scalar_t* br = b.row(c, wr.yy);
      for (int64_t x = wr.lo; x < wr.hi; ++x) o[x] += static_cast<acc_t>(ar[x]) * static_cast<acc_t>(br[x + wr.dx]);
    }
  }
}

// Attention weights of every pixel of row y: P[j * W + x], softmax over j. row_max, row_sum: W scratch each.
template <typename scalar_t, typename acc_t>
void row_softmax(const LocalAttnParams& p, Rows<const scalar_t> q, Rows<const scalar_t> k, int64_t y, acc_t* P,
                 acc_t* row_max, acc_t* row_sum) {
  const int64_t W = p.W;
  const int KK = p.window();
  window_dots<scalar_t, acc_t>(p, q, k, p.C, y, P);
  // Scale the inside logits; outside positions get the padding logit (multiplying -inf by scale would be wrong).
  const acc_t scale = static_cast<acc_t>(p.scale), pad = padding_logit<acc_t>(p.padding);
  std::fill(row_max, row_max + W, -std::numeric_limits<acc_t>::infinity());
  for (int j = 0; j < KK; ++j) {
    const WindowRow wr = window_row(p, j, y);
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) {
      L[x] = (x >= wr.lo && x < wr.hi) ? L[x] * scale : pad;
      row_max[x] = std::max(row_max[x], L[x]);
    }
  }
  std::fill(row_sum, row_sum + W, acc_t(0));
  for (int j = 0; j < KK; ++j) {
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) {
      L[x] = exp_or_zero(L[x] - row_max[x]);  // a peaked window's tail is 0, not a (slow) denormal
      row_sum[x] += L[x];
    }
  }
  for (int64_t x = 0; x < W; ++x) row_sum[x] = acc_t(1) / row_sum[x];
  for (int j = 0; j < KK; ++j) {
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) L[x] *= row_sum[x];
  }
}

// Softmax backward of row y: delta[x] = sum_j P_j dP_j, dS_j = P_j (dP_j - delta) scale inside the image and 0
// outside (an outside position has a constant logit). delta: W scratch.
template <typename acc_t>
void softmax_grad_row(const LocalAttnParams& p, int64_t y, const acc_t* P, const acc_t* dP, acc_t* delta,
                      acc_t* dS) {
  const int64_t W = p.W;
  const int KK = p.window();
  const acc_t scale = static_cast<acc_t>(p.scale);
  std::fill(delta, delta + W, acc_t(0));
  for (int j = 0; j < KK; ++j)
    for (int64_t x = 0; x < W; ++x) delta[x] += P[j * W + x] * dP[j * W + x];
  for (int j = 0; j < KK; ++j) {
    const WindowRow wr = window_row(p, j, y);
    for (int64_t x = 0; x < W; ++x) {
      const int64_t i = j * W + x;
      dS[i] = (x >= wr.lo && x < wr.hi) ? P[i] * (dP[i] - delta[x]) * scale : acc_t(0);
    }
  }
}

// acc[x] += sum_j weights[j][x] * src[c][y + dy_j][x + dx_j] for channel c (the weighted sum of row y's
// windows: out with (P, v), dq with (dS, k)).
template <typename scalar_t, typename acc_t>
void accumulate_window(const LocalAttnParams& p, const acc_t* weights, Rows<const scalar_t> src, int64_t c,
                       int64_t y, acc_t* acc) {
  for (int j = 0; j < p.window(); ++j) {
    const WindowRow wr = window_row(p, j, y);
    if (!wr.row_in) continue;
    const scalar_t* sr = src.row(c, wr.yy);
    const acc_t* wj = weights + j * p.W;
    for (int64_t x = wr.lo; x < wr.hi; ++x) acc[x] += wj[x] * static_cast<acc_t>(sr[x + wr.dx]);
  }
}

// The transpose of accumulate_window, for key row y: query pixel (y - dy, x - dx) sees key (y, x) at window
// position j = (dy, dx), so acc[x'] += sum_j weights[y - dy_j][j][x' - dx_j] * src[c][y - dy_j][x' - dx_j]
// (dk with (dS, q), dv with (P, dout)). `weights` holds the (k*k, W) slabs of the query rows.
template <typename scalar_t, typename acc_t>
void gather_window(const LocalAttnParams& p, Rows<const acc_t> weights, Rows<const scalar_t> src, int64_t c,
                   int64_t y, acc_t* acc) {
  for (int j = 0; j < p.window(); ++j) {
    const int64_t yq = y - window_dy(j, p.kernel_size), dx = window_dx(j, p.kernel_size);
    if (yq < 0 || yq >= p.H) continue;
    // key x' = query x + dx, for query x in [shifted_lo(dx), shifted_hi(dx)).
    const int64_t lo = shifted_lo(dx), hi = shifted_hi(dx, p.W);
    const acc_t* wq = weights.row(j, yq);
    const scalar_t* sr = src.row(c, yq);
    for (int64_t x = lo; x < hi; ++x) acc[x + dx] += wq[x] * static_cast<acc_t>(sr[x]);
  }
}

}  // namespace cpu
}  // namespace arseg
