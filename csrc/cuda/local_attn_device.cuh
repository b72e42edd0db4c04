// Building blocks of the local_attn CUDA kernels (forward and backward), nvcc only.
//
// Tiling (kernel sizes K <= 7, the "tiled" kernels):
//   A CTA of 32 x 8 threads owns an 8 x 32 tile of pixels (one pixel per thread, x fastest, so global loads and
//   stores of a channel plane are coalesced 32-wide). A pass over a neighbour tensor (k or v in the forward)
//   stages the tile plus its halo of R = K/2 pixels, (8 + 2R) x (32 + 2R) positions, for a chunk of CC channels
//   into shared memory, converted to the accumulation type: CC = 16 for float accumulation (K = 7:
//   16 * 14 * 38 * 4 B = 34 KB), 8 for double (same bytes). Any channel count works: the last chunk is padded
//   with zeros. Out-of-image halo positions are staged as 0 (the value of a zero-padded position; for a logit
//   the position is replaced by the padding logit afterwards, so the staged 0 is never used as a key).
//   Each thread keeps its own pixel's CC channels (q in the forward) and the K*K per-pixel accumulators
//   (logits, probabilities) in registers; the window loop and the channel loop are fully unrolled (K is a
//   template parameter), so the K*K array stays in registers. Shared-memory reads of a warp hit 32
//   consecutive words of one halo row: no bank conflicts.
//   Two kinds of pass exist: a "dot" pass acc[j] += sum_c own[c] * tile[c][pixel + o_j] and a "weighted"
//   pass out[c] = sum_j w[j] * tile[c][pixel + o_j]. With MIRROR the offset is -o_j: the key-centred gather
//   of the backward (query i = key - o_j sees the key at window position j).
//   Every staging is bracketed by __syncthreads(): before (the previous pass has finished reading the
//   buffer) and after (the chunk is complete before anyone reads it). Threads whose pixel is outside the image
//   take part in staging and barriers but never store.
//
// Larger kernels (9..15) use the "generic" per-pixel helpers at the end: neighbours are read from global
// memory (through L1/L2), logits are recomputed per channel chunk, log-sum-exp is computed online.
#pragma once

#include "device_common.cuh"

