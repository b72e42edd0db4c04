// v2 backward of local_attn (EXPERIMENTAL, opt-in; see local_attn_v2.h): two deterministic kernels, no atomics,
// each a double-buffered tensor-core pipeline like the forward (local_attn_v2_device.cuh).
//
// Query-centred kernel, per tile of query pixels i (rows) against their halo j (columns):
//   [0, nC)            S   += q_i . k_j                 (stage q rows, k halo)
//   nC                 P    = softmax(S), lse_i
//   SPLIT > 1 only:    O_i  = sum_j P v_j, delta_i = dO_i . O_i   (nV steps: stage dO rows, v halo)
//   SPLIT x nV steps   dP  += dO_i . v_j for one part of the columns at a time (stage dO rows, v halo); when a
//                      part is complete, dS = P (dP - delta_i) scale (0 at out-of-image keys: their logit is the
//                      constant padding logit) takes dP's place (SPLIT = 1) or P's (SPLIT > 1; see ds_tile).
//                      SPLIT = 1: delta_i = sum_j P dP first.
//                      (lse_i, delta_i) -> workspace
//   [.., +nC)          dq_i = sum_j dS_ij k_j           (stage k halo)
// Key-centred kernel, per tile of key pixels j (rows) against the query pixels i of their halo (columns; the
// window relation is symmetric, so the same masks apply):
//   [0, nC)            S^T += k_j . q_i;   then P^T = exp(S^T scale - lse_i) (0 for out-of-image queries)
//   [nC, nC + nV)      dv_j = sum_i P^T dO_i            (stage dO halo)
//   SPLIT x nV steps   dP^T += v_j . dO_i per part of the columns (stage v rows, dO halo); a complete part's
//                      dS^T = P^T (dP^T - delta_i) scale takes dP^T's or P^T's place as above
//   [.., +nC)          dk_j = sum_i dS^T q_i            (stage q halo)
// Only P (all columns) and dP (one part) are live together, never two full score tiles: K <= 9 takes the
// columns in one part, K = 11 (196 columns, 100-104 accumulators per tile) in two, which costs one more pass of
// staging (dO and v) per part and, in the query kernel, the O pass that gives delta before dP is complete.
// Every output element is written once by one lane, summing in a fixed order: results are bitwise reproducible.
#include "local_attn_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn2;

// The backward kernels use 2 x 2 warps (an 8 x 8 tile) and up to 255 registers with two CTAs per SM; SPLIT parts
// of the score columns keep P plus one part of dP within the register file (see above).
template <int K>
struct BwdCfg {
  static constexpr int WY = 2, WX = 2, MIN_BLOCKS = 2, SPLIT = K >= 11 ? 2 : 1;
};
template <typename T, int K>
using BwdGeo = Geo<T, K, BwdCfg<K>::WY, BwdCfg<K>::WX>;

// Accumulator tiles per part of the columns: part h holds tiles [h PART, min(NT, (h + 1) PART)).
template <typename T, int K>
constexpr int kPartTiles = (BwdGeo<T, K>::NT + BwdCfg<K>::SPLIT - 1) / BwdCfg<K>::SPLIT;

// Per-pixel statistics of the backward: (log-sum-exp, delta) of image n's pixel `pix`.
__device__ __forceinline__ int64_t stats_index(int64_t n, int hw, int pix) {
  return (n * hw + pix) * kStatsPerPixel;
}

// D += rows . halo^T for the tiles of column part `part` (0 or 1; a part past the last tile is empty).
template <class G, int PART, typename T>
__device__ __forceinline__ void dot_part(float (&D)[PART][4], int part, const T* buf, const Lane& L) {
  if (part == 0) {
    dot_chunk<G, 0>(D, buf, L);
  } else {
    dot_chunk<G, PART>(D, buf, L);
  }
}

