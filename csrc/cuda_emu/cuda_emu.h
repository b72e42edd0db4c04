// cuda_emu.h: lets g++ compile the project's CUDA kernel source (csrc/cuda/*.cu) as host C++ and run it on the CPU.
// Included through the stand-in toolkit headers of csrc/cuda_emu/include (<cuda_runtime.h>, <cuda_fp16.h>, ...);
// the kernels need no rewrite: launches, shared memory and inline PTX go through csrc/cuda/launch.cuh and
// csrc/cuda/ptx.cuh, whose ARSEG_CUDA_EMULATION branches call into this emulator. x86-64 Linux only (the fiber
// switch is x86-64 assembly).
//
// Execution model (cuda_emu.cpp): the blocks of a grid run one after another; the threads of a block are
// fibers (own x86-64 stack switch), run one at a time until they reach a synchronisation point (__syncthreads, a warp
// collective: __shfl_*_sync, mma.sync), where they block until every participant has arrived. A fiber runs
// without interruption between synchronisation points (no lockstep, no preemption).
// Shared memory (ARSEG_SHARED and ARSEG_DYNAMIC_SHARED declarations, csrc/cuda/launch.cuh) is a fresh heap
// allocation per block, filled with 0xFF bytes (NaN for every float type) so a read of never-written shared
// memory shows up; it is freed at block end (ASan sees overflows and stale uses).
// cp.async copies are queued per thread and land only at cp.async.wait_group (their destination is filled
// with 0xFF bytes when the copy is issued), so a missing or misplaced wait reads NaN.
// mma.sync m16n8k16 (f16/bf16) and m16n8k8 (tf32) gather the 32 lanes' fragments by the PTX ISA layouts
// (written here from the ISA's fragment tables), multiply in double and round the sum once to float.
//
// Build modes: plain; -fsanitize=address,undefined (global/shared out-of-bounds, misaligned vector
// accesses); -fsanitize=thread with -DEMU_TSAN (data races between threads of a block, between blocks, on
// shared and global memory: barriers are the only happens-before edges; warp collectives are not).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define ARSEG_CUDA_EMULATION 1

// ---------------------------------------------------------------------------------------------------------
// qualifiers and attributes
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __cudart_builtin__
#define CUDARTAPI
// A bare __shared__ declaration would compile here as a function-static (one for every block, zero-initialised):
// make it a compile error. Kernels declare shared memory with ARSEG_SHARED / ARSEG_DYNAMIC_SHARED (launch.cuh).
#define __shared__ __shared__declarations_must_use_ARSEG_SHARED

// ---------------------------------------------------------------------------------------------------------
// vector types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};

