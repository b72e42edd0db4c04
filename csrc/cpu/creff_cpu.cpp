// CPU kernel of the fused CReFF op (creff_math.h states the math): one pass from the keyframe feature, the
// motion and the LR feature to the fused feature. The warped feature hr, the resized lr, and q, k, v never go
// to memory. Each task owns a strip of columns over a range of rows of one image and streams down it with
// ring buffers of a few rows (creff_stream.inc): for each output row y it computes hr row y+R+1 (warp taps of
// the row, then a gather per channel), k and v row y+R (depthwise 3x3 of three hr rows), lr row y+1 (the
// align_corners resize) and q row y (depthwise 3x3 of three lr rows), then the attention of row y chunk by
// chunk, vectorized across kLanes pixels, and stores lr + attention. Every row is computed once per task (only
// the K/2 + 2 rows above a task and K/2 + 1 columns on each side are recomputed by a neighbour), and the rings
// (~1 MiB per strip, plan_strips) stay in the core's L2 cache.
// Every buffer holds exact zeros outside the image, which is both the convolutions' zero padding and
// local_attn's padding="zeros" (logit 0, value 0). Denormals are flushed in the workers, as in local_attn
// (cpu_fp.h: a peaked softmax would otherwise underflow into slow denormal arithmetic).
// The pipeline is compiled three times, for baseline x86-64 (or the build's ISA elsewhere), AVX2 + FMA, and
// AVX-512 (64-byte vectors), and the best one the CPU has runs (ARSEG_CPU_ISA=baseline|avx2|avx512 caps it,
// for tests and comparisons). Inputs are read through their strides (NCHW, channels_last, any view); the
// output is NCHW, or channels_last when key_feature is (creff_output_channels_last). Accumulation in float
// (float/half/bfloat16) or double.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include "../mv_warp_math.h"
#include "../op_common.h"
#include "../static_switch.h"
#include "cpu_fp.h"
#include "cpu_isa.h"
#include "creff_plan.h"

namespace arseg {
namespace cpu_creff {

#define ARSEG_ISA_BODY "creff_stream.inc"
#include "isa_clones.inc"  // namespaces baseline, avx2, avx512: the row pipeline per instruction set
#undef ARSEG_ISA_BODY

namespace {

using cpu::choose_isa;
using cpu::Isa;

using cpu::strides_of;

template <int KS, typename scalar_t, typename acc_t>
void creff_kernel(const CreffData<scalar_t, acc_t>& d) {
  const Isa isa = choose_isa();
  const auto run = ARSEG_ISA_PICK(isa, run_tasks<KS, scalar_t, acc_t>);
  const int64_t vec_bytes = cpu::vec_bytes(isa);
  const CreffParams& p = d.p;
  const StripPlan plan = plan_strips(p, vec_bytes / static_cast<int64_t>(sizeof(acc_t)), sizeof(acc_t),
                                     at::get_num_threads());
  const int64_t tasks = plan.tasks(p.N);
  // Small calls run on the calling thread: waking the pool costs more than they take.
  const int64_t grain = p.N * p.C * p.H * p.W < (int64_t(1) << 16) ? tasks : 1;
  cpu::parallel_for_ftz(0, tasks, grain, [&](int64_t begin, int64_t end) { run(d, plan, begin, end); });
}

at::Tensor creff_cpu(const at::Tensor& key_feature, const at::Tensor& mv, const at::Tensor& lr_feature,
                     const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size, double scale,
                     double mv_scale_x, double mv_scale_y) {
  check_creff_args(key_feature, mv, lr_feature, weight, bias, kernel_size, scale, mv_scale_x, mv_scale_y);
  const auto memory_format =
      creff_output_channels_last(key_feature) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = new_output(key_feature.sizes(), key_feature.options().memory_format(memory_format));
  if (out.numel() == 0) return out;
  const CreffParams p{key_feature.size(0), key_feature.size(1), key_feature.size(2), key_feature.size(3),
                      lr_feature.size(2),  lr_feature.size(3),  mv.size(2),          mv.size(3),
                      static_cast<int>(kernel_size), scale, mv_scale_x, mv_scale_y};
  const at::Tensor m = mv.contiguous();
  ARSEG_DISPATCH_FLOATS(key_feature.scalar_type(), "creff_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // The (small) weights once in the accumulation type: (3, C, 9) and (3, C).
    const auto acc_options = weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor w = weight.to(acc_options).contiguous(), b = bias.to(acc_options).contiguous();
    const CreffData<scalar_t, acc_t> d{p,
                                       key_feature.const_data_ptr<scalar_t>(),
                                       strides_of(key_feature),
                                       lr_feature.const_data_ptr<scalar_t>(),
                                       strides_of(lr_feature),
                                       m.const_data_ptr<scalar_t>(),
                                       w.const_data_ptr<acc_t>(),
                                       b.const_data_ptr<acc_t>(),
                                       out.mutable_data_ptr<scalar_t>(),
                                       strides_of(out)};
    ARSEG_KERNEL_SIZE_SWITCH(p.kernel_size, K, [&] { creff_kernel<K>(d); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) { m.impl("creff", &creff_cpu); }

}  // namespace cpu_creff
}  // namespace arseg
