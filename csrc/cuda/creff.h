// Torch-free interface of the fused CReFF CUDA kernel (creff_forward.cu); glue in creff_cuda.cpp.
//
// Experimental: no GPU has run it yet, so the glue launches it only when arseg::experimental_kernel("creff")
// (ARSEG_EXPERIMENTAL_KERNELS=creff); the default CUDA path is the composition of the verified ops.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../creff_math.h"
#include "kernels.h"

namespace arseg {
namespace cuda {

// Whether the fused kernel handles these sizes: odd kernel_size up to 11 (up to 7 for float64, whose tile would
// not fit the 48 KB of static shared memory beyond that; other sizes run the unfused composition), and one
// H x W plane indexable in 32 bits. `float64`: the tensors are double.
inline bool creff_fused_supported(const CreffParams& p, bool float64) {
  const int K = p.kernel_size;
  const bool sized = K >= 1 && K % 2 == 1 && K <= (float64 ? 7 : 11);
  return sized && p.h >= 1 && p.w >= 1 && p.h <= p.H && p.w <= p.W && p.H * p.W <= INT32_MAX;
}

// out (N, C, H, W) = lr + local_attn(q, k, v) of the CReFF chain (creff_math.h): key_feature (N, C, H, W),
// lr_feature (N, C, h, w) and out all contiguous NCHW, or all NHWC (channels_last true); mv (N, 2, Hb, Wb),
// weight (3, C, 1, 3, 3) and bias (3, C) contiguous. Returns cudaErrorInvalidValue (launching nothing) when
// !creff_fused_supported(p, T is double).
template <typename T>
cudaError_t creff_forward(const CreffParams& p, bool channels_last, const T* key_feature, const T* mv,
                          const T* lr_feature, const T* weight, const T* bias, T* out, cudaStream_t stream);

// Bytes of device workspace creff_backward needs (creff_backward.cu): dq, dk and dv (N*C*H*W each), two
// statistics per pixel, and per-CTA weight sums, all in AccType<T> (`float64`: T is double).
size_t creff_backward_workspace_bytes(const CreffParams& p, bool float64);

// The fused backward (EXPERIMENTAL): from grad_output (N, C, H, W) and the forward's inputs (contiguous NCHW,
// mv / weight / bias as creff_forward), d_hr = d out / d hr (hr = the warped key feature) and d_lr = d out / d lr
// (lr = lr_feature resized to (H, W), the residual included), both (N, C, H, W), and d_weight
// (3, C, 1, 3, 3), d_bias (3, C) in T. Deterministic: no atomics. The glue maps d_hr through
// mv_warp_backward_feature and d_lr through the resize's transpose. cudaErrorInvalidValue (nothing launched)
// when !creff_fused_supported(p, T is double).
template <typename T>
cudaError_t creff_backward(const CreffParams& p, const T* grad_output, const T* key_feature, const T* mv,
                           const T* lr_feature, const T* weight, const T* bias, T* d_hr, T* d_lr, T* d_weight,
                           T* d_bias, void* workspace,                            cudaStream_t stream);

}  // namespace cuda
}  // namespace arseg
