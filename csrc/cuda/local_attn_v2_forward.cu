// v2 forward of local_attn (EXPERIMENTAL, opt-in; see local_attn_v2.h): one fused kernel per tile.
//
// Per CTA tile (tiling and staging in local_attn_v2_device.cuh), steps through a double-buffered pipeline:
//   steps [0, nC):       stage the query chunk (tile rows) and key chunk (halo); S += q . k^T on tensor cores;
//   step nC:             softmax of S in registers (scale, padding logit, window mask) -> P;
//   steps [nC, nC + nV): stage the value chunk (halo); O = P . v on tensor cores; write O through shared memory.
// The key chunks of the next step are in flight while the current one is multiplied, and the first value chunk
// while the last key chunk is. Nothing but the output is written to global memory.
#include "local_attn_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace {

using namespace attn2;

// CTA shape per element type and kernel size, chosen from the ptxas report: K = 1 fits 2 x 4 warps (an 8 x 16
// pixel tile) at 128 registers, two CTAs per SM; larger K take 2 x 2 warps (8 x 8) at up to 168 registers (three
// CTAs per SM) for 16-bit types and K = 3 in float, up to 255 (two CTAs) for float K >= 5 (3xTF32 keeps high and
// low halves of each operand) and for K = 11 (196 score columns per warp: 104 accumulators per lane).
template <typename T, int K>
struct FwdCfg {
  static constexpr bool kWide = K == 11 || (sizeof(T) == 4 && K >= 5);
  static constexpr int WY = 2, WX = K == 1 ? 4 : 2, MIN_BLOCKS = K == 1 || kWide ? 2 : 3;
};
template <typename T, int K>
using FwdGeo = Geo<T, K, FwdCfg<T, K>::WY, FwdCfg<T, K>::WX>;

template <typename T, int K>
__global__ void __launch_bounds__(FwdGeo<T, K>::THREADS, FwdCfg<T, K>::MIN_BLOCKS)
    local_attn_v2_forward_kernel(const LocalAttnV2Params p, const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, T* __restrict__ out, bool vec) {
  using G = FwdGeo<T, K>;
  ARSEG_DYNAMIC_SHARED(smem_raw, unsigned char, 16);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const Lane L = lane_info<G>(p.W);
  const int nC = (p.C + G::CH - 1) / G::CH, nV = (p.Cv + G::CH - 1) / G::CH;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    const Img<T> qi = image(q, n, p.C, p), ki = image(k, n, p.C, p), vi = image(v, n, p.Cv, p);
    T* on = out + n * static_cast<int64_t>(p.Cv) * (p.H * p.W);
    float S[G::NT][4];
#pragma unroll
    for (int j = 0; j < G::NT; ++j) S[j][0] = S[j][1] = S[j][2] = S[j][3] = 0.f;
    pipeline<G>(
        smem, nC + nV,
        [&](int s, T* buf) {
          if (s < nC) {
            stage_m<G>(buf, L, qi, s * G::CH, p.H, p.W, vec);
            stage_n<G>(buf, L, ki, s * G::CH, p.H, p.W, vec);
          } else {
            stage_n<G>(buf, L, vi, (s - nC) * G::CH, p.H, p.W, vec);
          }
        },
        [&](int s, T* buf) {
          if (s < nC) {
            dot_chunk<G>(S, buf, L);
            return;
          }
          if (s == nC) {
            float lse[2];
            softmax_rows<G>(S, L, p.H, p.W, p.scale, p.padding, lse);
          }
          float O[G::CT][4];
          weighted_chunk<G>(O, S, buf, L);
          write_rows<G>(buf, O, L);
          __syncthreads();
          store_m<G>(on, vi.cs, vi.ps, p.Cv, buf, L, (s - nC) * G::CH, p.H, p.W, vec);
        });
  }
}

}  // namespace

bool local_attn_v2_supported(const LocalAttnV2Params& p) {
  constexpr int64_t kMax = int64_t(1) << 31;
  const int64_t hw = static_cast<int64_t>(p.H) * p.W;
  if (!is_valid_kernel_size(p.kernel_size) || p.kernel_size > kMaxV2KernelSize) return false;
  if (p.N < 1 || p.C < 1 || p.Cv < 1 || hw < 1 || hw * p.C >= kMax || hw * p.Cv >= kMax) return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}

template <typename T>
cudaError_t local_attn_v2_forward(const LocalAttnV2Params& p, const T* query, const T* key, const T* value, T* out,
                                  cudaStream_t stream) {
  if (!local_attn_v2_supported(p)) return cudaErrorInvalidValue;
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = p.channels_last && p.C % VEC == 0 && p.Cv % VEC == 0 && aligned16(query) && aligned16(key) &&
                   aligned16(value) && aligned16(out);
  return ARSEG_KERNEL_SIZE_SWITCH_TO_11(p.kernel_size, K, [&]() -> cudaError_t {
    if constexpr (K == kGenericKernelSize || K > kMaxV2KernelSize) {
      return cudaErrorInvalidValue;
    } else {
      using G = FwdGeo<T, K>;
      return launch_tiles<G>(&local_attn_v2_forward_kernel<T, K>, G::kSmemBytes, p, stream, p, query, key, value,
                             out, vec);
    }
  });
}

#define ARSEG_INSTANTIATE_ATTN_V2_FORWARD(T) \
  template cudaError_t local_attn_v2_forward<T>(const LocalAttnV2Params&, const T*, const T*, const T*, T*, cudaStream_t);
ARSEG_INSTANTIATE_ATTN_V2_FORWARD(float)
ARSEG_INSTANTIATE_ATTN_V2_FORWARD(__half)
ARSEG_INSTANTIATE_ATTN_V2_FORWARD(__nv_bfloat16)

}  // namespace cuda
}  // namespace arseg
