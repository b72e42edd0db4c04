// Fused CReFF backward (EXPERIMENTAL, never run on a GPU): the gradients of out = lr + local_attn(q, k, v)
// (creff_math.h, creff_forward.cu) with respect to the warped key feature hr, the resized lr feature and the
// three depthwise convs' weights and biases. hr, lr, q, k and v are recomputed tile by tile in shared memory,
// as the forward does, never written to global memory. Four kernels, each CTA 32 x 8 threads on 8 x 32 tiles:
//   query   (one query pixel i per thread): P_i = softmax(scale q_i . k_j), D_ij = dO_i . v_j and
//           delta_i = dO_i . O_i (O_i = sum_j P_ij v_j) in one pass over v, dS_ij = P_ij (D_ij - delta_i),
//           dq_i = scale sum_j dS_ij k_j. Writes dq and the per-pixel (lse_i, delta_i).
//   key     (one key pixel j per thread, the queries i = j - o_m of its mirrored window): P_ij from lse_i,
//           dv_j = sum_i P_ij dO_i and D_ij in one pass, then dk_j = scale sum_i dS_ij q_i. A gather, so no
//           atomics: each dk_j / dv_j is summed by one thread in window order.
//   finish  (one pixel per thread): the convs' transposes, d_lr = dO + conv_q^T(dq) (the residual add) and
//           d_hr = conv_k^T(dk) + conv_v^T(dv); and per CTA the weight and bias gradients
//           sum_x g(x) in(x + o_t) of its tiles (one thread per (conv, channel, tap), pixels in a fixed order).
//   reduce  the per-CTA weight sums added in CTA order.
// So dq, dk, dv (accumulation type) and two floats per pixel go through global memory; nothing is atomic and
// the result does not depend on scheduling. d_hr and d_lr are written in the element type. The glue turns d_hr into d key_feature (mv_warp_backward_feature)
// and d_lr into d lr_feature (the resize's transpose).
// Regions (R = K/2): the query kernel stages as the forward (hr on tile + R + 1, k / v on tile + R, lr on
// tile + 1); the key kernel the other way round (lr on tile + R + 1, q / dO on tile + R, hr on tile + 1).
// Index math: 32-bit inside one plane (creff_fused_supported: H*W < 2^31), 64-bit plane offsets. NCHW only:
// the glue makes channels_last inputs contiguous.
#include "creff.h"
#include "creff_tiles.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn;
using namespace creff_tiles;

template <typename acc_t>
struct BwdChunk {  // channels per staged chunk (the sizes below stay under 48 KB of static shared memory)
  static constexpr int CC = sizeof(acc_t) == 8 ? 1 : 4;
};

template <typename acc_t, int K>
struct QueryShared {
  static constexpr int R = K / 2, CC = AttnChunk<acc_t, K>::CC;
  RegionTaps<acc_t, R + 1> taps;
  acc_t hr[CC][Region<R + 1>::PLANE];
  acc_t lr[CC][Region<1>::PLANE];
  acc_t kv[CC][Region<R>::PLANE];
  acc_t wt[3][CC][10];
};

