// v2 backward of local_attn (EXPERIMENTAL, opt-in; see local_attn_v2.h): two deterministic kernels, no atomics,
// each a double-buffered tensor-core pipeline like the forward (local_attn_v2_device.cuh).
//
// Query-centred kernel, per tile of query pixels i (rows) against their halo j (columns):
//   [0, nC)            S   += q_i . k_j                 (stage q rows, k halo)
//   nC                 P    = softmax(S), lse_i
//   [nC, nC + nV)      dP  += dO_i . v_j                (stage dO rows, v halo)
//   nC + nV            delta_i = sum_j P dP; dS = P (dP - delta_i) scale (0 at out-of-image keys: their logit is
//                      the constant padding logit); (lse_i, delta_i) -> workspace
//   [nC + nV, +nC)     dq_i = sum_j dS_ij k_j           (stage k halo)
// Key-centred kernel, per tile of key pixels j (rows) against the query pixels i of their halo (columns; the
// window relation is symmetric, so the same masks apply):
//   [0, nC)            S^T += k_j . q_i;   then P^T = exp(S^T scale - lse_i) (0 for out-of-image queries)
//   [nC, nC + nV)      dv_j = sum_i P^T dO_i            (stage dO halo)
//   [.., +nV)          dP^T += v_j . dO_i; then dS^T = P^T (dP^T - delta_i) scale   (stage v rows, dO halo)
//   [.., +nC)          dk_j = sum_i dS^T q_i            (stage q halo)
// (dv before dP: the two score tiles are live together only during the dP products, not during a weighted one.)
// Every output element is written once by one lane, summing in a fixed order: results are bitwise reproducible.
#include "local_attn_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn2;

// Two score tiles (P and dP/dS) are live per lane, so the backward kernels use 2 x 2 warps (an 8 x 8 tile) and
// up to 255 registers with two CTAs per SM. K = 11 would need 2 x 104 accumulators per lane: it stays on the
// first-generation kernels (kMaxV2BackwardKernelSize).
template <int K>
struct BwdCfg {
  static constexpr int WY = 2, WX = 2, MIN_BLOCKS = 2;
};
template <typename T, int K>
using BwdGeo = Geo<T, K, BwdCfg<K>::WY, BwdCfg<K>::WX>;

// Per-pixel statistics of the backward: (log-sum-exp, delta) of image n's pixel `pix`.
__device__ __forceinline__ int64_t stats_index(int64_t n, int hw, int pix) {
  return (n * hw + pix) * kStatsPerPixel;
}

