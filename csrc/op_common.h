// What every backend's torch glue (CPU and CUDA) shares: argument checks, option parsing, params structs built
// from tensors, output allocation.
// The Python wrappers validate first (ValueError/TypeError); these TORCH_CHECKs guard direct
// torch.ops.arseg_ops.* calls so that no kernel ever sees a malformed argument.
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "op_params.h"

// float32, float64, float16 and bfloat16; the kernels accumulate in at::opmath_type (float, or double).
#define ARSEG_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

#define ARSEG_CHECK(cond, op, ...) TORCH_CHECK(cond, "arseg_ops.", op, ": ", __VA_ARGS__)

namespace arseg {

WarpMode parse_warp_mode(const std::string& mode);
WarpPadding parse_warp_padding(const std::string& padding_mode);
AttnPadding parse_attn_padding(const std::string& padding);

// feature (N,C,H,W) and mv (N,2,Hb,Wb): rank, sizes, dtype, device; finite scales. The backward ops pass
// grad_output as `feature` where only its shape matters, and check it with check_grad_like otherwise.
void check_mv_warp_args(const char* op, const at::Tensor& feature, const at::Tensor& mv, double scale_x,
                        double scale_y);

// query/key (N,C,H,W), value (N,Cv,H,W), kernel_size odd in [1, kMaxKernelSize], finite scale.
void check_local_attn_args(const char* op, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           int64_t kernel_size, double scale);

// Params of checked arguments (sizes from the tensors, options parsed; a bad option string raises).
MvWarpParams make_mv_warp_params(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                                 c10::string_view mode, c10::string_view padding_mode);
LocalAttnParams make_local_attn_params(const at::Tensor& query, const at::Tensor& value, int64_t kernel_size,
                                       double scale, c10::string_view padding);

// creff: key_feature (N,C,H,W), mv (N,2,Hb,Wb), lr_feature (N,C,h,w) with 1 <= h <= H, 1 <= w <= W,
// weight (3,C,1,3,3), bias (3,C), one dtype and device; kernel_size odd in [1, 15]; finite scales.
void check_creff_args(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                      const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale,
                      double mv_scale_x, double mv_scale_y);

// The layout rule of creff's output (arseg_ops._validate.creff_channels_last says the same): channels_last
// when key_feature is channels_last and not also contiguous, else contiguous NCHW.
bool creff_output_channels_last(const at::Tensor& key_feature);

// The creff backward kernels' last step (CPU and CUDA): d key_feature = arseg_ops::mv_warp_backward_feature(d_hr, mv)
// through the dispatcher (bilinear, zeros), so each device runs its own warp backward.
at::Tensor creff_warp_backward_feature(const at::Tensor& d_hr, const at::Tensor& mv, double sx, double sy);

// `grad` must match `like` in shape, dtype and device.
void check_grad_like(const char* op, const at::Tensor& grad, const at::Tensor& like, const char* like_name);

// Allocates an operator output. When poisoning is on (tests only: arseg_ops._loader.poison_outputs), the memory is
// filled with NaN first, so an element a kernel forgets to write shows up in every comparison. Large CPU outputs
// get huge-page advice (advise_huge_pages).
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// at::empty + advise_huge_pages: a large CPU scratch buffer the kernel writes in full.
at::Tensor new_cpu_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// A CPU buffer of >= 32 MiB is a fresh mmap (glibc maps every allocation above its 32 MiB mmap ceiling anew and
// unmaps it when freed), so its first write takes one page fault per 4 KiB on every call. Advising huge pages
// over the buffer's 2 MiB-aligned interior (Linux THP; "madvise", the common default mode, honours only advised
// ranges) makes it one fault per 2 MiB: at 64x720x960 float (177 MB) creff's CPU forward went 563 -> 485 ms on
// the project's VM (1 thread). Advice only: no effect elsewhere or when the kernel declines. Smaller buffers are
// left alone: glibc recycles them from its heap, where they fault once, not per call.
void advise_huge_pages(const at::Tensor& t);
void set_poison_outputs(bool on);
bool poison_outputs();

// Opt-in switch for kernels that no GPU run has verified yet (DEVELOPERS.md: new CUDA kernels stay opt-in until a
// GPU run shows they pass every CUDA test, are sanitizer-clean and faster; then they become the default and the
// old ones are deleted). The setting is a comma-separated list of kernel names ("local_attn", "mv_warp",
// "creff", ...) or "all", read from the environment variable ARSEG_EXPERIMENTAL_KERNELS when the library loads
// and changed at run time by arseg_ops._loader.experimental_kernels(...). Glue code asks experimental_kernel("x")
// at each call and launches the new kernel only when it returns true.
bool experimental_kernel(const char* name);
std::string experimental_kernels();
void set_experimental_kernels(const std::string& names);

}  // namespace arseg
