// v2 mv_warp forward (opt-in, see mv_warp_v2.h): one kernel per layout.
//
// NCHW: a thread owns V consecutive pixels of one row (V = 4, 2 for double, when W % V == 0 and the output is
// aligned; else V = 1). It computes their taps once (32-bit in-plane indices, in registers), then streams the
// channels of its CTA's channel range: 4*V independent gathers per channel, one V-wide vector store.
// blockIdx.y splits the channels only as far as needed to fill the device (each split recomputes the taps).
//
// NHWC: a CTA owns 256 pixels. Phase 1: one thread per pixel computes the taps into shared memory. Phase 2:
// `lanes` threads share a pixel and walk its channel vectors (16 bytes each when C and the pointers allow), so
// a warp reads and writes contiguous runs of a pixel's channels; every tap read is one vector load.
#include "mv_warp_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace v2 {
namespace {

template <typename T, int V, int NT>
__global__ void __launch_bounds__(kThreads)
    forward_nchw_kernel(MvWarpParams p, const T* __restrict__ feat, const T* __restrict__ mv, T* __restrict__ out,
                        int chunk) {
  using acc_t = typename AccType<T>::type;
  const int W = static_cast<int>(p.W), HW = static_cast<int>(p.H * p.W), C = static_cast<int>(p.C);
  const int row_groups = W / V, groups = HW / V;  // V divides W (launcher), so a group never spans two rows
  const int c0 = static_cast<int>(blockIdx.y) * chunk, c1 = min(c0 + chunk, C);
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z) {
    grid_stride_loop(groups, [&](int64_t g) {
      const int y = static_cast<int>(g) / row_groups, x0 = (static_cast<int>(g) - y * row_groups) * V;
      int idx[V][NT];
      acc_t w[V][NT];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        Taps<acc_t> t;
        pixel_taps(p, mv, n, y, x0 + i, t);
#pragma unroll
        for (int k = 0; k < NT; ++k) {
          idx[i][k] = static_cast<int>(t.idx[k]);
          w[i][k] = t.w[k];
        }
      }
      const T* src = feat + (n * C + c0) * static_cast<int64_t>(HW);
      T* dst = out + (n * C + c0) * static_cast<int64_t>(HW) + (y * W + x0);
#pragma unroll 2
      for (int c = c0; c < c1; ++c, src += HW, dst += HW) {
        Pack<T, V> o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          acc_t s = acc_t(0);
#pragma unroll
          for (int k = 0; k < NT; ++k) s += tap_product(w[i][k], to_acc(src[idx[i][k]]));
          o.v[i] = from_acc<T>(s);
        }
        store_pack<V>(dst, o);
      }
    });
  }
}

template <typename T, int VC, int NT>
__global__ void __launch_bounds__(kThreads)
    forward_nhwc_kernel(MvWarpParams p, const T* __restrict__ feat, const T* __restrict__ mv, T* __restrict__ out,
                        int vec_chunk, int lanes_log2) {
  using acc_t = typename AccType<T>::type;
  ARSEG_SHARED(s_off, int[NT][kThreads]);  // tap offset into the image: pixel index * C
  ARSEG_SHARED(s_w, acc_t[NT][kThreads]);
  const int W = static_cast<int>(p.W), HW = static_cast<int>(p.H * p.W), C = static_cast<int>(p.C);
  const int nvec = C / VC;
  const int v0 = static_cast<int>(blockIdx.y) * vec_chunk, v1 = min(v0 + vec_chunk, nvec);
  const int lanes = 1 << lanes_log2, lane = threadIdx.x & (lanes - 1);
  const int slot0 = threadIdx.x >> lanes_log2, slots = kThreads >> lanes_log2;
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z) {
    const T* img = feat + n * HW * static_cast<int64_t>(C);
    T* oimg = out + n * HW * static_cast<int64_t>(C);
    for (int64_t tile = blockIdx.x; tile * kThreads < HW; tile += gridDim.x) {
      const int base = static_cast<int>(tile) * kThreads;
      {
        const int pix = base + static_cast<int>(threadIdx.x);
        Taps<acc_t> t;
        if (pix < HW) {
          const int y = pix / W;
          pixel_taps(p, mv, n, y, pix - y * W, t);
        } else {
          clear_taps(t);
        }
#pragma unroll
        for (int k = 0; k < NT; ++k) {
          s_off[k][threadIdx.x] = static_cast<int>(t.idx[k]) * C;
          s_w[k][threadIdx.x] = t.w[k];
        }
      }
      __syncthreads();
      const int count = min(kThreads, HW - base);
      for (int slot = slot0; slot < count; slot += slots) {
        int off[NT];
        acc_t w[NT];
#pragma unroll
        for (int k = 0; k < NT; ++k) {
          off[k] = s_off[k][slot];
          w[k] = s_w[k][slot];
        }
        T* o = oimg + (base + slot) * C;
        for (int v = v0 + lane; v < v1; v += lanes) {
          acc_t s[VC];
#pragma unroll
          for (int j = 0; j < VC; ++j) s[j] = acc_t(0);
#pragma unroll
          for (int k = 0; k < NT; ++k) {
            // An absent tap (weight 0) adds 0 whatever its element holds (tap_product), so it is not read.
            if (w[k] != acc_t(0)) {
              const Pack<T, VC> f = load_pack<VC>(img + off[k] + v * VC);
#pragma unroll
              for (int j = 0; j < VC; ++j) s[j] += w[k] * to_acc(f.v[j]);
            }
          }
          Pack<T, VC> r;
#pragma unroll
          for (int j = 0; j < VC; ++j) r.v[j] = from_acc<T>(s[j]);
          store_pack<VC>(o + v * VC, r);
        }
      }
      __syncthreads();  // the next tile overwrites the taps
    }
  }
}