// A chunk of the query kernel: hr (and lr when with_lr) staged, then sh.kv = conv `conv` (1: k, 2: v) of hr on
// the kv region. Bracketed by barriers: the previous chunk's reads are done before, the chunk is complete after.
template <typename T, typename acc_t, int K>
__device__ void stage_keys(QueryShared<acc_t, K>& sh, const CreffParams& p, const T* __restrict__ key,
                           const T* __restrict__ lrf, const T* __restrict__ weight, const T* __restrict__ bias,
                           int64_t n, int64_t c0, int y0, int x0, int conv, bool with_lr) {
  using Sh = QueryShared<acc_t, K>;
  __syncthreads();
  gather_hr<T, acc_t, Sh::R + 1, Sh::CC>(sh.hr, sh.taps, p, key, n, c0);
  if (with_lr) resize_lr<T, acc_t, 1, Sh::CC>(sh.lr, p, lrf, n, c0, y0, x0);
  stage_weights<T, acc_t, Sh::CC>(sh.wt, p, weight, bias, c0);
  __syncthreads();
  conv_region<acc_t, Sh::R, Sh::CC>(sh.kv, sh.hr, sh.wt[conv], p, y0, x0);
  __syncthreads();
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads, 1)
    creff_backward_query_kernel(CreffParams p, LocalAttnParams ap, const T* __restrict__ grad,
                                const T* __restrict__ key, const T* __restrict__ mv, const T* __restrict__ lrf,
                                const T* __restrict__ weight, const T* __restrict__ bias,
                                typename AccType<T>::type* __restrict__ dq, typename AccType<T>::type* __restrict__ stats) {
  using acc_t = typename AccType<T>::type;
  using Sh = QueryShared<acc_t, K>;
  constexpr int R = Sh::R, CC = Sh::CC, KK = K * K;
  static_assert(sizeof(Sh) <= 48 * 1024, "the tile must fit static shared memory");
  ARSEG_SHARED(sh, Sh);
  const int64_t HW = p.H * p.W;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for_each_tile(ap, [&](int64_t n, int64_t y0_, int64_t x0_) {
    const int y0 = static_cast<int>(y0_), x0 = static_cast<int>(x0_);
    const PixelPos pp = pixel_pos(y0_, x0_, p.H, p.W);
    __syncthreads();  // the previous tile's last reads of shared memory are done
    stage_taps<T, acc_t, R + 1>(sh.taps, p, mv, n, y0, x0);
    // Pass 1: logits q_i . k_j, then the probabilities.
    acc_t P[KK];
#pragma unroll
    for (int j = 0; j < KK; ++j) P[j] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      stage_keys<T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, 1, true);
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        const acc_t q = conv_own(sh.lr[c], sh.wt[0][c]);
#pragma unroll
        for (int j = 0; j < KK; ++j) P[j] += q * sh.kv[c][offset_in<R>(window_dy(j, K), window_dx(j, K))];
      }
    }
    const acc_t lse = softmax_in_place<acc_t, K>(P, pp.y, pp.x, p.H, p.W, scale, AttnPadding::Zeros);
    // Pass 2 over v: D_j = dO . v_j and delta = dO . O.
    acc_t D[KK];
#pragma unroll
    for (int j = 0; j < KK; ++j) D[j] = acc_t(0);
    acc_t delta = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      stage_keys<T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, 2, false);
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        const acc_t g = pp.active && c0 + c < p.C ? to_acc(grad[(n * p.C + c0 + c) * HW + pp.off]) : acc_t(0);
        acc_t o = acc_t(0);
#pragma unroll
        for (int j = 0; j < KK; ++j) {
          const acc_t v = sh.kv[c][offset_in<R>(window_dy(j, K), window_dx(j, K))];
          o += P[j] * v;
          D[j] += g * v;
        }
        delta += g * o;
      }
    }
#pragma unroll
    for (int j = 0; j < KK; ++j) D[j] = P[j] * (D[j] - delta);  // dS: the gradient of the scaled logit
    // Pass 3 over k: dq = scale sum_j dS_j k_j.
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      stage_keys<T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, 1, false);
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        acc_t s = acc_t(0);
#pragma unroll
        for (int j = 0; j < KK; ++j) s += D[j] * sh.kv[c][offset_in<R>(window_dy(j, K), window_dx(j, K))];
        if (pp.active && c0 + c < p.C) dq[(n * p.C + c0 + c) * HW + pp.off] = scale * s;
      }
    }
    if (pp.active) {
      stats[(n * HW + pp.off) * 2] = lse;
      stats[(n * HW + pp.off) * 2 + 1] = delta;
    }
  });
}

template <typename acc_t, int K>
struct KeyShared {
  static constexpr int R = K / 2, CC = AttnChunk<acc_t, K>::CC;
  RegionTaps<acc_t, 1> taps;
  acc_t hr[CC][Region<1>::PLANE];
  acc_t lr[CC][Region<R + 1>::PLANE];
  acc_t qg[CC][Region<R>::PLANE];  // q (passes 1 and 3) or dO (pass 2) of the queries that see the tile
  acc_t lse[Region<R>::PLANE];
  acc_t delta[Region<R>::PLANE];
  acc_t wt[3][CC][10];
};

