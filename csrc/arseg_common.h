// Small portability helpers shared by the CPU (g++) and CUDA (nvcc) translation units.
// Nothing here includes torch, so the .cu kernels can include it and CMake can build them alone.
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__)
#define ARSEG_HD __host__ __device__ __forceinline__
#else
#define ARSEG_HD inline
#endif

namespace arseg {

// floor / round-half-to-even for the accumulation types; the C functions exist on host and device.
ARSEG_HD float floor_(float x) { return floorf(x); }
ARSEG_HD double floor_(double x) { return floor(x); }
ARSEG_HD float rint_(float x) { return rintf(x); }  // default rounding mode: half to even, as torch.round
ARSEG_HD double rint_(double x) { return rint(x); }
ARSEG_HD float exp_(float x) { return expf(x); }
ARSEG_HD double exp_(double x) { return exp(x); }
ARSEG_HD float log_(float x) { return logf(x); }
ARSEG_HD double log_(double x) { return log(x); }

// True for finite x; false for NaN and +-inf (x - x is NaN for both). Needed before any float->int cast.
template <typename T>
ARSEG_HD bool is_finite(T x) {
  return (x - x) == T(0);
}

}  // namespace arseg
