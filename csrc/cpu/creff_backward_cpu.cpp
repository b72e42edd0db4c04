// CPU kernel of creff_backward, the fused CReFF op's gradient with respect to key_feature, lr_feature, weight and
// bias (creff_math.h states the forward). Not the motion's: codec motion vectors are data, and when autograd
// does ask for d mv, arseg_ops._ops keeps the op-by-op backward (mv_warp_backward_mv needs d_hr at full size).
//
// Stage A (creff_backward_stream.inc, compiled once per instruction set as the forward): row-segment tasks
// stream down the image rebuilding hr, lr, q, k, v in the forward's ring buffers and run the attention and
// convolution backward row by row. They leave d_hr (the gradient of the warped key feature) and the gradient of
// the resized lr feature already transposed along x, both in the accumulation type, and per task the weight and
// bias gradients. Nothing else of full size is materialised (the op-by-op backward holds about 8 such tensors).
// Stage B: d_key = mv_warp_backward_feature(d_hr) (deterministic: a gather over the pull warp's sources), the
// resize transpose along y as a gather per lr row (below), and the per-task weight sums added in task order.
// No float atomics anywhere: the same inputs give the same bits on every run with the same thread count.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../mv_warp_math.h"
#include "../op_common.h"
#include "../static_switch.h"
#include "cpu_fp.h"
#include "cpu_isa.h"
#include "creff_plan.h"

