// Building blocks of the v2 local_attn kernels (local_attn_v2_forward.cu, local_attn_v2_backward.cu), nvcc only.
//
// Tiling. A CTA of WY x WX warps owns a (4 WY) x (4 WX) tile of "row" pixels (queries, or keys in the key-centred
// backward pass); each warp owns a 4 x 4 sub-tile = the 16 rows of an MMA. The pixels a row pixel attends to lie
// in the tile's halo, (4 WY + 2R) x (4 WX + 2R); a warp's own halo is (4 + 2R)^2 = NK pixels, the columns of its
// score tile (padded to NT tiles of 8). The score tile therefore also holds pairs outside the K x K window; they
// are masked to -inf (probability 0): ~2x more MMA work than the exact pairs, still far cheaper on tensor cores
// than exact work on CUDA cores.
//
// Staging. Channels move in chunks of 64 bytes (32 16-bit or 16 float channels). A buffer holds the chunk for the
// tile rows ("M region", warp-major: row 16 w + m is pixel m of warp w) and for the halo ("N region", row-major),
// each pixel a row of 80 bytes (64 + 16 padding: the MMA fragment loads of a warp hit distinct banks). Two buffers
// alternate: while the warps multiply chunk s, chunk s + 1 is in flight (cp.async; 16-byte vectors when the
// tensors are channels_last with aligned channel counts, 4-byte element copies for float NCHW, plain loads for
// 16-bit NCHW). Out-of-image pixels and channels past the end are staged as zeros. Results leave through the
// M region of the current buffer and are written back with the same mapping (coalesced vectors or elements).
//
// Index math: all offsets inside one image are 32-bit (C*H*W < 2^31, checked by the launcher); the image offset
// is 64-bit.
#pragma once

#include "device_common.cuh"
#include "local_attn_v2.h"
#include "local_attn_v2_mma.cuh"

