// Torch glue of the CUDA local_attn kernels: checks, layout, device guard, current stream, dtype dispatch, the
// backward's workspace, and registration for the CUDA dispatch key.
//
// Two kernel generations:
//   first (local_attn_forward.cu, local_attn_backward.cu): verified on GPUs, the default; NCHW only.
//   v2 (local_attn_v2_*.cu): EXPERIMENTAL, opt-in through arseg::experimental_kernel("local_attn")
//     (ARSEG_EXPERIMENTAL_KERNELS=local_attn); NCHW or channels_last, float/half/bfloat16, K <= 11 (forward and backward).
// Layout: outputs are channels_last exactly when `query` is channels_last (and not also NCHW-contiguous, as
// tensors with C == 1 or H == W == 1 are), whichever generation runs; the fake kernels in arseg_ops/_ops.py apply
// the same rule. The v2 kernels read and write that layout directly; the first generation works on NCHW copies.
#include <torch/library.h>

#include <tuple>

#include "cuda_glue.h"
#include "kernel_choice.h"

namespace arseg {
namespace {

bool channels_last_layout(const at::Tensor& query) {
  return query.is_contiguous(at::MemoryFormat::ChannelsLast) && !query.is_contiguous();
}

at::MemoryFormat layout_of(const at::Tensor& query) {
  return channels_last_layout(query) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Fills *p and returns true when the v2 kernels run this call (kernel_choice.h; call under the device guard).
bool use_v2(const at::Tensor& q, const at::Tensor& v, int64_t kernel_size, double scale, c10::string_view padding,
            cuda::LocalAttnV2Params* p) {
  const auto params = make_local_attn_params(q, v, kernel_size, scale, padding);
  return cuda::local_attn_runs_v2(experimental_kernel("local_attn"), cuda::elem_type(q.scalar_type()), params,
                                  channels_last_layout(q), p);
}

// Calls f(scalar_t{}) for the element types of the v2 kernels.
template <class F>
void dispatch_v2_types(at::ScalarType type, const char* op, F&& f) {
  switch (type) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "arseg_ops.", op, ": the v2 CUDA kernels do not support ", type);
  }
}

at::Tensor new_output_like(const at::Tensor& like, at::MemoryFormat format) {
  return new_output(like.sizes(), like.options().memory_format(format));
}

at::Tensor local_attn_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           int64_t kernel_size, double scale, c10::string_view padding) {
  check_local_attn_args("local_attn", query, key, value, kernel_size, scale);
  const c10::cuda::CUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::MemoryFormat format = layout_of(query);
  cuda::LocalAttnV2Params p2;
  if (value.numel() > 0 && use_v2(query, value, kernel_size, scale, padding, &p2)) {
    const at::Tensor q = query.contiguous(format), k = key.contiguous(format), v = value.contiguous(format);
    at::Tensor out = new_output_like(value, format);
    dispatch_v2_types(q.scalar_type(), "local_attn", [&](auto tag) {
      using scalar_t = decltype(tag);
      cuda::check_launch(cuda::local_attn_v2_forward(p2, cuda::in_ptr<scalar_t>(q), cuda::in_ptr<scalar_t>(k),
                                                     cuda::in_ptr<scalar_t>(v), cuda::out_ptr<scalar_t>(out), stream),
                         "local_attn");
    });
    return out;
  }
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  at::Tensor out = new_output(value.sizes(), value.options());
  if (out.numel() > 0) {
    ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_cuda", [&] {
      cuda::check_launch(cuda::local_attn_forward(p, cuda::in_ptr<scalar_t>(q), cuda::in_ptr<scalar_t>(k),
                                                  cuda::in_ptr<scalar_t>(v), cuda::out_ptr<scalar_t>(out), stream),
                         "local_attn");
    });
  }
  return out.contiguous(format);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attn_backward_cuda(const at::Tensor& grad_output,
                                                                        const at::Tensor& query, const at::Tensor& key,
                                                                        const at::Tensor& value, int64_t kernel_size,
                                                                        double scale, c10::string_view padding) {
  check_local_attn_args("local_attn_backward", query, key, value, kernel_size, scale);
  check_grad_like("local_attn_backward", grad_output, value, "value");
  const c10::cuda::CUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::MemoryFormat format = layout_of(query);
  cuda::LocalAttnV2Params p2;
  if (use_v2(query, value, kernel_size, scale, padding, &p2)) {
    const at::Tensor go = grad_output.contiguous(format), q = query.contiguous(format), k = key.contiguous(format),
                     v = value.contiguous(format);
    at::Tensor dq = new_output_like(query, format), dk = new_output_like(key, format),
               dv = new_output_like(value, format);
    at::Tensor ws = cuda::workspace(cuda::local_attn_v2_backward_workspace(p2), q);
    dispatch_v2_types(q.scalar_type(), "local_attn_backward", [&](auto tag) {
      using scalar_t = decltype(tag);
      cuda::check_launch(
          cuda::local_attn_v2_backward(p2, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(q),
                                       cuda::in_ptr<scalar_t>(k), cuda::in_ptr<scalar_t>(v),
                                       cuda::out_ptr<scalar_t>(dq), cuda::out_ptr<scalar_t>(dk),
                                       cuda::out_ptr<scalar_t>(dv), ws.mutable_data_ptr(), stream),
          "local_attn_backward");
    });
    return {dq, dk, dv};
  }
  const auto p = make_local_attn_params(query, value, kernel_size, scale, padding);
  const at::Tensor go = grad_output.contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous();
  at::Tensor dq = new_output(query.sizes(), query.options());
  at::Tensor dk = new_output(key.sizes(), key.options());
  at::Tensor dv = new_output(value.sizes(), value.options());
  if (p.N * p.H * p.W > 0) {
    ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_backward_cuda", [&] {
      using T = typename cuda::CudaType<scalar_t>::type;
      at::Tensor ws = cuda::workspace(cuda::local_attn_backward_workspace<T>(p), q);
      cuda::check_launch(cuda::local_attn_backward(p, cuda::in_ptr<scalar_t>(go), cuda::in_ptr<scalar_t>(q),
                                                   cuda::in_ptr<scalar_t>(k), cuda::in_ptr<scalar_t>(v),
                                                   cuda::out_ptr<scalar_t>(dq), cuda::out_ptr<scalar_t>(dk),
                                                   cuda::out_ptr<scalar_t>(dv), ws.mutable_data_ptr(), stream),
                         "local_attn_backward");
    });
  }
  return {dq.contiguous(format), dk.contiguous(format), dv.contiguous(format)};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CUDA, m) {
  m.impl("local_attn", &local_attn_cuda);
  m.impl("local_attn_backward", &local_attn_backward_cuda);
}

}  // namespace arseg