// ---------------------------------------------------------------------------------------------------------
// runtime API subset (host side)
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidConfiguration = 9,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <class R, class... P>
cudaError_t cudaFuncSetAttribute(R (*func)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---------------------------------------------------------------------------------------------------------
// 16-bit float types (own conversions: round to nearest even)
namespace emu {
inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_half_bits(float f) {
  uint32_t x = f2u(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN / inf
  if (x >= 0x477ff000u) return sign | 0x7c00u;                                 // >= 65520: inf
  if (x < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal, m * 2^-24
    const float m = std::nearbyint(u2f(x) * 16777216.0f);
    return sign | static_cast<uint16_t>(m);
  }
  const uint32_t mant = x & 0x7fffffu, exp = (x >> 23) - 112u;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return u2f(sign | 0x7f800000u | (mant << 13));
  return u2f(sign | ((exp + 112u) << 23) | (mant << 13));
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }
}  // namespace emu

struct __half_raw {
  unsigned short x;
};
// The implicit float conversions exist only without __CUDA_NO_HALF_CONVERSIONS__ /
// __CUDA_NO_BFLOAT16_CONVERSIONS__, as in cuda_fp16.h / cuda_bf16.h (torch's CUDAExtension defines both).
struct __half {
  unsigned short __x;
  __half() = default;
  __half(__half_raw r) : __x(r.x) {}
#if !defined(__CUDA_NO_HALF_CONVERSIONS__)
  __half(float f) : __x(emu::float_to_half_bits(f)) {}
  __half(double f) : __x(emu::float_to_half_bits(static_cast<float>(f))) {}
  operator float() const { return emu::half_bits_to_float(__x); }
#endif
};
struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
#if !defined(__CUDA_NO_BFLOAT16_CONVERSIONS__)
  __nv_bfloat16(float f) : __x(emu::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double f) : __x(emu::float_to_bf16_bits(static_cast<float>(f))) {}
  operator float() const { return emu::bf16_bits_to_float(__x); }
#endif
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
typedef __half half;
typedef __half2 half2;
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && sizeof(__half2) == 4, "16-bit types");

inline float __half2float(__half h) { return emu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half(__half_raw{emu::float_to_half_bits(f)}); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bf16_bits_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(__nv_bfloat16_raw{emu::float_to_bf16_bits(f)}); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// ---------------------------------------------------------------------------------------------------------
// device intrinsics
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __uint_as_float(unsigned u) { return emu::u2f(u); }
inline unsigned __float_as_uint(float f) { return emu::f2u(f); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

namespace emu {

// ---- per-thread state, visible to the kernel through the builtin-variable macros ----
struct CpCopy {
  void* dst;
  const void* src;
  int size, src_bytes;
  const char* file;
  int line;
};
struct ThreadState;  // cuda_emu.cpp
struct Current {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  int linear, lane, warp;
};
extern Current* g_cur;
// The builtin variables, read through out-of-line accessors (cuda_emu.cpp is not instrumented by
// ThreadSanitizer: the emulator's own bookkeeping is not the kernel's memory).
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
int lane_id();

[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));  // error, counted; run continues

// synchronisation
void syncthreads(const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);

// Warp collective: every lane in `mask` passes its own `data`; the last to arrive calls fn(lanes) with all 32
// lanes' data pointers (nullptr for lanes outside the mask), then every lane continues.
using CollectiveFn = void (*)(void* const* lanes, unsigned mask);
void warp_collective(const char* kind, const char* file, int line, unsigned mask, void* data, CollectiveFn fn);

template <typename T>
struct ShflSlot {
  T value;
  int src;  // lane to read (computed by each lane)
  T result;
};
template <typename T>
__attribute__((no_sanitize_thread)) void shfl_fn(void* const* lanes, unsigned mask) {
  T vals[32];
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) vals[l] = static_cast<ShflSlot<T>*>(lanes[l])->value;
  for (int l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    auto* s = static_cast<ShflSlot<T>*>(lanes[l]);
    if (s->src < 0 || s->src >= 32 || !(mask >> s->src & 1u)) {
      report("__shfl_*_sync: lane %d reads lane %d, which is not in the mask %08x (undefined value)", l, s->src,
             mask);
      s->result = s->value;
    } else {
      s->result = vals[s->src];
    }
  }
}
template <typename T>
T shfl_at(const char* kind, const char* file, int line, unsigned mask, T var, int src) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffle of a trivially copyable type");
  ShflSlot<T> slot{var, src, var};
  warp_collective(kind, file, line, mask, &slot, &shfl_fn<T>);
  return slot.result;
}
inline int seg_base(int lane, int width) { return lane & ~(width - 1); }
template <typename T>
T shfl_xor_at(const char* file, int line, unsigned mask, T var, int lane_mask, int width = 32) {
  const int l = lane_id(), src = l ^ lane_mask;
  return shfl_at("__shfl_xor_sync", file, line, mask, var,
                 (src & ~(width - 1)) == seg_base(l, width) ? src : l);
}
template <typename T>
T shfl_idx_at(const char* file, int line, unsigned mask, T var, int src_lane, int width = 32) {
  const int l = lane_id();
  return shfl_at("__shfl_sync", file, line, mask, var, seg_base(l, width) + (src_lane & (width - 1)));
}
template <typename T>
T shfl_down_at(const char* file, int line, unsigned mask, T var, unsigned delta, int width = 32) {
  const int l = lane_id(), src = l + static_cast<int>(delta);
  return shfl_at("__shfl_down_sync", file, line, mask, var, src < seg_base(l, width) + width ? src : l);
}
template <typename T>
T shfl_up_at(const char* file, int line, unsigned mask, T var, unsigned delta, int width = 32) {
  const int l = lane_id(), src = l - static_cast<int>(delta);
  return shfl_at("__shfl_up_sync", file, line, mask, var, src >= seg_base(l, width) ? src : l);
}

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// atomics (a fiber is never interrupted inside one; __atomic builtins so that ThreadSanitizer sees atomics)
template <typename T, typename Bits>
T atomic_add_bits(T* a, T v) {
  static_assert(sizeof(T) == sizeof(Bits), "bits");
  Bits* p = reinterpret_cast<Bits*>(a);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED), new_bits;
  T old_val;
  do {
    std::memcpy(&old_val, &old_bits, sizeof(T));
    const T nv = from_float<T>(to_float(old_val) + to_float(v));
    std::memcpy(&new_bits, &nv, sizeof(T));
  } while (!__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old_val;
}
void check_atomic_address(const void* p, size_t align, const char* what);

// shared memory
void* dynamic_shared(size_t align);  // this block's dynamic shared memory (size from the launch)
void* static_shared(const void* tag, size_t bytes, size_t align);
template <typename T>
T& shared_var(const void* tag) {
  return *static_cast<T*>(static_shared(tag, sizeof(T), alignof(T)));
}
bool is_shared(const void* p, size_t bytes);

// cp.async (the copies themselves run in cuda_emu_mem.cpp, compiled like the kernels, so that ThreadSanitizer
// and AddressSanitizer see them as accesses of the issuing / waiting thread)
void mem_fill(void* dst, int byte, size_t n);
void mem_copy(void* dst, const void* src, size_t n);
void cp_async(void* dst, const void* src, int cp_size, int src_bytes, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending);

// mma.sync
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
uint32_t cvt_rna_tf32(float x);

// ---- launch ----
struct Cfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const char* file;
  int line;
};
inline Cfg cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return {grid, block, smem, stream, nullptr, 0};
}