namespace arseg {
namespace cuda {
namespace attn2 {

constexpr int kWarpTile = 4;          // a warp's row tile is 4 x 4 pixels
constexpr int kChunkBytes = 64;       // channels per staged chunk: 64 bytes' worth
constexpr int kRowBytes = 80;         // staged pixel row: the chunk + 16 bytes of bank padding
constexpr int kStatsPerPixel = 2;     // backward workspace: (log-sum-exp, delta) per query pixel

// Compile-time geometry of one kernel instantiation.
template <typename T, int K, int WY, int WX>
struct Geo {
  using Mma = typename MmaFor<T>::type;
  static constexpr int R = K / 2;
  static constexpr int WH = kWarpTile + 2 * R;  // side of a warp's halo
  static constexpr int NK = WH * WH;            // halo pixels of a warp (score-tile columns)
  static constexpr int NKP = (NK + Mma::kKeyStep - 1) / Mma::kKeyStep * Mma::kKeyStep;
  static constexpr int NT = NKP / 8;            // accumulator tiles of 8 columns
  static constexpr int TH = WY * kWarpTile, TW = WX * kWarpTile;  // CTA row tile
  static constexpr int HH = TH + 2 * R, HW = TW + 2 * R;          // CTA halo
  static constexpr int MROWS = TH * TW, NROWS = HH * HW;
  static constexpr int CH = kChunkBytes / static_cast<int>(sizeof(T));  // channels per chunk
  static constexpr int RS = kRowBytes / static_cast<int>(sizeof(T));    // row stride (elements)
  static constexpr int VEC = 16 / static_cast<int>(sizeof(T));          // elements per 16-byte vector
  static constexpr int CT = CH / 8;                                     // output accumulator tiles per chunk
  static constexpr int THREADS = WY * WX * 32;
  static constexpr int BUF = (MROWS + NROWS) * RS;  // elements per buffer
  static constexpr size_t kSmemBytes = 2 * BUF * sizeof(T);
};

// One image of one tensor: element (c, pixel) at base[c * cs + pixel * ps].
template <typename T>
struct Img {
  const T* base;
  int channels, cs, ps;
};

template <typename T>
__device__ __forceinline__ Img<T> image(const T* t, int64_t n, int channels, const LocalAttnV2Params& p) {
  const int hw = p.H * p.W;
  return {t + n * static_cast<int64_t>(channels) * hw, channels, p.channels_last ? 1 : hw,
          p.channels_last ? channels : 1};
}

// Where this CTA and this lane are.
struct Lane {
  int y0, x0;  // CTA tile origin (image coordinates)
  int warp, wy, wx;  // warp index and the origin of its 4 x 4 tile inside the CTA tile
  int g, t;    // mma lane coordinates: lane / 4, lane % 4
};

template <class G>
__device__ __forceinline__ Lane lane_info(int W) {
  const int tiles_x = (W + G::TW - 1) / G::TW;
  const int ty = static_cast<int>(blockIdx.x) / tiles_x, tx = static_cast<int>(blockIdx.x) - ty * tiles_x;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int wy = warp / (G::TW / kWarpTile), wx = warp - wy * (G::TW / kWarpTile);
  return {ty * G::TH, tx * G::TW, warp, wy * kWarpTile, wx * kWarpTile, lane >> 2, lane & 3};
}

// L with its lane coordinates made opaque (see opaque() in ptx.cuh).
__device__ __forceinline__ Lane fresh(const Lane& L) {
  return {L.y0, L.x0, L.warp, opaque(L.wy), opaque(L.wx), opaque(L.g), opaque(L.t)};
}

// Image coordinates of M-region row r (warp-major) and of N-region row r (row-major halo).
template <class G>
__device__ __forceinline__ void m_pixel(const Lane& L, int r, int& y, int& x) {
  const int w = r >> 4, m = r & 15, wy = w / (G::TW / kWarpTile), wx = w - wy * (G::TW / kWarpTile);
  y = L.y0 + wy * kWarpTile + (m >> 2);
  x = L.x0 + wx * kWarpTile + (m & 3);
}
template <class G>
__device__ __forceinline__ void n_pixel(const Lane& L, int r, int& y, int& x) {
  const int hy = r / G::HW;
  y = L.y0 - G::R + hy;
  x = L.x0 - G::R + (r - hy * G::HW);
}

// N-region row of column n (0 <= n < NKP) of this warp's score tile; padding columns map to row 0 (masked).
template <class G>
__device__ __forceinline__ int n_row(const Lane& L, int n) {
  const int hy = n / G::WH, hx = n - hy * G::WH;
  return n < G::NK ? (L.wy + hy) * G::HW + L.wx + hx : 0;
}

__device__ __forceinline__ bool inside(int y, int x, int H, int W) {
  return static_cast<unsigned>(y) < static_cast<unsigned>(H) && static_cast<unsigned>(x) < static_cast<unsigned>(W);
}

// ---- staging: channels [c0, c0 + CH) of `rows` pixels into dst[row][channel] ----

template <class G, typename T, class PixelOf>
__device__ __forceinline__ void stage(T* dst, int rows, PixelOf pixel_of, const Img<T>& img, int c0, int H, int W,
                                      bool vec) {
  if (vec) {  // channels contiguous, channel count a multiple of VEC, 16-byte aligned
    constexpr int VPR = G::CH / G::VEC;
#pragma unroll 1
    for (int i = threadIdx.x; i < rows * VPR; i += G::THREADS) {
      const int r = i / VPR, c = c0 + (i - r * VPR) * G::VEC;
      int y, x;
      pixel_of(r, y, x);
      const bool ok = inside(y, x, H, W) && c < img.channels;
      const T* src = ok ? img.base + (y * W + x) * img.ps + c : img.base;
      cp_async16(dst + r * G::RS + (c - c0), src, ok ? 16 : 0);
    }
  } else {  // any strides; consecutive threads take consecutive pixels of one channel (coalesced in NCHW)
#pragma unroll 1
    for (int i = threadIdx.x; i < rows * G::CH; i += G::THREADS) {
      const int c = i / rows, r = i - c * rows;
      int y, x;
      pixel_of(r, y, x);
      const bool ok = inside(y, x, H, W) && c0 + c < img.channels;
      const T* src = ok ? img.base + (c0 + c) * img.cs + (y * W + x) * img.ps : img.base;
      if constexpr (sizeof(T) == 4) {
        cp_async4(dst + r * G::RS + c, src, ok ? 4 : 0);
      } else {
        dst[r * G::RS + c] = ok ? *src : from_acc<T>(0.0f);  // no T(float): torch builds with __CUDA_NO_HALF_CONVERSIONS__
      }
    }
  }
}

template <class G, typename T>
__device__ __forceinline__ void stage_m(T* buf, const Lane& L, const Img<T>& img, int c0, int H, int W, bool vec) {
  stage<G>(buf, G::MROWS, [&](int r, int& y, int& x) { m_pixel<G>(L, r, y, x); }, img, c0, H, W, vec);
}
template <class G, typename T>
__device__ __forceinline__ void stage_n(T* buf, const Lane& L, const Img<T>& img, int c0, int H, int W, bool vec) {
  stage<G>(buf + G::MROWS * G::RS, G::NROWS, [&](int r, int& y, int& x) { n_pixel<G>(L, r, y, x); }, img, c0, H,
           W, vec);
}

// Writes channels [c0, c0 + CH) of the M region (written by write_rows) to the image of tensor `out`.
template <class G, typename T>
__device__ __forceinline__ void store_m(T* out, int cs, int ps, int channels, const T* buf, const Lane& L, int c0,
                                        int H, int W, bool vec) {
  if (vec) {
    constexpr int VPR = G::CH / G::VEC;
    for (int i = threadIdx.x; i < G::MROWS * VPR; i += G::THREADS) {
      const int r = i / VPR, c = c0 + (i - r * VPR) * G::VEC;
      int y, x;
      m_pixel<G>(L, r, y, x);
      if (inside(y, x, H, W) && c < channels)
        *reinterpret_cast<uint4*>(out + (y * W + x) * ps + c) =
            *reinterpret_cast<const uint4*>(buf + r * G::RS + (c - c0));
    }
  } else {
    for (int i = threadIdx.x; i < G::MROWS * G::CH; i += G::THREADS) {
      const int c = i / G::MROWS, r = i - c * G::MROWS;
      int y, x;
      m_pixel<G>(L, r, y, x);
      if (inside(y, x, H, W) && c0 + c < channels) out[(c0 + c) * cs + (y * W + x) * ps] = buf[r * G::RS + c];
    }
  }
}

// ---- the pipeline: steps s = 0..steps-1, issue(s + 1) overlapping compute(s) ----
// issue(s, buf) stages step s's operands into buffer `buf` (cp.async or plain stores); compute(s, buf) reads it.
// All threads of the CTA run both uniformly (compute may contain barriers).
template <class G, typename T, class Issue, class Compute>
__device__ __forceinline__ void pipeline(T* smem, int steps, Issue issue, Compute compute) {
  issue(0, smem);
  cp_async_commit();
  for (int s = 0; s < steps; ++s) {
    __syncthreads();  // everyone is done with the buffer issue(s + 1) overwrites (read by compute(s - 1))
    if (s + 1 < steps) issue(s + 1, smem + ((s + 1) & 1) * G::BUF);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of step s have landed ...
    __syncthreads();     // ... and everyone's
    compute(s, smem + (s & 1) * G::BUF);
  }
  __syncthreads();  // the caller may restage right away
}

// ---- products of one chunk ----

// S[j] += A(rows of this warp in the M region) . B(column J0 + j's halo pixel in the N region)^T over the chunk,
// for the tiles J0 + j < NT (J0 > 0: one part of the columns, see the backward's SPLIT).
template <class G, int J0 = 0, typename T, int NJ>
__device__ __forceinline__ void dot_chunk(float (&S)[NJ][4], const T* buf, const Lane& L0) {
  using Mma = typename G::Mma;
  constexpr int KS = G::CH / Mma::kChanStep;
  const Lane L = fresh(L0);
  const T* r0 = buf + (L.warp * 16 + L.g) * G::RS;
  typename Mma::A a[KS];
#pragma unroll
  for (int k = 0; k < KS; ++k) a[k] = Mma::load_a(r0, r0 + 8 * G::RS, k * Mma::kChanStep, L.t);
  const T* nbuf = buf + G::MROWS * G::RS;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    if (J0 + j < G::NT) {
      const T* key = nbuf + n_row<G>(L, 8 * (J0 + j) + L.g) * G::RS;
#pragma unroll
      for (int k = 0; k < KS; ++k) Mma::dot(S[j], a[k], key, k * Mma::kChanStep, L.t);
    }
  }
}

// O = P . B(N region) over all NKP columns, for the CH channels of the chunk (CT tiles of 8 channels).
template <class G, typename T>
__device__ __forceinline__ void weighted_chunk(float (&O)[G::CT][4], const float (&P)[G::NT][4], const T* buf,
                                               const Lane& L0) {
  using Mma = typename G::Mma;
  const Lane L = fresh(L0);
#pragma unroll
  for (int o = 0; o < G::CT; ++o) O[o][0] = O[o][1] = O[o][2] = O[o][3] = 0.f;
  const T* nbuf = buf + G::MROWS * G::RS;
#pragma unroll
  for (int s = 0; s < G::NKP / Mma::kKeyStep; ++s) {
    const typename Mma::A a = Mma::p_frag(P, s);
    const T* rows[Mma::kKeyRows];
#pragma unroll
    for (int i = 0; i < Mma::kKeyRows; ++i)
      rows[i] = nbuf + n_row<G>(L, s * Mma::kKeyStep + Mma::key_in_step(i, L.t)) * G::RS;
#pragma unroll
    for (int o = 0; o < G::CT; ++o) Mma::weighted(O[o], a, rows, 8 * o + L.g);
  }
}

// Rounds the warp's output accumulators into its 16 rows of the M region (then store_m writes them out).
template <class G, typename T>
__device__ __forceinline__ void write_rows(T* buf, const float (&O)[G::CT][4], const Lane& L) {
  T* r0 = buf + (L.warp * 16 + L.g) * G::RS;
#pragma unroll
  for (int o = 0; o < G::CT; ++o) {
    const int c = 8 * o + 2 * L.t;
    r0[c] = from_acc<T>(O[o][0]);
    r0[c + 1] = from_acc<T>(O[o][1]);
    r0[8 * G::RS + c] = from_acc<T>(O[o][2]);
    r0[8 * G::RS + c + 1] = from_acc<T>(O[o][3]);
  }
}

// ---- score-tile element coordinates and masks ----
// Element e of tile j of this lane: row m = g + 8 (e >> 1) of the warp tile, column n = 8 j + 2 t + (e & 1) of
// the warp halo. Row pixel (wy + m / 4, wx + m % 4) and column pixel (wy - R + n / WH, wx - R + n % WH) are
// within each other's window iff 0 <= n / WH - m / 4 <= 2R and 0 <= n % WH - m % 4 <= 2R (the same condition
// for query rows with key columns and key rows with query columns).
struct Pair {
  int ry, rx, cy, cx;  // image coordinates of the row pixel and the column pixel
  bool window;         // a real column (n < NK) inside the row pixel's window
};

template <class G>
__device__ __forceinline__ Pair pair_at(const Lane& L, int j, int e) {
  const int m = L.g + 8 * (e >> 1), n = 8 * j + 2 * L.t + (e & 1);
  const int my = m >> 2, mx = m & 3, ny = n / G::WH, nx = n - (n / G::WH) * G::WH;
  const bool window = n < G::NK && static_cast<unsigned>(ny - my) <= 2u * G::R &&
                      static_cast<unsigned>(nx - mx) <= 2u * G::R;
  return {L.y0 + L.wy + my, L.x0 + L.wx + mx, L.y0 + L.wy - G::R + ny, L.x0 + L.wx - G::R + nx, window};
}

// Row-wise sums over the 4 lanes sharing a row (the quad) and the maximum.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// Raw query-row scores q.k -> softmax probabilities in place (scale on in-image keys, the padding logit on
// out-of-image keys inside the window, probability 0 outside the window). lse[h]: log-sum-exp of rows g + 8h.
template <class G>
__device__ __forceinline__ void softmax_rows(float (&S)[G::NT][4], const Lane& L, int H, int W, float scale,
                                             AttnPadding padding, float (&lse)[2]) {
  const float pad = padding_logit<float>(padding);
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < G::NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const Pair pr = pair_at<G>(L, j, e);
      const float s = !pr.window ? -INFINITY : inside(pr.cy, pr.cx, H, W) ? S[j][e] * scale : pad;
      S[j][e] = s;
      mx[e >> 1] = fmaxf(mx[e >> 1], s);
    }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = quad_max(mx[h]);
    if (mx[h] == -INFINITY) mx[h] = 0.f;  // only rows of out-of-image pixels (never stored)
  }
#pragma unroll
  for (int j = 0; j < G::NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      S[j][e] = __expf(S[j][e] - mx[e >> 1]);
      sum[e >> 1] += S[j][e];
    }
  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    sum[h] = quad_sum(sum[h]);
    inv[h] = sum[h] > 0.f ? 1.f / sum[h] : 0.f;
    lse[h] = mx[h] + __logf(sum[h]);
  }
#pragma unroll
  for (int j = 0; j < G::NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) S[j][e] *= inv[e >> 1];
}

// Grid: one CTA per tile of an image, images strided over blockIdx.y.
template <class G>
inline dim3 tile_grid(const LocalAttnV2Params& p) {
  const int64_t tiles = ceil_div(p.H, G::TH) * ceil_div(p.W, G::TW);
  return dim3(static_cast<unsigned>(tiles), grid_dim(p.N, kMaxGridYZ));
}


// 16-byte vector staging applies when every tensor is channels_last, every channel count is a multiple of the
// vector width and every pointer is 16-byte aligned.
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Launches `kernel` over the tiles of every image with G's block size and `smem` bytes of dynamic shared memory.
template <class G, class... KArgs, class... Args>
inline cudaError_t launch_tiles(void (*kernel)(KArgs...), size_t smem, const LocalAttnV2Params& p,
                                cudaStream_t stream, Args... args) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  ARSEG_LAUNCH(tile_grid<G>(p), G::THREADS, smem, stream, kernel)(args...);
  return cudaGetLastError();
}

}  // namespace attn2
}  // namespace cuda
}  // namespace arseg
