// CPU kernels of mv_warp: forward, gradient for the feature, gradient for the motion.
//
// Layout: NCHW contiguous (inputs are made contiguous by the glue). The per-pixel work (block lookup, sample
// coordinate, four taps) is done once per output row into small buffers, then every channel is streamed
// through with x innermost, so the channel loops are plain contiguous gathers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../op_common.h"
#include "../static_switch.h"

namespace arseg {
namespace {

// Taps of output pixel (n, y, x): its block's vector, the sample coordinate x + sx*dx, the four taps.
template <typename scalar_t, typename acc_t>
inline void pixel_taps(const MvWarpParams& g, const scalar_t* mv, int64_t n, int64_t y, int64_t x, Taps<acc_t>& t) {
  const int64_t by = block_of(y, g.H, g.Hb), bx = block_of(x, g.W, g.Wb);
  const scalar_t* m = mv + ((n * 2) * g.Hb + by) * g.Wb + bx;  // dx; dy is one block plane further
  const acc_t xs = static_cast<acc_t>(x) + static_cast<acc_t>(g.scale_x) * static_cast<acc_t>(m[0]);
  const acc_t ys = static_cast<acc_t>(y) + static_cast<acc_t>(g.scale_y) * static_cast<acc_t>(m[g.Hb * g.Wb]);
  sample_taps(xs, ys, g.H, g.W, g.mode, g.padding, t);
}

// Taps of every pixel of output row (n, y), as structure-of-arrays buffers of length 4*W (tap-major).
template <typename scalar_t, typename acc_t>
void row_taps(const MvWarpParams& g, const scalar_t* mv, int64_t n, int64_t y, int64_t* idx, acc_t* w,
              acc_t* dwdx, acc_t* dwdy) {
  Taps<acc_t> t;
  for (int64_t x = 0; x < g.W; ++x) {
    pixel_taps<scalar_t, acc_t>(g, mv, n, y, x, t);
    for (int k = 0; k < 4; ++k) {
      idx[k * g.W + x] = t.idx[k];
      w[k * g.W + x] = t.w[k];
      if (dwdx != nullptr) {
        dwdx[k * g.W + x] = t.dwdx[k];
        dwdy[k * g.W + x] = t.dwdy[k];
      }
    }
  }
}

// One output row of one channel: NTAPS (1 for nearest, 4 for bilinear) is a compile-time constant so the tap
// loop unrolls; the pixel's taps are interleaved (idx[x * 4 + k]) so each pixel reads one cache line of them.
template <int NTAPS, typename scalar_t, typename acc_t>
inline void warp_row(const scalar_t* __restrict__ plane, const int64_t* __restrict__ idx,
                     const acc_t* __restrict__ w, scalar_t* __restrict__ o, int64_t W) {
  for (int64_t x = 0; x < W; ++x) {
    acc_t s = acc_t(0);
    for (int k = 0; k < NTAPS; ++k) s += tap_product(w[x * 4 + k], static_cast<acc_t>(plane[idx[x * 4 + k]]));
    o[x] = static_cast<scalar_t>(s);
  }
}

template <typename scalar_t>
void forward_kernel(const MvWarpParams& g, const scalar_t* feat, const scalar_t* mv, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(4 * g.W);
    std::vector<acc_t> w(4 * g.W);
    Taps<acc_t> t;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, y = row % g.H;
      for (int64_t x = 0; x < g.W; ++x) {
        pixel_taps<scalar_t, acc_t>(g, mv, n, y, x, t);
        for (int k = 0; k < 4; ++k) {
          idx[x * 4 + k] = t.idx[k];
          w[x * 4 + k] = t.w[k];
        }
      }
      for (int64_t c = 0; c < g.C; ++c) {
        const scalar_t* plane = feat + (n * g.C + c) * HW;
        scalar_t* o = out + (n * g.C + c) * HW + y * g.W;
        ARSEG_BOOL_SWITCH(g.mode == WarpMode::Nearest, kNearest,
                          [&] { warp_row<kNearest ? 1 : 4>(plane, idx.data(), w.data(), o, g.W); });
      }
    }
  });
}

// d feature: scatter of the weighted taps. Taps of one image are computed once (O(H*W) buffer), then channel
// planes are processed in parallel, each owning its own output plane: no atomics, deterministic.
template <typename scalar_t>
void backward_feature_kernel(const MvWarpParams& g, const scalar_t* grad_out, const scalar_t* mv,
                             scalar_t* grad_feat) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  const int ntaps = taps_used(g.mode);
  std::vector<int64_t> idx(4 * HW);
  std::vector<acc_t> w(4 * HW);
  for (int64_t n = 0; n < g.N; ++n) {
    at::parallel_for(0, g.H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y)
        row_taps<scalar_t, acc_t>(g, mv, n, y, idx.data() + 4 * y * g.W, w.data() + 4 * y * g.W, nullptr,
                                  nullptr);
    });
    at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW);
      for (int64_t c = begin; c < end; ++c) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const scalar_t* go = grad_out + (n * g.C + c) * HW;
        for (int64_t y = 0; y < g.H; ++y) {
          const int64_t* ri = idx.data() + 4 * y * g.W;
          const acc_t* rw = w.data() + 4 * y * g.W;
          for (int64_t x = 0; x < g.W; ++x) {
            const acc_t gv = static_cast<acc_t>(go[y * g.W + x]);
            for (int k = 0; k < ntaps; ++k) acc[ri[k * g.W + x]] += tap_product(rw[k * g.W + x], gv);
          }
        }
        scalar_t* gf = grad_feat + (n * g.C + c) * HW;
        for (int64_t p = 0; p < HW; ++p) gf[p] = static_cast<scalar_t>(acc[p]);
      }
    });
  }
}

