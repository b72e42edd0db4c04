// One torch-free parameter struct per op, used by the CPU kernels, the CUDA kernels and the torch glue that
// fills them (make_*_params in op_common.h). Plain data, passed to CUDA kernels by value.
#pragma once

#include <cstdint>

#include "local_attn_math.h"
#include "mv_warp_math.h"

namespace arseg {

// mv_warp: feature/out/grad (N, C, H, W), mv/grad_mv (N, 2, Hb, Wb), all contiguous.
struct MvWarpParams {
  int64_t N, C, H, W, Hb, Wb;
  double scale_x, scale_y;
  WarpMode mode;
  WarpPadding padding;
};

// local_attn: query/key/dq/dk (N, C, H, W), value/out/dout/dv (N, Cv, H, W), all contiguous.
struct LocalAttnParams {
  int64_t N, C, Cv, H, W;
  int kernel_size;  // odd, 1..kMaxKernelSize
  double scale;
  AttnPadding padding;

  ARSEG_HD int window() const { return kernel_size * kernel_size; }  // positions per window
};

}  // namespace arseg