// Runs body(ctx) for every thread of the grid; returns the launch error (configuration checks).
cudaError_t run_grid(const void* kernel, const Cfg& c, void (*body)(void*), void* ctx);

// ARSEG_LAUNCH(grid, block, smem, stream, kernel)(args...) (csrc/cuda/launch.cuh) is
// ::emu::launch(kernel, cfg(...))(args...): the arguments are converted to the kernel's parameter types once,
// as a real launch does, and every thread of the grid runs the kernel on its own copy of them.
template <class... P>
struct Launch {
  void (*kernel)(P...);
  Cfg c;
  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(P) == sizeof...(A), "kernel argument count");
    struct Ctx {
      void (*k)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    run_grid(reinterpret_cast<const void*>(kernel), c,
             [](void* p) {
               Ctx* x = static_cast<Ctx*>(p);
               auto local = x->params;  // each thread's own copy of the parameters
               std::apply(x->k, local);
             },
             &ctx);
  }
};
template <class... P>
Launch<P...> launch(void (*kernel)(P...), const Cfg& c) {
  return {kernel, c};
}

}  // namespace emu

// builtin variables
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize 32

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl_xor_at(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl_idx_at(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl_down_at(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl_up_at(__FILE__, __LINE__, __VA_ARGS__)
#define __trap() ::emu::fatal("__trap() at %s:%d", __FILE__, __LINE__)

inline float atomicAdd(float* a, float v) {
  emu::check_atomic_address(a, 4, "atomicAdd(float)");
  return emu::atomic_add_bits<float, uint32_t>(a, v);
}
inline double atomicAdd(double* a, double v) {
  emu::check_atomic_address(a, 8, "atomicAdd(double)");
  uint64_t* p = reinterpret_cast<uint64_t*>(a);
  uint64_t ob = __atomic_load_n(p, __ATOMIC_RELAXED), nb;
  double ov;
  do {
    std::memcpy(&ov, &ob, 8);
    const double nv = ov + v;
    std::memcpy(&nb, &nv, 8);
  } while (!__atomic_compare_exchange_n(p, &ob, nb, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return ov;
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline __half atomicAdd(__half* a, __half v) {
  emu::check_atomic_address(a, 2, "atomicAdd(__half)");
  return emu::atomic_add_bits<__half, uint16_t>(a, v);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  emu::check_atomic_address(a, 2, "atomicAdd(__nv_bfloat16)");
  return emu::atomic_add_bits<__nv_bfloat16, uint16_t>(a, v);
}
