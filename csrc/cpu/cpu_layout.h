// How the CPU kernels address a 4-D tensor: its four strides, in elements. Kernels read inputs through them
// (NCHW, channels_last, any view) and write outputs in the layout they allocated.
#pragma once

#include <cstdint>

#ifndef ARSEG_ALWAYS_INLINE
#define ARSEG_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

namespace arseg {
namespace cpu {

struct Strides4 {
  int64_t n, c, h, w;
};

// The strides of an (N, C, H, W) at::Tensor (a template so that this header needs no torch).
template <typename Tensor>
Strides4 strides_of(const Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// True for the strides at::empty gives channels_last: channels of a pixel next to each other, pixels of a row next
// to each other (a single-column image may have any column stride: its rows have one pixel).
inline bool pixel_interleaved(const Strides4& s, int64_t C, int64_t W) { return s.c == 1 && (W == 1 || s.w == C); }

}  // namespace cpu
}  // namespace arseg
