// cuda_emu_mma.cpp: mma.sync of the CUDA-on-CPU emulation (see cuda_emu.h). The fragment layouts come from
// the PTX ISA's fragment tables for mma.m16n8k16 (.f16/.bf16) and mma.m16n8k8 (.tf32), never from our kernels
// (groupID g = lane >> 2, threadID_in_group t = lane % 4); the warp's 32 lanes meet in warp_collective, which
// then computes D += A B in double once for all of them.
// Compiled with the scheduler's flags (it runs inside the collective, on the scheduler's side).
#include <cstdint>

#include "cuda_emu.h"

namespace emu {

struct MmaSlot {
  const uint32_t* a;
  uint32_t b[2];
  float* d;
  bool bf16;
};

static float lo16(uint32_t r, bool bf16) {
  const uint16_t h = static_cast<uint16_t>(r & 0xffffu);
  return bf16 ? bf16_bits_to_float(h) : half_bits_to_float(h);
}
static float hi16(uint32_t r, bool bf16) {
  const uint16_t h = static_cast<uint16_t>(r >> 16);
  return bf16 ? bf16_bits_to_float(h) : half_bits_to_float(h);
}

static void store_d(void* const* lanes, const double (&D)[16][8]) {
  // C/D (f32): c_i at row g + 8 * (i >= 2), column 2 t + (i & 1)
  for (int l = 0; l < 32; ++l) {
    auto* s = static_cast<MmaSlot*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) {
      const int r = g + (i >= 2 ? 8 : 0), c = 2 * t + (i & 1);
      s->d[i] = static_cast<float>(static_cast<double>(s->d[i]) + D[r][c]);
    }
  }
}

static void mma16_fn(void* const* lanes, unsigned) {
  double A[16][16], B[16][8];
  bool seenA[16][16] = {}, seenB[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    auto* s = static_cast<MmaSlot*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    // A (16 x 16, .f16x2 registers a0..a3 holding elements a0..a7, low half first):
    //   row = g for a0, a1, a4, a5; g + 8 for a2, a3, a6, a7; col = 2 t + (i & 1) (+ 8 for i >= 4)
    for (int i = 0; i < 8; ++i) {
      const uint32_t reg = s->a[i / 2];
      const float v = (i & 1) ? hi16(reg, s->bf16) : lo16(reg, s->bf16);
      const int row = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      if (seenA[row][col]) fatal("mma emulation: A element (%d,%d) twice", row, col);
      seenA[row][col] = true;
      A[row][col] = v;
    }
    // B (16 x 8, registers b0, b1 holding elements b0..b3): row = 2 t + (i & 1) (+ 8 for i >= 2), col = g
    for (int i = 0; i < 4; ++i) {
      const uint32_t reg = s->b[i / 2];
      const float v = (i & 1) ? hi16(reg, s->bf16) : lo16(reg, s->bf16);
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0), col = g;
      if (seenB[row][col]) fatal("mma emulation: B element (%d,%d) twice", row, col);
      seenB[row][col] = true;
      B[row][col] = v;
    }
  }
  double D[16][8];
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      double s = 0;
      for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][c];
      D[r][c] = s;
    }
  store_d(lanes, D);
}

static long g_non_tf32_operands = 0;
static float tf32_operand(uint32_t bits) {
  if (bits & 0x1fffu) ++g_non_tf32_operands;
  return u2f(bits & 0xffffe000u);  // the tensor core reads the 19 high bits
}

static void mma_tf32_fn(void* const* lanes, unsigned) {
  double A[16][8], B[8][8];
  for (int l = 0; l < 32; ++l) {
    auto* s = static_cast<MmaSlot*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    // A (16 x 8, .tf32 a0..a3): row = g for a0, a2; g + 8 for a1, a3; col = t for a0, a1; t + 4 for a2, a3
    A[g][t] = tf32_operand(s->a[0]);
    A[g + 8][t] = tf32_operand(s->a[1]);
    A[g][t + 4] = tf32_operand(s->a[2]);
    A[g + 8][t + 4] = tf32_operand(s->a[3]);
    // B (8 x 8, .tf32 b0, b1): row = t for b0, t + 4 for b1; col = g
    B[t][g] = tf32_operand(s->b[0]);
    B[t + 4][g] = tf32_operand(s->b[1]);
  }
  double D[16][8];
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      double s = 0;
      for (int k = 0; k < 8; ++k) s += A[r][k] * B[k][c];
      D[r][c] = s;
    }
  store_d(lanes, D);
}

void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  MmaSlot s{a, {b0, b1}, d, bf16};
  warp_collective(bf16 ? "mma.sync.m16n8k16.bf16" : "mma.sync.m16n8k16.f16", "mma", 0, 0xffffffffu, &s, &mma16_fn);
}

void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  MmaSlot s{a, {b0, b1}, d, false};
  warp_collective("mma.sync.m16n8k8.tf32", "mma", 0, 0xffffffffu, &s, &mma_tf32_fn);
}

uint32_t cvt_rna_tf32(float x) {
  // round to nearest, ties away from zero, keeping 10 explicit mantissa bits (low 13 bits zero)
  const uint32_t u = f2u(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;  // NaN
  return (u + 0x1000u) & 0xffffe000u;
}

long non_tf32_operands() { return g_non_tf32_operands; }

}  // namespace emu