template <typename T, int K>
__global__ void __launch_bounds__(BwdGeo<T, K>::THREADS, BwdCfg<K>::MIN_BLOCKS)
    local_attn_v2_query_grad_kernel(const LocalAttnV2Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                    const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dq,
                                    float* __restrict__ stats, bool vec) {
  using G = BwdGeo<T, K>;
  ARSEG_DYNAMIC_SHARED(smem_raw, unsigned char, 16);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const Lane L0 = lane_info<G>(p.W), &L = L0;
  const int nC = (p.C + G::CH - 1) / G::CH, nV = (p.Cv + G::CH - 1) / G::CH, hw = p.H * p.W;
  const float scale = p.scale;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    const Img<T> qi = image(q, n, p.C, p), ki = image(k, n, p.C, p), vi = image(v, n, p.Cv, p),
                 gi = image(dout, n, p.Cv, p);
    T* dqn = dq + n * static_cast<int64_t>(p.C) * hw;
    float P[G::NT][4], D[G::NT][4];
#pragma unroll
    for (int j = 0; j < G::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) P[j][e] = D[j][e] = 0.f;
    float lse[2];
    pipeline<G>(
        smem, nC + nV + nC,
        [&](int s, T* buf) {
          if (s < nC) {
            stage_m<G>(buf, L, qi, s * G::CH, p.H, p.W, vec);
            stage_n<G>(buf, L, ki, s * G::CH, p.H, p.W, vec);
          } else if (s < nC + nV) {
            stage_m<G>(buf, L, gi, (s - nC) * G::CH, p.H, p.W, vec);
            stage_n<G>(buf, L, vi, (s - nC) * G::CH, p.H, p.W, vec);
          } else {
            stage_n<G>(buf, L, ki, (s - nC - nV) * G::CH, p.H, p.W, vec);
          }
        },
        [&](int s, T* buf) {
          if (s < nC) {
            dot_chunk<G>(P, buf, L);
            return;
          }
          if (s == nC) softmax_rows<G>(P, L, p.H, p.W, scale, p.padding, lse);
          if (s < nC + nV) {
            dot_chunk<G>(D, buf, L);
            return;
          }
          if (s == nC + nV) {
            float delta[2] = {0.f, 0.f};
#pragma unroll
            for (int j = 0; j < G::NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) delta[e >> 1] += P[j][e] * D[j][e];
            delta[0] = quad_sum(delta[0]);
            delta[1] = quad_sum(delta[1]);
            const Lane L = fresh(L0);
#pragma unroll
            for (int j = 0; j < G::NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const Pair pr = pair_at<G>(L, j, e);
                D[j][e] = pr.window && inside(pr.cy, pr.cx, p.H, p.W) ? P[j][e] * (D[j][e] - delta[e >> 1]) * scale
                                                                      : 0.f;
              }
            if (L.t == 0) {
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int y = L.y0 + L.wy + ((L.g + 8 * h) >> 2), x = L.x0 + L.wx + ((L.g + 8 * h) & 3);
                if (inside(y, x, p.H, p.W)) {
                  float* st = stats + stats_index(n, hw, y * p.W + x);
                  st[0] = lse[h];
                  st[1] = delta[h];
                }
              }
            }
          }
          float O[G::CT][4];
          weighted_chunk<G>(O, D, buf, L);
          write_rows<G>(buf, O, L);
          __syncthreads();
          store_m<G>(dqn, qi.cs, qi.ps, p.C, buf, L, (s - nC - nV) * G::CH, p.H, p.W, vec);
        });
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(BwdGeo<T, K>::THREADS, BwdCfg<K>::MIN_BLOCKS)
    local_attn_v2_key_grad_kernel(const LocalAttnV2Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                  const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dk,
                                  T* __restrict__ dv, const float* __restrict__ stats, bool vec) {
  using G = BwdGeo<T, K>;
  ARSEG_DYNAMIC_SHARED(smem_raw, unsigned char, 16);
  T* smem = reinterpret_cast<T*>(smem_raw);
  float* halo_stats = reinterpret_cast<float*>(smem_raw + G::kSmemBytes);  // (lse, delta) per N-region row
  const Lane L0 = lane_info<G>(p.W), &L = L0;
  const int nC = (p.C + G::CH - 1) / G::CH, nV = (p.Cv + G::CH - 1) / G::CH, hw = p.H * p.W;
  const float scale = p.scale;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    const Img<T> qi = image(q, n, p.C, p), ki = image(k, n, p.C, p), vi = image(v, n, p.Cv, p),
                 gi = image(dout, n, p.Cv, p);
    T* dkn = dk + n * static_cast<int64_t>(p.C) * hw;
    T* dvn = dv + n * static_cast<int64_t>(p.Cv) * hw;
    for (int r = threadIdx.x; r < G::NROWS; r += G::THREADS) {  // read by compute(nC), after pipeline barriers
      int y, x;
      n_pixel<G>(L, r, y, x);
      const bool in = inside(y, x, p.H, p.W);
      const float* st = stats + stats_index(n, hw, in ? y * p.W + x : 0);
      halo_stats[2 * r] = in ? st[0] : 0.f;
      halo_stats[2 * r + 1] = in ? st[1] : 0.f;
    }
    float P[G::NT][4], D[G::NT][4];
#pragma unroll
    for (int j = 0; j < G::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) P[j][e] = D[j][e] = 0.f;
    pipeline<G>(
        smem, 2 * (nC + nV),
        [&](int s, T* buf) {
          if (s < nC) {
            stage_m<G>(buf, L, ki, s * G::CH, p.H, p.W, vec);
            stage_n<G>(buf, L, qi, s * G::CH, p.H, p.W, vec);
          } else if (s < nC + nV) {
            stage_n<G>(buf, L, gi, (s - nC) * G::CH, p.H, p.W, vec);
          } else if (s < nC + 2 * nV) {
            stage_m<G>(buf, L, vi, (s - nC - nV) * G::CH, p.H, p.W, vec);
            stage_n<G>(buf, L, gi, (s - nC - nV) * G::CH, p.H, p.W, vec);
          } else {
            stage_n<G>(buf, L, qi, (s - nC - 2 * nV) * G::CH, p.H, p.W, vec);
          }
        },
        [&](int s, T* buf) {
          if (s < nC) {
            dot_chunk<G>(P, buf, L);
            return;
          }
          if (s == nC) {  // P^T: rows are keys (always real when stored), columns queries of the halo
            const Lane L = fresh(L0);
#pragma unroll
            for (int j = 0; j < G::NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const Pair pr = pair_at<G>(L, j, e);
                const float lse = halo_stats[2 * n_row<G>(L, 8 * j + 2 * L.t + (e & 1))];
                const bool real = pr.window && inside(pr.cy, pr.cx, p.H, p.W) && inside(pr.ry, pr.rx, p.H, p.W);
                P[j][e] = real ? __expf(P[j][e] * scale - lse) : 0.f;
              }
          }
          if (s >= nC + nV && s < nC + 2 * nV) {
            dot_chunk<G>(D, buf, L);
            return;
          }
          if (s == nC + 2 * nV) {  // dS^T; P is dead from here on
            const Lane L = fresh(L0);
#pragma unroll
            for (int j = 0; j < G::NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float delta = halo_stats[2 * n_row<G>(L, 8 * j + 2 * L.t + (e & 1)) + 1];
                D[j][e] = P[j][e] * (D[j][e] - delta) * scale;
              }
          }
          const bool value_step = s < nC + nV;
          float O[G::CT][4];
          if (value_step) {  // (two calls, not one on a selected array: that would put P and D in local memory)
            weighted_chunk<G>(O, P, buf, L);
          } else {
            weighted_chunk<G>(O, D, buf, L);
          }
          write_rows<G>(buf, O, L);
          __syncthreads();
          if (value_step) {
            store_m<G>(dvn, vi.cs, vi.ps, p.Cv, buf, L, (s - nC) * G::CH, p.H, p.W, vec);
          } else {
            store_m<G>(dkn, ki.cs, ki.ps, p.C, buf, L, (s - nC - 2 * nV) * G::CH, p.H, p.W, vec);
          }
        });
  }
}

}  // namespace

