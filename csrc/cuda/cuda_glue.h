// What the CUDA torch glue files share: element-type mapping from ATen to CUDA types, raw pointers, error
// checks and workspace allocation. Only c10/cuda headers (not ATen/cuda, which pulls in cuSPARSE/cuBLAS headers),
// so the glue also syntax-checks against a CPU torch wheel plus a bare CUDA toolkit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "../op_common.h"
#include "kernel_choice.h"
#include "kernels.h"

namespace arseg {
namespace cuda {

// at::Half / at::BFloat16 have the same layout as __half / __nv_bfloat16 (a 16-bit payload).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};
static_assert(sizeof(at::Half) == sizeof(__half) && sizeof(at::BFloat16) == sizeof(__nv_bfloat16),
              "16-bit float types must have matching layouts");

template <typename scalar_t>
const typename CudaType<scalar_t>::type* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<scalar_t>::type*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
typename CudaType<scalar_t>::type* out_ptr(at::Tensor& t) {
  return reinterpret_cast<typename CudaType<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>());
}

// Device scratch memory of `bytes` bytes from the caching allocator (kept alive by the returned tensor).
inline at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

inline ElemType elem_type(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return ElemType::Float64;
    case at::kFloat: return ElemType::Float32;
    case at::kHalf: return ElemType::Float16;
    case at::kBFloat16: return ElemType::BFloat16;
    default: TORCH_CHECK(false, "arseg_ops: the CUDA kernels do not support ", type);
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "arseg_ops.", op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace arseg
