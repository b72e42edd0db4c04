// local_attn (padding "zeros") on zero-padded band buffers, register-blocked: the attention of a fused kernel
// that computed q, k and v itself into thread-local buffers (csrc/cpu/creff_cpu.cpp).
//
// Buffers are channel-major planes of acc_t (float, or double) whose columns and rows outside the image hold
// exact zeros: a zero key gives logit 0 and a zero value contributes 0, which is precisely padding="zeros", so
// the inner loops need no bounds. One call handles one chunk of kLanes consecutive pixels of one output row:
//   logits: for each window row dy, K accumulator vectors (one per dx) stay in registers while the channel
//           loop streams q[c] once and k[c] row dy (K overlapping loads): no loads/stores of partial sums;
//   softmax over the K*K logits per lane (weights below e^-80 of the maximum are dropped: they are < 2e-35 of
//           the sum, and computing them would only produce denormals);
//   values: for each window row, the K weight vectors stay in registers while the channel loop accumulates
//           sum_dx p_dx * v[c][dy][x + dx] into one vector per channel.
// GCC/Clang vector extensions give 32-byte vectors (8 floats / 4 doubles): one AVX register, or two SSE ones
// on a baseline x86-64 build.
#pragma once

#include <cstdint>
#include <cstring>

#include "../arseg_common.h"
#include "../local_attn_math.h"

namespace arseg {
namespace cpu {

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / static_cast<int>(sizeof(T));
};

#define ARSEG_ALWAYS_INLINE inline __attribute__((always_inline))

template <typename T>
ARSEG_ALWAYS_INLINE typename VecOf<T>::type load_vec(const T* p) {
  typename VecOf<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Element (c, r, u) of a stack of channel planes: base[c * plane + r * row_stride + u].
template <typename T>
struct BandPlanes {
  T* base;
  int64_t plane, row_stride;
  ARSEG_ALWAYS_INLINE T* at(int64_t c, int64_t r, int64_t u) const { return base + c * plane + r * row_stride + u; }
};

namespace baseline {
#include "attend_chunk.inc"
}  // namespace baseline

// The same code compiled for AVX2 + FMA on x86-64 (8-float FMAs instead of pairs of SSE multiplies and adds):
// about 2x faster where the CPU has them; the build itself stays baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ARSEG_AVX2_CLONE 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "attend_chunk.inc"
}  // namespace avx2
#pragma GCC pop_options
#elif defined(__x86_64__) && defined(__clang__)
#define ARSEG_AVX2_CLONE 1
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
namespace avx2 {
#include "attend_chunk.inc"
}  // namespace avx2
#pragma clang attribute pop
#endif

template <int KS, typename acc_t>
using AttendChunkFn = void (*)(int, int64_t, acc_t, BandPlanes<const acc_t>, int64_t, BandPlanes<const acc_t>,
                               BandPlanes<const acc_t>, int64_t, int64_t, typename VecOf<acc_t>::type*,
                               typename VecOf<acc_t>::type*);

// attend_chunk for this CPU: the AVX2 + FMA build where the CPU has both, else the baseline one.
template <int KS, typename acc_t>
AttendChunkFn<KS, acc_t> attend_chunk_fn() {
#ifdef ARSEG_AVX2_CLONE
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return &avx2::attend_chunk<KS, acc_t>;
#endif
  return &baseline::attend_chunk<KS, acc_t>;
}

}  // namespace cpu
}  // namespace arseg
