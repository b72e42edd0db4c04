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
void check_grad_like(const char* op, const at::Tensor& grad, const at::Tensor& like, const char* like_name);
at::Tensor creff_warp_backward_feature(const at::Tensor& d_hr, const at::Tensor& mv, double sx, double sy);

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_local_attn_backward(const at::Tensor& grad, const at::Tensor& q,
                                                                        const at::Tensor& k, const at::Tensor& v,
                                                                        int64_t kernel_size, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("arseg_ops::local_attn_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                 double, c10::string_view)>();
  return op.call(grad, q, k, v, kernel_size, scale, "zeros");
}

// (out, in) matrix of the 1-D align_corners linear resize (the math of align_corners_tap), built on the CPU.
at::Tensor align_corners_matrix(int64_t out, int64_t in, const at::TensorOptions& options) {
  at::Tensor a = at::zeros({out, in}, at::TensorOptions().dtype(at::kDouble));
  double* d = a.mutable_data_ptr<double>();
  for (int64_t i = 0; i < out; ++i) {
    const LinearTap<double> t = align_corners_tap<double>(i, in, out);
    d[i * in + t.i0] += t.l0;
    d[i * in + t.i1] += t.l1;
  }
  return a.to(options);
}

// d lr_feature from d lr (the resized feature): A_y^T d_lr A_x, in the accumulation type. Deterministic, unlike
// ATen's upsample_bilinear2d_backward on CUDA (atomics).
at::Tensor resize_transpose(const at::Tensor& d_lr, const at::Tensor& lr_feature) {
  const auto acc = d_lr.options().dtype(d_lr.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const at::Tensor a_y = align_corners_matrix(d_lr.size(2), lr_feature.size(2), acc);
  const at::Tensor a_x = align_corners_matrix(d_lr.size(3), lr_feature.size(3), acc);
  return at::matmul(at::matmul(a_y.t(), d_lr.to(acc)), a_x).to(lr_feature.scalar_type());
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

// creff_backward's gradients through the unfused ops (what autograd of the composition computes).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> creff_backward_composed(
    const at::Tensor& grad, const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
    const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale, double sx, double sy) {
  const int64_t C = key_feature.size(1);
  const at::Tensor hr = call_mv_warp(key_feature, mv, sx, sy);
  const at::Tensor lr = at::upsample_bilinear2d(lr_feature, {key_feature.size(2), key_feature.size(3)}, true);
  const auto dwconv = [&](const at::Tensor& x, int64_t i) {
    return at::conv2d(x, weight[i], bias[i], 1, 1, 1, C).contiguous();
  };
  const auto [dq, dk, dv] =
      call_local_attn_backward(grad.contiguous(), dwconv(lr, 0), dwconv(hr, 1), dwconv(hr, 2), kernel_size, scale);
  const auto dwconv_backward = [&](const at::Tensor& g, const at::Tensor& x, int64_t i) {
    return at::convolution_backward(g, x, weight[i], at::IntArrayRef{C}, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, C,
                                    {true, true, true});
  };
  const auto [d_lr_q, dw_q, db_q] = dwconv_backward(dq, lr, 0);
  const auto [d_hr_k, dw_k, db_k] = dwconv_backward(dk, hr, 1);
  const auto [d_hr_v, dw_v, db_v] = dwconv_backward(dv, hr, 2);
  const at::Tensor d_key = creff_warp_backward_feature((d_hr_k + d_hr_v).contiguous(), mv, sx, sy);
  const at::Tensor d_lr = resize_transpose(grad + d_lr_q, lr_feature);
  return {d_key, d_lr, at::stack({dw_q, dw_k, dw_v}), at::stack({db_q, db_k, db_v})};
}

// creff_backward on CUDA: the fused kernels of creff_backward.cu when opted in (ARSEG_EXPERIMENTAL_KERNELS=creff)
// and creff_fused_supported, else the composition above. Either way d key_feature comes from the
// mv_warp_backward_feature op (whose default v1 kernel scatters with atomics) and d lr_feature from the resize's
// transpose as two matmuls. Gradients are channels_last where their input strictly is (the CPU kernel's rule).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> creff_backward_cuda(
    const at::Tensor& grad, const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
    const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale, double mv_scale_x,
    double mv_scale_y) {
  check_creff_args(key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x, mv_scale_y);
  check_grad_like("creff_backward", grad, key_feature, "key_feature");
  const c10::cuda::CUDAGuard guard(key_feature.device());
  const auto like = [](const at::Tensor& g, const at::Tensor& t) {
    return g.contiguous(creff_output_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  };
  if (key_feature.numel() == 0)
    return {like(at::zeros_like(key_feature), key_feature), like(at::zeros_like(lr_feature), lr_feature),
            at::zeros_like(weight), at::zeros_like(bias)};
  const auto p = make_creff_params(key_feature, mv, lr_feature, kernel_size, scale, mv_scale_x, mv_scale_y);
  const auto type = key_feature.scalar_type() == at::kDouble ? cuda::ElemType::Float64 : cuda::ElemType::Float32;
  if (!cuda::creff_runs_fused(experimental_kernel("creff"), type, p)) {
    auto [d_key, d_lr, d_w, d_b] =
        creff_backward_composed(grad, key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x,
                                mv_scale_y);
    return {like(d_key, key_feature), like(d_lr, lr_feature), d_w, d_b};
  }
  const at::Tensor g = grad.contiguous(), f = key_feature.contiguous(), m = mv.contiguous(),
                   l = lr_feature.contiguous(), w = weight.contiguous(), b = bias.contiguous();
  // new_output: poisoned under tests, so an element the kernels forget to write shows up on a GPU run too
  at::Tensor d_hr = new_output(f.sizes(), f.options()), d_lr = new_output(f.sizes(), f.options());
  at::Tensor d_w = new_output(w.sizes(), w.options()), d_b = new_output(b.sizes(), b.options());
  const bool float64 = f.scalar_type() == at::kDouble;
  at::Tensor ws = at::empty({static_cast<int64_t>(cuda::creff_backward_workspace_bytes(p, float64))},
                            f.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "creff_backward_cuda", [&] {
    cuda::check_launch(cuda::creff_backward(p, cuda::in_ptr<scalar_t>(g), cuda::in_ptr<scalar_t>(f),
                                            cuda::in_ptr<scalar_t>(m), cuda::in_ptr<scalar_t>(l),
                                            cuda::in_ptr<scalar_t>(w), cuda::in_ptr<scalar_t>(b),
                                            cuda::out_ptr<scalar_t>(d_hr), cuda::out_ptr<scalar_t>(d_lr),
                                            cuda::out_ptr<scalar_t>(d_w), cuda::out_ptr<scalar_t>(d_b),
                                            ws.data_ptr(), stream),
                       "creff_backward");
  });
  const at::Tensor d_key = creff_warp_backward_feature(d_hr, m, mv_scale_x, mv_scale_y);
  return {like(d_key, key_feature), like(resize_transpose(d_lr, lr_feature), lr_feature), d_w, d_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) {
  m.impl("creff", &creff_cuda);
  m.impl("creff_backward", &creff_backward_cuda);
}

}  // namespace arseg