template <typename T, int NT>
void launch_forward(const MvWarpParams& p, Layout layout, const T* feat, const T* mv, T* out, cudaStream_t stream) {
  const unsigned gz = grid_dim(p.N, kMaxGridYZ);
  if (layout == Layout::NCHW) {
    constexpr int V = pixels_per_thread<T>();
    const bool vec = p.W % V == 0 && aligned(out, sizeof(T) * V);
    const int64_t tiles = ceil_div(p.H * p.W / (vec ? V : 1), kThreads);
    const int64_t parts = parts_for_occupancy(tiles * p.N, std::min<int64_t>(p.C, kMaxGridYZ));
    const int chunk = static_cast<int>(ceil_div(p.C, parts));
    const dim3 grid(grid_dim(tiles, kMaxGridX), grid_dim(ceil_div(p.C, chunk), kMaxGridYZ), gz);
    if (vec)
      ARSEG_LAUNCH(grid, kThreads, 0, stream, forward_nchw_kernel<T, V, NT>)(p, feat, mv, out, chunk);
    else
      ARSEG_LAUNCH(grid, kThreads, 0, stream, forward_nchw_kernel<T, 1, NT>)(p, feat, mv, out, chunk);
    return;
  }
  constexpr int VC = channels_per_vector<T>();
  const bool vec = p.C % VC == 0 && aligned(feat, 16) && aligned(out, 16);
  const int64_t nvec = vec ? p.C / VC : p.C;
  const int64_t tiles = ceil_div(p.H * p.W, kThreads);
  const int64_t parts = parts_for_occupancy(tiles * p.N, std::min<int64_t>(nvec, kMaxGridYZ));
  const int vec_chunk = static_cast<int>(ceil_div(nvec, parts));
  const dim3 grid(grid_dim(tiles, kMaxGridX), grid_dim(ceil_div(nvec, vec_chunk), kMaxGridYZ), gz);
  const int ll = lanes_log2(vec_chunk);
  if (vec)
    ARSEG_LAUNCH(grid, kThreads, 0, stream, forward_nhwc_kernel<T, VC, NT>)(p, feat, mv, out, vec_chunk, ll);
  else
    ARSEG_LAUNCH(grid, kThreads, 0, stream, forward_nhwc_kernel<T, 1, NT>)(p, feat, mv, out, vec_chunk, ll);
}

}  // namespace
}  // namespace v2

bool mv_warp_v2_supports(const MvWarpParams& p, Layout layout) {
  const int64_t plane = p.H * p.W;
  const int64_t in_image = layout == Layout::NHWC ? plane * p.C : plane;
  // + kThreads: tile and group indices may run one tile past the end before their bounds checks.
  return p.C <= INT_MAX && plane <= INT_MAX - v2::kThreads && in_image <= INT_MAX - v2::kThreads &&
         p.H * p.Hb <= INT_MAX && p.W * p.Wb <= INT_MAX;  // block lookups in 32 bits (block_of_fast)
}

template <typename T>
cudaError_t mv_warp_v2_forward(const MvWarpParams& p, Layout layout, const T* feature, const T* mv, T* out,
                               cudaStream_t stream) {
  if (p.N * p.C * p.H * p.W == 0) return cudaSuccess;
  if (!mv_warp_v2_supports(p, layout)) return cudaErrorInvalidValue;
  if (p.mode == WarpMode::Nearest)
    v2::launch_forward<T, 1>(p, layout, feature, mv, out, stream);
  else
    v2::launch_forward<T, 4>(p, layout, feature, mv, out, stream);
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_V2_FORWARD(T)                                                                      \
  template cudaError_t mv_warp_v2_forward<T>(const MvWarpParams&, Layout, const T*, const T*, T*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_V2_FORWARD)

}  // namespace cuda
}  // namespace arseg
