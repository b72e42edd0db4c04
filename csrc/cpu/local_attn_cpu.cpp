// CPU kernels of local_attn: fused forward and backward, no unfolded copies of key or value.
//
// Forward: the band attention creff runs (band_attention.inc through local_attn_band.inc), compiled once per
// instruction set (isa_clones.inc; the best one the CPU has runs, ARSEG_CPU_ISA caps it), reading q, k, v through
// their strides and writing the output channels_last when query is (strictly) channels_last, NCHW otherwise (the
// rule of the CUDA kernels; arseg_ops._ops._local_attn_layout describes it to torch.compile).
//
// Backward: work is split by output row (n, y). For a row, the k*k logits of every pixel live in a (k*k, W)
// buffer built with x innermost (the row routines in local_attn_rows.h): every inner loop is contiguous in NCHW,
// so the compiler vectorizes it; channels stream through cache one row at a time. It runs on NCHW-contiguous
// inputs (copies of others) and gives its outputs query's layout.
//
// Backward memory choice: pass 1 (per query row) stores the attention weights P and dS = P * (dP - delta)
// * scale, two (N, H, k*k, W) accumulators = O(N*H*W*k*k); pass 2 (per key row) gathers
// dK[j] = sum_i dS_ij q_i and dV[j] = sum_i P_ij dout_i over the query pixels i that see key j.
// This is deterministic and needs no atomics or per-thread copies of dK/dV.
//
// Every parallel region runs with denormals flushed to zero (cpu_fp.h): a peaked softmax underflows into
// denormals, which made these kernels 5-16x slower on x86.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <vector>

#include "../op_common.h"
#include "../static_switch.h"
#include "cpu_fp.h"
#include "cpu_isa.h"
#include "cpu_layout.h"
#include "creff_plan.h"  // StripPlan, plan_ring_strips, kPad: the strip tasks creff streams with
#include "local_attn_rows.h"

namespace arseg {
namespace cpu_local_attn {

using cpu::Strides4;
using cpu::strides_of;
using cpu_creff::kPad;
using cpu_creff::StripPlan;

// One call of the forward: q, k, v and the output, each through its strides.
template <typename scalar_t>
struct AttnData {
  LocalAttnParams p;
  const scalar_t *q, *k, *v;
  Strides4 qs, ks, vs;
  scalar_t* out;
  Strides4 os;
};

#define ARSEG_ISA_BODY "local_attn_band.inc"
#include "isa_clones.inc"
#undef ARSEG_ISA_BODY

namespace {

using cpu::image_rows;
using cpu::Rows;

template <int KS, typename scalar_t>
void forward_kernel(const AttnData<scalar_t>& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const cpu::Isa isa = cpu::choose_isa();
  const auto run = ARSEG_ISA_PICK(isa, run_band_tasks<KS, scalar_t>);
  const LocalAttnParams& p = d.p;
  const int64_t acc_bytes = sizeof(acc_t), lanes = cpu::vec_bytes(isa) / acc_bytes;
  // Ring bytes per strip column: K rows of k and of v, one row of q.
  const int64_t per_col = (p.kernel_size * (p.C + p.Cv) + p.C) * acc_bytes;
  const StripPlan plan = cpu_creff::plan_ring_strips(p.N, p.H, p.W, p.kernel_size, per_col, lanes,
                                                     at::get_num_threads());
  const int64_t tasks = plan.tasks(p.N);
  // Small calls run on the calling thread: waking the pool costs more than they take.
  const int64_t grain = p.N * std::max(p.C, p.Cv) * p.H * p.W < (int64_t(1) << 16) ? tasks : 1;
  cpu::parallel_for_ftz(0, tasks, grain, [&](int64_t begin, int64_t end) { run(d, plan, begin, end); });
}

// The layout of local_attn's outputs (forward and backward): query's when it is strictly channels_last.
at::MemoryFormat output_format(const at::Tensor& query) {
  return creff_output_channels_last(query) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// P_all, dS_all: scratch of N*H*k*k*W accumulators each (allocated by the caller as tensors, so memory
// profilers see them).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void backward_kernel(const LocalAttnParams& p, const scalar_t* dout, const scalar_t* q, const scalar_t* k,
                     const scalar_t* v, scalar_t* dq, scalar_t* dk, scalar_t* dv, acc_t* P_all, acc_t* dS_all) {
  const int64_t row_len = p.window() * p.W;  // one (k*k, W) slab of P or dS per row

  // Pass 1, per query row: P, dP_j = <dout, v_j>, delta = sum_j P_j dP_j, dS_j = P_j (dP_j - delta) scale, dq.
  cpu::parallel_for_ftz(0, p.N * p.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dP(row_len), mx(p.W), sm(p.W), acc(p.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H, y = row % p.H;
      const auto qn = image_rows(q, n, p.C, p.H, p.W), kn = image_rows(k, n, p.C, p.H, p.W);
      const auto gn = image_rows(dout, n, p.Cv, p.H, p.W), vn = image_rows(v, n, p.Cv, p.H, p.W);
      const auto dqn = image_rows(dq, n, p.C, p.H, p.W);
      acc_t* P = P_all + row * row_len;
      acc_t* dS = dS_all + row * row_len;
      cpu::row_softmax<scalar_t, acc_t>(p, qn, kn, y, P, mx.data(), sm.data());
      cpu::window_dots<scalar_t, acc_t>(p, gn, vn, p.Cv, y, dP.data());
      cpu::softmax_grad_row<acc_t>(p, y, P, dP.data(), sm.data(), dS);  // sm reused as delta
      for (int64_t c = 0; c < p.C; ++c) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        cpu::accumulate_window<scalar_t, acc_t>(p, dS, kn, c, y, acc.data());
        scalar_t* o = dqn.row(c, y);
        for (int64_t x = 0; x < p.W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
      }
    }
  });

