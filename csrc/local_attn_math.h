// Window and padding semantics of local_attn, shared by the CPU and CUDA kernels.
//
// out[n, :, p] = sum_j softmax_j(scale * <q[n,:,p], k[n,:,p+o_j]>) * v[n,:,p+o_j], o_j over the k x k
// offsets centred on p. With padding "zeros" an offset outside the image takes part with logit 0 and
// value 0 (AR-Seg's semantics); with "exclude" it is left out of the softmax. The centre is always inside,
// so a softmax is never empty.
#pragma once

#include "arseg_common.h"

namespace arseg {

enum class AttnPadding : int { Zeros = 0, Exclude = 1 };

// The one statement of the kernel_size limit: the C++ checks, the CUDA launchers and (through
// arseg_ops._C.max_kernel_size) the Python validation read it.
constexpr int kMaxKernelSize = 15;
constexpr int kMaxWindow = kMaxKernelSize * kMaxKernelSize;

// The kernel sizes every backend accepts: odd, 1..kMaxKernelSize.
ARSEG_HD constexpr bool is_valid_kernel_size(int64_t k) { return k >= 1 && k <= kMaxKernelSize && k % 2 == 1; }

// Logit that an out-of-image window position contributes: 0 for zeros, -inf (weight 0) for exclude.
template <typename acc_t>
ARSEG_HD acc_t padding_logit(AttnPadding padding) {
  return padding == AttnPadding::Zeros ? acc_t(0) : -acc_t(INFINITY);
}

// Offset (dy, dx) of window position j in a kernel_size x kernel_size window, j in row-major order.
ARSEG_HD int window_dy(int j, int kernel_size) { return j / kernel_size - kernel_size / 2; }
ARSEG_HD int window_dx(int j, int kernel_size) { return j % kernel_size - kernel_size / 2; }

// Range [lo, hi) of x in [0, W) for which x + dx is also in [0, W).
ARSEG_HD int64_t shifted_lo(int64_t dx) { return dx < 0 ? -dx : 0; }
ARSEG_HD int64_t shifted_hi(int64_t dx, int64_t W) { return dx > 0 ? W - dx : W; }

}  // namespace arseg
