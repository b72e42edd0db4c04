// Torch glue of the CUDA local_attn kernels (local_attn_forward.cu, local_attn_backward.cu): checks,
// contiguity, device guard, current stream, dtype dispatch, the backward's (lse, delta) workspace, and
// registration for the CUDA dispatch key.
#include <torch/library.h>

#include <tuple>

#include "cuda_glue.h"

namespace arseg {
namespace {

at::Tensor local_attn_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           int64_t kernel_size, double scale, c10::string_view padding) {
  check_local_attn_args("local_attn", query, key, value, kernel_size, scale);
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  at::Tensor out = new_output(value.sizes(), value.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_cuda", [&] {
    cuda::check_launch(cuda::local_attn_forward(p, cuda::in_ptr<scalar_t>(q), cuda::in_ptr<scalar_t>(k),
                                                cuda::in_ptr<scalar_t>(v), cuda::out_ptr<scalar_t>(out), stream),
                       "local_attn");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attn_backward_cuda(const at::Tensor& grad_output,
                                                                        const at::Tensor& query, const at::Tensor& key,
                                                                        const at::Tensor& value, int64_t kernel_size,
                                                                        double scale, c10::string_view padding) {
  check_local_attn_args("local_attn_backward", query, key, value, kernel_size, scale);
  check_grad_like("local_attn_backward", grad_output, value, "value");
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor go = grad_output.contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous();
  at::Tensor dq = new_output(query.sizes(), query.options());
  at::Tensor dk = new_output(key.sizes(), key.options());
  at::Tensor dv = new_output(value.sizes(), value.options());
  if (p.N * p.H * p.W == 0) return {dq, dk, dv};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_backward_cuda", [&] {
    using T = typename cuda::CudaType<scalar_t>::type;
    at::Tensor ws = cuda::workspace(cuda::local_attn_backward_workspace<T>(p), q);
    cuda::check_launch(
        cuda::local_attn_backward(p, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(q), cuda::in_ptr<scalar_t>(k),
                                  cuda::in_ptr<scalar_t>(v), cuda::out_ptr<scalar_t>(dq), cuda::out_ptr<scalar_t>(dk),
                                  cuda::out_ptr<scalar_t>(dv), ws.mutable_data_ptr(), stream),
        "local_attn_backward");
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) {
  m.impl("local_attn", &local_attn_cuda);
  m.impl("local_attn_backward", &local_attn_backward_cuda);
}

}  // namespace arseg
