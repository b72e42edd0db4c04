// Backward of local_attn in two deterministic kernels (no atomics), recomputing the logits from q and k.
//
// Kernel 1, per QUERY pixel i: logits -> softmax P_i (and lse_i), dP_ij = <dout_i, v_j>,
//   delta_i = sum_j P_ij dP_ij, dS_ij = P_ij (dP_ij - delta_i) scale at inside positions (0 outside: an outside
//   logit is the constant padding logit), dq_i = sum_j dS_ij k_j. Writes dq and (lse_i, delta_i) to a
//   workspace of 2 accumulator values per pixel.
// Kernel 2, per KEY pixel j: the query pixels that see j are i = j - o_m (mirrored window offsets); with
//   s_ij = scale <q_i, k_j>, P_ij = exp(s_ij - lse_i), dS_ij = P_ij (<dout_i, v_j> - delta_i) scale:
//   dk_j = sum_i dS_ij q_i, dv_j = sum_i P_ij dout_i. Each key pixel sums its own terms in a fixed order.
//
// Tiled versions (K <= 7) use the shared-memory passes of local_attn_device.cuh: kernel 1 stages k (logits),
// v (dP) and k again (dq); kernel 2 stages q (s), dout (dP), q again (dk) and dout again (dv), the last
// three mirrored. Per pixel two K*K register arrays (P and dP/dS) are live. Generic versions (K = 9..15)
// recompute dot products from global memory per 16-channel chunk.
// The tiled kernels are compiled for 1 CTA per SM (__launch_bounds__(256, 1)): two K*K arrays need up to 255
// registers (K = 7, fp32: ~254, no spill); with 128 they would spill ~300 bytes per thread.
#include "local_attn_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn;

template <typename T, int K>
__global__ void __launch_bounds__(kThreads, 1)
    query_grad_tiled_kernel(LocalAttnParams p, const T* __restrict__ dout, const T* __restrict__ q,
                            const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dq,
                            typename AccType<T>::type* __restrict__ stats) {
  using acc_t = typename AccType<T>::type;
  using S = Tile<acc_t, K>;
  ARSEG_SHARED(s, acc_t[S::CC * S::PLANE]);
  const int64_t HW = p.H * p.W;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    const T* vn = v + n * p.Cv * HW;
    const T* gn = dout + n * p.Cv * HW;
    acc_t P[S::KK], dS[S::KK];
#pragma unroll
    for (int j = 0; j < S::KK; ++j) P[j] = dS[j] = acc_t(0);
    acc_t own[S::CC];
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      load_own(own, qn, p.C, c0, HW, pp);
      __syncthreads();
      stage_halo<T, acc_t, K>(s, kn, p.C, c0, p.H, p.W, y0, x0);
      __syncthreads();
      dot_pass<acc_t, K, false>(P, own, s);
    }
    const acc_t lse = softmax_in_place<acc_t, K>(P, pp.y, pp.x, p.H, p.W, scale, p.padding);
    for (int64_t c0 = 0; c0 < p.Cv; c0 += S::CC) {  // dS <- dP (outside positions stage value 0)
      load_own(own, gn, p.Cv, c0, HW, pp);
      __syncthreads();
      stage_halo<T, acc_t, K>(s, vn, p.Cv, c0, p.H, p.W, y0, x0);
      __syncthreads();
      dot_pass<acc_t, K, false>(dS, own, s);
    }
    acc_t delta = acc_t(0);
#pragma unroll
    for (int j = 0; j < S::KK; ++j) delta += P[j] * dS[j];