  // Pass 2, per key row: dk gathers dS * q, dv gathers P * dout over the query pixels that see the key.
  auto gather = [&](const acc_t* weights_all, const scalar_t* src, int64_t channels, scalar_t* dst) {
    cpu::parallel_for_ftz(0, p.N * p.H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(p.W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / p.H, y = row % p.H;
        const Rows<const acc_t> weights{weights_all + n * p.H * row_len, p.W, row_len, 0};
        const auto sn = image_rows(src, n, channels, p.H, p.W);
        const auto dn = image_rows(dst, n, channels, p.H, p.W);
        for (int64_t c = 0; c < channels; ++c) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          cpu::gather_window<scalar_t, acc_t>(p, weights, sn, c, y, acc.data());
          scalar_t* o = dn.row(c, y);
          for (int64_t x = 0; x < p.W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
  };
  gather(dS_all, q, p.C, dk);
  gather(P_all, dout, p.Cv, dv);
}

at::Tensor local_attn_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          int64_t kernel_size, double scale, c10::string_view padding) {
  check_local_attn_args("local_attn", query, key, value, kernel_size, scale);
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  at::Tensor out = new_output(value.sizes(), value.options().memory_format(output_format(query)));
  if (out.numel() == 0) return out;
  ARSEG_DISPATCH_FLOATS(query.scalar_type(), "local_attn_cpu", [&] {
    const AttnData<scalar_t> d{p, query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(),
                               value.const_data_ptr<scalar_t>(), strides_of(query), strides_of(key),
                               strides_of(value), out.mutable_data_ptr<scalar_t>(), strides_of(out)};
    ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] { forward_kernel<K>(d); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attn_backward_cpu(const at::Tensor& grad_output,
                                                                       const at::Tensor& query, const at::Tensor& key,
                                                                       const at::Tensor& value, int64_t kernel_size,
                                                                       double scale, c10::string_view padding) {
  check_local_attn_args("local_attn_backward", query, key, value, kernel_size, scale);
  check_grad_like("local_attn_backward", grad_output, value, "value");
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  const at::Tensor go = grad_output.contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous();
  at::Tensor dq = new_output(query.sizes(), query.options());
  at::Tensor dk = new_output(key.sizes(), key.options());
  at::Tensor dv = new_output(value.sizes(), value.options());
  if (p.N * p.H * p.W == 0) return {dq, dk, dv};
  ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = q.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor P_all = at::empty({p.N, p.H, p.window(), p.W}, acc_options);
    at::Tensor dS_all = at::empty({p.N, p.H, p.window(), p.W}, acc_options);
    backward_kernel<scalar_t>(p, go.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                              k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                              dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                              dv.mutable_data_ptr<scalar_t>(), P_all.mutable_data_ptr<acc_t>(),
                              dS_all.mutable_data_ptr<acc_t>());
  });
  const auto format = output_format(query);
  if (format == at::MemoryFormat::Contiguous) return {dq, dk, dv};
  return {dq.contiguous(format), dk.contiguous(format), dv.contiguous(format)};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) {
  m.impl("local_attn", &local_attn_cpu);
  m.impl("local_attn_backward", &local_attn_backward_cpu);
}

}  // namespace cpu_local_attn
}  // namespace arseg
