// Torch glue of the CUDA mv_warp kernels (mv_warp_kernels.cu): checks, contiguity, device guard, current
// stream, dtype dispatch, workspaces, and registration for the CUDA dispatch key.
//
// With experimental_kernel("mv_warp") (opt-in, ARSEG_EXPERIMENTAL_KERNELS=mv_warp) the v2 kernels run instead
// (mv_warp_v2.h): channels_last inputs are then read in place and give channels_last outputs, everything else
// gives contiguous NCHW outputs, as by default. arseg_ops/_ops.py (_mv_warp_output_is_channels_last) states the
// same rule for the fake kernels: keep the two in step.
#include <torch/library.h>

#include "cuda_glue.h"
#include "kernel_choice.h"

namespace arseg {
namespace {

// ---- v2 (opt-in) ----

bool use_v2() { return experimental_kernel("mv_warp"); }

// channels_last and not also NCHW-contiguous (C == 1 or H == W == 1 tensors are both: those stay NCHW).
bool strictly_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

cuda::Layout layout_of(const at::Tensor& t) {
  return strictly_channels_last(t) ? cuda::Layout::NHWC : cuda::Layout::NCHW;
}

at::MemoryFormat memory_format(cuda::Layout layout) {
  return layout == cuda::Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The tensor in `layout`, without a copy when it already is.
at::Tensor in_layout(const at::Tensor& t, cuda::Layout layout) { return t.contiguous(memory_format(layout)); }

at::Tensor new_output_in(at::IntArrayRef sizes, const at::TensorOptions& options, cuda::Layout layout) {
  return new_output(sizes, options.memory_format(memory_format(layout)));
}

at::Tensor mv_warp_v1(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                      c10::string_view mode, c10::string_view padding_mode);
at::Tensor mv_warp_backward_feature_v1(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                       double scale_y, c10::string_view mode, c10::string_view padding_mode);
at::Tensor mv_warp_backward_mv_v1(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                  double scale_x, double scale_y, c10::string_view mode,
                                  c10::string_view padding_mode);

at::Tensor mv_warp_v2(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                      c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp", feature, mv, scale_x, scale_y);
  const auto p = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const cuda::Layout layout = layout_of(feature);
  if (!cuda::mv_warp_runs_v2(use_v2(), p, layout))  // planes beyond 32-bit offsets: v1, in the promised layout
    return mv_warp_v1(feature, mv, scale_x, scale_y, mode, padding_mode).contiguous(memory_format(layout));
  const c10::cuda::CUDAGuard guard(feature.device());
  const at::Tensor f = in_layout(feature, layout), m = mv.contiguous();
  at::Tensor out = new_output_in(feature.sizes(), feature.options(), layout);
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_cuda", [&] {
    cuda::check_launch(cuda::mv_warp_v2_forward(p, layout, cuda::in_ptr<scalar_t>(f), cuda::in_ptr<scalar_t>(m),
                                                cuda::out_ptr<scalar_t>(out), stream),
                       "mv_warp");
  });
  return out;
}

at::Tensor mv_warp_backward_feature_v2(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                       double scale_y, c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_feature", grad_output, mv, scale_x, scale_y);
  const auto p = make_mv_warp_params(grad_output, mv, scale_x, scale_y, mode, padding_mode);
  const cuda::Layout layout = layout_of(grad_output);
  if (!cuda::mv_warp_runs_v2(use_v2(), p, layout))
    return mv_warp_backward_feature_v1(grad_output, mv, scale_x, scale_y, mode, padding_mode)
        .contiguous(memory_format(layout));
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor go = in_layout(grad_output, layout), m = mv.contiguous();
  at::Tensor grad_feature = new_output_in(grad_output.sizes(), grad_output.options(), layout);
  if (grad_feature.numel() == 0) return grad_feature;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(go.scalar_type(), "mv_warp_backward_feature_cuda", [&] {
    cuda::check_launch(cuda::mv_warp_v2_backward_feature(p, layout, cuda::in_ptr<scalar_t>(go),
                                                         cuda::in_ptr<scalar_t>(m),
                                                         cuda::out_ptr<scalar_t>(grad_feature), stream),
                       "mv_warp_backward_feature");
  });
  return grad_feature;
}

at::Tensor mv_warp_backward_mv_v2(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                  double scale_x, double scale_y, c10::string_view mode,
                                  c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_mv", feature, mv, scale_x, scale_y);
  check_grad_like("mv_warp_backward_mv", grad_output, feature, "feature");
  const auto p = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const cuda::Layout layout = layout_of(feature);  // grad_output is brought to feature's layout if it differs
  if (!cuda::mv_warp_runs_v2(use_v2(), p, layout))
    return mv_warp_backward_mv_v1(grad_output, feature, mv, scale_x, scale_y, mode, padding_mode);
  const c10::cuda::CUDAGuard guard(feature.device());
  const at::Tensor go = in_layout(grad_output, layout), f = in_layout(feature, layout), m = mv.contiguous();
  at::Tensor grad_mv = new_output(mv.sizes(), mv.options());
  if (grad_mv.numel() == 0) return grad_mv;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_backward_mv_cuda", [&] {
    using T = typename cuda::CudaType<scalar_t>::type;
    at::Tensor ws = cuda::workspace(cuda::mv_warp_v2_backward_mv_workspace<T>(p, layout), f);
    cuda::check_launch(cuda::mv_warp_v2_backward_mv(p, layout, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(f),
                                                    cuda::in_ptr<scalar_t>(m), cuda::out_ptr<scalar_t>(grad_mv),
                                                    ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr, stream),
                       "mv_warp_backward_mv");
  });
  return grad_mv;
}

