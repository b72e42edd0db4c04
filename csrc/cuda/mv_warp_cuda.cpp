// Torch glue of the CUDA mv_warp kernels (mv_warp_kernels.cu): checks, contiguity, device guard, current
// stream, dtype dispatch, workspaces, and registration for the CUDA dispatch key.
#include <torch/library.h>

#include "cuda_glue.h"

namespace arseg {
namespace {

at::Tensor mv_warp_cuda(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
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

at::Tensor mv_warp_backward_feature_cuda(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
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

at::Tensor mv_warp_backward_mv_cuda(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
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

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) {
  m.impl("mv_warp", &mv_warp_cuda);
  m.impl("mv_warp_backward_feature", &mv_warp_backward_feature_cuda);
  m.impl("mv_warp_backward_mv", &mv_warp_backward_mv_cuda);
}

}  // namespace arseg