#pragma unroll
    for (int j = 0; j < S::KK; ++j)
      dS[j] = inside(pp.y + window_dy(j, K), pp.x + window_dx(j, K), p.H, p.W) ? P[j] * (dS[j] - delta) * scale
                                                                                 : acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      __syncthreads();
      stage_halo<T, acc_t, K>(s, kn, p.C, c0, p.H, p.W, y0, x0);
      __syncthreads();
      weighted_pass<acc_t, K, false>(own, dS, s);
      store_own(dq + n * p.C * HW, p.C, c0, HW, pp, own);
    }
    if (pp.active) {
      stats[2 * (n * HW + pp.off)] = lse;
      stats[2 * (n * HW + pp.off) + 1] = delta;
    }
  });
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads, 1)
    key_grad_tiled_kernel(LocalAttnParams p, const T* __restrict__ dout, const T* __restrict__ q,
                          const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dk, T* __restrict__ dv,
                          const typename AccType<T>::type* __restrict__ stats) {
  using acc_t = typename AccType<T>::type;
  using S = Tile<acc_t, K>;
  ARSEG_SHARED(s, acc_t[S::CC * S::PLANE]);
  const int64_t HW = p.H * p.W;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    const T* vn = v + n * p.Cv * HW;
    const T* gn = dout + n * p.Cv * HW;
    acc_t P[S::KK], dS[S::KK];  // indexed by window position m of this key in the window of query j - o_m
#pragma unroll
    for (int m = 0; m < S::KK; ++m) P[m] = dS[m] = acc_t(0);
    acc_t own[S::CC];
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {  // P <- <q_i, k_j>
      load_own(own, kn, p.C, c0, HW, pp);
      __syncthreads();
      stage_halo<T, acc_t, K>(s, qn, p.C, c0, p.H, p.W, y0, x0);
      __syncthreads();
      dot_pass<acc_t, K, true>(P, own, s);
    }
    for (int64_t c0 = 0; c0 < p.Cv; c0 += S::CC) {  // dS <- <dout_i, v_j>
      load_own(own, vn, p.Cv, c0, HW, pp);
      __syncthreads();
      stage_halo<T, acc_t, K>(s, gn, p.Cv, c0, p.H, p.W, y0, x0);
      __syncthreads();
      dot_pass<acc_t, K, true>(dS, own, s);
    }
#pragma unroll
    for (int m = 0; m < S::KK; ++m) {
      const int64_t yi = pp.y - window_dy(m, K), xi = pp.x - window_dx(m, K);
      acc_t pm = acc_t(0), dsm = acc_t(0);
      if (pp.active && inside(yi, xi, p.H, p.W)) {
        const acc_t* st = stats + 2 * (n * HW + yi * p.W + xi);
        pm = exp_(P[m] * scale - st[0]);
        dsm = pm * (dS[m] - st[1]) * scale;
      }
      P[m] = pm;
      dS[m] = dsm;
    }
    for (int64_t c0 = 0; c0 < p.C; c0 += S::CC) {
      __syncthreads();
      stage_halo<T, acc_t, K>(s, qn, p.C, c0, p.H, p.W, y0, x0);
      __syncthreads();
      weighted_pass<acc_t, K, true>(own, dS, s);
      store_own(dk + n * p.C * HW, p.C, c0, HW, pp, own);
    }
    for (int64_t c0 = 0; c0 < p.Cv; c0 += S::CC) {
      __syncthreads();
      stage_halo<T, acc_t, K>(s, gn, p.Cv, c0, p.H, p.W, y0, x0);
      __syncthreads();
      weighted_pass<acc_t, K, true>(own, P, s);
      store_own(dv + n * p.Cv * HW, p.Cv, c0, HW, pp, own);
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    query_grad_generic_kernel(LocalAttnParams p, const T* __restrict__ dout, const T* __restrict__ q,
                              const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dq,
                              typename AccType<T>::type* __restrict__ stats) {
  using acc_t = typename AccType<T>::type;
  const int64_t HW = p.H * p.W;
  const int K = p.kernel_size;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    if (!pp.active) return;  // no barriers in this kernel
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    const T* vn = v + n * p.Cv * HW;
    const T* gn = dout + n * p.Cv * HW;
    const acc_t lse = pixel_lse<T, acc_t>(qn, kn, pp.y, pp.x, p, HW);
    // Inside positions only: outside ones have dP = 0 (value 0) and dS = 0.
    auto prob_and_dp = [&](int64_t key, acc_t& pj, acc_t& dpj) {
      pj = exp_(logit_at<T, acc_t>(qn, kn, pp.off, key, true, p, HW) - lse);
      dpj = dot_channels<T, acc_t>(gn + pp.off, vn + key, p.Cv, HW);
    };
    acc_t delta = acc_t(0);
    for (int j = 0; j < K * K; ++j) {
      const int64_t yy = pp.y + window_dy(j, K), xx = pp.x + window_dx(j, K);
      if (!inside(yy, xx, p.H, p.W)) continue;
      acc_t pj, dpj;
      prob_and_dp(yy * p.W + xx, pj, dpj);
      delta += pj * dpj;
    }
    for (int64_t c0 = 0; c0 < p.C; c0 += kGenericChunk) {
      acc_t o[kGenericChunk];
#pragma unroll
      for (int c = 0; c < kGenericChunk; ++c) o[c] = acc_t(0);
      for (int j = 0; j < K * K; ++j) {
        const int64_t yy = pp.y + window_dy(j, K), xx = pp.x + window_dx(j, K);
        if (!inside(yy, xx, p.H, p.W)) continue;
        const int64_t key = yy * p.W + xx;
        acc_t pj, dpj;
        prob_and_dp(key, pj, dpj);
        const acc_t ds = pj * (dpj - delta) * scale;
#pragma unroll
        for (int c = 0; c < kGenericChunk; ++c)
          if (c0 + c < p.C) o[c] += ds * to_acc(kn[(c0 + c) * HW + key]);
      }
      store_own(dq + n * p.C * HW, p.C, c0, HW, pp, o);
    }
    stats[2 * (n * HW + pp.off)] = lse;
    stats[2 * (n * HW + pp.off) + 1] = delta;
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    key_grad_generic_kernel(LocalAttnParams p, const T* __restrict__ dout, const T* __restrict__ q,
                            const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dk,
                            T* __restrict__ dv, const typename AccType<T>::type* __restrict__ stats) {
  using acc_t = typename AccType<T>::type;
  const int64_t HW = p.H * p.W;
  const int K = p.kernel_size;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for_each_tile(p, [&](int64_t n, int64_t y0, int64_t x0) {
    const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
    if (!pp.active) return;  // no barriers in this kernel
    const T* qn = q + n * p.C * HW;
    const T* kn = k + n * p.C * HW;
    const T* vn = v + n * p.Cv * HW;
    const T* gn = dout + n * p.Cv * HW;
    const int64_t channels = p.C > p.Cv ? p.C : p.Cv;
    for (int64_t c0 = 0; c0 < channels; c0 += kGenericChunk) {
      acc_t ok[kGenericChunk], ov[kGenericChunk];
#pragma unroll
      for (int c = 0; c < kGenericChunk; ++c) ok[c] = ov[c] = acc_t(0);
      for (int m = 0; m < K * K; ++m) {
        const int64_t yi = pp.y - window_dy(m, K), xi = pp.x - window_dx(m, K);
        if (!inside(yi, xi, p.H, p.W)) continue;
        const int64_t qi = yi * p.W + xi;
        const acc_t* st = stats + 2 * (n * HW + qi);
        const acc_t pm = exp_(logit_at<T, acc_t>(qn, kn, qi, pp.off, true, p, HW) - st[0]);
        const acc_t dsm = pm * (dot_channels<T, acc_t>(gn + qi, vn + pp.off, p.Cv, HW) - st[1]) * scale;
#pragma unroll
        for (int c = 0; c < kGenericChunk; ++c) {
          if (c0 + c < p.C) ok[c] += dsm * to_acc(qn[(c0 + c) * HW + qi]);
          if (c0 + c < p.Cv) ov[c] += pm * to_acc(gn[(c0 + c) * HW + qi]);
        }
      }
      store_own(dk + n * p.C * HW, p.C, c0, HW, pp, ok);
      store_own(dv + n * p.Cv * HW, p.Cv, c0, HW, pp, ov);
    }
  });
}

}  // namespace

template <typename T>
size_t local_attn_backward_workspace(const LocalAttnParams& p) {
  return static_cast<size_t>(2 * p.N * p.H * p.W) * sizeof(typename AccType<T>::type);
}

template <typename T>
cudaError_t local_attn_backward(const LocalAttnParams& p, const T* grad_output, const T* query, const T* key,
                                const T* value, T* dq, T* dk, T* dv, void* workspace, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  if (p.N * p.H * p.W == 0 || p.C + p.Cv == 0) return cudaSuccess;
  acc_t* stats = static_cast<acc_t*>(workspace);
  if (stats == nullptr) return cudaErrorInvalidValue;
  if (!is_valid_kernel_size(p.kernel_size)) return cudaErrorInvalidValue;
  return ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] {
    const dim3 grid = tile_grid(p), block(kTileW, kTileH);
    if constexpr (K == kGenericKernelSize)
      ARSEG_LAUNCH(grid, block, 0, stream, query_grad_generic_kernel<T>)(p, grad_output, query, key, value, dq, stats);
    else
      ARSEG_LAUNCH(grid, block, 0, stream, query_grad_tiled_kernel<T, K>)(p, grad_output, query, key, value, dq, stats);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    if constexpr (K == kGenericKernelSize)
      ARSEG_LAUNCH(grid, block, 0, stream, key_grad_generic_kernel<T>)
          (p, grad_output, query, key, value, dk, dv, stats);
    else
      ARSEG_LAUNCH(grid, block, 0, stream, key_grad_tiled_kernel<T, K>)
          (p, grad_output, query, key, value, dk, dv, stats);
    return cudaGetLastError();
  });
}

#define ARSEG_INSTANTIATE_ATTN_BACKWARD(T)                                                                   \
  template size_t local_attn_backward_workspace<T>(const LocalAttnParams&);                                  \
  template cudaError_t local_attn_backward<T>(const LocalAttnParams&, const T*, const T*, const T*, const T*, \
                                              T*, T*, T*, void*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_ATTN_BACKWARD)

}  // namespace cuda
}  // namespace arseg