// A chunk of the key kernel: lr (and hr when with_hr) staged, then sh.qg = q (conv 0 of lr) on the query
// region. Barriers as stage_keys.
template <typename T, typename acc_t, int K>
__device__ void stage_queries(KeyShared<acc_t, K>& sh, const CreffParams& p, const T* __restrict__ key,
                              const T* __restrict__ lrf, const T* __restrict__ weight, const T* __restrict__ bias,
                              int64_t n, int64_t c0, int y0, int x0, bool with_hr) {
  using Sh = KeyShared<acc_t, K>;
  __syncthreads();
  if (with_hr) gather_hr<T, acc_t, 1, Sh::CC>(sh.hr, sh.taps, p, key, n, c0);
  resize_lr<T, acc_t, Sh::R + 1, Sh::CC>(sh.lr, p, lrf, n, c0, y0, x0);
  stage_weights<T, acc_t, Sh::CC>(sh.wt, p, weight, bias, c0);
  __syncthreads();
  conv_region<acc_t, Sh::R, Sh::CC>(sh.qg, sh.lr, sh.wt[0], p, y0, x0);
  __syncthreads();
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads, 1)
    creff_backward_key_kernel(CreffParams p, LocalAttnParams ap, const T* __restrict__ grad,
                              const T* __restrict__ key, const T* __restrict__ mv, const T* __restrict__ lrf,
                              const T* __restrict__ weight, const T* __restrict__ bias,
                              const typename AccType<T>::type* __restrict__ stats,
                              typename AccType<T>::type* __restrict__ dk, typename AccType<T>::type* __restrict__ dv) {
  using acc_t = typename AccType<T>::type;
  using Sh = KeyShared<acc_t, K>;
  constexpr int R = Sh::R, CC = Sh::CC, KK = K * K;
  static_assert(sizeof(Sh) <= 48 * 1024, "the tile must fit static shared memory");
  ARSEG_SHARED(sh, Sh);
  const int64_t HW = p.H * p.W;
  const acc_t scale = static_cast<acc_t>(p.scale);
  // Window position m of query i = j - o_m holds this key j: the query sits at the mirrored offset.
  const auto query_at = [](int m) { return offset_in<R>(-window_dy(m, K), -window_dx(m, K)); };
  for_each_tile(ap, [&](int64_t n, int64_t y0_, int64_t x0_) {
    const int y0 = static_cast<int>(y0_), x0 = static_cast<int>(x0_);
    const PixelPos pp = pixel_pos(y0_, x0_, p.H, p.W);
    __syncthreads();
    stage_taps<T, acc_t, 1>(sh.taps, p, mv, n, y0, x0);
    for (int i = rank_in_cta(); i < Region<R>::PLANE; i += kThreads) {
      const int ry = i / Region<R>::W, rx = i - ry * Region<R>::W, gy = y0 - R + ry, gx = x0 - R + rx;
      const bool in = inside(gy, gx, p.H, p.W);
      const int64_t s = (n * HW + (in ? gy * p.W + gx : 0)) * 2;
      sh.lse[i] = in ? stats[s] : acc_t(0);
      sh.delta[i] = in ? stats[s + 1] : acc_t(0);
    }
    // Pass 1: the logits q_i . k_j of the queries that see this key, then P_ij from their lse.
    acc_t P[KK];
#pragma unroll
    for (int m = 0; m < KK; ++m) P[m] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      stage_queries<T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, true);
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        const acc_t k = conv_own(sh.hr[c], sh.wt[1][c]);
#pragma unroll
        for (int m = 0; m < KK; ++m) P[m] += k * sh.qg[c][query_at(m)];
      }
    }
#pragma unroll
    for (int m = 0; m < KK; ++m) {
      const bool q_in = pp.active && inside(pp.y - window_dy(m, K), pp.x - window_dx(m, K), p.H, p.W);
      P[m] = q_in ? exp_(P[m] * scale - sh.lse[query_at(m)]) : acc_t(0);
    }
    // Pass 2 over dO: dv_j = sum_i P_ij dO_i and D_ij = dO_i . v_j.
    acc_t D[KK];
#pragma unroll
    for (int m = 0; m < KK; ++m) D[m] = acc_t(0);
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      __syncthreads();
      gather_hr<T, acc_t, 1, CC>(sh.hr, sh.taps, p, key, n, c0);
      stage_plane<T, acc_t, R, CC>(sh.qg, p, grad, n, c0, y0, x0);
      stage_weights<T, acc_t, CC>(sh.wt, p, weight, bias, c0);
      __syncthreads();
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        const acc_t v = conv_own(sh.hr[c], sh.wt[2][c]);
        acc_t s = acc_t(0);
#pragma unroll
        for (int m = 0; m < KK; ++m) {
          const acc_t g = sh.qg[c][query_at(m)];
          s += P[m] * g;
          D[m] += g * v;
        }
        if (pp.active && c0 + c < p.C) dv[(n * p.C + c0 + c) * HW + pp.off] = s;
      }
    }
#pragma unroll
    for (int m = 0; m < KK; ++m) D[m] = P[m] * (D[m] - sh.delta[query_at(m)]);
    // Pass 3 over q: dk_j = scale sum_i dS_ij q_i.
    for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
      stage_queries<T, acc_t, K>(sh, p, key, lrf, weight, bias, n, c0, y0, x0, false);
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        acc_t s = acc_t(0);
#pragma unroll
        for (int m = 0; m < KK; ++m) s += D[m] * sh.qg[c][query_at(m)];
        if (pp.active && c0 + c < p.C) dk[(n * p.C + c0 + c) * HW + pp.off] = scale * s;
      }
    }
  });
}

