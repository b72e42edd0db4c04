#include "op_common.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace arseg {

at::Tensor creff_warp_backward_feature(const at::Tensor& d_hr, const at::Tensor& mv, double sx, double sy) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("arseg_ops::mv_warp_backward_feature", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double,
                                               c10::string_view, c10::string_view)>();
  return op.call(d_hr, mv, sx, sy, "bilinear", "zeros");
}

WarpMode parse_warp_mode(const std::string& mode) {
  if (mode == "bilinear") return WarpMode::Bilinear;
  if (mode == "nearest") return WarpMode::Nearest;
  TORCH_CHECK(false, "arseg_ops.mv_warp: argument 'mode' must be 'bilinear' or 'nearest', got '", mode, "'");
}

WarpPadding parse_warp_padding(const std::string& padding_mode) {
  if (padding_mode == "zeros") return WarpPadding::Zeros;
  if (padding_mode == "border") return WarpPadding::Border;
  TORCH_CHECK(false, "arseg_ops.mv_warp: argument 'padding_mode' must be 'zeros' or 'border', got '", padding_mode,
              "'");
}

AttnPadding parse_attn_padding(const std::string& padding) {
  if (padding == "zeros") return AttnPadding::Zeros;
  if (padding == "exclude") return AttnPadding::Exclude;
  TORCH_CHECK(false, "arseg_ops.local_attn: argument 'padding' must be 'zeros' or 'exclude', got '", padding, "'");
}

static void check_float_tensor(const char* op, const at::Tensor& t, const char* name) {
  ARSEG_CHECK(t.defined(), op, "argument '", name, "' is undefined");
  ARSEG_CHECK(at::isFloatingType(t.scalar_type()), op, "argument '", name,
              "' must be a floating-point tensor (float32, float64, float16 or bfloat16), got ", t.scalar_type());
}

static void check_same_dtype_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                                    const char* ref_name) {
  ARSEG_CHECK(t.scalar_type() == ref.scalar_type(), op, "argument '", name, "' has dtype ", t.scalar_type(),
              " but '", ref_name, "' has ", ref.scalar_type(), "; they must match");
  ARSEG_CHECK(t.device() == ref.device(), op, "argument '", name, "' is on ", t.device(), " but '", ref_name,
              "' is on ", ref.device(), "; they must be on the same device");
}

void check_mv_warp_args(const char* op, const at::Tensor& feature, const at::Tensor& mv, double scale_x,
                        double scale_y) {
  check_float_tensor(op, feature, "feature");
  check_float_tensor(op, mv, "mv");
  ARSEG_CHECK(feature.dim() == 4, op, "argument 'feature' must be 4-D (N, C, H, W), got shape ", feature.sizes());
  ARSEG_CHECK(mv.dim() == 4, op, "argument 'mv' must be 4-D (N, 2, Hb, Wb), got shape ", mv.sizes());
  ARSEG_CHECK(mv.size(1) == 2, op, "argument 'mv' must have 2 channels (dx, dy) in dim 1, got shape ", mv.sizes());
  ARSEG_CHECK(mv.size(0) == feature.size(0), op, "argument 'mv' has batch size ", mv.size(0), " but 'feature' has ",
              feature.size(0));
  ARSEG_CHECK(mv.size(2) >= 1 && mv.size(3) >= 1, op,
              "argument 'mv' needs a block grid of at least 1x1, got shape ", mv.sizes());
  check_same_dtype_device(op, mv, "mv", feature, "feature");
  ARSEG_CHECK(std::isfinite(scale_x) && std::isfinite(scale_y), op, "argument 'scale' must be finite, got (",
              scale_x, ", ", scale_y, ")");
}

void check_local_attn_args(const char* op, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           int64_t kernel_size, double scale) {
  check_float_tensor(op, query, "query");
  check_float_tensor(op, key, "key");
  check_float_tensor(op, value, "value");
  ARSEG_CHECK(query.dim() == 4, op, "argument 'query' must be 4-D (N, C, H, W), got shape ", query.sizes());
  ARSEG_CHECK(key.sizes() == query.sizes(), op, "argument 'key' must have the shape of 'query' ", query.sizes(),
              ", got ", key.sizes());
  ARSEG_CHECK(value.dim() == 4 && value.size(0) == query.size(0) && value.size(2) == query.size(2) &&
                  value.size(3) == query.size(3),
              op, "argument 'value' must be (N, Cv, H, W) with N, H, W of 'query' ", query.sizes(), ", got ",
              value.sizes());
  check_same_dtype_device(op, key, "key", query, "query");
  check_same_dtype_device(op, value, "value", query, "query");
  ARSEG_CHECK(is_valid_kernel_size(kernel_size), op,
              "argument 'kernel_size' must be odd and in [1, ", kMaxKernelSize, "], got ", kernel_size);
  ARSEG_CHECK(std::isfinite(scale), op, "argument 'scale' must be finite, got ", scale);
}

MvWarpParams make_mv_warp_params(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                                 c10::string_view mode, c10::string_view padding_mode) {
  return {feature.size(0),
          feature.size(1),
          feature.size(2),
          feature.size(3),
          mv.size(2),
          mv.size(3),
          scale_x,
          scale_y,
          parse_warp_mode(std::string(mode)),
          parse_warp_padding(std::string(padding_mode))};
}

