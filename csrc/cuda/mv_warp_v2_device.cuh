// Device helpers shared by the v2 mv_warp kernels (mv_warp_v2_forward.cu, mv_warp_v2_backward.cu). nvcc only.
#pragma once

#include <climits>

#include "device_common.cuh"
#include "mv_warp_v2.h"

namespace arseg {
namespace cuda {
namespace v2 {

constexpr int kThreads = 256;

// x + s * d without contracting into an FMA, so the sample coordinate is bit-identical to the CPU kernel's
// (and to v1's, which has the same two lines; they go when v1 is deleted).
__device__ __forceinline__ float coord(float x, float s, float d) { return __fadd_rn(x, __fmul_rn(s, d)); }
__device__ __forceinline__ double coord(double x, double s, double d) { return __dadd_rn(x, __dmul_rn(s, d)); }

// block_of (floor(y * blocks / size)) in 32-bit arithmetic: the same integer without a 64-bit division (a
// subroutine call on the GPU whose calling convention costs register spills). mv_warp_v2_supports guarantees
// size * blocks < 2^31.
__device__ __forceinline__ int64_t block_of_fast(int y, int64_t size, int64_t blocks) {
  return (y * static_cast<int>(blocks)) / static_cast<int>(size);
}

// Sample coordinate of output pixel (n, y, x): its block's motion vector, scaled, added to (x, y).
template <typename T, typename acc_t>
__device__ __forceinline__ void sample_coord(const MvWarpParams& p, const T* __restrict__ mv, int64_t n, int y, int x,
                                             acc_t& xs, acc_t& ys) {
  const int64_t by = block_of_fast(y, p.H, p.Hb), bx = block_of_fast(x, p.W, p.Wb);
  const T* m = mv + (n * 2 * p.Hb + by) * p.Wb + bx;  // channel 0 (dx); dy is one block plane further
  xs = coord(static_cast<acc_t>(x), static_cast<acc_t>(p.scale_x), to_acc(m[0]));
  ys = coord(static_cast<acc_t>(y), static_cast<acc_t>(p.scale_y), to_acc(m[p.Hb * p.Wb]));
}

// The (up to four) taps of output pixel (n, y, x), by the shared math (mv_warp_math.h).
template <typename T, typename acc_t>
__device__ __forceinline__ void pixel_taps(const MvWarpParams& p, const T* __restrict__ mv, int64_t n, int y, int x,
                                           Taps<acc_t>& t) {
  acc_t xs, ys;
  sample_coord(p, mv, n, y, x, xs, ys);
  sample_taps(xs, ys, p.H, p.W, p.mode, p.padding, t);
}

// V elements moved by one vector access (alignment checked by the launchers).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

// Global atomic add of an accumulator value into an element of type T (fp16/bf16 round the value once).
__device__ __forceinline__ void atomic_add(float* a, float v) { atomicAdd(a, v); }
__device__ __forceinline__ void atomic_add(double* a, double v) { atomicAdd(a, v); }
__device__ __forceinline__ void atomic_add(__half* a, float v) { atomicAdd(a, __float2half_rn(v)); }
__device__ __forceinline__ void atomic_add(__nv_bfloat16* a, float v) { atomicAdd(a, __float2bfloat16_rn(v)); }

// Element offset of (n, c, pixel) in either layout (64-bit: the tensor may exceed 2^31 elements).
template <Layout L>
__device__ __forceinline__ int64_t elem(int64_t n, int c, int pix, int C, int HW) {
  return L == Layout::NCHW ? (n * C + c) * static_cast<int64_t>(HW) + pix
                           : (n * HW + pix) * static_cast<int64_t>(C) + c;
}

// ---- host side ----

// CTAs of kThreads that fill the current device once (2048 resident threads per SM on sm_80/sm_90).
inline int64_t resident_ctas() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                 cudaSuccess) {
    (void)cudaGetLastError();  // not fatal: assume an H100's 132 SMs
    sms = 132;
  }
  return static_cast<int64_t>(sms) * (2048 / kThreads);
}

// Into how many parts (1..max_parts) to split the channel work of `ctas` CTAs so the grid fills the device.
inline int64_t parts_for_occupancy(int64_t ctas, int64_t max_parts) {
  const int64_t want = ceil_div(resident_ctas(), std::max<int64_t>(ctas, 1));
  return std::max<int64_t>(1, std::min(want, max_parts));
}

inline bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Elements per 16-byte access, capped at 4 (NCHW forward: pixels per thread, whose taps live in registers).
template <typename T>
constexpr int pixels_per_thread() {
  return sizeof(T) >= 8 ? 2 : 4;
}
template <typename T>
constexpr int channels_per_vector() {
  return static_cast<int>(16 / sizeof(T));
}

// Largest power of two <= min(n, 32), as its log2: lanes that share one pixel in the NHWC kernels.
inline int lanes_log2(int64_t n) {
  int l = 0;
  while (l < 5 && (int64_t{2} << l) <= n) ++l;
  return l;
}

}  // namespace v2
}  // namespace cuda
}  // namespace arseg
