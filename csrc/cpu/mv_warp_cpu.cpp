// CPU kernels of mv_warp: forward, gradient for the feature, gradient for the motion.
//
// The kernels (mv_warp_rows.inc) are compiled once per instruction set (isa_clones.inc) and the best one the
// CPU has runs (cpu::choose_isa, capped by ARSEG_CPU_ISA). Forward and feature gradient are the warp by runs of
// equal taps that creff's warp stage uses (warp_runs.inc). Inputs are read through their strides (no layout
// copies); the outputs are channels_last when the input that has their shape is (strictly) channels_last, NCHW
// otherwise (the rule of creff, creff_output_channels_last; arseg_ops._ops describes it to torch.compile).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../op_common.h"
#include "cpu_isa.h"
#include "cpu_layout.h"

namespace arseg {
namespace cpu_mv_warp {

using cpu::Strides4;
using cpu::strides_of;

#define ARSEG_ISA_BODY "mv_warp_rows.inc"
#include "isa_clones.inc"
#undef ARSEG_ISA_BODY

namespace {

// An output shaped like `like` in the layout rule above.
at::Tensor new_warp_output(const at::Tensor& like) {
  const auto format = creff_output_channels_last(like) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return new_output(like.sizes(), like.options().memory_format(format));
}

// `t`, or (only for channels_last tensors whose strides are not the standard ones, as size-1 dimensions allow)
// its standard channels_last copy: the interleaved kernels walk a run's pixels and channels as one segment.
at::Tensor interleaved_or_copy(const at::Tensor& t, const at::Tensor& out) {
  if (!creff_output_channels_last(out) || cpu::pixel_interleaved(strides_of(t), t.size(1), t.size(3))) return t;
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor mv_warp_cpu(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                       c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp", feature, mv, scale_x, scale_y);
  const auto g = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  at::Tensor out = new_warp_output(feature);
  if (out.numel() == 0) return out;
  const at::Tensor f = interleaved_or_copy(feature, out), m = mv.contiguous();
  const cpu::Isa isa = cpu::choose_isa();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_cpu", [&] {
    const auto rows = ARSEG_ISA_PICK(isa, forward_rows<scalar_t>);
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
      rows(g, m.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), strides_of(f),
           out.mutable_data_ptr<scalar_t>(), strides_of(out), begin, end);
    });
  });
  return out;
}

at::Tensor mv_warp_backward_feature_cpu(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                        double scale_y, c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_feature", grad_output, mv, scale_x, scale_y);
  const auto g = make_mv_warp_params(grad_output, mv, scale_x, scale_y, mode, padding_mode);
  at::Tensor grad_feature = new_warp_output(grad_output);
  if (grad_feature.numel() == 0) return grad_feature;
  const at::Tensor m = mv.contiguous();
  const cpu::Isa isa = cpu::choose_isa();
  ARSEG_DISPATCH_FLOATS(grad_output.scalar_type(), "mv_warp_backward_feature_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto image = ARSEG_ISA_PICK(isa, backward_feature_image<scalar_t, acc_t>);
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    if constexpr (std::is_same<scalar_t, acc_t>::value) {  // accumulate in grad_feature itself
      for (int64_t n = 0; n < g.N; ++n)
        image(g, m.const_data_ptr<scalar_t>(), n, go, strides_of(grad_output),
              reinterpret_cast<acc_t*>(grad_feature.mutable_data_ptr<scalar_t>()) + n * grad_feature.stride(0),
              strides_of(grad_feature));  // (a no-op cast: the lambda is no template, so both branches compile)
    } else {  // in one image of acc_t in grad_feature's layout, rounded once
      at::Tensor acc = at::empty({1, g.C, g.H, g.W}, grad_feature.options()
                                                          .dtype(c10::CppTypeToScalarType<acc_t>::value)
                                                          .memory_format(grad_feature.suggest_memory_format()));
      for (int64_t n = 0; n < g.N; ++n) {
        image(g, m.const_data_ptr<scalar_t>(), n, go, strides_of(grad_output), acc.mutable_data_ptr<acc_t>(),
              strides_of(acc));
        grad_feature[n].copy_(acc[0]);
      }
    }
  });
  return grad_feature;
}

at::Tensor mv_warp_backward_mv_cpu(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                   double scale_x, double scale_y, c10::string_view mode,
                                   c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_mv", feature, mv, scale_x, scale_y);
  check_grad_like("mv_warp_backward_mv", grad_output, feature, "feature");
  const auto g = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const at::Tensor m = mv.contiguous();
  at::Tensor grad_mv = new_output(mv.sizes(), mv.options());
  if (grad_mv.numel() == 0) return grad_mv;
  if (feature.numel() == 0) return grad_mv.zero_();
  const cpu::Isa isa = cpu::choose_isa();
  ARSEG_DISPATCH_FLOATS(feature.scalar_type(), "mv_warp_backward_mv_cpu", [&] {
    const auto rows = ARSEG_ISA_PICK(isa, backward_mv_rows<scalar_t>);
    at::parallel_for(0, g.N * g.Hb, 1, [&](int64_t begin, int64_t end) {
      rows(g, grad_output.const_data_ptr<scalar_t>(), strides_of(grad_output), feature.const_data_ptr<scalar_t>(),
           strides_of(feature), m.const_data_ptr<scalar_t>(), grad_mv.mutable_data_ptr<scalar_t>(), begin, end);
    });
  });
  return grad_mv;
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) {
  m.impl("mv_warp", &mv_warp_cpu);
  m.impl("mv_warp_backward_feature", &mv_warp_backward_feature_cpu);
  m.impl("mv_warp_backward_mv", &mv_warp_backward_mv_cpu);
}

}  // namespace cpu_mv_warp
}  // namespace arseg
