// Torch-free interface of the second-generation ("v2") local_attn CUDA kernels (local_attn_v2_*.cu).
//
// EXPERIMENTAL: no GPU has run these kernels yet. The glue (local_attn_cuda.cpp) calls them only when
// arseg::experimental_kernel("local_attn") is true (ARSEG_EXPERIMENTAL_KERNELS=local_attn, or
// arseg_ops._loader.experimental_kernels("local_attn")); the first-generation kernels stay the default.
//
// Differences from the first generation (kernels.h): tensor cores (mma.sync, sm_80+; fp16/bf16 directly, fp32 as
// 3xTF32), cp.async double-buffered staging, 32-bit in-image index math, and two layouts: NCHW or channels_last
// (NHWC: all of query, key, value, outputs and grads in that layout). float, __half and __nv_bfloat16 only
// (double stays on the first-generation kernels). Same semantics as local_attn_math.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "../local_attn_math.h"

namespace arseg {
namespace cuda {

struct LocalAttnV2Params {
  int64_t N;          // images (looped over by the grid: any count)
  int C, Cv, H, W;    // per image: C*H*W and Cv*H*W must be < 2^31 (local_attn_v2_supported)
  int kernel_size;    // odd, 1..kMaxV2KernelSize
  float scale;
  AttnPadding padding;
  bool channels_last;  // every tensor NHWC-contiguous (else NCHW-contiguous)
};

constexpr int kMaxV2KernelSize = 11;  // forward and backward

// True when the v2 kernels handle these sizes on the current device: compute capability >= 8.0, odd kernel size
// <= 11, C >= 1, Cv >= 1, H*W >= 1, per-image planes below 2^31 elements. Otherwise use the first generation.
bool local_attn_v2_supported(const LocalAttnV2Params& p);

template <typename T>
cudaError_t local_attn_v2_forward(const LocalAttnV2Params& p, const T* query, const T* key, const T* value, T* out,
                                  cudaStream_t stream);

// Bytes of workspace local_attn_v2_backward needs: per-pixel (log-sum-exp, delta) in float, 2*N*H*W floats.
size_t local_attn_v2_backward_workspace(const LocalAttnV2Params& p);

// dq, dk, dv in two deterministic kernels (query-centred: dq and the statistics; key-centred: dk, dv). No
// atomics.
template <typename T>
cudaError_t local_attn_v2_backward(const LocalAttnV2Params& p, const T* grad_output, const T* query, const T* key,
                                   const T* value, T* dq, T* dk, T* dv, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace arseg
