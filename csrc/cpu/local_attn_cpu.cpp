// CPU kernels of local_attn: fused forward and backward, no unfolded copies of key or value.
//
// Work is split by output row (n, y). For a row, the k*k logits of every pixel live in a (k*k, W) buffer
// built with x innermost: for each window offset (dy, dx) and channel c, logits[j][x] += q[c][y][x] *
// k[c][y+dy][x+dx] over the x range where x+dx is inside the image. Every inner loop is contiguous in
// NCHW, so the compiler vectorizes it; channels stream through cache one row at a time.
//
// Backward memory choice: pass 1 (per query row) stores the attention weights P and dS = P * (dP - delta)
// * scale, two (N, H, k*k, W) accumulators = O(N*H*W*k*k); pass 2 (per key row) gathers
// dK[j] = sum_i dS_ij q_i and dV[j] = sum_i P_ij dout_i over the query pixels i that see key j.
// This is deterministic and needs no atomics or per-thread copies of dK/dV.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../op_common.h"

namespace arseg {
namespace {

struct AttnGeometry {
  int64_t N, C, Cv, H, W;
  int K, KK;
  double scale;
  AttnPadding padding;
};

AttnGeometry make_geometry(const at::Tensor& q, const at::Tensor& v, int64_t kernel_size, double scale,
                           const std::string& padding) {
  const int K = static_cast<int>(kernel_size);
  return {q.size(0), q.size(1), v.size(1), q.size(2), q.size(3), K, K * K, scale, parse_attn_padding(padding)};
}

// Plane pointer of channel c of image n in an (N, C, H, W) tensor, at row y.
template <typename T>
inline T* row_ptr(T* base, int64_t n, int64_t channels, int64_t c, int64_t H, int64_t W, int64_t y) {
  return base + ((n * channels + c) * H + y) * W;
}

// Attention weights of every pixel of row (n, y): P[j * W + x], softmax over j.
template <typename scalar_t, typename acc_t>
void row_softmax(const AttnGeometry& g, const scalar_t* q, const scalar_t* k, int64_t n, int64_t y, acc_t* P,
                 acc_t* row_max, acc_t* row_sum) {
  const int64_t W = g.W;
  std::fill(P, P + g.KK * W, acc_t(0));
  for (int j = 0; j < g.KK; ++j) {
    const int64_t yy = y + window_dy(j, g.K), dx = window_dx(j, g.K);
    if (yy < 0 || yy >= g.H) continue;
    const int64_t lo = shifted_lo(dx), hi = shifted_hi(dx, W);
    acc_t* L = P + j * W;
    for (int64_t c = 0; c < g.C; ++c) {
      const scalar_t* qr = row_ptr(q, n, g.C, c, g.H, W, y);
      const scalar_t* kr = row_ptr(k, n, g.C, c, g.H, W, yy);
      for (int64_t x = lo; x < hi; ++x) L[x] += static_cast<acc_t>(qr[x]) * static_cast<acc_t>(kr[x + dx]);
    }
  }
  // Scale the inside logits; outside positions get the padding logit (multiplying -inf by scale would be wrong).
  const acc_t scale = static_cast<acc_t>(g.scale), pad = padding_logit<acc_t>(g.padding);
  std::fill(row_max, row_max + W, -std::numeric_limits<acc_t>::infinity());
  for (int j = 0; j < g.KK; ++j) {
    const int64_t yy = y + window_dy(j, g.K), dx = window_dx(j, g.K);
    const bool row_in = yy >= 0 && yy < g.H;
    const int64_t lo = row_in ? shifted_lo(dx) : W, hi = row_in ? shifted_hi(dx, W) : W;
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) {
      L[x] = (x >= lo && x < hi) ? L[x] * scale : pad;
      row_max[x] = std::max(row_max[x], L[x]);
    }
  }
  std::fill(row_sum, row_sum + W, acc_t(0));
  for (int j = 0; j < g.KK; ++j) {
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) {
      L[x] = exp_(L[x] - row_max[x]);
      row_sum[x] += L[x];
    }
  }
  for (int64_t x = 0; x < W; ++x) row_sum[x] = acc_t(1) / row_sum[x];
  for (int j = 0; j < g.KK; ++j) {
    acc_t* L = P + j * W;
    for (int64_t x = 0; x < W; ++x) L[x] *= row_sum[x];
  }
}

