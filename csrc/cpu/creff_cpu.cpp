// CPU kernel of the fused CReFF op (creff_math.h states the math): one pass from the keyframe feature, the
// motion and the LR feature to the fused feature. The warped feature hr, the resized lr, and q, k, v never go
// to memory: each task owns a tile of output pixels (band_rows x tile_cols of one image) and computes them into
// thread-local buffers sized to stay in the core's L2 cache:
//   per tile:    the warp taps of the hr region (tile + K/2 + 1 halo; mv_warp's sample_taps), the resize taps,
//                hr of all channels (pixel-outer, channel-inner: one tap load per pixel);
//   per channel: k and v (tile + K/2 halo) by depthwise 3x3 of hr, lr (tile + 1 halo) by the align_corners
//                resize, q (tile) by depthwise 3x3 of lr;
//   per row:     the attention of every kLanes-pixel chunk (band_attention.h), plus lr, written out.
// Every buffer holds exact zeros outside the image, which is both the convolutions' zero padding and
// local_attn's padding="zeros" (logit 0, value 0). Halos are recomputed by neighbouring tiles: that costs
// ~1.6x the warp and k/v conv work of the tile, which is small next to the attention.
// Inputs are read through their strides (NCHW, channels_last, any view); the output is NCHW, or channels_last
// when key_feature is (creff_output_channels_last). Accumulation in float (float/half/bfloat16) or double.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../creff_math.h"
#include "../op_common.h"
#include "../static_switch.h"
#include "band_attention.h"

namespace arseg {
namespace {

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Halo columns kept on each side of a tile in every buffer: >= K/2 + 1 for every kernel size (K <= 15).
constexpr int64_t kPad = 8;
static_assert(kPad >= kMaxKernelSize / 2 + 1, "tile halo too small for the largest window");

template <typename scalar_t, typename acc_t>
struct CreffData {
  CreffParams p;
  const scalar_t* key;
  Strides4 key_s;
  const scalar_t* lr;
  Strides4 lr_s;
  const scalar_t* mv;  // contiguous (N, 2, Hb, Wb)
  const acc_t* weight;  // (3, C, 9): query, key, value
  const acc_t* bias;    // (3, C)
  scalar_t* out;
  Strides4 out_s;
};

// Tile shape and the extents of its buffers. Rows: hr covers y0-R-1 .. y0+B+R, k/v y0-R .. y0+B+R-1, lr
// y0-1 .. y0+B, q y0 .. y0+B-1. Columns (all buffers): u = x - x0 + kPad, width tile_cols + 2*kPad.
struct TileShape {
  int64_t rows, cols;  // B, TW (a multiple of the vector lanes)
  int64_t R, width, rows_hr, rows_kv, rows_lr;

  TileShape(int64_t band_rows, int64_t tile_cols, int kernel_size)
      : rows(band_rows), cols(tile_cols), R(kernel_size / 2), width(tile_cols + 2 * kPad),
        rows_hr(band_rows + 2 * R + 2), rows_kv(band_rows + 2 * R), rows_lr(band_rows + 2) {}
};

// Output rows per band and columns per tile: bands of 16 rows (halo overhead (16 + 2R) / 16), and as many
// columns as keep the hr, k, v, lr and q buffers of all channels within ~1 MiB (the L2 of one core is larger).
TileShape choose_tile(const CreffParams& p, int64_t lanes, int64_t acc_bytes) {
  const int64_t R = p.kernel_size / 2;
  const int64_t B = std::min<int64_t>(16, p.H);
  const int64_t per_col = std::max<int64_t>(p.C, 1) * ((B + 2 * R + 2) + 2 * (B + 2 * R) + (B + 2) + B) * acc_bytes;
  int64_t cols = (int64_t(1) << 20) / per_col - 2 * kPad;
  const int64_t w_round = (p.W + lanes - 1) / lanes * lanes;
  cols = std::min(std::max(cols / lanes * lanes, 2 * lanes), w_round);
  return TileShape(B, cols, p.kernel_size);
}

template <typename acc_t>
struct Scratch {
  using V = typename cpu::VecOf<acc_t>::type;
  std::vector<int64_t> tap_off;  // 4 per hr pixel: element offsets into key_feature's image n
  std::vector<acc_t> tap_w;
  std::vector<acc_t> hr;       // C planes of rows_hr x width
  std::vector<acc_t> k, v;     // C planes of rows_kv x width
  std::vector<acc_t> lr;       // C planes of rows_lr x width
  std::vector<acc_t> q;        // C planes of rows x width
  // K*K and C vectors. Kept as acc_t storage aligned by hand: std::vector<V> would drop V's 32-byte alignment
  // (GCC ignores attributes on template arguments) and the AVX2 code stores them with aligned moves.
  std::vector<acc_t> vec_storage;
  V* logits;
  V* acc;
  std::vector<LinearTap<acc_t>> ytap, xtap;

