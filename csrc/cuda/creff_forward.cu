// Fused CReFF forward (EXPERIMENTAL, never run on a GPU): out = lr + local_attn(q, k, v) where
// hr = mv_warp(key_feature), lr = align_corners resize of lr_feature, q/k/v = depthwise 3x3 of lr/hr/hr
// (creff_math.h). Only `out` is written to global memory: hr, lr, q, k and v live in shared memory and registers.
//
// One CTA of 32 x 8 threads per 8 x 32 output tile (the tiling of local_attn_device.cuh: one pixel per thread,
// x fastest). With R = K/2 the tile needs k and v on the tile plus the attention halo, (8+2R) x (32+2R)
// positions ("kv region"), hence hr on that plus the conv halo, (10+2R) x (34+2R) ("hr region"), and lr on the
// tile plus the conv halo, 10 x 34 ("lr region"; q only at the tile's own pixels, out needs lr there too).
//   setup (once per tile): the motion block, sample coordinate and four bilinear taps of every hr-region
//           position (sample_taps, as mv_warp), kept in shared memory as 32-bit plane offsets + weights;
//           positions outside the image get weight 0 (hr = 0 there: the convs' zero padding).
//   pass 1, per chunk of CC channels: gather hr through the taps, resize lr, stage the three convs' weights;
//           k = conv over the kv region (0 outside the image); each thread's q = conv of lr at its pixel, in
//           registers; logits[K*K] += q . k (registers, as local_attn's forward).
//   softmax in registers (logit 0 for out-of-image positions: local_attn's "zeros" padding).
//   pass 2, per chunk: the same staging, v = conv over the kv region (0 outside: value 0 for "zeros"),
//           out = lr + sum_j p_j v_j.
// So hr is gathered twice per tile (once per pass) and its halo is recomputed by neighbouring tiles; the trade
// is arithmetic and L1/L2 gathers for the global writes and reads of five intermediate tensors.
//
// Shared memory (K = 7): taps 640 x 32 B = 20 KB, per channel (640 + 340 + 532) words; CC = 4 channels per
// chunk for float accumulation (45 KB in all), 1 for double (43 KB): static shared memory stays under 48 KB.
// K = 9 and 11 (float accumulation only): CC = 2, 38 and 44 KB (taps 756 and 880 positions); double would need
// 50 KB and more, so float64 stops at K = 7.
// Index math: 32-bit inside one H x W (or h x w) plane (the glue checks H*W < 2^31 through
// creff_fused_supported), 64-bit plane offsets (n*C + c) * H*W. No atomics: deterministic.
// Odd K up to 11 (7 for double); the glue runs the unfused composition for the others.
// Layouts: contiguous NCHW, or channels_last (kNHWC: key_feature, lr_feature and out NHWC, read and written in
// place; mv, weight and bias contiguous). NHWC staging is pixel-major: one thread moves a pixel's CC chunk
// channels with one vector access (16 bytes for float, 8 for 16-bit types) when C % CC == 0 and the tensors are
// aligned to it (`vec`), element by element otherwise; the NCHW path is unchanged.
#include "creff.h"
#include "creff_tiles.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn;
using namespace creff_tiles;

template <typename acc_t, int K>
struct CreffTile {
  static constexpr int R = K / 2, KK = K * K;
  static constexpr int KVH = kTileH + 2 * R, KVW = kTileW + 2 * R, KV_PLANE = KVH * KVW;  // k / v
  static constexpr int HRH = KVH + 2, HRW = KVW + 2, HR_PLANE = HRH * HRW;                 // warped key
  static constexpr int LRH = kTileH + 2, LRW = kTileW + 2, LR_PLANE = LRH * LRW;           // resized lr
  static constexpr int CC = AttnChunk<acc_t, K>::CC;
  static constexpr int WSTRIDE = 10;                     // per conv and channel: 9 weights, then the bias
};