template <typename acc_t>
struct FinishShared {
  static constexpr int CC = BwdChunk<acc_t>::CC, PLANE = Region<1>::PLANE;
  RegionTaps<acc_t, 1> taps;
  acc_t g[3][CC][PLANE];  // dq, dk, dv
  acc_t lr[CC][PLANE];
  acc_t hr[CC][PLANE];
  acc_t wt[3][CC][10];
};

// sum_t w[t] g[pixel - o_t]: the transpose of a depthwise 3x3 conv at this thread's pixel (g on Region<1>).
template <typename acc_t>
__device__ __forceinline__ acc_t conv_transpose_own(const acc_t* g, const acc_t* w) {
  acc_t s = acc_t(0);
#pragma unroll
  for (int t = 0; t < 9; ++t) s += w[t] * g[offset_in<1>(1 - t / 3, 1 - t % 3)];
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    creff_backward_finish_kernel(CreffParams p, const T* __restrict__ grad, const T* __restrict__ key,
                                 const T* __restrict__ mv, const T* __restrict__ lrf, const T* __restrict__ weight,
                                 const T* __restrict__ bias, const typename AccType<T>::type* __restrict__ dqkv,
                                 T* __restrict__ d_hr, T* __restrict__ d_lr,
                                 typename AccType<T>::type* __restrict__ partial) {
  using acc_t = typename AccType<T>::type;
  using Sh = FinishShared<acc_t>;
  constexpr int CC = Sh::CC;
  static_assert(sizeof(Sh) <= 48 * 1024, "the tile must fit static shared memory");
  ARSEG_SHARED(sh, Sh);
  const int64_t HW = p.H * p.W, full = p.N * p.C * HW;
  const int64_t tiles_y = (p.H + kTileH - 1) / kTileH;
  const int64_t cta = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int tid = rank_in_cta();
  // Thread tid < 3 * CC * 10 owns weight-gradient entry (conv, c, t): t < 9 a tap, t = 9 the bias.
  const int wconv = tid / (CC * 10), wc = (tid / 10) % CC, wt_ = tid % 10;
  for (int64_t c0 = 0; c0 < p.C; c0 += CC) {
    acc_t wsum = acc_t(0);
    for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z)
      for (int64_t ty = blockIdx.y; ty < tiles_y; ty += gridDim.y) {
        const int y0 = static_cast<int>(ty * kTileH), x0 = static_cast<int>(blockIdx.x) * kTileW;
        const PixelPos pp = pixel_pos(y0, x0, p.H, p.W);
        __syncthreads();
        stage_taps<T, acc_t, 1>(sh.taps, p, mv, n, y0, x0);
        for (int k = 0; k < 3; ++k) stage_plane<acc_t, acc_t, 1, CC>(sh.g[k], p, dqkv + k * full, n, c0, y0, x0);
        resize_lr<T, acc_t, 1, CC>(sh.lr, p, lrf, n, c0, y0, x0);
        stage_weights<T, acc_t, CC>(sh.wt, p, weight, bias, c0);
        __syncthreads();
        gather_hr<T, acc_t, 1, CC>(sh.hr, sh.taps, p, key, n, c0);
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CC; ++c) {
          if (!pp.active || c0 + c >= p.C) continue;
          const int64_t o = (n * p.C + c0 + c) * HW + pp.off;
          d_lr[o] = from_acc<T>(to_acc(grad[o]) + conv_transpose_own(sh.g[0][c], sh.wt[0][c]));
          d_hr[o] = from_acc<T>(conv_transpose_own(sh.g[1][c], sh.wt[1][c]) +
                                conv_transpose_own(sh.g[2][c], sh.wt[2][c]));
        }
        if (tid < 3 * CC * 10) {
          const acc_t* g = sh.g[wconv][wc];
          const acc_t* in = wconv == 0 ? sh.lr[wc] : sh.hr[wc];
          const int dy = wt_ / 3 - 1, dx = wt_ % 3 - 1;
          for (int py = 0; py < kTileH && y0 + py < p.H; ++py)
            for (int px = 0; px < kTileW && x0 + px < p.W; ++px) {
              const int r = (py + 1) * Region<1>::W + px + 1;
              wsum += g[r] * (wt_ < 9 ? in[r + dy * Region<1>::W + dx] : acc_t(1));
            }
        }
      }
    if (tid < 3 * CC * 10 && c0 + wc < p.C) partial[(cta * 3 + wconv) * p.C * 10 + (c0 + wc) * 10 + wt_] = wsum;
  }
}

