// Torch-free interface of the CUDA kernels: raw pointers, sizes and a stream in, a cudaError_t out.
//
// The .cu files include only this header, the shared params structs and per-element math (../op_params.h,
// ../mv_warp_math.h, ../local_attn_math.h, ../static_switch.h) and CUDA headers, so CMake can compile them
// without torch. The torch glue
// (mv_warp_cuda.cpp, local_attn_cuda.cpp) checks arguments, makes inputs contiguous (NCHW), allocates outputs
// and workspaces, and turns a returned error into a TORCH_CHECK.
//
// Element types: float, double, __half, __nv_bfloat16 (explicitly instantiated in the .cu files). Arithmetic is
// done in AccType<T>::type: double for double, float otherwise. Every launcher returns cudaSuccess without
// launching anything when there is no work, and otherwise the result of cudaGetLastError() after its launches.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "../op_params.h"

namespace arseg {
namespace cuda {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// ---------------------------------------------------------------------------------------------------------
// mv_warp (MvWarpParams in ../op_params.h).

template <typename T>
cudaError_t mv_warp_forward(const MvWarpParams& p, const T* feature, const T* mv, T* out, cudaStream_t stream);

// Bytes of device workspace mv_warp_backward_feature needs: an accumulation buffer in AccType<T> when T is a
// 16-bit type (the scatter adds with fp32 atomics, then converts), 0 for float and double (adds in place).
template <typename T>
size_t mv_warp_backward_feature_workspace(const MvWarpParams& p);

// grad_feature = scatter of grad_output through the taps (atomics, so the summation order is not fixed).
template <typename T>
cudaError_t mv_warp_backward_feature(const MvWarpParams& p, const T* grad_output, const T* mv, T* grad_feature,
                                     void* workspace, cudaStream_t stream);

// Bytes of workspace mv_warp_backward_mv needs: per-pixel (d/dx, d/dy) channel sums, 2*N*H*W AccType<T>.
template <typename T>
size_t mv_warp_backward_mv_workspace(const MvWarpParams& p);

// grad_mv = per-block sums of the per-pixel derivatives, times (scale_x, scale_y). Deterministic (no atomics).
template <typename T>
cudaError_t mv_warp_backward_mv(const MvWarpParams& p, const T* grad_output, const T* feature, const T* mv,
                                T* grad_mv, void* workspace, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// local_attn (LocalAttnParams in ../op_params.h).

template <typename T>
cudaError_t local_attn_forward(const LocalAttnParams& p, const T* query, const T* key, const T* value, T* out,
                               cudaStream_t stream);

// Bytes of workspace local_attn_backward needs: per-pixel (log-sum-exp, delta), 2*N*H*W AccType<T>.
template <typename T>
size_t local_attn_backward_workspace(const LocalAttnParams& p);

// dq, dk, dv in two kernels (per query pixel, then per key pixel); deterministic (no atomics).
template <typename T>
cudaError_t local_attn_backward(const LocalAttnParams& p, const T* grad_output, const T* query, const T* key,
                                const T* value, T* dq, T* dk, T* dv, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace arseg