  Scratch(const TileShape& t, int64_t C, int K)
      : tap_off(4 * t.rows_hr * t.width), tap_w(4 * t.rows_hr * t.width), hr(C * t.rows_hr * t.width),
        k(C * t.rows_kv * t.width), v(C * t.rows_kv * t.width), lr(C * t.rows_lr * t.width),
        q(C * t.rows * t.width),
        vec_storage((K * K + C) * cpu::VecOf<acc_t>::lanes + 64 / sizeof(acc_t)), ytap(t.rows_lr), xtap(t.width) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(vec_storage.data());
    logits = reinterpret_cast<V*>((p + 63) & ~uintptr_t(63));
    acc = logits + K * K;
  }
};

// Warp taps of every hr pixel of the tile (zero weights outside the image), as mv_warp computes them.
template <typename scalar_t, typename acc_t>
void warp_taps(const CreffData<scalar_t, acc_t>& d, const TileShape& t, int64_t n, int64_t y0, int64_t x0,
               Scratch<acc_t>& s) {
  const CreffParams& p = d.p;
  const scalar_t* mvx = d.mv + n * 2 * p.Hb * p.Wb;
  const scalar_t* mvy = mvx + p.Hb * p.Wb;
  const acc_t sx = static_cast<acc_t>(p.mv_scale_x), sy = static_cast<acc_t>(p.mv_scale_y);
  Taps<acc_t> taps;
  for (int64_t r = 0; r < t.rows_hr; ++r) {
    const int64_t y = y0 - t.R - 1 + r;
    for (int64_t u = kPad - t.R - 1; u < kPad + t.cols + t.R + 1; ++u) {
      const int64_t x = x0 - kPad + u, i = 4 * (r * t.width + u);
      if (y < 0 || y >= p.H || x < 0 || x >= p.W) {
        clear_taps(taps);
      } else {
        const int64_t m = block_of(y, p.H, p.Hb) * p.Wb + block_of(x, p.W, p.Wb);
        const acc_t xs = static_cast<acc_t>(x) + sx * static_cast<acc_t>(mvx[m]);
        const acc_t ys = static_cast<acc_t>(y) + sy * static_cast<acc_t>(mvy[m]);
        sample_taps(xs, ys, p.H, p.W, WarpMode::Bilinear, WarpPadding::Zeros, taps);
      }
      for (int j = 0; j < 4; ++j) {
        s.tap_off[i + j] = (taps.idx[j] / p.W) * d.key_s.h + (taps.idx[j] % p.W) * d.key_s.w;
        s.tap_w[i + j] = taps.w[j];
      }
    }
  }
}

// hr of every channel: the warped key feature. Pixel-outer, channel-inner: a pixel's four taps are loaded once,
// and whether all of them exist (the common case: no tap_product test per element) is decided once.
template <typename scalar_t, typename acc_t>
void gather_hr(const CreffData<scalar_t, acc_t>& d, const TileShape& t, int64_t n, Scratch<acc_t>& s) {
  const scalar_t* key = d.key + n * d.key_s.n;
  const int64_t sc = d.key_s.c, plane = t.rows_hr * t.width;
  for (int64_t r = 0; r < t.rows_hr; ++r) {
    for (int64_t u = kPad - t.R - 1; u < kPad + t.cols + t.R + 1; ++u) {
      const int64_t i = r * t.width + u;
      const int64_t* off = s.tap_off.data() + 4 * i;
      const acc_t* w = s.tap_w.data() + 4 * i;
      acc_t* __restrict__ dst = s.hr.data() + i;
      const scalar_t* __restrict__ k0 = key + off[0];
      const scalar_t* __restrict__ k1 = key + off[1];
      const scalar_t* __restrict__ k2 = key + off[2];
      const scalar_t* __restrict__ k3 = key + off[3];
      const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
      if (w0 != acc_t(0) && w1 != acc_t(0) && w2 != acc_t(0) && w3 != acc_t(0)) {
        for (int64_t c = 0; c < d.p.C; ++c)
          dst[c * plane] = w0 * static_cast<acc_t>(k0[c * sc]) + w1 * static_cast<acc_t>(k1[c * sc]) +
                           w2 * static_cast<acc_t>(k2[c * sc]) + w3 * static_cast<acc_t>(k3[c * sc]);
      } else {  // some taps outside the image: they contribute 0 whatever the element they point at holds
        for (int64_t c = 0; c < d.p.C; ++c)
          dst[c * plane] = tap_product(w0, static_cast<acc_t>(k0[c * sc])) +
                           tap_product(w1, static_cast<acc_t>(k1[c * sc])) +
                           tap_product(w2, static_cast<acc_t>(k2[c * sc])) +
                           tap_product(w3, static_cast<acc_t>(k3[c * sc]));
      }
    }
  }
}

// out[u] = depthwise3x3 of rows (in, in + stride, in + 2 * stride) at u, for u in [lo, hi): the weights in
// locals and restrict pointers, so the loop vectorizes.
template <typename acc_t>
inline void depthwise3x3_row(const acc_t* __restrict__ in, int64_t stride, const acc_t* w9, acc_t bias,
                             acc_t* __restrict__ out, int64_t lo, int64_t hi) {
  acc_t w[9];
  for (int i = 0; i < 9; ++i) w[i] = w9[i];
  const acc_t* __restrict__ r0 = in;
  const acc_t* __restrict__ r1 = in + stride;
  const acc_t* __restrict__ r2 = in + 2 * stride;
  for (int64_t u = lo; u < hi; ++u) out[u] = depthwise3x3(r0, r1, r2, u, w, bias);
}

// k, v, lr and q of channel c of the tile (hr is ready).
template <typename scalar_t, typename acc_t>
void channel_features(const CreffData<scalar_t, acc_t>& d, const TileShape& t, int64_t n, int64_t c, int64_t y0,
                      int64_t x0, Scratch<acc_t>& s) {
  const CreffParams& p = d.p;
  const int64_t Wd = t.width;
  // k, v: depthwise 3x3 of hr inside the image, exact zeros outside (attention padding).
  const int64_t u_in_lo = std::max(kPad - t.R, kPad - x0), u_in_hi = std::min(kPad + t.cols + t.R, kPad + p.W - x0);
  for (int64_t r = 0; r < t.rows_kv; ++r) {
    const int64_t y = y0 - t.R + r;
    acc_t* kr = s.k.data() + (c * t.rows_kv + r) * Wd;
    acc_t* vr = s.v.data() + (c * t.rows_kv + r) * Wd;
    std::fill(kr + kPad - t.R, kr + kPad + t.cols + t.R, acc_t(0));
    std::fill(vr + kPad - t.R, vr + kPad + t.cols + t.R, acc_t(0));
    if (y < 0 || y >= p.H) continue;
    const acc_t* h0 = s.hr.data() + (c * t.rows_hr + r) * Wd;
    depthwise3x3_row(h0, Wd, d.weight + (1 * p.C + c) * 9, d.bias[1 * p.C + c], kr, u_in_lo, u_in_hi);
    depthwise3x3_row(h0, Wd, d.weight + (2 * p.C + c) * 9, d.bias[2 * p.C + c], vr, u_in_lo, u_in_hi);
  }
  // lr: the align_corners resize of lr_feature (zeros outside the image: q's conv padding).
  const scalar_t* src = d.lr + n * d.lr_s.n + c * d.lr_s.c;
  const int64_t ul_lo = std::max(kPad - 1, kPad - x0), ul_hi = std::min(kPad + t.cols + 1, kPad + p.W - x0);
  for (int64_t r = 0; r < t.rows_lr; ++r) {
    const int64_t y = y0 - 1 + r;
    acc_t* __restrict__ lr = s.lr.data() + (c * t.rows_lr + r) * Wd;
    std::fill(lr + kPad - 1, lr + kPad + t.cols + 1, acc_t(0));
    if (y < 0 || y >= p.H) continue;
    const LinearTap<acc_t> ty = s.ytap[r];
    const scalar_t* __restrict__ s0 = src + ty.i0 * d.lr_s.h;
    const scalar_t* __restrict__ s1 = src + ty.i1 * d.lr_s.h;
    for (int64_t u = ul_lo; u < ul_hi; ++u) {
      const LinearTap<acc_t>& tx = s.xtap[u];
      const int64_t a = tx.i0 * d.lr_s.w, b = tx.i1 * d.lr_s.w;
      lr[u] = bilinear_mix(static_cast<acc_t>(s0[a]), static_cast<acc_t>(s0[b]), static_cast<acc_t>(s1[a]),
                           static_cast<acc_t>(s1[b]), ty, tx);
    }
  }
  // q: depthwise 3x3 of lr on the tile's rows (columns beyond the image are computed but never used).
  const int64_t rows = std::min(t.rows, p.H - y0);
  for (int64_t r = 0; r < rows; ++r)
    depthwise3x3_row(s.lr.data() + (c * t.rows_lr + r) * Wd, Wd, d.weight + c * 9, d.bias[c],
                     s.q.data() + (c * t.rows + r) * Wd, kPad, kPad + t.cols);
}

template <int KS, typename scalar_t, typename acc_t>
void creff_tile(const CreffData<scalar_t, acc_t>& d, const TileShape& t, int64_t n, int64_t y0, int64_t x0,
                Scratch<acc_t>& s) {
  using V = typename cpu::VecOf<acc_t>::type;
  constexpr int64_t kLanes = cpu::VecOf<acc_t>::lanes;
  const CreffParams& p = d.p;
  const int64_t Wd = t.width;
  warp_taps(d, t, n, y0, x0, s);
  for (int64_t r = 0; r < t.rows_lr; ++r) s.ytap[r] = align_corners_tap<acc_t>(
      std::min(std::max<int64_t>(y0 - 1 + r, 0), p.H - 1), p.h, p.H);
  for (int64_t u = 0; u < Wd; ++u) s.xtap[u] = align_corners_tap<acc_t>(
      std::min(std::max<int64_t>(x0 - kPad + u, 0), p.W - 1), p.w, p.W);
  gather_hr(d, t, n, s);
  for (int64_t c = 0; c < p.C; ++c) channel_features(d, t, n, c, y0, x0, s);

  const cpu::BandPlanes<const acc_t> q{s.q.data(), t.rows * Wd, Wd};
  const cpu::BandPlanes<const acc_t> k{s.k.data(), t.rows_kv * Wd, Wd};
  const cpu::BandPlanes<const acc_t> v{s.v.data(), t.rows_kv * Wd, Wd};
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t y1 = std::min(y0 + t.rows, p.H), x1 = std::min(x0 + t.cols, p.W);
  scalar_t* out = d.out + n * d.out_s.n;
  const auto attend_chunk = cpu::attend_chunk_fn<KS, acc_t>();
  for (int64_t y = y0; y < y1; ++y) {
    for (int64_t xc = x0; xc < x1; xc += kLanes) {
      const int64_t u0 = kPad + (xc - x0);
      attend_chunk(p.kernel_size, p.C, scale, q, y - y0, k, v, y - y0, u0, s.logits,
                                   s.acc);
      const int64_t lanes = std::min(kLanes, x1 - xc);
      for (int64_t c = 0; c < p.C; ++c) {
        const acc_t* lr = s.lr.data() + (c * t.rows_lr + (y - y0 + 1)) * Wd + u0;
        const V& a = s.acc[c];
        scalar_t* o = out + c * d.out_s.c + y * d.out_s.h + xc * d.out_s.w;
        for (int64_t l = 0; l < lanes; ++l) o[l * d.out_s.w] = static_cast<scalar_t>(lr[l] + a[l]);
      }
    }
  }
}

template <int KS, typename scalar_t>
void creff_kernel(const CreffData<scalar_t, at::opmath_type<scalar_t>>& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const CreffParams& p = d.p;
  const TileShape t = choose_tile(p, cpu::VecOf<acc_t>::lanes, sizeof(acc_t));
  const int64_t bands = (p.H + t.rows - 1) / t.rows, tiles = (p.W + t.cols - 1) / t.cols;
  // Small calls run on the calling thread: waking the pool costs more than they take.
  const int64_t tasks = p.N * bands * tiles;
  const int64_t grain = p.N * p.C * p.H * p.W < (int64_t(1) << 16) ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> s(t, p.C, p.kernel_size);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (bands * tiles), b = (task / tiles) % bands, x = task % tiles;
      creff_tile<KS>(d, t, n, b * t.rows, x * t.cols, s);
    }
  });
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

}  // namespace arseg