// Part `part` of the columns gets dS = P (D - delta) scale (0 where `real` is false), see ds_tile.
// delta_of(lane, j, e) gives the delta of element e of tile j, real(pair, j, e) whether the pair contributes.
template <class G, int J0, int PART, class DeltaOf, class Real>
__device__ __forceinline__ void finish_part_at(float (&P)[G::NT][4], float (&D)[PART][4], const Lane& L0,
                                               float scale, DeltaOf delta_of, Real real) {
  const Lane L = fresh(L0);
#pragma unroll
  for (int j = 0; j < PART; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (J0 + j < G::NT) {
        const Pair pr = pair_at<G>(L, J0 + j, e);
        const float ds = real(pr, J0 + j, e) ? P[J0 + j][e] * (D[j][e] - delta_of(L, J0 + j, e)) * scale : 0.f;
        if constexpr (PART == G::NT) {
          D[j][e] = ds;
        } else {
          P[J0 + j][e] = ds;
          D[j][e] = 0.f;  // the next part accumulates from 0
        }
      }
    }
}

// The tile that holds dS once every part is finished: D when there is one part (dS replaces dP in place, which
// ptxas allocates in fewer registers than dS in P), else P.
template <class G, int PART>
__device__ __forceinline__ const float (&ds_tile(const float (&P)[G::NT][4], const float (&D)[PART][4]))[G::NT][4] {
  if constexpr (PART == G::NT) {
    return D;
  } else {
    return P;
  }
}

template <class G, int PART, class DeltaOf, class Real>
__device__ __forceinline__ void finish_part(float (&P)[G::NT][4], float (&D)[PART][4], int part, const Lane& L,
                                            float scale, DeltaOf delta_of, Real real) {
  if (part == 0) {
    finish_part_at<G, 0>(P, D, L, scale, delta_of, real);
  } else {
    finish_part_at<G, PART>(P, D, L, scale, delta_of, real);
  }
}

// Both kernels stage the same phases (see the top of the file), from different tensors:
//   [0, nC)                   rows a0 and halo b0, chunk s                        (S, or S^T)
//   [nC, nC + n1)             key kernel: halo b1 only, chunk s - nC                (dv)
//                             query kernel (b1 null): rows a2 and halo b2, as below (the O pass)
//   then SPLIT nV steps       rows a2 and halo b2, chunk d mod nV                 (dP or dP^T, part by part)
//   then nC steps             halo b3                                             (dq, or dk)
// (The query kernel's O pass and dP parts are one range with one chunk formula: split in two branches, ptxas
// spills more at K = 11.)
template <typename T>
struct BwdStaging {
  const Img<T>& a0;
  const Img<T>& b0;
  const Img<T>* b1;
  const Img<T>& a2;
  const Img<T>& b2;
  const Img<T>& b3;
  int nC, nV, n1;  // channel chunks of q and k, of v and dO; steps of phase 1
};

template <class G, int SPLIT, typename T>
__device__ __forceinline__ void stage_backward(const BwdStaging<T>& st, int s, T* buf, const Lane& L, int H, int W,
                                               bool vec) {
  if (s < st.nC) {
    stage_m<G>(buf, L, st.a0, s * G::CH, H, W, vec);
    stage_n<G>(buf, L, st.b0, s * G::CH, H, W, vec);
  } else if (st.b1 != nullptr && s < st.nC + st.n1) {
    stage_n<G>(buf, L, *st.b1, (s - st.nC) * G::CH, H, W, vec);
  } else if (s < st.nC + st.n1 + SPLIT * st.nV) {
    const int d = st.b1 != nullptr ? s - st.nC - st.n1 : s - st.nC, c0 = (SPLIT > 1 ? d % st.nV : d) * G::CH;
    stage_m<G>(buf, L, st.a2, c0, H, W, vec);
    stage_n<G>(buf, L, st.b2, c0, H, W, vec);
  } else {
    stage_n<G>(buf, L, st.b3, (s - st.nC - st.n1 - SPLIT * st.nV) * G::CH, H, W, vec);
  }
}

// P (every column) and D (one part) start at 0.
template <int NT, int PART>
__device__ __forceinline__ void zero_scores(float (&P)[NT][4], float (&D)[PART][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) P[j][e] = 0.f;
#pragma unroll
  for (int j = 0; j < PART; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) D[j][e] = 0.f;
}