size_t local_attn_v2_backward_workspace(const LocalAttnV2Params& p) {
  return static_cast<size_t>(p.N) * p.H * p.W * kStatsPerPixel * sizeof(float);
}

template <typename T>
cudaError_t local_attn_v2_backward(const LocalAttnV2Params& p, const T* grad_output, const T* query, const T* key,
                                   const T* value, T* dq, T* dk, T* dv, void* workspace, cudaStream_t stream) {
  if (!local_attn_v2_supported(p) || p.kernel_size > kMaxV2BackwardKernelSize || workspace == nullptr)
    return cudaErrorInvalidValue;
  float* stats = static_cast<float*>(workspace);
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = p.channels_last && p.C % VEC == 0 && p.Cv % VEC == 0 && aligned16(grad_output) &&
                   aligned16(query) && aligned16(key) && aligned16(value) && aligned16(dq) && aligned16(dk) &&
                   aligned16(dv);
  return ARSEG_KERNEL_SIZE_SWITCH_TO_11(p.kernel_size, K, [&]() -> cudaError_t {
    if constexpr (K == kGenericKernelSize || K > kMaxV2BackwardKernelSize) {
      return cudaErrorInvalidValue;
    } else {
      using G = BwdGeo<T, K>;
      cudaError_t err = launch_tiles<G>(&local_attn_v2_query_grad_kernel<T, K>, G::kSmemBytes, p, stream, p,
                                        grad_output, query, key, value, dq, stats, vec);
      if (err != cudaSuccess) return err;
      const size_t smem = G::kSmemBytes + G::NROWS * kStatsPerPixel * sizeof(float);
      return launch_tiles<G>(&local_attn_v2_key_grad_kernel<T, K>, smem, p, stream, p, grad_output, query, key,
                             value, dk, dv, static_cast<const float*>(stats), vec);
    }
  });
}

#define ARSEG_INSTANTIATE_ATTN_V2_BACKWARD(T)                                                                    \
  template cudaError_t local_attn_v2_backward<T>(const LocalAttnV2Params&, const T*, const T*, const T*, const T*, \
                                                 T*, T*, T*, void*, cudaStream_t);
ARSEG_INSTANTIATE_ATTN_V2_BACKWARD(float)
ARSEG_INSTANTIATE_ATTN_V2_BACKWARD(__half)
ARSEG_INSTANTIATE_ATTN_V2_BACKWARD(__nv_bfloat16)

}  // namespace cuda
}  // namespace arseg
