// Per-element math of the fused CReFF op that is not mv_warp's or local_attn's: the align_corners bilinear
// resize of the LR feature and the depthwise 3x3 convolution. Torch-free, for the CPU kernel and a CUDA one.
//
// creff(key_feature, mv, lr_feature, weight, bias):
//   hr  = mv_warp(key_feature, mv, scale=(sx, sy), bilinear, zeros)              (N, C, H, W)
//   lr  = bilinear resize of lr_feature (N, C, h, w) to (H, W), align_corners=True
//   q, k, v = depthwise 3x3 (zero padding 1) of lr, hr, hr with weight[0|1|2], bias[0|1|2]
//   out = lr + local_attn(q, k, v, kernel_size, scale, padding="zeros")
#pragma once

#include "arseg_common.h"

namespace arseg {

// Sizes and scalars of one creff call (all tensors' layouts are described separately by the backend).
struct CreffParams {
  int64_t N, C, H, W;  // key_feature and output
  int64_t h, w;        // lr_feature, 1 <= h <= H, 1 <= w <= W
  int64_t Hb, Wb;      // motion block grid
  int kernel_size;     // odd, 1..kMaxKernelSize
  double scale;        // attention logit scale
  double mv_scale_x, mv_scale_y;
};

// One axis of an align_corners=True linear resize from in_size to out_size samples: output index d reads
// input src = d * (in_size - 1) / (out_size - 1) as l0 * x[i0] + l1 * x[i1]. The arithmetic (ratio in acc_t,
// truncation, clamped lambda, identity for equal sizes) is that of ATen's upsample_bilinear2d, so the fused op
// and the unfused chain agree to rounding.
template <typename acc_t>
struct LinearTap {
  int64_t i0, i1;
  acc_t l0, l1;
};

template <typename acc_t>
ARSEG_HD LinearTap<acc_t> align_corners_tap(int64_t d, int64_t in_size, int64_t out_size) {
  if (in_size == out_size) return {d, d, acc_t(1), acc_t(0)};
  const acc_t ratio = out_size > 1 ? acc_t(in_size - 1) / acc_t(out_size - 1) : acc_t(0);
  const acc_t src = ratio * acc_t(d);
  const int64_t i0 = static_cast<int64_t>(src);
  const int64_t i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  acc_t l1 = src - acc_t(i0);
  l1 = l1 < acc_t(0) ? acc_t(0) : (l1 > acc_t(1) ? acc_t(1) : l1);
  return {i0, i1, acc_t(1) - l1, l1};
}

// Bilinear mix of the four taps (rows ty, columns tx), in ATen's order.
template <typename acc_t>
ARSEG_HD acc_t bilinear_mix(acc_t x00, acc_t x01, acc_t x10, acc_t x11, const LinearTap<acc_t>& ty,
                            const LinearTap<acc_t>& tx) {
  return ty.l0 * (tx.l0 * x00 + tx.l1 * x01) + ty.l1 * (tx.l0 * x10 + tx.l1 * x11);
}

// Depthwise 3x3 convolution at column x of one output row: bias + sum_ij w[3i + j] * r_i[x + j - 1], where
// r0, r1, r2 are the input rows above, at and below the output row, readable at x - 1 and x + 1 and zero
// wherever the image is not (the convolution's zero padding).
template <typename acc_t>
ARSEG_HD acc_t depthwise3x3(const acc_t* r0, const acc_t* r1, const acc_t* r2, int64_t x, const acc_t* w,
                            acc_t bias) {
  acc_t s = bias;
  s += w[0] * r0[x - 1] + w[1] * r0[x] + w[2] * r0[x + 1];
  s += w[3] * r1[x - 1] + w[4] * r1[x] + w[5] * r1[x + 1];
  s += w[6] * r2[x - 1] + w[7] * r2[x] + w[8] * r2[x + 1];
  return s;
}

}  // namespace arseg