// d mv: per pixel, d out / d sample coordinate summed over channels, then summed over the pixels of each block
// and scaled by (sx, sy). One task per block row (n, by): the rows of a block row are reduced in a fixed
// order, so the result is deterministic.
template <typename scalar_t>
void backward_mv_kernel(const MvWarpParams& g, const scalar_t* grad_out, const scalar_t* feat, const scalar_t* mv,
                        scalar_t* grad_mv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  at::parallel_for(0, g.N * g.Hb, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(4 * g.W);
    std::vector<acc_t> w(4 * g.W), dwdx(4 * g.W), dwdy(4 * g.W), gx(g.W), gy(g.W), bx_acc(g.Wb), by_acc(g.Wb);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.Hb, by = task % g.Hb;
      std::fill(bx_acc.begin(), bx_acc.end(), acc_t(0));
      std::fill(by_acc.begin(), by_acc.end(), acc_t(0));
      const int64_t y_end = block_begin(by + 1, g.H, g.Hb);
      for (int64_t y = block_begin(by, g.H, g.Hb); y < y_end && g.mode == WarpMode::Bilinear; ++y) {
        row_taps<scalar_t, acc_t>(g, mv, n, y, idx.data(), w.data(), dwdx.data(), dwdy.data());
        std::fill(gx.begin(), gx.end(), acc_t(0));
        std::fill(gy.begin(), gy.end(), acc_t(0));
        for (int64_t c = 0; c < g.C; ++c) {
          const scalar_t* plane = feat + (n * g.C + c) * HW;
          const scalar_t* go = grad_out + (n * g.C + c) * HW + y * g.W;
          for (int64_t x = 0; x < g.W; ++x) {
            acc_t sx = acc_t(0), sy = acc_t(0);
            for (int k = 0; k < 4; ++k) {
              const acc_t f = static_cast<acc_t>(plane[idx[k * g.W + x]]);
              sx += tap_product(dwdx[k * g.W + x], f);
              sy += tap_product(dwdy[k * g.W + x], f);
            }
            const acc_t gv = static_cast<acc_t>(go[x]);
            gx[x] += gv * sx;
            gy[x] += gv * sy;
          }
        }
        for (int64_t x = 0; x < g.W; ++x) {
          const int64_t bx = block_of(x, g.W, g.Wb);
          bx_acc[bx] += gx[x];
          by_acc[bx] += gy[x];
        }
      }
      scalar_t* gmx = grad_mv + ((n * 2 + 0) * g.Hb + by) * g.Wb;
      scalar_t* gmy = grad_mv + ((n * 2 + 1) * g.Hb + by) * g.Wb;
      for (int64_t bx = 0; bx < g.Wb; ++bx) {
        gmx[bx] = static_cast<scalar_t>(bx_acc[bx] * static_cast<acc_t>(g.scale_x));
        gmy[bx] = static_cast<scalar_t>(by_acc[bx] * static_cast<acc_t>(g.scale_y));
      }
    }
  });
}

at::Tensor mv_warp_cpu(const at::Tensor& feature, const at::Tensor& mv, double scale_x, double scale_y,
                       c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp", feature, mv, scale_x, scale_y);
  const auto g = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const at::Tensor f = feature.contiguous(), m = mv.contiguous();
  at::Tensor out = new_output(feature.sizes(), feature.options());
  if (out.numel() == 0) return out;
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_cpu", [&] {
    forward_kernel<scalar_t>(g, f.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor mv_warp_backward_feature_cpu(const at::Tensor& grad_output, const at::Tensor& mv, double scale_x,
                                        double scale_y, c10::string_view mode, c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_feature", grad_output, mv, scale_x, scale_y);
  const auto g = make_mv_warp_params(grad_output, mv, scale_x, scale_y, mode, padding_mode);
  const at::Tensor go = grad_output.contiguous(), m = mv.contiguous();
  at::Tensor grad_feature = new_output(grad_output.sizes(), grad_output.options());
  if (grad_feature.numel() == 0) return grad_feature;
  ARSEG_DISPATCH_FLOATS(go.scalar_type(), "mv_warp_backward_feature_cpu", [&] {
    backward_feature_kernel<scalar_t>(g, go.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
                                      grad_feature.mutable_data_ptr<scalar_t>());
  });
  return grad_feature;
}

at::Tensor mv_warp_backward_mv_cpu(const at::Tensor& grad_output, const at::Tensor& feature, const at::Tensor& mv,
                                   double scale_x, double scale_y, c10::string_view mode,
                                   c10::string_view padding_mode) {
  check_mv_warp_args("mv_warp_backward_mv", feature, mv, scale_x, scale_y);
  check_grad_like("mv_warp_backward_mv", grad_output, feature, "feature");
  const auto g = make_mv_warp_params(feature, mv, scale_x, scale_y, mode, padding_mode);
  const at::Tensor go = grad_output.contiguous(), f = feature.contiguous(), m = mv.contiguous();
  at::Tensor grad_mv = new_output(mv.sizes(), mv.options());
  if (grad_mv.numel() == 0) return grad_mv;
  if (feature.numel() == 0) return grad_mv.zero_();
  ARSEG_DISPATCH_FLOATS(f.scalar_type(), "mv_warp_backward_mv_cpu", [&] {
    backward_mv_kernel<scalar_t>(g, go.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(),
                                 m.const_data_ptr<scalar_t>(), grad_mv.mutable_data_ptr<scalar_t>());
  });
  return grad_mv;
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) {
  m.impl("mv_warp", &mv_warp_cpu);
  m.impl("mv_warp_backward_feature", &mv_warp_backward_feature_cpu);
  m.impl("mv_warp_backward_mv", &mv_warp_backward_mv_cpu);
}

}  // namespace arseg
