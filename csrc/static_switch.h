// Compile-time dispatch of runtime values, for the CPU and the CUDA code alike (torch-free, C++17, nvcc-safe).
// In the spirit of flash-attention's static_switch.h: the macro turns a runtime value into a `constexpr`
// named NAME and calls the lambda body __VA_ARGS__ with it, so the body can use NAME as a template argument.
//
//   ARSEG_BOOL_SWITCH(mode == WarpMode::Nearest, kNearest, [&] { warp_row<kNearest ? 1 : 4>(...); });
//   ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] { return launch<T, K>(...); });
//
// The body's return value is returned by the macro (every branch must return the same type).
#pragma once

#include "local_attn_math.h"  // kMaxKernelSize, is_valid_kernel_size

namespace arseg {

// The value ARSEG_KERNEL_SIZE_SWITCH gives NAME for a kernel size without its own specialisation: the body
// then reads the size at run time (e.g. from its params struct).
constexpr int kGenericKernelSize = 0;

}  // namespace arseg

#define ARSEG_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                    \
    if (COND) {                            \
      constexpr bool NAME = true;          \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr bool NAME = false;         \
      return __VA_ARGS__();                \
    }                                      \
  }()

// One `case` of the kernel-size switches below: NAME becomes the constant K inside the body.
#define ARSEG_KERNEL_SIZE_CASE(K, NAME, ...) \
  case K: {                                  \
    constexpr int NAME = K;                  \
    return __VA_ARGS__();                    \
  }

// The sizes without their own specialisation: NAME is kGenericKernelSize and the body reads the size at run time.
#define ARSEG_KERNEL_SIZE_DEFAULT(NAME, ...)               \
  default: {                                               \
    constexpr int NAME = ::arseg::kGenericKernelSize;      \
    return __VA_ARGS__();                                  \
  }

// KSIZE is a valid kernel size (callers check is_valid_kernel_size first). NAME is KSIZE for the sizes with
// their own specialisation (1, 3, 5, 7: window in registers, unrolled loops) and kGenericKernelSize otherwise.
#define ARSEG_KERNEL_SIZE_SWITCH(KSIZE, NAME, ...)        \
  [&] {                                                   \
    switch (KSIZE) {                                      \
      ARSEG_KERNEL_SIZE_CASE(1, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(3, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(5, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(7, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_DEFAULT(NAME, __VA_ARGS__)        \
    }                                                     \
  }()

// Like ARSEG_KERNEL_SIZE_SWITCH with every odd size up to 11 specialised (the v2 local_attn kernels: their
// score tiles live in registers for K <= 11); kGenericKernelSize above.
#define ARSEG_KERNEL_SIZE_SWITCH_TO_11(KSIZE, NAME, ...)  \
  [&] {                                                   \
    switch (KSIZE) {                                      \
      ARSEG_KERNEL_SIZE_CASE(1, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(3, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(5, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(7, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(9, NAME, __VA_ARGS__)        \
      ARSEG_KERNEL_SIZE_CASE(11, NAME, __VA_ARGS__)       \
      ARSEG_KERNEL_SIZE_DEFAULT(NAME, __VA_ARGS__)        \
    }                                                     \
  }()