// acc[x] += sum_j weights[j][x] * src[c][y+dy_j][x+dx_j] for one channel plane of an (N, C', H, W) tensor.
template <typename scalar_t, typename acc_t>
void accumulate_window(const AttnGeometry& g, const acc_t* weights, const scalar_t* src, int64_t channels,
                       int64_t n, int64_t c, int64_t y, acc_t* acc) {
  for (int j = 0; j < g.KK; ++j) {
    const int64_t yy = y + window_dy(j, g.K), dx = window_dx(j, g.K);
    if (yy < 0 || yy >= g.H) continue;
    const int64_t lo = shifted_lo(dx), hi = shifted_hi(dx, g.W);
    const scalar_t* sr = row_ptr(src, n, channels, c, g.H, g.W, yy);
    const acc_t* wj = weights + j * g.W;
    for (int64_t x = lo; x < hi; ++x) acc[x] += wj[x] * static_cast<acc_t>(sr[x + dx]);
  }
}

template <typename scalar_t>
void forward_kernel(const AttnGeometry& g, const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> P(g.KK * g.W), mx(g.W), sm(g.W), acc(g.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, y = row % g.H;
      row_softmax<scalar_t, acc_t>(g, q, k, n, y, P.data(), mx.data(), sm.data());
      for (int64_t c = 0; c < g.Cv; ++c) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        accumulate_window<scalar_t, acc_t>(g, P.data(), v, g.Cv, n, c, y, acc.data());
        scalar_t* o = row_ptr(out, n, g.Cv, c, g.H, g.W, y);
        for (int64_t x = 0; x < g.W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
      }
    }
  });
}

// P_all, dS_all: scratch of N*H*k*k*W accumulators each (allocated by the caller as tensors, so memory
// profilers see them).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void backward_kernel(const AttnGeometry& g, const scalar_t* dout, const scalar_t* q, const scalar_t* k,
                     const scalar_t* v, scalar_t* dq, scalar_t* dk, scalar_t* dv, acc_t* P_all, acc_t* dS_all) {
  const int64_t row_len = g.KK * g.W;  // one (k*k, W) slab of P or dS per row
  const acc_t scale = static_cast<acc_t>(g.scale);

  // Pass 1, per query row: P, dP_j = <dout, v_j>, delta = sum_j P_j dP_j, dS_j = P_j (dP_j - delta) scale, dq.
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dP(row_len), mx(g.W), sm(g.W), acc(g.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, y = row % g.H;
      acc_t* P = P_all + row * row_len;
      acc_t* dS = dS_all + row * row_len;
      row_softmax<scalar_t, acc_t>(g, q, k, n, y, P, mx.data(), sm.data());
      std::fill(dP.begin(), dP.end(), acc_t(0));
      for (int j = 0; j < g.KK; ++j) {
        const int64_t yy = y + window_dy(j, g.K), dx = window_dx(j, g.K);
        if (yy < 0 || yy >= g.H) continue;
        const int64_t lo = shifted_lo(dx), hi = shifted_hi(dx, g.W);
        acc_t* dPj = dP.data() + j * g.W;
        for (int64_t c = 0; c < g.Cv; ++c) {
          const scalar_t* gr = row_ptr(dout, n, g.Cv, c, g.H, g.W, y);
          const scalar_t* vr = row_ptr(v, n, g.Cv, c, g.H, g.W, yy);
          for (int64_t x = lo; x < hi; ++x) dPj[x] += static_cast<acc_t>(gr[x]) * static_cast<acc_t>(vr[x + dx]);
        }
      }
      acc_t* delta = sm.data();  // reuse: softmax sums are no longer needed
      std::fill(delta, delta + g.W, acc_t(0));
      for (int j = 0; j < g.KK; ++j)
        for (int64_t x = 0; x < g.W; ++x) delta[x] += P[j * g.W + x] * dP[j * g.W + x];
      // Outside positions have a constant logit: their dS is 0 (dP is 0 there too, value is 0).
      for (int j = 0; j < g.KK; ++j) {
        const int64_t yy = y + window_dy(j, g.K), dx = window_dx(j, g.K);
        const bool row_in = yy >= 0 && yy < g.H;
        const int64_t lo = row_in ? shifted_lo(dx) : g.W, hi = row_in ? shifted_hi(dx, g.W) : g.W;
        for (int64_t x = 0; x < g.W; ++x) {
          const int64_t i = j * g.W + x;
          dS[i] = (x >= lo && x < hi) ? P[i] * (dP[i] - delta[x]) * scale : acc_t(0);
        }
      }
      for (int64_t c = 0; c < g.C; ++c) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        accumulate_window<scalar_t, acc_t>(g, dS, k, g.C, n, c, y, acc.data());
        scalar_t* o = row_ptr(dq, n, g.C, c, g.H, g.W, y);
        for (int64_t x = 0; x < g.W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
      }
    }
  });

  // Pass 2, per key row y': query pixel (y' - dy, x' - dx) sees key (y', x') at window position j = (dy, dx).
  auto gather = [&](const acc_t* weights_all, const scalar_t* src, int64_t channels, scalar_t* dst) {
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(g.W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.H, y = row % g.H;
        for (int64_t c = 0; c < channels; ++c) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int j = 0; j < g.KK; ++j) {
            const int64_t yq = y - window_dy(j, g.K), dx = window_dx(j, g.K);
            if (yq < 0 || yq >= g.H) continue;
            // key x' = query x + dx, for query x in [shifted_lo(dx), shifted_hi(dx)).
            const int64_t lo = shifted_lo(dx), hi = shifted_hi(dx, g.W);
            const acc_t* wq = weights_all + (n * g.H + yq) * row_len + j * g.W;
            const scalar_t* sr = row_ptr(src, n, channels, c, g.H, g.W, yq);
            for (int64_t x = lo; x < hi; ++x) acc[x + dx] += wq[x] * static_cast<acc_t>(sr[x]);
          }
          scalar_t* o = row_ptr(dst, n, channels, c, g.H, g.W, y);
          for (int64_t x = 0; x < g.W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
  };
  gather(dS_all, q, g.C, dk);
  gather(P_all, dout, g.Cv, dv);
}