// Everything a CTA keeps in shared memory.
template <typename acc_t, int K>
struct CreffShared {
  using S = CreffTile<acc_t, K>;
  RegionTaps<acc_t, S::R + 1> taps;  // on the hr region
  acc_t hr[S::CC][S::HR_PLANE];
  acc_t lr[S::CC][S::LR_PLANE];
  acc_t kv[S::CC][S::KV_PLANE];
  acc_t wt[3][S::CC][S::WSTRIDE];  // conv 0 -> q, 1 -> k, 2 -> v
};

// The N consecutive channels of one NHWC pixel as one aligned vector access.
template <typename T, int N>
struct alignas(sizeof(T) * N) ChannelVec {
  T v[N];
};

// e[c] = src[c] for the `left` (>= 1) channels that exist, 0 past C; one vector load when `vec`.
template <typename T, int N>
__device__ __forceinline__ void load_channels(T (&e)[N], const T* src, int64_t left, bool vec) {
  if (vec) {
    *reinterpret_cast<ChannelVec<T, N>*>(e) = *reinterpret_cast<const ChannelVec<T, N>*>(src);
    return;
  }
#pragma unroll
  for (int c = 0; c < N; ++c) e[c] = c < left ? src[c] : from_acc<T>(0.0f);
}

template <typename T, int N>
__device__ __forceinline__ void store_channels(T* dst, const T (&e)[N], int64_t left, bool vec) {
  if (vec) {
    *reinterpret_cast<ChannelVec<T, N>*>(dst) = *reinterpret_cast<const ChannelVec<T, N>*>(e);
    return;
  }
#pragma unroll
  for (int c = 0; c < N; ++c)
    if (c < left) dst[c] = e[c];
}

// stage_chunk's hr and lr staging for NHWC tensors: a thread takes a position and all CC channels of the chunk,
// so each bilinear tap (of the warp and of the resize) is one vector access. Channels past C are staged as 0.
template <typename T, typename acc_t, int K>
__device__ void stage_chunk_nhwc(CreffShared<acc_t, K>& sh, const CreffParams& p, const T* __restrict__ key,
                                 const T* __restrict__ lrf, int64_t n, int64_t c0, int y0, int x0, bool vec) {
  using S = CreffTile<acc_t, K>;
  constexpr int CC = S::CC;
  const int64_t left = p.C - c0;
  const T* img = key + n * p.H * p.W * p.C + c0;  // channel c0 of pixel 0
  for (int r = rank_in_cta(); r < S::HR_PLANE; r += kThreads) {
    acc_t v[CC];
#pragma unroll
    for (int c = 0; c < CC; ++c) v[c] = acc_t(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      T e[CC];
      load_channels(e, img + static_cast<int64_t>(sh.taps.idx[k][r]) * p.C, left, vec);
#pragma unroll
      for (int c = 0; c < CC; ++c) v[c] += tap_product(sh.taps.w[k][r], to_acc(e[c]));
    }
#pragma unroll
    for (int c = 0; c < CC; ++c) sh.hr[c][r] = v[c];
  }
  const T* lr_img = lrf + n * p.h * p.w * p.C + c0;
  for (int r = rank_in_cta(); r < S::LR_PLANE; r += kThreads) {
    const int ly = r / S::LRW, lx = r - ly * S::LRW;
    const int gy = y0 - 1 + ly, gx = x0 - 1 + lx;
    acc_t v[CC];
#pragma unroll
    for (int c = 0; c < CC; ++c) v[c] = acc_t(0);
    if (inside(gy, gx, p.H, p.W)) {
      const LinearTap<acc_t> ty = align_corners_tap<acc_t>(gy, p.h, p.H);
      const LinearTap<acc_t> tx = align_corners_tap<acc_t>(gx, p.w, p.W);
      T e[4][CC];
      const int64_t row0 = ty.i0 * p.w, row1 = ty.i1 * p.w;
      load_channels(e[0], lr_img + (row0 + tx.i0) * p.C, left, vec);
      load_channels(e[1], lr_img + (row0 + tx.i1) * p.C, left, vec);
      load_channels(e[2], lr_img + (row1 + tx.i0) * p.C, left, vec);
      load_channels(e[3], lr_img + (row1 + tx.i1) * p.C, left, vec);
#pragma unroll
      for (int c = 0; c < CC; ++c)
        v[c] = bilinear_mix(to_acc(e[0][c]), to_acc(e[1][c]), to_acc(e[2][c]), to_acc(e[3][c]), ty, tx);
    }
#pragma unroll
    for (int c = 0; c < CC; ++c) sh.lr[c][r] = v[c];
  }
}

