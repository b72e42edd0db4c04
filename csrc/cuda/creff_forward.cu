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
#include "local_attn_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn;

template <typename acc_t, int K>
struct CreffTile {
  static constexpr int R = K / 2, KK = K * K;
  static constexpr int KVH = kTileH + 2 * R, KVW = kTileW + 2 * R, KV_PLANE = KVH * KVW;  // k / v
  static constexpr int HRH = KVH + 2, HRW = KVW + 2, HR_PLANE = HRH * HRW;                 // warped key
  static constexpr int LRH = kTileH + 2, LRW = kTileW + 2, LR_PLANE = LRH * LRW;           // resized lr
  // Channels per chunk: as many as the 48 KB of static shared memory allow (creff_fused_supported has the sizes).
  static constexpr int CC = sizeof(acc_t) == 8 ? 1 : (K <= 7 ? 4 : 2);
  static constexpr int WSTRIDE = 10;                     // per conv and channel: 9 weights, then the bias
};

// Everything a CTA keeps in shared memory.
template <typename acc_t, int K>
struct CreffShared {
  using S = CreffTile<acc_t, K>;
  int tap_idx[4][S::HR_PLANE];  // offset of each bilinear tap inside the key plane
  acc_t tap_w[4][S::HR_PLANE];  // its weight (0: absent tap or position outside the image)
  acc_t hr[S::CC][S::HR_PLANE];
  acc_t lr[S::CC][S::LR_PLANE];
  acc_t kv[S::CC][S::KV_PLANE];
  acc_t wt[3][S::CC][S::WSTRIDE];  // conv 0 -> q, 1 -> k, 2 -> v
};

__device__ __forceinline__ int thread_rank() { return threadIdx.y * kTileW + threadIdx.x; }

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

// Bilinear taps of every hr-region position of the tile at (y0, x0) of image n.
template <typename T, typename acc_t, int K>
__device__ void stage_taps(CreffShared<acc_t, K>& sh, const CreffParams& p, const T* __restrict__ mv, int64_t n,
                           int y0, int x0) {
  using S = CreffTile<acc_t, K>;
  for (int i = thread_rank(); i < S::HR_PLANE; i += kThreads) {
    const int hy = i / S::HRW, hx = i - hy * S::HRW;
    const int gy = y0 - S::R - 1 + hy, gx = x0 - S::R - 1 + hx;
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
      sh.tap_idx[k][i] = static_cast<int>(t.idx[k]);
      sh.tap_w[k][i] = t.w[k];
    }
  }
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
  for (int r = thread_rank(); r < S::HR_PLANE; r += kThreads) {
    acc_t v[CC];
#pragma unroll
    for (int c = 0; c < CC; ++c) v[c] = acc_t(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      T e[CC];
      load_channels(e, img + static_cast<int64_t>(sh.tap_idx[k][r]) * p.C, left, vec);
#pragma unroll
      for (int c = 0; c < CC; ++c) v[c] += tap_product(sh.tap_w[k][r], to_acc(e[c]));
    }
#pragma unroll
    for (int c = 0; c < CC; ++c) sh.hr[c][r] = v[c];
  }
  const T* lr_img = lrf + n * p.h * p.w * p.C + c0;
  for (int r = thread_rank(); r < S::LR_PLANE; r += kThreads) {
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
  const int tid = thread_rank();
  const int w = static_cast<int>(p.w);
  const int64_t HW = p.H * p.W, hw = p.h * p.w;
  if constexpr (kNHWC) {
    stage_chunk_nhwc<T, acc_t, K>(sh, p, key, lrf, n, c0, y0, x0, vec);
  } else {
    for (int i = tid; i < S::CC * S::HR_PLANE; i += kThreads) {
      const int c = i / S::HR_PLANE, r = i - c * S::HR_PLANE;
      acc_t v = acc_t(0);
      if (c0 + c < p.C) {
        const T* plane = key + (n * p.C + c0 + c) * HW;
#pragma unroll
        for (int k = 0; k < 4; ++k) v += tap_product(sh.tap_w[k][r], to_acc(plane[sh.tap_idx[k][r]]));
      }
      sh.hr[c][r] = v;
    }
    for (int i = tid; i < S::CC * S::LR_PLANE; i += kThreads) {
      const int c = i / S::LR_PLANE, r = i - c * S::LR_PLANE;
      const int ly = r / S::LRW, lx = r - ly * S::LRW;
      const int gy = y0 - 1 + ly, gx = x0 - 1 + lx;
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
      sh.lr[c][r] = v;
    }
  }
  for (int i = tid; i < 3 * S::CC * S::WSTRIDE; i += kThreads) {
    const int conv = i / (S::CC * S::WSTRIDE), r = i - conv * S::CC * S::WSTRIDE;
    const int c = r / S::WSTRIDE, t = r - c * S::WSTRIDE;
    acc_t v = acc_t(0);
    if (c0 + c < p.C) {
      const int64_t oc = conv * p.C + c0 + c;
      v = to_acc(t < 9 ? weight[oc * 9 + t] : bias[oc]);
    }
    sh.wt[conv][c][t] = v;
  }
}

// sh.kv = depthwise conv `conv` (1: k, 2: v) of sh.hr over the kv region; 0 at positions outside the image
// (a zero-padded key/value of local_attn; the logit there is replaced by 0 in softmax_in_place anyway).
template <typename acc_t, int K>
__device__ void conv_kv_region(CreffShared<acc_t, K>& sh, const CreffParams& p, int conv, int y0, int x0) {
  using S = CreffTile<acc_t, K>;
  for (int i = thread_rank(); i < S::CC * S::KV_PLANE; i += kThreads) {
    const int c = i / S::KV_PLANE, r = i - c * S::KV_PLANE;
    const int ky = r / S::KVW, kx = r - ky * S::KVW;
    acc_t v = acc_t(0);
    if (inside(y0 - S::R + ky, x0 - S::R + kx, p.H, p.W)) {
      // kv position (ky, kx) is hr position (ky + 1, kx + 1): rows ky .. ky + 2 around it.
      const acc_t* row = &sh.hr[c][ky * S::HRW];
      const acc_t* wt = sh.wt[conv][c];
      v = depthwise3x3(row, row + S::HRW, row + 2 * S::HRW, kx + 1, wt, wt[9]);
    }
    sh.kv[c][r] = v;
  }
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
    stage_taps<T, acc_t, K>(sh, p, mv, n, y0, x0);

    acc_t l[S::KK];
#pragma unroll
    for (int j = 0; j < S::KK; ++j) l[j] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      __syncthreads();  // taps complete / previous chunk's dot pass done with sh.kv
      stage_chunk<kNHWC, T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, vec);
      __syncthreads();
      conv_kv_region<acc_t, K>(sh, p, 1, y0, x0);
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
      conv_kv_region<acc_t, K>(sh, p, 2, y0, x0);
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
