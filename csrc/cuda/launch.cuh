// Kernel launches and shared-memory declarations: one spelling for nvcc and for the CPU emulator.
//
// The kernels never write `<<<...>>>` or `__shared__` themselves; these macros do, so the same source compiles
// with nvcc for a GPU and with g++ for the CPU emulator (csrc/cuda_emu, ARSEG_CUDA_EMULATION), where a launch runs
// the grid's blocks as fibers and shared memory is a fresh per-block allocation filled with 0xFF bytes (NaN).
//
//   ARSEG_LAUNCH(grid, block, smem_bytes, stream, kernel<T, K>)(args...);
//   ARSEG_SHARED(name, type);                        // __shared__ type name;  (type may be an array: T[4][64])
//   ARSEG_DYNAMIC_SHARED(name, element_type, align); // extern __shared__ __align__(align) element_type name[];
// The kernel comes last in ARSEG_LAUNCH and the type last in ARSEG_SHARED so that template arguments with commas
// pass through the macro intact.
#pragma once

#include <cuda_runtime.h>

#if defined(ARSEG_CUDA_EMULATION)

#define ARSEG_LAUNCH(grid, block, smem, stream, ...) ::emu::launch(__VA_ARGS__, ::emu::cfg(grid, block, smem, stream))
#define ARSEG_SHARED(name, ...)                  \
  using arseg_shared_##name##_t = __VA_ARGS__;   \
  static const char arseg_shared_##name##_tag = 0; \
  arseg_shared_##name##_t& name = ::emu::shared_var<arseg_shared_##name##_t>(&arseg_shared_##name##_tag)
#define ARSEG_DYNAMIC_SHARED(name, type, align) type* name = static_cast<type*>(::emu::dynamic_shared(align))

#else

#define ARSEG_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define ARSEG_SHARED(name, ...)                \
  using arseg_shared_##name##_t = __VA_ARGS__; \
  __shared__ arseg_shared_##name##_t name
#define ARSEG_DYNAMIC_SHARED(name, type, align) extern __shared__ __align__(align) type name[]

#endif