// Channels [c0, c0 + CC) of image n: hr on the hr region, lr on the lr region (pass 1 needs it for q, pass 2
// for out = lr + ...), and the three convs' weights and biases. Channels past C are staged as 0.
template <bool kNHWC, typename T, typename acc_t, int K>
__device__ void stage_chunk(CreffShared<acc_t, K>& sh, const CreffParams& p, const T* __restrict__ key,
                            const T* __restrict__ lrf, const T* __restrict__ weight, const T* __restrict__ bias,
                            int64_t n, int64_t c0, int y0, int x0, bool vec) {
  using S = CreffTile<acc_t, K>;
  if constexpr (kNHWC) {
    stage_chunk_nhwc<T, acc_t, K>(sh, p, key, lrf, n, c0, y0, x0, vec);
  } else {
    gather_hr<T, acc_t, S::R + 1, S::CC>(sh.hr, sh.taps, p, key, n, c0);
    resize_lr<T, acc_t, 1, S::CC>(sh.lr, p, lrf, n, c0, y0, x0);
  }
  stage_weights<T, acc_t, S::CC>(sh.wt, p, weight, bias, c0);
}

template <typename T, int K, bool kNHWC>
__global__ void __launch_bounds__(kThreads, TiledMinBlocks<T>::value)
    creff_forward_kernel(CreffParams p, LocalAttnParams ap, const T* __restrict__ key, const T* __restrict__ mv,
                         const T* __restrict__ lrf, const T* __restrict__ weight, const T* __restrict__ bias,
                         T* __restrict__ out, bool vec) {
  using acc_t = typename AccType<T>::type;
  using S = CreffTile<acc_t, K>;
  static_assert(sizeof(CreffShared<acc_t, K>) <= 48 * 1024, "the tile must fit static shared memory");
  ARSEG_SHARED(sh, CreffShared<acc_t, K>);
  const int64_t HW = p.H * p.W;
  const int ty = threadIdx.y, tx = threadIdx.x;
  // kv-region offset of this thread's pixel, and of its window position j: centre + (dy, dx).
  const int own_kv = (ty + S::R) * S::KVW + tx + S::R;
  const int own_lr = ty * S::LRW + tx;  // top-left of the 3x3 lr neighbourhood of this pixel
  for_each_tile(ap, [&](int64_t n, int64_t y0_, int64_t x0_) {
    const int y0 = static_cast<int>(y0_), x0 = static_cast<int>(x0_);
    const PixelPos pp = pixel_pos(y0_, x0_, p.H, p.W);
    __syncthreads();  // the previous tile's last reads of shared memory are done
    stage_taps<T, acc_t, S::R + 1>(sh.taps, p, mv, n, y0, x0);

    acc_t l[S::KK];
#pragma unroll
    for (int j = 0; j < S::KK; ++j) l[j] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      __syncthreads();  // taps complete / previous chunk's dot pass done with sh.kv
      stage_chunk<kNHWC, T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, vec);
      __syncthreads();
      conv_region<acc_t, S::R, S::CC>(sh.kv, sh.hr, sh.wt[1], p, y0, x0);
      acc_t q[S::CC];
#pragma unroll
      for (int c = 0; c < S::CC; ++c) {
        const acc_t* row = &sh.lr[c][own_lr];
        q[c] = depthwise3x3(row, row + S::LRW, row + 2 * S::LRW, 1, sh.wt[0][c], sh.wt[0][c][9]);
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < S::KK; ++j) {
        const acc_t* kp = &sh.kv[0][own_kv + window_dy(j, K) * S::KVW + window_dx(j, K)];
#pragma unroll
        for (int c = 0; c < S::CC; ++c) l[j] += q[c] * kp[c * S::KV_PLANE];
      }
    }
    softmax_in_place<acc_t, K>(l, pp.y, pp.x, p.H, p.W, static_cast<acc_t>(p.scale), AttnPadding::Zeros);

    T* on = out + n * p.C * HW;
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      __syncthreads();
      stage_chunk<kNHWC, T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, vec);
      __syncthreads();
      conv_region<acc_t, S::R, S::CC>(sh.kv, sh.hr, sh.wt[2], p, y0, x0);
      __syncthreads();
      acc_t o[S::CC];
