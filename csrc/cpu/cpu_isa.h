// Which instruction set the CPU kernels run with. Kernels that are compiled once per instruction set
// (isa_clones.inc) pick their clone with choose_isa() at every call.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#define ARSEG_X86_CLONES 1  // isa_clones.inc builds AVX2 and AVX-512 clones besides the baseline one
#endif

namespace arseg {
namespace cpu {

enum class Isa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::Avx512 ? "avx512" : (isa == Isa::Avx2 ? "avx2" : "baseline");
}

// The best instruction set this CPU has among the clones, capped by ARSEG_CPU_ISA=baseline|avx2|avx512 (read
// per call: tests and comparisons switch it).
inline Isa choose_isa() {
  Isa best = Isa::Baseline;
#ifdef ARSEG_X86_CLONES
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
  if (best == Isa::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    best = Isa::Avx512;
#endif
  const char* cap = std::getenv("ARSEG_CPU_ISA");
  if (cap != nullptr && *cap != '\0') {
    const std::string s(cap);
    TORCH_CHECK(s == "baseline" || s == "avx2" || s == "avx512",
                "ARSEG_CPU_ISA must be baseline, avx2 or avx512, got '", s, "'");
    const Isa want = s == "baseline" ? Isa::Baseline : (s == "avx2" ? Isa::Avx2 : Isa::Avx512);
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

// The vector width in bytes of an instruction set's clone (the kVecBytes isa_clones.inc gives it).
inline int vec_bytes(Isa isa) { return isa == Isa::Avx512 ? 64 : 32; }

// The clone of a function for the chosen instruction set: pick(choose_isa(), &baseline::f, &avx2::f,
// &avx512::f) (ARSEG_ISA_PICK writes that out, and drops the x86 clones where there are none).
template <typename F>
F pick(Isa isa, F baseline, F avx2, F avx512) {
  return isa == Isa::Avx512 ? avx512 : (isa == Isa::Avx2 ? avx2 : baseline);
}

}  // namespace cpu
}  // namespace arseg

#ifdef ARSEG_X86_CLONES
#define ARSEG_ISA_PICK(isa, ...) ::arseg::cpu::pick(isa, &baseline::__VA_ARGS__, &avx2::__VA_ARGS__, &avx512::__VA_ARGS__)
#else
#define ARSEG_ISA_PICK(isa, ...) ((void)(isa), &baseline::__VA_ARGS__)
#endif
