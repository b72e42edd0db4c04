// Fused forward of local_attn: similarities, softmax and the weighted sum of values in ONE kernel; nothing but
// the output is written to global memory (the backward recomputes the logits).
//
// Tiled kernel (K = 1, 3, 5, 7; tiling in local_attn_device.cuh), per 8 x 32 pixel tile:
//   pass 1, for each 16-channel chunk of C: stage the key halo, dot it with the thread's query chunk into
//           K*K register logits;
//   softmax in registers (padding logit for outside positions, scale on inside logits only);
//   pass 2, for each 16-channel chunk of Cv: stage the value halo (0 outside: value 0 for "zeros", weight 0
//           for "exclude"), weighted sum with the probabilities, store the chunk of the output.
// Traffic per tile: q and out once, k and v once plus halo ((14*38)/(8*32) = 2.1x for K = 7, served from L2
// for neighbouring tiles). For k = 7, C = 64: 49 logits + 16 q values + 16 outputs live in registers.
//
// Generic kernel (K = 9..15): one thread per pixel, online log-sum-exp over the window, then per chunk of 16
// value channels the logits are recomputed and the weighted values accumulated, reading k/v through L1/L2.
#include "local_attn_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn;

template <typename T, int K>
__global__ void __launch_bounds__(kThreads, TiledMinBlocks<T>::value)
    forward_tiled_kernel(LocalAttnParams p, const T* __restrict__ q, const T* __restrict__ k,
                         const T* __restrict__ v, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  using S = Tile<acc_t, K>;
  ARSEG_SHARED(s, acc_t[S::CC * S::PLANE]);
  const int64_t HW = p.H * p.W;
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    acc_t l[S::KK];
#pragma unroll
    for (int j = 0; j < S::KK; ++j) l[j] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      acc_t own[S::CC];
      load_own(own, qn, p.C, c0, HW, pp);
      __syncthreads();
      stage_halo<T, acc_t, K>(s, kn, p.C, c0, p.H, p.W, y0, x0);
      __syncthreads();
      dot_pass<acc_t, K, false>(l, own, s);
    }
    softmax_in_place<acc_t, K>(l, pp.y, pp.x, p.H, p.W, static_cast<acc_t>(p.scale), p.padding);
    const T* vn = v + n * p.Cv * HW;
    T* on = out + n * p.Cv * HW;
    for (int64_t c0 = 0; c0 < p.Cv; c0 += S::CC) {
      __syncthreads();
      stage_halo<T, acc_t, K>(s, vn, p.Cv, c0, p.H, p.W, y0, x0);
      __syncthreads();
      acc_t o[S::CC];
      weighted_pass<acc_t, K, false>(o, l, s);
      store_own(on, p.Cv, c0, HW, pp, o);
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_generic_kernel(LocalAttnParams p, const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const int64_t HW = p.H * p.W;
  const int K = p.kernel_size;
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    if (!pp.active) return;  // no barriers in this kernel
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    const T* vn = v + n * p.Cv * HW;
    const acc_t lse = pixel_lse<T, acc_t>(qn, kn, pp.y, pp.x, p, HW);
    for (int64_t c0 = 0; c0 < p.Cv; c0 += kGenericChunk) {
      acc_t o[kGenericChunk];
#pragma unroll
      for (int c = 0; c < kGenericChunk; ++c) o[c] = acc_t(0);
      for (int j = 0; j < K * K; ++j) {
        const int64_t yy = pp.y + window_dy(j, K), xx = pp.x + window_dx(j, K);
        if (!inside(yy, xx, p.H, p.W)) continue;  // value 0 ("zeros") or weight 0 ("exclude")
        const int64_t key = yy * p.W + xx;
        const acc_t pj = exp_(logit_at<T, acc_t>(qn, kn, pp.off, key, true, p, HW) - lse);
#pragma unroll
        for (int c = 0; c < kGenericChunk; ++c)
          if (c0 + c < p.Cv) o[c] += pj * to_acc(vn[(c0 + c) * HW + key]);
      }
      store_own(out + n * p.Cv * HW, p.Cv, c0, HW, pp, o);
    }
  });
}

}  // namespace

template <typename T>
cudaError_t local_attn_forward(const LocalAttnParams& p, const T* query, const T* key, const T* value, T* out,
                               cudaStream_t stream) {
  if (p.N * p.Cv * p.H * p.W == 0) return cudaSuccess;
  if (!is_valid_kernel_size(p.kernel_size)) return cudaErrorInvalidValue;
  ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] {
    if constexpr (K == kGenericKernelSize)
      ARSEG_LAUNCH(tile_grid(p), dim3(kTileW, kTileH), 0, stream, forward_generic_kernel<T>)(p, query, key, value, out);
    else
      ARSEG_LAUNCH(tile_grid(p), dim3(kTileW, kTileH), 0, stream, forward_tiled_kernel<T, K>)
          (p, query, key, value, out);
  });
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_ATTN_FORWARD(T) \
  template cudaError_t local_attn_forward<T>(const LocalAttnParams&, const T*, const T*, const T*, T*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_ATTN_FORWARD)

}  // namespace cuda
}  // namespace arseg