#pragma unroll
      for (int c = 0; c < S::CC; ++c) o[c] = acc_t(0);
#pragma unroll
      for (int j = 0; j < S::KK; ++j) {
        const acc_t* vp = &sh.kv[0][own_kv + window_dy(j, K) * S::KVW + window_dx(j, K)];
#pragma unroll
        for (int c = 0; c < S::CC; ++c) o[c] += l[j] * vp[c * S::KV_PLANE];
      }
      if (pp.active && kNHWC) {
        T res[S::CC];
#pragma unroll
        for (int c = 0; c < S::CC; ++c) res[c] = from_acc<T>(sh.lr[c][own_lr + S::LRW + 1] + o[c]);
        store_channels(on + static_cast<int64_t>(pp.off) * p.C + c0, res, p.C - c0, vec);
      } else if (pp.active) {
#pragma unroll
        for (int c = 0; c < S::CC; ++c)
          if (c0 + c < p.C) on[(c0 + c) * HW + pp.off] = from_acc<T>(sh.lr[c][own_lr + S::LRW + 1] + o[c]);
      }
    }
  });
}

}  // namespace

template <typename T>
cudaError_t creff_forward(const CreffParams& p, bool channels_last, const T* key_feature, const T* mv,
                          const T* lr_feature, const T* weight, const T* bias, T* out, cudaStream_t stream) {
  if (p.N * p.C * p.H * p.W == 0) return cudaSuccess;
  using acc_t = typename AccType<T>::type;
  constexpr bool kFloat64 = sizeof(acc_t) == 8;
  if (!creff_fused_supported(p, kFloat64)) return cudaErrorInvalidValue;
  // The tile loop and grid of local_attn's tiled kernels, over the same (N, H, W).
  const LocalAttnParams ap{p.N, p.C, p.C, p.H, p.W, p.kernel_size, p.scale, AttnPadding::Zeros};
  ARSEG_KERNEL_SIZE_SWITCH_TO_11(p.kernel_size, K, [&] {
    // creff_fused_supported excludes the generic size, and K > 7 for double.
    if constexpr (K != kGenericKernelSize && (!kFloat64 || K <= 7)) {
      constexpr int CC = CreffTile<acc_t, K>::CC;
      const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % (sizeof(T) * CC) == 0; };
      const bool vec = channels_last && p.C % CC == 0 && aligned(key_feature) && aligned(lr_feature) && aligned(out);
      if (channels_last)
        ARSEG_LAUNCH(tile_grid(ap), dim3(kTileW, kTileH), 0, stream, creff_forward_kernel<T, K, true>)(
            p, ap, key_feature, mv, lr_feature, weight, bias, out, vec);
      else
        ARSEG_LAUNCH(tile_grid(ap), dim3(kTileW, kTileH), 0, stream, creff_forward_kernel<T, K, false>)(
            p, ap, key_feature, mv, lr_feature, weight, bias, out, vec);
    }
  });
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_CREFF_FORWARD(T)                                                                    \
  template cudaError_t creff_forward<T>(const CreffParams&, bool, const T*, const T*, const T*, const T*,    \
                                        const T*, T*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_CREFF_FORWARD)

}  // namespace cuda
}  // namespace arseg
