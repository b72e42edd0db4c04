// Device-side helpers shared by the .cu files: element <-> accumulator conversion, launch-size limits, the
// grid-stride loop, compile-time switches and the explicit-instantiation list. nvcc only; no torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "../static_switch.h"
#include "kernels.h"
#include "launch.cuh"

namespace arseg {
namespace cuda {

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccType<T>::type x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x + s * d without contracting into an FMA, so a warp's sample coordinate is bit-identical to the CPU kernel's
// (mv_warp and the fused creff gather use it).
__device__ __forceinline__ float sample_coord(float x, float s, float d) { return __fadd_rn(x, __fmul_rn(s, d)); }
__device__ __forceinline__ double sample_coord(double x, double s, double d) {
  return __dadd_rn(x, __dmul_rn(s, d));
}

// Largest grid dimensions a launch may use (x: 2^31 - 1; y, z: 65535). Kernels loop over what does not fit.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;

inline unsigned grid_dim(int64_t want, int64_t limit) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, limit)));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// body(i) for every i in [0, count) that falls to this thread, for any 1-D grid: grids are capped at kMaxGridX
// blocks, so a thread strides by the whole grid until the range is covered. 64-bit indices.
template <typename Body>
__device__ __forceinline__ void grid_stride_loop(int64_t count, Body body) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    body(i);
}

}  // namespace cuda
}  // namespace arseg

// Instantiates a launcher template for the four element types (used at the end of each .cu file).
#define ARSEG_INSTANTIATE_FOR_FLOATS(MACRO) \
  MACRO(float)                              \
  MACRO(double)                             \
  MACRO(__half)                             \
  MACRO(__nv_bfloat16)
