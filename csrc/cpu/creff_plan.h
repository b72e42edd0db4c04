// Types shared by the fused CReFF CPU glue (creff_cpu.cpp) and its row pipeline (creff_stream.inc, compiled
// once per instruction set): the call's data, and how the output is cut into strip tasks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "../creff_math.h"
#include "../local_attn_math.h"  // kMaxKernelSize
#include "cpu_layout.h"          // Strides4, ARSEG_ALWAYS_INLINE

namespace arseg {
namespace cpu_creff {

using cpu::Strides4;

// Halo columns kept on each side of a strip in every ring buffer: >= K/2 + 1 for every kernel size (the
// attention reads K/2 columns beyond a strip, the k/v convolutions one more).
constexpr int64_t kPad = 8;
static_assert(kPad >= kMaxKernelSize / 2 + 1, "strip halo too small for the largest window");

// Storage that starts on a cache line: the CPU kernels' ring buffers and their vectors (V needs its own width's
// alignment). Ring rows are a multiple of 16 floats wide (a strip's chunks plus 2 kPad), so the attention's two
// window loads of a chunk (band_attention.inc: load_window, at the chunk's column - 8) are aligned and never
// split across two cache lines.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
template <typename T>
using RowBuffer = std::vector<T, CacheLineAllocator<T>>;

template <typename scalar_t, typename acc_t>
struct CreffData {
  CreffParams p;
  const scalar_t* key;
  Strides4 key_s;
  const scalar_t* lr;
  Strides4 lr_s;
  const scalar_t* mv;   // contiguous (N, 2, Hb, Wb)
  const acc_t* weight;  // (3, C, 9): query, key, value
  const acc_t* bias;    // (3, C)
  scalar_t* out;
  Strides4 out_s;
};

// One call of the fused backward (creff_backward_cpu.cpp, creff_backward_stream.inc): the forward's inputs (f.out
// unused), the output gradient, and where the streaming stage leaves its results: d_hr, the gradient of the
// warped key feature (N, C, H, W, accumulation type, through d_hr_s); lr_tx, the gradient of the resized lr
// feature already transposed along x (N, C, H, w, contiguous, accumulation type); dw, per task the weight and
// bias gradients (tasks, 3, C, 10: 9 taps then the bias), summed in task order afterwards. A task is a segment of
// `rows` rows of one image, full width.
template <typename scalar_t, typename acc_t>
struct CreffGradData {
  CreffData<scalar_t, acc_t> f;
  const scalar_t* grad;
  Strides4 grad_s;
  acc_t* d_hr;
  Strides4 d_hr_s;
  acc_t* lr_tx;
  acc_t* dw;
  int64_t rows, segments;
};

// The output is cut into tasks of `rows` rows x `cols` columns of one image: strips of columns narrow enough
// for the strip's ring buffers to stay in a core's L2 cache, and row segments so that every thread gets work.
struct StripPlan {
  int64_t cols, strips, rows, segments;
  int64_t tasks(int64_t N) const { return N * strips * segments; }
};

// Ring-buffer bytes per strip column: hr and lr 3 rows, k and v K rows, q one row, all C channels.
inline int64_t ring_bytes_per_column(int64_t C, int kernel_size, int64_t acc_bytes) {
  return std::max<int64_t>(C, 1) * (3 + 2 * kernel_size + 3 + 1) * acc_bytes;
}

// How to cut an N x H x W output streamed with ring buffers of `per_col` bytes per strip column (creff,
// local_attn): `lanes`, the vector width in elements (strips are a multiple of it); `threads`, how many tasks to
// aim for.
inline StripPlan plan_ring_strips(int64_t N, int64_t H, int64_t W, int kernel_size, int64_t per_col, int64_t lanes,
                                  int64_t threads) {
  constexpr int64_t kBudget = int64_t(1) << 20;  // ~half the L2 of current x86 cores
  const int64_t w_round = (W + lanes - 1) / lanes * lanes;
  const int64_t max_cols = std::min(std::max(kBudget / std::max<int64_t>(per_col, 1) / lanes * lanes, 2 * lanes),
                                    w_round);
  const int64_t strips = (W + max_cols - 1) / max_cols;
  const int64_t cols = ((W + strips - 1) / strips + lanes - 1) / lanes * lanes;
  // Each segment recomputes K/2 + 2 rows above it: keep segments >= 8x that, and aim for 4 tasks per thread.
  const int64_t min_rows = 8 * (kernel_size / 2 + 2);
  const int64_t wanted = (4 * threads + N * strips - 1) / (N * strips);
  const int64_t segments = std::max<int64_t>(1, std::min(wanted, H / min_rows));
  const int64_t rows = (H + segments - 1) / segments;
  return {cols, strips, rows, (H + rows - 1) / rows};
}

inline StripPlan plan_strips(const CreffParams& p, int64_t lanes, int64_t acc_bytes, int64_t threads) {
  return plan_ring_strips(p.N, p.H, p.W, p.kernel_size, ring_bytes_per_column(p.C, p.kernel_size, acc_bytes), lanes,
                          threads);
}

}  // namespace cpu_creff
}  // namespace arseg
