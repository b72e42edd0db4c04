// Floating-point environment of the CPU kernels: flush denormals to zero inside parallel regions.
//
// Why: a softmax over a peaked window (logit gaps beyond ~87 in float, ~708 in double) produces weights whose
// exponent underflows into denormals, and x86 arithmetic on denormals takes a microcode assist that is ~100x
// slower than normal arithmetic: CPU local_attn ran 5-16x slower on peaked attention than on flat attention.
// With FTZ (results that would be denormal become 0) and DAZ (denormal inputs read as 0) the arithmetic stays
// at full speed; what is lost is below 2^-126 (float) or 2^-1022 (double) in absolute value, far under the
// rounding error of any output. torch.set_flush_denormal() does not help: it sets the flag on the calling
// thread only, and at::parallel_for runs the work on OpenMP worker threads, so the guard must be set inside
// each worker's lambda (parallel_for_ftz does that) and the worker's previous setting restored afterwards.
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define ARSEG_HAVE_MXCSR 1
#endif

namespace arseg {
namespace cpu {

// Sets FTZ and DAZ for the current thread while it lives, restores the previous mode when it ends. A no-op on
// CPUs without a known control register (the kernels stay correct there, only slower on denormals).
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(ARSEG_HAVE_MXCSR)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | kFtz | kDaz);
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    saved_ = fpcr;
    fpcr |= kFz;
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
#endif
  }
  ~FlushDenormals() {
#if defined(ARSEG_HAVE_MXCSR)
    _mm_setcsr(static_cast<unsigned>(saved_));
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_));
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kFtz = 1u << 15;  // MXCSR flush-to-zero
  static constexpr unsigned kDaz = 1u << 6;   // MXCSR denormals-are-zero
  static constexpr uint64_t kFz = uint64_t(1) << 24;  // AArch64 FPCR.FZ (both directions)
  uint64_t saved_ = 0;
};

// exp(x), or exactly 0 where exp(x) would be a denormal (x < log of the smallest normal number): the value a
// flushing FPU gives, but on every CPU, and without calling exp for the underflowing tail of a peaked softmax.
template <typename acc_t>
inline acc_t exp_or_zero(acc_t x) {
  // log(2^-126) = -87.33654 (float), log(2^-1022) = -708.39642 (double); rounded up so exp(cutoff) is normal.
  constexpr acc_t cutoff = std::numeric_limits<acc_t>::digits == 24 ? acc_t(-87.336) : acc_t(-708.396);
  return x < cutoff ? acc_t(0) : static_cast<acc_t>(std::exp(x));
}

// at::parallel_for with denormals flushed to zero in every worker (and restored afterwards).
template <typename F>
void parallel_for_ftz(int64_t begin, int64_t end, int64_t grain, const F& body) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    const FlushDenormals guard;
    body(b, e);
  });
}

}  // namespace cpu
}  // namespace arseg