namespace arseg {
namespace cuda {
namespace attn {

constexpr int kTileH = 8, kTileW = 32, kThreads = kTileH * kTileW;
constexpr int kMaxTiledKernel = 7;
constexpr int kGenericChunk = 16;  // channels per register chunk in the generic kernels

// CTAs per SM the tiled kernels are compiled for (__launch_bounds__ minBlocks). With 2, float accumulation
// gets 128 registers per thread (K = 7: a few bytes of spill, L1-resident); with 1 it gets up to 255 (no
// spill, half the resident warps). Double accumulation (gradcheck) always uses 1. Measure before changing.
#ifndef ARSEG_ATTN_MIN_BLOCKS
#define ARSEG_ATTN_MIN_BLOCKS 2
#endif
template <typename T>
struct TiledMinBlocks {
  static constexpr int value = sizeof(typename AccType<T>::type) == 8 ? 1 : ARSEG_ATTN_MIN_BLOCKS;
};

template <typename acc_t, int K>
struct Tile {
  static constexpr int R = K / 2, KK = K * K;
  static constexpr int HH = kTileH + 2 * R, WW = kTileW + 2 * R, PLANE = HH * WW;
  static constexpr int CC = sizeof(acc_t) == 8 ? 8 : 16;
};

// Pixel of this thread in the tile at (y0, x0).
struct PixelPos {
  int64_t y, x, off;  // off = y * W + x, valid only when active
  bool active;
};
__device__ __forceinline__ PixelPos pixel_pos(int64_t y0, int64_t x0, int64_t H, int64_t W) {
  const int64_t y = y0 + threadIdx.y, x = x0 + threadIdx.x;
  return {y, x, y * W + x, y < H && x < W};
}

__device__ __forceinline__ bool inside(int64_t y, int64_t x, int64_t H, int64_t W) {
  return y >= 0 && y < H && x >= 0 && x < W;
}

// Stages channels [c0, c0 + CC) of the (channels, H, W) image `img`, tile plus halo, into s[CC][HH][WW].
template <typename T, typename acc_t, int K>
__device__ __forceinline__ void stage_halo(acc_t* s, const T* __restrict__ img, int64_t channels, int64_t c0,
                                           int64_t H, int64_t W, int64_t y0, int64_t x0) {
  using S = Tile<acc_t, K>;
  const int tid = threadIdx.y * kTileW + threadIdx.x;
  for (int i = tid; i < S::CC * S::PLANE; i += kThreads) {
    const int c = i / S::PLANE, r = i - c * S::PLANE, hy = r / S::WW, hx = r - hy * S::WW;
    const int64_t gy = y0 - S::R + hy, gx = x0 - S::R + hx;
    acc_t v = acc_t(0);
    if (c0 + c < channels && inside(gy, gx, H, W)) v = to_acc(img[((c0 + c) * H + gy) * W + gx]);
    s[i] = v;
  }
}

// own[c] = img[c0 + c] at this thread's pixel (0 past the last channel or outside the image).
template <typename T, typename acc_t, int CC>
__device__ __forceinline__ void load_own(acc_t (&own)[CC], const T* __restrict__ img, int64_t channels, int64_t c0,
                                         int64_t HW, const PixelPos& pp) {
#pragma unroll
  for (int c = 0; c < CC; ++c)
    own[c] = (pp.active && c0 + c < channels) ? to_acc(img[(c0 + c) * HW + pp.off]) : acc_t(0);
}

template <typename T, typename acc_t, int CC>
__device__ __forceinline__ void store_own(T* __restrict__ img, int64_t channels, int64_t c0, int64_t HW,
                                          const PixelPos& pp, const acc_t (&val)[CC]) {
  if (!pp.active) return;
#pragma unroll
  for (int c = 0; c < CC; ++c)
    if (c0 + c < channels) img[(c0 + c) * HW + pp.off] = from_acc<T>(val[c]);
}

// Shared-memory offset of window position j of this thread's pixel (mirrored: -o_j).
template <typename acc_t, int K, bool MIRROR>
__device__ __forceinline__ int tile_offset(int j) {
  using S = Tile<acc_t, K>;
  const int dy = MIRROR ? -window_dy(j, K) : window_dy(j, K);
  const int dx = MIRROR ? -window_dx(j, K) : window_dx(j, K);
  return (threadIdx.y + S::R + dy) * S::WW + threadIdx.x + S::R + dx;
}

// acc[j] += sum_c own[c] * s[c][pixel +- o_j], channels in order (as the CPU kernel sums them).
template <typename acc_t, int K, bool MIRROR>
__device__ __forceinline__ void dot_pass(acc_t (&acc)[K * K], const acc_t (&own)[Tile<acc_t, K>::CC],
                                         const acc_t* s) {
  using S = Tile<acc_t, K>;
#pragma unroll
  for (int j = 0; j < S::KK; ++j) {
    const acc_t* sp = s + tile_offset<acc_t, K, MIRROR>(j);
#pragma unroll
    for (int c = 0; c < S::CC; ++c) acc[j] += own[c] * sp[c * S::PLANE];
  }
}

// out[c] = sum_j w[j] * s[c][pixel +- o_j], window positions in order.
template <typename acc_t, int K, bool MIRROR>
__device__ __forceinline__ void weighted_pass(acc_t (&out)[Tile<acc_t, K>::CC], const acc_t (&w)[K * K],
                                              const acc_t* s) {
  using S = Tile<acc_t, K>;
#pragma unroll
  for (int c = 0; c < S::CC; ++c) out[c] = acc_t(0);
#pragma unroll
  for (int j = 0; j < S::KK; ++j) {
    const acc_t* sp = s + tile_offset<acc_t, K, MIRROR>(j);
#pragma unroll
    for (int c = 0; c < S::CC; ++c) out[c] += w[j] * sp[c * S::PLANE];
  }
}

// Turns raw dot products <q, k_j> of pixel (y, x) into softmax probabilities in place: inside logits are
// scaled, outside ones take the padding logit (as the CPU kernel). Returns the log-sum-exp of the logits.
template <typename acc_t, int K>
__device__ __forceinline__ acc_t softmax_in_place(acc_t (&l)[K * K], int64_t y, int64_t x, int64_t H, int64_t W,
                                                  acc_t scale, AttnPadding padding) {
  constexpr int KK = K * K;
  const acc_t pad = padding_logit<acc_t>(padding);
  acc_t m = -acc_t(INFINITY);
#pragma unroll
  for (int j = 0; j < KK; ++j) {
    l[j] = inside(y + window_dy(j, K), x + window_dx(j, K), H, W) ? l[j] * scale : pad;
    m = m < l[j] ? l[j] : m;
  }
  acc_t sum = acc_t(0);
#pragma unroll
  for (int j = 0; j < KK; ++j) {
    l[j] = exp_(l[j] - m);
    sum += l[j];
  }
  const acc_t inv = acc_t(1) / sum;
#pragma unroll
  for (int j = 0; j < KK; ++j) l[j] *= inv;
  return m + log_(sum);
}

// Loops a CTA over the tiles it owns: blockIdx.x = tile column; blockIdx.y / z stride over tile rows / images
// (grid y and z are capped at 65535). The body runs uniformly for the whole CTA, so it may use barriers.
template <typename Body>
__device__ __forceinline__ void for_each_tile(const LocalAttnParams& p, Body body) {
  const int64_t tiles_y = (p.H + kTileH - 1) / kTileH;
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z)
    for (int64_t ty = blockIdx.y; ty < tiles_y; ty += gridDim.y)
      body(n, ty * kTileH, static_cast<int64_t>(blockIdx.x) * kTileW);
}

inline dim3 tile_grid(const LocalAttnParams& p) {
  return dim3(grid_dim(ceil_div(p.W, kTileW), kMaxGridX), grid_dim(ceil_div(p.H, kTileH), kMaxGridYZ),
              grid_dim(p.N, kMaxGridYZ));
}

// ---- generic path (any K): per-pixel helpers reading global memory ----

// sum_c a[c * HW] * b[c * HW]: a and b point at channel 0 of a pixel of (channels, H, W) images.
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t dot_channels(const T* __restrict__ a, const T* __restrict__ b, int64_t channels,
                                              int64_t HW) {
  acc_t s = acc_t(0);
  for (int64_t c = 0; c < channels; ++c) s += to_acc(a[c * HW]) * to_acc(b[c * HW]);
  return s;
}

// Log-sum-exp over a stream of logits without storing them; -inf logits (excluded positions) are skipped.
template <typename acc_t>
struct OnlineLse {
  acc_t m = -acc_t(INFINITY), l = acc_t(0);
  __device__ __forceinline__ void add(acc_t s) {
    if (s == -acc_t(INFINITY)) return;
    if (s > m) {
      l = l * exp_(m - s) + acc_t(1);
      m = s;
    } else {
      l += exp_(s - m);
    }
  }
  __device__ __forceinline__ acc_t lse() const { return m + log_(l); }
};

// Scaled logit between the query at q_pix and window position j (whose key is at key_pix when inside).
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t logit_at(const T* __restrict__ q, const T* __restrict__ k, int64_t q_pix,
                                          int64_t key_pix, bool key_inside, const LocalAttnParams& p, int64_t HW) {
  if (!key_inside) return padding_logit<acc_t>(p.padding);
  return dot_channels<T, acc_t>(q + q_pix, k + key_pix, p.C, HW) * static_cast<acc_t>(p.scale);
}

// Log-sum-exp of the window logits of query pixel (y, x).
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t pixel_lse(const T* __restrict__ q, const T* __restrict__ k, int64_t y, int64_t x,
                                           const LocalAttnParams& p, int64_t HW) {
  OnlineLse<acc_t> acc;
  for (int j = 0; j < p.kernel_size * p.kernel_size; ++j) {
    const int64_t yy = y + window_dy(j, p.kernel_size), xx = x + window_dx(j, p.kernel_size);
    const bool in = inside(yy, xx, p.H, p.W);
    acc.add(logit_at<T, acc_t>(q, k, y * p.W + x, in ? yy * p.W + xx : 0, in, p, HW));
  }
  return acc.lse();
}

}  // namespace attn
}  // namespace cuda
}  // namespace arseg