at::Tensor local_attn_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          int64_t kernel_size, double scale, c10::string_view padding) {
  check_local_attn_args("local_attn", query, key, value, kernel_size, scale);
  const auto g = make_geometry(query, value, kernel_size, scale, std::string(padding));
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  at::Tensor out = new_output(value.sizes(), value.options());
  if (out.numel() == 0) return out;
  ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_cpu", [&] {
    forward_kernel<scalar_t>(g, q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                             v.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attn_backward_cpu(const at::Tensor& grad_output,
                                                                       const at::Tensor& query, const at::Tensor& key,
                                                                       const at::Tensor& value, int64_t kernel_size,
                                                                       double scale, c10::string_view padding) {
  check_local_attn_args("local_attn_backward", query, key, value, kernel_size, scale);
  check_grad_like("local_attn_backward", grad_output, value, "value");
  const auto g = make_geometry(query, value, kernel_size, scale, std::string(padding));
  const at::Tensor go = grad_output.contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous();
  at::Tensor dq = new_output(query.sizes(), query.options());
  at::Tensor dk = new_output(key.sizes(), key.options());
  at::Tensor dv = new_output(value.sizes(), value.options());
  if (g.N * g.H * g.W == 0) return {dq, dk, dv};
  ARSEG_DISPATCH_FLOATS(q.scalar_type(), "local_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = q.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor P_all = at::empty({g.N, g.H, g.KK, g.W}, acc_options);
    at::Tensor dS_all = at::empty({g.N, g.H, g.KK, g.W}, acc_options);
    backward_kernel<scalar_t>(g, go.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                              k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                              dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                              dv.mutable_data_ptr<scalar_t>(), P_all.mutable_data_ptr<acc_t>(),
                              dS_all.mutable_data_ptr<acc_t>());
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(arseg_ops, CPU, m) {
  m.impl("local_attn", &local_attn_cpu);
  m.impl("local_attn_backward", &local_attn_backward_cpu);
}

}  // namespace arseg