// ---- v1 (the verified default) ----

at::Tensor mv_warp_v1(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                        c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp", feature, mv, scale_x, scale_y);
  const auto p = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const c10::cuda::CUDAGuard guard(feature.device());
  const at::Tensor f = feature.contiguous(), m = mv.contiguous();
  at::Tensor out = new_output(feature.sizes(), feature.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_cuda", [&] {
    cuda::check_launch(cuda::mv_warp_forward(p, cuda::in_ptr<scalar_t>(f), cuda::in_ptr<scalar_t>(m),
                                             cuda::out_ptr<scalar_t>(out), stream),
                       "mv_warp");
  });
  return out;
}

at::Tensor mv_warp_backward_feature_v1(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                       double scale_y, c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_feature", grad_output, mv, scale_x, scale_y);
  const auto p = make_mv_warp_params(grad_output, mv, scale_x, scale_y, mode, padding_mode);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor go = grad_output.contiguous(), m = mv.contiguous();
  at::Tensor grad_feature = new_output(grad_output.sizes(), grad_output.options());
  if (grad_feature.numel() == 0) return grad_feature;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(go.scalar_type(), "mv_warp_backward_feature_cuda", [&] {
    using T = typename cuda::CudaType<scalar_t>::type;
    at::Tensor ws = cuda::workspace(cuda::mv_warp_backward_feature_workspace<T>(p), go);
    cuda::check_launch(cuda::mv_warp_backward_feature(p, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(m),
                                                      cuda::out_ptr<scalar_t>(grad_feature),
                                                      ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr, stream),
                       "mv_warp_backward_feature");
  });
  return grad_feature;
}

at::Tensor mv_warp_backward_mv_v1(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                  double scale_x, double scale_y, c10::string_view mode,
                                  c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_mv", feature, mv, scale_x, scale_y);
  check_grad_like("mv_warp_backward_mv", grad_output, feature, "feature");
  const auto p = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const c10::cuda::CUDAGuard guard(feature.device());
  const at::Tensor go = grad_output.contiguous(), f = feature.contiguous(), m = mv.contiguous();
  at::Tensor grad_mv = new_output(mv.sizes(), mv.options());
  if (grad_mv.numel() == 0) return grad_mv;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_backward_mv_cuda", [&] {
    using T = typename cuda::CudaType<scalar_t>::type;
    at::Tensor ws = cuda::workspace(cuda::mv_warp_backward_mv_workspace<T>(p), f);
    cuda::check_launch(cuda::mv_warp_backward_mv(p, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(f),
                                                 cuda::in_ptr<scalar_t>(m), cuda::out_ptr<scalar_t>(grad_mv),
                                                 ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr, stream),
                       "mv_warp_backward_mv");
  });
  return grad_mv;
}

// ---- dispatch: v2 only when opted in ----

at::Tensor mv_warp_cuda(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                        c10::string_view mode, c10::string_view padding_mode) {
  return use_v2() ? mv_warp_v2(feature, mv, scale_x, scale_y, mode, padding_mode)
                  : mv_warp_v1(feature, mv, scale_x, scale_y, mode, padding_mode);
}

at::Tensor mv_warp_backward_feature_cuda(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                         double scale_y, c10::string_view mode, c10::string_view padding_mode) {
  return use_v2() ? mv_warp_backward_feature_v2(grad_output, mv, scale_x, scale_y, mode, padding_mode)
                  : mv_warp_backward_feature_v1(grad_output, mv, scale_x, scale_y, mode, padding_mode);
}

at::Tensor mv_warp_backward_mv_cuda(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                    double scale_x, double scale_y, c10::string_view mode,
                                    c10::string_view padding_mode) {
  return use_v2() ? mv_warp_backward_mv_v2(grad_output, feature, mv, scale_x, scale_y, mode, padding_mode)
                  : mv_warp_backward_mv_v1(grad_output, feature, mv, scale_x, scale_y, mode, padding_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) {
  m.impl("mv_warp", &mv_warp_cuda);
  m.impl("mv_warp_backward_feature", &mv_warp_backward_feature_cuda);
  m.impl("mv_warp_backward_mv", &mv_warp_backward_mv_cuda);
}

}  // namespace arseg
