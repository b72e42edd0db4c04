// Which CUDA kernels run a call: the one decision that the torch glue (*_cuda.cpp) and the CPU emulator's harness
// (csrc/cuda_emu/harness.cpp) both make, so that the emulated tests run exactly the kernels a GPU would.
//
// `experimental` is arseg::experimental_kernel(op) (ARSEG_EXPERIMENTAL_KERNELS): opt-in kernels no GPU has timed.
// The verified default (v1) kernels run on contiguous NCHW (the glue copies other layouts); the v2 kernels and the
// fused creff read their layout in place. Torch-free.
#pragma once

#include <cstdint>

#include "creff.h"
#include "local_attn_v2.h"
#include "mv_warp_v2.h"

namespace arseg {
namespace cuda {

// Element types as the glue sees them (double runs only on the v1 kernels and the fused creff).
enum class ElemType : int { Float64 = 0, Float32 = 1, Float16 = 2, BFloat16 = 3 };

// mv_warp (all three of forward, backward_feature, backward_mv): v2 when opted in and the sizes fit its 32-bit
// in-plane offsets, in `layout` (NHWC for strictly channels_last tensors); otherwise v1 on NCHW.
inline bool mv_warp_runs_v2(bool experimental, const MvWarpParams& p, Layout layout) {
  return experimental && mv_warp_v2_supports(p, layout);
}

// local_attn (forward and backward alike): v2 when opted in, for float/half/bfloat16, kernel sizes up to
// kMaxV2KernelSize, 32-bit sizes and a device that has tensor cores (local_attn_v2_supported).
// Fills *v2 when it returns true.
inline bool local_attn_runs_v2(bool experimental, ElemType type, const LocalAttnParams& p, bool channels_last,
                               LocalAttnV2Params* v2) {
  if (!experimental || type == ElemType::Float64) return false;
  if (p.kernel_size > kMaxV2KernelSize) return false;
  constexpr int64_t kIntMax = 2147483647;
  if (p.C > kIntMax || p.Cv > kIntMax || p.H > kIntMax || p.W > kIntMax) return false;
  *v2 = {p.N,
         static_cast<int>(p.C),
         static_cast<int>(p.Cv),
         static_cast<int>(p.H),
         static_cast<int>(p.W),
         p.kernel_size,
         static_cast<float>(p.scale),
         p.padding,
         channels_last};
  return local_attn_v2_supported(*v2);
}

// creff: the fused kernel when opted in and creff_fused_supported; otherwise the composition of the mv_warp and
// local_attn ops (each of which then makes its own choice above) with ATen's resize and depthwise convs.
inline bool creff_runs_fused(bool experimental, ElemType type, const CreffParams& p) {
  return experimental && creff_fused_supported(p, type == ElemType::Float64);
}

}  // namespace cuda
}  // namespace arseg