namespace arseg {
namespace cpu_creff_backward {

using cpu::Strides4;
using cpu::strides_of;
using cpu_creff::CreffData;
using cpu_creff::CreffGradData;
using cpu_creff::kPad;
using cpu_creff::RowBuffer;
using cpu_creff::StripPlan;

#define ARSEG_ISA_BODY "creff_backward_stream.inc"
#include "isa_clones.inc"  // namespaces baseline, avx2, avx512: the streaming stage per instruction set
#undef ARSEG_ISA_BODY

namespace {

// Row segments per image: each task recomputes the attention of 2 * (K/2) + 2 query rows beyond its own, so
// keep segments >= 8x that, and cut an image only as far as the threads need (tasks of equal size).
int64_t segments_per_image(const CreffParams& p, int64_t threads) {
  const int64_t min_rows = 8 * (p.kernel_size / 2 + 2);
  const int64_t wanted = (threads + p.N - 1) / p.N;
  return std::max<int64_t>(1, std::min(wanted, p.H / min_rows));
}

// d_lr[n, c, i, :] = sum_y A_y[y, i] lr_tx[n, c, y, :]: the align_corners resize's transpose along y, one lr row
// per step, its source rows y gathered in increasing order (each y reaches at most two lr rows).
template <typename scalar_t, typename acc_t>
void resize_transpose_rows(const acc_t* lr_tx, const CreffParams& p, scalar_t* d_lr, const Strides4& ds) {
  std::vector<std::vector<std::pair<int64_t, acc_t>>> from(p.h);
  for (int64_t y = 0; y < p.H; ++y) {
    const LinearTap<acc_t> t = align_corners_tap<acc_t>(y, p.h, p.H);
    from[t.i0].emplace_back(y, t.l0);
    from[t.i1].emplace_back(y, t.l1);
  }
  at::parallel_for(0, p.N * p.C * p.h, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(p.w);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % p.h, nc = r / p.h, c = nc % p.C, n = nc / p.C;
      std::fill(row.begin(), row.end(), acc_t(0));
      for (const auto& [y, l] : from[i]) {
        const acc_t* __restrict__ src = lr_tx + (nc * p.H + y) * p.w;
        for (int64_t j = 0; j < p.w; ++j) row[j] += l * src[j];
      }
      scalar_t* out = d_lr + n * ds.n + c * ds.c + i * ds.h;
      for (int64_t j = 0; j < p.w; ++j) out[j * ds.w] = static_cast<scalar_t>(row[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> creff_backward_cpu(
    const at::Tensor& grad, const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
    const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale, double mv_scale_x,
    double mv_scale_y) {
  check_creff_args(key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x, mv_scale_y);
  check_grad_like("creff_backward", grad, key_feature, "key_feature");
  const CreffParams p{key_feature.size(0), key_feature.size(1), key_feature.size(2), key_feature.size(3),
                      lr_feature.size(2),  lr_feature.size(3),  mv.size(2),          mv.size(3),
                      static_cast<int>(kernel_size), scale, mv_scale_x, mv_scale_y};
  const auto format_of = [](const at::Tensor& t) {
    return creff_output_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  };
  at::Tensor d_lr = new_output(lr_feature.sizes(), lr_feature.options().memory_format(format_of(lr_feature)));
  at::Tensor d_weight = new_output(weight.sizes(), weight.options());
  at::Tensor d_bias = new_output(bias.sizes(), bias.options());
  if (p.N * p.C * p.H * p.W == 0) {
    d_lr.zero_(), d_weight.zero_(), d_bias.zero_();
    const at::Tensor d_key =
        new_output(key_feature.sizes(), key_feature.options().memory_format(format_of(key_feature))).zero_();
    return {d_key, d_lr, d_weight, d_bias};
  }
  const int64_t segments = segments_per_image(p, at::get_num_threads());
  const int64_t rows = (p.H + segments - 1) / segments, tasks = p.N * ((p.H + rows - 1) / rows);
  at::Tensor d_key;
  ARSEG_DISPATCH_FLOATS(key_feature.scalar_type(), "creff_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = key_feature.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
    const at::Tensor m = mv.contiguous();
    at::Tensor d_hr = new_cpu_buffer(key_feature.sizes(), acc.memory_format(format_of(key_feature)));
    at::Tensor lr_tx = new_cpu_buffer({p.N, p.C, p.H, p.w}, acc);
    at::Tensor dw = at::empty({tasks, 3, p.C, 10}, acc);
    const CreffGradData<scalar_t, acc_t> g{
        CreffData<scalar_t, acc_t>{p, key_feature.const_data_ptr<scalar_t>(), strides_of(key_feature),
                                   lr_feature.const_data_ptr<scalar_t>(), strides_of(lr_feature),
                                   m.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(),
                                   b.const_data_ptr<acc_t>(), nullptr, Strides4{}},
        grad.const_data_ptr<scalar_t>(), strides_of(grad), d_hr.mutable_data_ptr<acc_t>(), strides_of(d_hr),
        lr_tx.mutable_data_ptr<acc_t>(), dw.mutable_data_ptr<acc_t>(), rows, (p.H + rows - 1) / rows};
    const cpu::Isa isa = cpu::choose_isa();
    ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] {
      const auto run = ARSEG_ISA_PICK(isa, run_backward_tasks<K, scalar_t, acc_t>);
      cpu::parallel_for_ftz(0, tasks, 1, [&](int64_t begin, int64_t end) { run(g, begin, end); });
    });
    // Weight and bias gradients: the tasks' partial sums in task order.
    const acc_t* parts = dw.const_data_ptr<acc_t>();
    at::Tensor total = at::zeros({3, p.C, 10}, acc);
    acc_t* sum = total.mutable_data_ptr<acc_t>();
    for (int64_t t = 0; t < tasks; ++t)
      for (int64_t i = 0; i < 3 * p.C * 10; ++i) sum[i] += parts[t * 3 * p.C * 10 + i];
    d_weight.copy_(total.narrow(2, 0, 9).reshape(weight.sizes()));
    d_bias.copy_(total.select(2, 9));
    resize_transpose_rows<scalar_t, acc_t>(lr_tx.const_data_ptr<acc_t>(), p, d_lr.mutable_data_ptr<scalar_t>(),
                                           strides_of(d_lr));
    lr_tx.reset();
    const at::Tensor d = creff_warp_backward_feature(d_hr, mv.to(acc), mv_scale_x, mv_scale_y);
    d_key = d.scalar_type() == key_feature.scalar_type() ? d : d.to(key_feature.scalar_type());
  });
  return {d_key, d_lr, d_weight, d_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) { m.impl("creff_backward", &creff_backward_cpu); }

}  // namespace cpu_creff_backward
}  // namespace arseg
