// Every inline PTX instruction of the CUDA kernels, each behind a function with its CPU emulation branch.
//
// nvcc (sm_80+) compiles the asm; the CPU emulator (csrc/cuda_emu, ARSEG_CUDA_EMULATION) runs the same kernels
// through the ::emu functions, which implement the instructions from the PTX ISA (fragment layouts of mma.sync,
// group semantics of cp.async), never from our kernels' assumptions. Keep PTX out of every other file: an asm
// statement elsewhere would not compile on the emulator.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace arseg {
namespace cuda {

// ---- cp.async (sm_80): global -> shared without registers; src_bytes 0 writes zeros (out-of-image pixels) ----

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::cp_async(smem, gmem, 16, src_bytes, __FILE__, __LINE__);
#elif __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int src_bytes) {
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::cp_async(smem, gmem, 4, src_bytes, __FILE__, __LINE__);
#elif __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::cp_async_commit();
#elif __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::cp_async_wait(kPending);
#elif __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// ---- mma.sync: d += a . b for one warp (fragments as the PTX ISA lays them out) ----

// One mma.sync with f32 accumulators d[4], A fragment a[4] and B fragment b0, b1 (string literals: the shape,
// e.g. "m16n8k16", and the operands' PTX type, "f16", "bf16" or "tf32").
#define ARSEG_MMA_SYNC(SHAPE, TYPE)                                                                          \
  asm volatile("mma.sync.aligned." SHAPE ".row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, " \
               "{%8,%9}, {%0,%1,%2,%3};\n"                                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

// 16-bit operands: T16 is __half or __nv_bfloat16 (a tag; the registers hold two elements each).
template <typename T16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, T16) {
  constexpr bool kBf16 = std::is_same<T16, __nv_bfloat16>::value;
  static_assert(std::is_same<T16, __half>::value || std::is_same<T16, __nv_bfloat16>::value, "16-bit operands");
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::mma_m16n8k16_f16(d, a, b0, b1, kBf16);
#elif __CUDA_ARCH__ >= 800
  if constexpr (kBf16)
    ARSEG_MMA_SYNC("m16n8k16", "bf16");
  else
    ARSEG_MMA_SYNC("m16n8k16", "f16");
#else
  __trap();
#endif
}

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(ARSEG_CUDA_EMULATION)
  ::emu::mma_m16n8k8_tf32(d, a, b0, b1);
#elif __CUDA_ARCH__ >= 800
  ARSEG_MMA_SYNC("m16n8k8", "tf32");
#else
  __trap();
#endif
}

#undef ARSEG_MMA_SYNC

// x rounded to TF32 (round to nearest, ties away from zero; the low 13 mantissa bits zero).
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(ARSEG_CUDA_EMULATION)
  return ::emu::cvt_rna_tf32(x);
#else
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#endif
}

// ---- values opaque to the optimiser ----
// The value of x through a mov the compiler cannot see through: per-lane addresses derived from it are recomputed
// where they are used instead of being hoisted out of a loop into dozens of live registers (which spills).

__device__ __forceinline__ float opaque_f(float x) {
#if defined(ARSEG_CUDA_EMULATION)
  return x;
#else
  float r;
  asm volatile("mov.b32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
#endif
}

__device__ __forceinline__ int opaque(int x) {
#if defined(ARSEG_CUDA_EMULATION)
  return x;
#else
  int r;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(r) : "r"(x));
  return r;
#endif
}

}  // namespace cuda
}  // namespace arseg
