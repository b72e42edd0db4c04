// Tensor-core and asynchronous-copy primitives of the v2 local_attn kernels (sm_80+).
//
// One warp multiplies 16 "row" pixels (its 4 x 4 tile) with the pixels of its halo. Both products of attention
// are mma.sync tiles of 16 x 8 fp32 accumulators (per lane: c[0], c[1] at row g, columns 2t, 2t+1; c[2], c[3] at
// row g + 8; g = lane / 4, t = lane % 4):
//   "dot":      S[16 rows][keys]  += A[rows][channels] . B[keys][channels]^T   (q.k, dO.v, k.q, v.dO)
//   "weighted": O[16 rows][chans] += P[rows][keys]      . B[keys][channels]     (p.v, dS.k, P.dO, dS.q)
// Operands come from shared memory laid out [pixel][channel] (row stride kRowStride elements), so one lane's
// A and B elements are channel-adjacent. The weighted product takes P straight from the dot product's
// accumulators (no shared-memory round trip), as FlashAttention does.
//   16-bit types: m16n8k16 (16 channels or 16 keys per MMA), P rounded to the element type.
//   float: m16n8k8 TF32 three times (a_hi b_hi + a_hi b_lo + a_lo b_hi, "3xTF32"): about float32 accuracy.
//     Its A fragment holds columns t and t + 4, the accumulator columns 2t and 2t + 1, so the weighted product
//     numbers the 8 keys of a step as (2t -> t, 2t + 1 -> t + 4) in A and reads B's keys in the same order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ptx.cuh"

namespace arseg {
namespace cuda {
namespace attn2 {

// cp.async, mma.sync, to_tf32 and opaque_f (the inline PTX) live in ptx.cuh.

// x = hi + lo, both TF32 (lo carries the bits hi drops).
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

__device__ __forceinline__ uint32_t ld_shared_u32(const void* p) { return *static_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <typename T>
__device__ __forceinline__ uint32_t pack2_raw(T lo, T hi) {
  return static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(&lo)) |
         (static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(&hi)) << 16);
}

// ---- per-dtype MMA policy ----
//   kChanStep: channels per dot MMA;  kKeyStep: keys per weighted MMA;  kKeyRows: B rows (keys) a lane reads per
//   weighted step, at key_in_step(i).  A: the dot product's A fragment (rows g and g + 8 of the warp's 16).
template <typename T>
struct Mma16 {
  static constexpr int kChanStep = 16, kKeyStep = 16, kKeyRows = 4;
  struct A {
    uint32_t x[4];
  };
  __device__ static int key_in_step(int i, int t) { return 2 * t + (i & 1) + (i >> 1) * 8; }

  // Channels [ch, ch + 16) of rows r0 (g) and r1 (g + 8).
  __device__ static A load_a(const T* r0, const T* r1, int ch, int t) {
    return {{ld_shared_u32(r0 + ch + 2 * t), ld_shared_u32(r1 + ch + 2 * t), ld_shared_u32(r0 + ch + 8 + 2 * t),
             ld_shared_u32(r1 + ch + 8 + 2 * t)}};
  }
  // c += A . key^T for channels [ch, ch + 16); `key` is this lane's key row (column g of the tile).
  __device__ static void dot(float (&c)[4], const A& a, const T* key, int ch, int t) {
    mma_m16n8k16(c, a.x, ld_shared_u32(key + ch + 2 * t), ld_shared_u32(key + ch + 8 + 2 * t), T());
  }
  // A fragment of P for keys [16 s, 16 s + 16): accumulator tiles 2s and 2s + 1.
  __device__ static A p_frag(const float (*P)[4], int s) {
    const float* a = P[2 * s];
    const float* b = P[2 * s + 1];
    return {{pack2(a[0], a[1], T()), pack2(a[2], a[3], T()), pack2(b[0], b[1], T()), pack2(b[2], b[3], T())}};
  }
  // c += P_step . B for channel column `ch` (= 8 o + g); rows[i] = B row of key key_in_step(i).
  __device__ static void weighted(float (&c)[4], const A& a, const T* const* rows, int ch) {
    mma_m16n8k16(c, a.x, pack2_raw(rows[0][ch], rows[1][ch]), pack2_raw(rows[2][ch], rows[3][ch]), T());
  }
};

struct MmaTf32x3 {
  using T = float;
  static constexpr int kChanStep = 8, kKeyStep = 8, kKeyRows = 2;
  struct A {
    uint32_t hi[4], lo[4];
  };
  __device__ static int key_in_step(int i, int t) { return 2 * t + i; }
  __device__ static A split4(float f0, float f1, float f2, float f3) {
    A a;
    split_tf32(f0, a.hi[0], a.lo[0]);
    split_tf32(f1, a.hi[1], a.lo[1]);
    split_tf32(f2, a.hi[2], a.lo[2]);
    split_tf32(f3, a.hi[3], a.lo[3]);
    return a;
  }
  __device__ static void mma3(float (&c)[4], const A& a, float b0, float b1) {
    uint32_t bh0, bl0, bh1, bl1;
    split_tf32(b0, bh0, bl0);
    split_tf32(b1, bh1, bl1);
    mma_m16n8k8_tf32(c, a.lo, bh0, bh1);  // small terms first
    mma_m16n8k8_tf32(c, a.hi, bl0, bl1);
    mma_m16n8k8_tf32(c, a.hi, bh0, bh1);
  }
  __device__ static A load_a(const float* r0, const float* r1, int ch, int t) {
    return split4(r0[ch + t], r1[ch + t], r0[ch + t + 4], r1[ch + t + 4]);
  }
  __device__ static void dot(float (&c)[4], const A& a, const float* key, int ch, int t) {
    mma3(c, a, key[ch + t], key[ch + t + 4]);
  }
  // Keys [8 s, 8 s + 8) = accumulator tile s; A column t <- key 2t (c[0], c[2]), column t + 4 <- key 2t + 1.
  // The values pass through opaque_f so that the split is redone per chunk rather than hoisted for every tile
  // (which would double the live registers of P).
  __device__ static A p_frag(const float (*P)[4], int s) {
    return split4(opaque_f(P[s][0]), opaque_f(P[s][2]), opaque_f(P[s][1]), opaque_f(P[s][3]));
  }
  __device__ static void weighted(float (&c)[4], const A& a, const float* const* rows, int ch) {
    mma3(c, a, rows[0][ch], rows[1][ch]);
  }
};

template <typename T>
struct MmaFor;
template <>
struct MmaFor<float> {
  using type = MmaTf32x3;
};
template <>
struct MmaFor<__half> {
  using type = Mma16<__half>;
};
template <>
struct MmaFor<__nv_bfloat16> {
  using type = Mma16<__nv_bfloat16>;
};

}  // namespace attn2
}  // namespace cuda
}  // namespace arseg
