// CPU kernels of local_attn: fused forward and backward, no unfolded copies of key or value.
//
// Forward: the band attention creff runs (band_attention.inc through local_attn_band.inc), compiled once per
// instruction set (isa_clones.inc; the best one the CPU has runs, ARSEG_CPU_ISA caps it), reading q, k, v through
// their strides and writing the output channels_last when query is (strictly) channels_last, NCHW otherwise (the
// rule of the CUDA kernels; arseg_ops._ops._local_attn_layout describes it to torch.compile).
//
// Backward: the same attention streamed down row segments, recomputing P and dS per chunk and accumulating dk and
// dv in rings of key rows (local_attn_band_backward.inc): no stored P or dS, no atomics, deterministic; inputs
// through their strides, outputs in query's layout as the forward's. One attention in the CPU code: creff's.
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

namespace arseg {
namespace cpu_local_attn {

using cpu::Strides4;
using cpu::strides_of;
using cpu_creff::kPad;
using cpu_creff::RowBuffer;
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

// One call of the backward: dout, q, k, v through their strides, and the three gradients.
template <typename scalar_t>
struct AttnGradData {
  LocalAttnParams p;
  const scalar_t *dout, *q, *k, *v;
  Strides4 gs, qs, ks, vs;
  scalar_t *dq, *dk, *dv;
  Strides4 dqs, dks, dvs;
};

#define ARSEG_ISA_BODY "local_attn_band.inc"
#include "isa_clones.inc"
#undef ARSEG_ISA_BODY

namespace {

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

template <int KS, typename scalar_t>
void backward_kernel(const AttnGradData<scalar_t>& d) {
  const auto run = ARSEG_ISA_PICK(cpu::choose_isa(), run_band_backward_tasks<KS, scalar_t>);
  const LocalAttnParams& p = d.p;
  // Row segments: each recomputes the softmax of 2 * (K/2) query rows beyond it, so keep them >= 8x that;
  // aim for 4 tasks per thread.
  const int64_t min_rows = 8 * (p.kernel_size / 2 + 2);
  const int64_t wanted = (4 * at::get_num_threads() + p.N - 1) / p.N;
  const int64_t segments = std::max<int64_t>(1, std::min(wanted, p.H / min_rows));
  const int64_t rows = (p.H + segments - 1) / segments, tasks = p.N * ((p.H + rows - 1) / rows);
  const int64_t grain = p.N * std::max(p.C, p.Cv) * p.H * p.W < (int64_t(1) << 14) ? tasks : 1;
  cpu::parallel_for_ftz(0, tasks, grain, [&](int64_t begin, int64_t end) { run(d, rows, begin, end); });
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
  const auto options = query.options().memory_format(output_format(query));
  at::Tensor dq = new_output(query.sizes(), options);
  at::Tensor dk = new_output(key.sizes(), options);
  at::Tensor dv = new_output(value.sizes(), options);
  if (p.N * p.H * p.W == 0) return {dq, dk, dv};
  ARSEG_DISPATCH_FLOATS(query.scalar_type(), "local_attn_backward_cpu", [&] {
    const AttnGradData<scalar_t> d{p,
                                   grad_output.const_data_ptr<scalar_t>(),
                                   query.const_data_ptr<scalar_t>(),
                                   key.const_data_ptr<scalar_t>(),
                                   value.const_data_ptr<scalar_t>(),
                                   strides_of(grad_output),
                                   strides_of(query),
                                   strides_of(key),
                                   strides_of(value),
                                   dq.mutable_data_ptr<scalar_t>(),
                                   dk.mutable_data_ptr<scalar_t>(),
                                   dv.mutable_data_ptr<scalar_t>(),
                                   strides_of(dq),
                                   strides_of(dk),
                                   strides_of(dv)};
    ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] { backward_kernel<K>(d); });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) {
  m.impl("local_attn", &local_attn_cpu);
  m.impl("local_attn_backward", &local_attn_backward_cpu);
}

}  // namespace cpu_local_attn
}  // namespace arseg
