// Torch glue of creff on CUDA. Default: the composition of the verified CUDA ops (mv_warp and local_attn through
// the dispatcher, ATen's align_corners upsample and grouped conv2d, an add). Opt-in
// (arseg::experimental_kernel("creff"), i.e. ARSEG_EXPERIMENTAL_KERNELS=creff): the fused kernel of
// creff_forward.cu, which no GPU has verified yet; it handles odd kernel_size up to 11 (7 for float64) in NCHW or channels_last
// (read and written in place) and falls back to the composition otherwise.
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "cuda_glue.h"

namespace arseg {

// Defined in op_common.cpp with the creff op (branch `creff`; op_common.h declares them identically there).
void check_creff_args(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                      const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale,
                      double mv_scale_x, double mv_scale_y);
bool creff_output_channels_last(const at::Tensor& key_feature);

namespace {

at::Tensor call_mv_warp(const at::Tensor& feature, const at::Tensor& mv, double sx, double sy) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("arseg_ops::mv_warp", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double,
                                               c10::string_view, c10::string_view)>();
  return op.call(feature, mv, sx, sy, "bilinear", "zeros");
}

at::Tensor call_local_attn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t kernel_size,
                           double scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("arseg_ops::local_attn", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double,
                            c10::string_view)>();
  return op.call(q, k, v, kernel_size, scale, "zeros");
}

CreffParams make_creff_params(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                              int64_t kernel_size, double scale, double mv_scale_x, double mv_scale_y) {
  return {key_feature.size(0), key_feature.size(1), key_feature.size(2), key_feature.size(3),
          lr_feature.size(2),  lr_feature.size(3),  mv.size(2),          mv.size(3),
          static_cast<int>(kernel_size), scale, mv_scale_x, mv_scale_y};
}

// out = lr + local_attn(dwconv(lr), dwconv(hr), dwconv(hr)): every intermediate is a tensor.
void creff_composed(at::Tensor& out, const at::Tensor& key_feature, const at::Tensor& mv,
                    const at::Tensor& lr_feature, const at::Tensor& weight, const at::Tensor& bias,
                    int64_t kernel_size, double scale, double mv_scale_x, double mv_scale_y) {
  const int64_t C = key_feature.size(1);
  const at::Tensor hr = call_mv_warp(key_feature, mv, mv_scale_x, mv_scale_y);
  const at::Tensor lr = at::upsample_bilinear2d(lr_feature, {key_feature.size(2), key_feature.size(3)},
                                                /*align_corners=*/true);
  const auto dwconv = [&](const at::Tensor& x, int64_t i) {
    return at::conv2d(x, weight[i], bias[i], /*stride=*/1, /*padding=*/1, /*dilation=*/1, /*groups=*/C);
  };
  const at::Tensor attn = call_local_attn(dwconv(lr, 0), dwconv(hr, 1), dwconv(hr, 2), kernel_size, scale);
  at::add_out(out, lr, attn);
}

at::Tensor creff_cuda(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                      const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale,
                      double mv_scale_x, double mv_scale_y) {
  check_creff_args(key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x, mv_scale_y);
  const c10::cuda::CUDAGuard guard(key_feature.device());
  const auto layout = creff_output_channels_last(key_feature) ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous;
  const auto p = make_creff_params(key_feature, mv, lr_feature, kernel_size, scale, mv_scale_x, mv_scale_y);
  const auto type = key_feature.scalar_type() == at::kDouble ? cuda::ElemType::Float64 : cuda::ElemType::Float32;
  if (!cuda::creff_runs_fused(experimental_kernel("creff"), type, p)) {
    at::Tensor out = new_output(key_feature.sizes(), key_feature.options().memory_format(layout));
    if (out.numel() > 0)
      creff_composed(out, key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x, mv_scale_y);
    return out;
  }
  // The fused kernel reads and writes NCHW or channels_last in place (the output's layout; lr_feature is brought
  // to it if it differs).
  at::Tensor out = new_output(key_feature.sizes(), key_feature.options().memory_format(layout));
  if (out.numel() == 0) return out;
  const at::Tensor f = key_feature.contiguous(layout), m = mv.contiguous(), l = lr_feature.contiguous(layout),
                   w = weight.contiguous(), b = bias.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool channels_last = layout == at::MemoryFormat::ChannelsLast;
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "creff_cuda", [&] {
    cuda::check_launch(cuda::creff_forward(p, channels_last, cuda::in_ptr<scalar_t>(f), cuda::in_ptr<scalar_t>(m),
                                           cuda::in_ptr<scalar_t>(l), cuda::in_ptr<scalar_t>(w),
                                           cuda::in_ptr<scalar_t>(b), cuda::out_ptr<scalar_t>(out), stream),
                       "creff");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) { m.impl("creff", &creff_cuda); }

}  // namespace arseg
