// Per-pixel math of mv_warp, shared by the CPU and CUDA kernels.
//
// Semantics (fixed by the API, see README): output pixel (y, x) takes the motion vector of its block
// (by, bx) = (floor(y*Hb/H), floor(x*Wb/W)) and samples the input at (x + sx*dx, y + sy*dy) in pixel
// coordinates, where an integer coordinate is a pixel centre. Zero motion is therefore the exact identity.
#pragma once

#include "arseg_common.h"

namespace arseg {

enum class WarpMode : int { Bilinear = 0, Nearest = 1 };
enum class WarpPadding : int { Zeros = 0, Border = 1 };

// Block that output coordinate `y` (of `size` pixels) falls into when the axis is cut into `blocks` blocks:
// floor(y * blocks / size), exact in 64-bit integers.
ARSEG_HD int64_t block_of(int64_t y, int64_t size, int64_t blocks) { return (y * blocks) / size; }

// First output coordinate of block `b`: ceil(b * size / blocks). Block b covers [block_begin(b), block_begin(b+1)).
ARSEG_HD int64_t block_begin(int64_t b, int64_t size, int64_t blocks) { return (b * size + blocks - 1) / blocks; }

// Up to four taps of one sample: flat index into an H x W plane and its weight. A tap that does not exist
// (outside the image, or unused by `nearest`) has weight 0 and index 0, so callers may read it blindly.
// dwdx/dwdy are the derivatives of the weights with respect to the sample coordinate (0 where the
// coordinate was clamped by `border`, and everywhere for `nearest`, which is piecewise constant).
template <typename acc_t>
struct Taps {
  int64_t idx[4];
  acc_t w[4];
  acc_t dwdx[4];
  acc_t dwdy[4];
};

template <typename acc_t>
ARSEG_HD void clear_taps(Taps<acc_t>& t) {
  for (int i = 0; i < 4; ++i) {
    t.idx[i] = 0;
    t.w[i] = acc_t(0);
    t.dwdx[i] = acc_t(0);
    t.dwdy[i] = acc_t(0);
  }
}

// Taps for a sample at (xs, ys) in an H x W image. Non-finite coordinates sample nothing (all weights 0).
template <typename acc_t>
ARSEG_HD void sample_taps(acc_t xs, acc_t ys, int64_t H, int64_t W, WarpMode mode, WarpPadding padding,
                          Taps<acc_t>& t) {
  clear_taps(t);
  if (!is_finite(xs) || !is_finite(ys)) return;
  acc_t gx = acc_t(1), gy = acc_t(1);  // d(clamped coordinate) / d(coordinate)
  if (padding == WarpPadding::Border) {
    const acc_t xmax = acc_t(W - 1), ymax = acc_t(H - 1);
    if (xs < acc_t(0)) { xs = acc_t(0); gx = acc_t(0); }
    if (xs > xmax) { xs = xmax; gx = acc_t(0); }
    if (ys < acc_t(0)) { ys = acc_t(0); gy = acc_t(0); }
    if (ys > ymax) { ys = ymax; gy = acc_t(0); }
  } else {
    // Every tap is outside: return before casting a possibly huge coordinate to an integer.
    if (xs <= acc_t(-1) || ys <= acc_t(-1) || xs >= acc_t(W) || ys >= acc_t(H)) return;
  }
  if (mode == WarpMode::Nearest) {
    const int64_t xi = static_cast<int64_t>(rint_(xs));
    const int64_t yi = static_cast<int64_t>(rint_(ys));
    if (xi >= 0 && xi < W && yi >= 0 && yi < H) {
      t.idx[0] = yi * W + xi;
      t.w[0] = acc_t(1);
    }
    return;
  }
  const acc_t x0f = floor_(xs), y0f = floor_(ys);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const acc_t fx = xs - x0f, fy = ys - y0f;
  const acc_t wx[2] = {acc_t(1) - fx, fx};
  const acc_t wy[2] = {acc_t(1) - fy, fy};
  const acc_t dwx[2] = {-gx, gx};
  const acc_t dwy[2] = {-gy, gy};
  for (int a = 0; a < 2; ++a) {
    const int64_t yi = y0 + a;
    if (yi < 0 || yi >= H) continue;
    for (int b = 0; b < 2; ++b) {
      const int64_t xi = x0 + b;
      if (xi < 0 || xi >= W) continue;
      const int k = a * 2 + b;
      t.idx[k] = yi * W + xi;
      t.w[k] = wy[a] * wx[b];
      t.dwdx[k] = wy[a] * dwx[b];
      t.dwdy[k] = dwy[a] * wx[b];
    }
  }
}

// w * f for one tap, 0 for an absent tap (weight 0) whatever f is: an absent tap reads element 0 of the plane,
// and an inf/NaN there must not leak into pixels that sample outside the image.
template <typename acc_t>
ARSEG_HD acc_t tap_product(acc_t w, acc_t f) {
  return w != acc_t(0) ? w * f : acc_t(0);
}

// Number of taps a mode can use (lets channel loops skip the three empty taps of `nearest`).
ARSEG_HD int taps_used(WarpMode mode) { return mode == WarpMode::Nearest ? 1 : 4; }

}  // namespace arseg