// d_weight / d_bias = the per-CTA sums added in CTA order, one thread per (conv, channel, tap).
template <typename T>
__global__ void creff_backward_reduce_kernel(CreffParams p, int64_t ctas,
                                             const typename AccType<T>::type* __restrict__ partial,
                                             T* __restrict__ d_weight, T* __restrict__ d_bias) {
  using acc_t = typename AccType<T>::type;
  const int64_t per_cta = 3 * p.C * 10;
  grid_stride_loop(per_cta, [&](int64_t e) {
    acc_t s = acc_t(0);
    for (int64_t b = 0; b < ctas; ++b) s += partial[b * per_cta + e];
    const int64_t t = e % 10, oc = e / 10;  // oc = conv * C + channel
    if (t < 9)
      d_weight[oc * 9 + t] = from_acc<T>(s);
    else
      d_bias[oc] = from_acc<T>(s);
  });
}

// The finish kernel's grid: one CTA column per tile column; tile rows and images folded so that the per-CTA
// weight sums stay a few MB.
dim3 finish_grid(const CreffParams& p) {
  return dim3(grid_dim(ceil_div(p.W, kTileW), kMaxGridX), grid_dim(ceil_div(p.H, kTileH), 16), grid_dim(p.N, 4));
}

int64_t finish_ctas(const CreffParams& p) {
  const dim3 g = finish_grid(p);
  return static_cast<int64_t>(g.x) * g.y * g.z;
}

}  // namespace

size_t creff_backward_workspace_bytes(const CreffParams& p, bool float64) {
  const int64_t full = p.N * p.C * p.H * p.W, stats = 2 * p.N * p.H * p.W;
  return static_cast<size_t>(3 * full + stats + finish_ctas(p) * 3 * p.C * 10) * (float64 ? 8 : 4);
}

template <typename T>
cudaError_t creff_backward(const CreffParams& p, const T* grad_output, const T* key_feature, const T* mv,
                           const T* lr_feature, const T* weight, const T* bias, T* d_hr, T* d_lr, T* d_weight,
                           T* d_bias, void* workspace,                            cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  constexpr bool kFloat64 = sizeof(acc_t) == 8;
  if (!creff_fused_supported(p, kFloat64)) return cudaErrorInvalidValue;
  if (p.C == 0) return cudaSuccess;
  const int64_t full = p.N * p.C * p.H * p.W;
  acc_t* dqkv = static_cast<acc_t*>(workspace);
  acc_t* stats = dqkv + 3 * full;
  acc_t* partial = stats + 2 * p.N * p.H * p.W;
  if (full > 0) {
    const LocalAttnParams ap{p.N, p.C, p.C, p.H, p.W, p.kernel_size, p.scale, AttnPadding::Zeros};
    ARSEG_KERNEL_SIZE_SWITCH_TO_11(p.kernel_size, K, [&] {
      if constexpr (K != kGenericKernelSize && (!kFloat64 || K <= 7)) {
        ARSEG_LAUNCH(tile_grid(ap), dim3(kTileW, kTileH), 0, stream, creff_backward_query_kernel<T, K>)(
            p, ap, grad_output, key_feature, mv, lr_feature, weight, bias, dqkv, stats);
        ARSEG_LAUNCH(tile_grid(ap), dim3(kTileW, kTileH), 0, stream, creff_backward_key_kernel<T, K>)(
            p, ap, grad_output, key_feature, mv, lr_feature, weight, bias, stats, dqkv + full, dqkv + 2 * full);
      }
    });
  }
  // With no pixels the finish kernel writes zero sums (its tile loops are empty), so the gradients come out 0.
  ARSEG_LAUNCH(finish_grid(p), dim3(kTileW, kTileH), 0, stream, creff_backward_finish_kernel<T>)(
      p, grad_output, key_feature, mv, lr_feature, weight, bias, dqkv, d_hr, d_lr, partial);
  const int64_t per_cta = 3 * p.C * 10;
  ARSEG_LAUNCH(dim3(grid_dim(ceil_div(per_cta, 256), kMaxGridX)), dim3(256), 0, stream,
               creff_backward_reduce_kernel<T>)(p, finish_ctas(p), partial, d_weight, d_bias);
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_CREFF_BACKWARD(T)                                                                       \
  template cudaError_t creff_backward<T>(const CreffParams&, const T*, const T*, const T*, const T*, const T*,   \
                                         const T*, T*, T*, T*, T*, void*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_CREFF_BACKWARD)

}  // namespace cuda
}  // namespace arseg