LocalAttnParams make_local_attn_params(const at::Tensor& query, const at::Tensor& value, int64_t kernel_size,
                                       double scale, c10::string_view padding) {
  return {query.size(0), query.size(1),      value.size(1), query.size(2), query.size(3),
          static_cast<int>(kernel_size), scale, parse_attn_padding(std::string(padding))};
}

void check_creff_args(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                      const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale,
                      double mv_scale_x, double mv_scale_y) {
  const char* op = "creff";
  check_float_tensor(op, key_feature, "key_feature");
  check_float_tensor(op, mv, "mv");
  check_float_tensor(op, lr_feature, "lr_feature");
  check_float_tensor(op, weight, "weight");
  check_float_tensor(op, bias, "bias");
  ARSEG_CHECK(key_feature.dim() == 4, op, "argument 'key_feature' must be 4-D (N, C, H, W), got shape ",
              key_feature.sizes());
  const int64_t N = key_feature.size(0), C = key_feature.size(1), H = key_feature.size(2), W = key_feature.size(3);
  ARSEG_CHECK(mv.dim() == 4 && mv.size(0) == N && mv.size(1) == 2 && mv.size(2) >= 1 && mv.size(3) >= 1, op,
              "argument 'mv' must be (N, 2, Hb, Wb) with N=", N, " and a block grid of at least 1x1, got shape ",
              mv.sizes());
  ARSEG_CHECK(lr_feature.dim() == 4 && lr_feature.size(0) == N && lr_feature.size(1) == C, op,
              "argument 'lr_feature' must be (N, C, h, w) with N=", N, " and C=", C, ", got shape ",
              lr_feature.sizes());
  ARSEG_CHECK(H >= 1 && W >= 1 && lr_feature.size(2) >= 1 && lr_feature.size(2) <= H && lr_feature.size(3) >= 1 &&
                  lr_feature.size(3) <= W,
              op, "argument 'lr_feature' must be (N, C, h, w) with 1 <= h <= H=", H, " and 1 <= w <= W=", W,
              ", got shape ", lr_feature.sizes());
  ARSEG_CHECK(weight.sizes() == at::IntArrayRef({3, C, 1, 3, 3}), op,
              "argument 'weight' must be (3, C, 1, 3, 3) with C=", C, ", got shape ", weight.sizes());
  ARSEG_CHECK(bias.sizes() == at::IntArrayRef({3, C}), op, "argument 'bias' must be (3, C) with C=", C,
              ", got shape ", bias.sizes());
  check_same_dtype_device(op, mv, "mv", key_feature, "key_feature");
  check_same_dtype_device(op, lr_feature, "lr_feature", key_feature, "key_feature");
  check_same_dtype_device(op, weight, "weight", key_feature, "key_feature");
  check_same_dtype_device(op, bias, "bias", key_feature, "key_feature");
  ARSEG_CHECK(is_valid_kernel_size(kernel_size), op,
              "argument 'kernel_size' must be odd and in [1, ", kMaxKernelSize, "], got ", kernel_size);
  ARSEG_CHECK(std::isfinite(scale), op, "argument 'scale' must be finite, got ", scale);
  ARSEG_CHECK(std::isfinite(mv_scale_x) && std::isfinite(mv_scale_y), op,
              "argument 'mv_scale' must be finite, got (", mv_scale_x, ", ", mv_scale_y, ")");
}

bool creff_output_channels_last(const at::Tensor& key_feature) {
  return !key_feature.is_contiguous() && key_feature.is_contiguous(at::MemoryFormat::ChannelsLast);
}

static std::atomic<bool> g_poison_outputs{false};

namespace {
std::mutex g_experimental_mutex;
std::string& experimental_setting() {
  static std::string setting = [] {
    const char* env = std::getenv("ARSEG_EXPERIMENTAL_KERNELS");
    return std::string(env != nullptr ? env : "");
  }();
  return setting;
}
}  // namespace

bool experimental_kernel(const char* name) {
  std::lock_guard<std::mutex> lock(g_experimental_mutex);
  const std::string& s = experimental_setting();
  if (s.empty()) return false;
  const std::string wanted(name);
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(start, end - start);
    if (item == "all" || item == wanted) return true;
    start = end + 1;
  }
  return false;
}

std::string experimental_kernels() {
  std::lock_guard<std::mutex> lock(g_experimental_mutex);
  return experimental_setting();
}

void set_experimental_kernels(const std::string& names) {
  std::lock_guard<std::mutex> lock(g_experimental_mutex);
  experimental_setting() = names;
}

void set_poison_outputs(bool on) { g_poison_outputs.store(on); }
bool poison_outputs() { return g_poison_outputs.load(); }

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20, kMinBytes = uintptr_t(32) << 20;
  if (!t.device().is_cpu() || !t.has_storage() || t.storage().nbytes() < kMinBytes) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t lo = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t hi = (begin + t.storage().nbytes()) & ~(kHugePage - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice: errors ignored
#else
  (void)t;
#endif
}

at::Tensor new_cpu_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  if (poison_outputs()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

void check_grad_like(const char* op, const at::Tensor& grad, const at::Tensor& like, const char* like_name) {
  check_float_tensor(op, grad, "grad_output");
  ARSEG_CHECK(grad.sizes() == like.sizes(), op, "argument 'grad_output' must have shape ", like.sizes(), " (of '",
              like_name, "'), got ", grad.sizes());
  check_same_dtype_device(op, grad, "grad_output", like, like_name);
}

}  // namespace arseg