template <typename T, int K>
__global__ void __launch_bounds__(BwdGeo<T, K>::THREADS, BwdCfg<K>::MIN_BLOCKS)
    local_attn_v2_query_grad_kernel(const LocalAttnV2Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                    const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dq,
                                    float* __restrict__ stats, bool vec) {
  using G = BwdGeo<T, K>;
  constexpr int SPLIT = BwdCfg<K>::SPLIT, PART = kPartTiles<T, K>;
  ARSEG_DYNAMIC_SHARED(smem_raw, unsigned char, 16);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const Lane L0 = lane_info<G>(p.W), &L = L0;
  const int nC = (p.C + G::CH - 1) / G::CH, nV = (p.Cv + G::CH - 1) / G::CH, hw = p.H * p.W;
  const int nO = SPLIT > 1 ? nV : 0;  // steps of the O pass (delta before dP)
  const float scale = p.scale;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    const Img<T> qi = image(q, n, p.C, p), ki = image(k, n, p.C, p), vi = image(v, n, p.Cv, p),
                 gi = image(dout, n, p.Cv, p);
    T* dqn = dq + n * static_cast<int64_t>(p.C) * hw;
    float P[G::NT][4], D[PART][4];
    zero_scores(P, D);
    float lse[2], delta[2] = {0.f, 0.f};  // delta: accumulated by the O pass (SPLIT > 1)
    const auto quad_delta = [&](float (&dl)[2]) {  // a lane's partial deltas summed over its quad
      dl[0] = quad_sum(dl[0]);
      dl[1] = quad_sum(dl[1]);
    };
    const auto write_stats = [&](const float (&dl)[2]) {  // (lse, delta) of the lane's rows -> workspace
      const Lane F = fresh(L0);  // (opaque lane coordinates: nothing of this is hoisted out of the pipeline)
      if (F.t != 0) return;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int y = F.y0 + F.wy + ((F.g + 8 * h) >> 2), x = F.x0 + F.wx + ((F.g + 8 * h) & 3);
        if (inside(y, x, p.H, p.W)) {
          float* st = stats + stats_index(n, hw, y * p.W + x);
          st[0] = lse[h];
          st[1] = dl[h];
        }
      }
    };
    const auto finish = [&](int part, const float (&dl)[2]) {
      finish_part<G>(
          P, D, part, L, scale, [&](const Lane&, int, int e) { return dl[e >> 1]; },
          [&](const Pair& pr, int, int) { return pr.window && inside(pr.cy, pr.cx, p.H, p.W); });
    };
    const BwdStaging<T> staging{qi, ki, nullptr, gi, vi, ki, nC, nV, nO};
    pipeline<G>(
        smem, nC + nO + SPLIT * nV + nC,
        [&](int s, T* buf) { stage_backward<G, SPLIT>(staging, s, buf, L, p.H, p.W, vec); },
        [&](int s, T* buf) {
          if (s < nC) {
            dot_chunk<G>(P, buf, L);
            return;
          }
          if (s == nC) softmax_rows<G>(P, L, p.H, p.W, scale, p.padding, lse);
          if (s < nC + nO) {  // delta_i = dO_i . O_i over this chunk's channels (dO rows are in the M region)
            float O[G::CT][4];
            weighted_chunk<G>(O, P, buf, L);
            const T* r0 = buf + (L.warp * 16 + L.g) * G::RS;
#pragma unroll
            for (int o = 0; o < G::CT; ++o)
#pragma unroll
              for (int e = 0; e < 4; ++e)
                delta[e >> 1] += O[o][e] * to_acc(r0[8 * G::RS * (e >> 1) + 8 * o + 2 * L.t + (e & 1)]);
            return;
          }
          const int d = s - nC - nO;
          if (d < SPLIT * nV) {
            if (SPLIT > 1 && d == 0) {
              quad_delta(delta);
              write_stats(delta);
            }
            if (SPLIT > 1 && d > 0 && d % nV == 0) finish(d / nV - 1, delta);
            dot_part<G>(D, SPLIT > 1 ? d / nV : 0, buf, L);
            return;
          }
          if (d == SPLIT * nV) {
            if (SPLIT == 1) {  // all columns in D: delta_i = sum_j P dP
              float dl[2] = {0.f, 0.f};
#pragma unroll
              for (int j = 0; j < PART; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) dl[e >> 1] += P[j][e] * D[j][e];
              quad_delta(dl);
              finish(0, dl);
              write_stats(dl);
            } else {
              finish(SPLIT - 1, delta);
            }
          }
          float O[G::CT][4];
          weighted_chunk<G>(O, ds_tile<G>(P, D), buf, L);
          write_rows<G>(buf, O, L);
          __syncthreads();
          store_m<G>(dqn, qi.cs, qi.ps, p.C, buf, L, (d - SPLIT * nV) * G::CH, p.H, p.W, vec);
        });
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(BwdGeo<T, K>::THREADS, BwdCfg<K>::MIN_BLOCKS)
    local_attn_v2_key_grad_kernel(const LocalAttnV2Params p, const T* __restrict__ dout, const T* __restrict__ q,
                                  const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dk,
                                  T* __restrict__ dv, const float* __restrict__ stats, bool vec) {
  using G = BwdGeo<T, K>;
  constexpr int SPLIT = BwdCfg<K>::SPLIT, PART = kPartTiles<T, K>;
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
    float P[G::NT][4], D[PART][4];
    zero_scores(P, D);
    const auto finish = [&](int part) {  // dS^T of part `part` (P^T is already 0 at the unreal pairs)
      finish_part<G>(
          P, D, part, L, scale,
          [&](const Lane& F, int j, int e) { return halo_stats[2 * n_row<G>(F, 8 * j + 2 * F.t + (e & 1)) + 1]; },
          [](const Pair&, int, int) { return true; });
    };
    const BwdStaging<T> staging{ki, qi, &gi, vi, gi, qi, nC, nV, nV};
    pipeline<G>(
        smem, nC + nV + SPLIT * nV + nC,
        [&](int s, T* buf) { stage_backward<G, SPLIT>(staging, s, buf, L, p.H, p.W, vec); },
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
          const int d = s - nC - nV;
          if (d >= 0 && d < SPLIT * nV) {
            if (SPLIT > 1 && d > 0 && d % nV == 0) finish(d / nV - 1);  // (SPLIT = 1: no such code at all)
            dot_part<G>(D, SPLIT > 1 ? d / nV : 0, buf, L);
            return;
          }
          if (d == SPLIT * nV) finish(SPLIT - 1);
          float O[G::CT][4];
          if (SPLIT > 1 || d < 0) {  // P^T (dv), or dS^T in P (dk, SPLIT > 1)
            weighted_chunk<G>(O, P, buf, L);
          } else {  // dS^T in D (two calls, not one on a selected array: that would put P and D in local memory)
            weighted_chunk<G>(O, ds_tile<G>(P, D), buf, L);
          }
          write_rows<G>(buf, O, L);
          __syncthreads();
          if (d < 0) {
            store_m<G>(dvn, vi.cs, vi.ps, p.Cv, buf, L, (s - nC) * G::CH, p.H, p.W, vec);
          } else {
            store_m<G>(dkn, ki.cs, ki.ps, p.C, buf, L, (d - SPLIT * nV) * G::CH, p.H, p.W, vec);
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
  if (!local_attn_v2_supported(p) || workspace == nullptr)
    return cudaErrorInvalidValue;
  float* stats = static_cast<float*>(workspace);
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = p.channels_last && p.C % VEC == 0 && p.Cv % VEC == 0 && aligned16(grad_output) &&
                   aligned16(query) && aligned16(key) && aligned16(value) && aligned16(dq) && aligned16(dk) &&
                   aligned16(dv);
  return ARSEG_KERNEL_SIZE_SWITCH_TO_11(p.kernel_size, K, [&]() -> cudaError_t {
    if constexpr (K == kGenericKernelSize || K > kMaxV2KernelSize) {
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
