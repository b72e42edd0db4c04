// CUDA kernels of mv_warp: forward, gradient for the feature, gradient for the motion.
//
// One thread per output pixel (n, y, x), x the fastest-varying thread index so that every channel plane is
// read and written with coalesced accesses. A thread looks up its motion block, forms the sample coordinate
// and the (up to) four taps once (arseg::sample_taps, the same code the CPU kernels run), then streams the
// channels of its chunk (blockIdx.y picks a chunk of 16 channels, so small images still fill the GPU).
// No dense flow or sampling grid is ever built. All indexing is 64-bit.
//
// Backward:
//  - feature: each output pixel scatters w_k * grad into its taps with atomicAdd. float/double add in place
//    into the zeroed output; float16/bfloat16 add into a float32 workspace that is converted at the end.
//    Taps with weight 0 are skipped (so an empty tap does not pile atomics onto index 0).
//  - mv: kernel 1 (one thread per pixel) sums d out / d (xs, ys) over all channels into a per-pixel workspace;
//    kernel 2 (one CTA per motion block) reduces its block's pixels in a fixed order and multiplies by (sx, sy).
//    Deterministic. `nearest` is piecewise constant: its gradient is exactly zero (as on the CPU).
#include "device_common.cuh"

namespace arseg {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChannelsPerThread = 16;

template <typename T, typename acc_t>
__device__ __forceinline__ void pixel_taps(const MvWarpParams& p, const T* __restrict__ mv, int64_t n, int64_t y,
                                           int64_t x, Taps<acc_t>& t) {
  const int64_t by = block_of(y, p.H, p.Hb), bx = block_of(x, p.W, p.Wb);
  const T* m = mv + (n * 2 * p.Hb + by) * p.Wb + bx;  // channel 0 (dx); dy is one block plane further
  const acc_t xs = sample_coord(static_cast<acc_t>(x), static_cast<acc_t>(p.scale_x), to_acc(m[0]));
  const acc_t ys = sample_coord(static_cast<acc_t>(y), static_cast<acc_t>(p.scale_y), to_acc(m[p.Hb * p.Wb]));
  sample_taps(xs, ys, p.H, p.W, p.mode, p.padding, t);
}

// Output pixel (n, y, x) of an (N, H, W) grid: `flat` = n*H*W + y*W + x, `rem` = y*W + x (offset in a plane).
struct Pixel {
  int64_t flat, n, rem, y, x;
};

// body(pixel) for every output pixel that falls to this thread (grid-stride loop over N*H*W).
template <typename Body>
__device__ __forceinline__ void for_each_pixel(const MvWarpParams& p, Body body) {
  const int64_t HW = p.H * p.W;
  grid_stride_loop(p.N * HW, [&](int64_t flat) {
    const int64_t n = flat / HW, rem = flat - n * HW, y = rem / p.W;
    body(Pixel{flat, n, rem, y, rem - y * p.W});
  });
}

// Channel range of this CTA: blockIdx.y selects a chunk of `chunk` channels.
struct ChannelRange {
  int64_t begin, end;
};
__device__ __forceinline__ ChannelRange channel_range(int64_t C, int64_t chunk) {
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  return {begin, begin + chunk < C ? begin + chunk : C};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(MvWarpParams p, const T* __restrict__ feat, const T* __restrict__ mv, T* __restrict__ out,
                   int64_t chunk) {
  using acc_t = typename AccType<T>::type;
  const int64_t HW = p.H * p.W;
  const int ntaps = taps_used(p.mode);
  const ChannelRange cr = channel_range(p.C, chunk);
  for_each_pixel(p, [&](const Pixel& px) {
    const int64_t n = px.n, rem = px.rem;
    Taps<acc_t> t;
    pixel_taps(p, mv, n, px.y, px.x, t);
    for (int64_t c = cr.begin; c < cr.end; ++c) {
      const T* plane = feat + (n * p.C + c) * HW;
      acc_t s = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (k < ntaps) s += tap_product(t.w[k], to_acc(plane[t.idx[k]]));
      out[(n * p.C + c) * HW + rem] = from_acc<T>(s);
    }
  });
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_feature_kernel(MvWarpParams p, const T* __restrict__ grad_out, const T* __restrict__ mv,
                            acc_t* __restrict__ grad_feat, int64_t chunk) {
  const int64_t HW = p.H * p.W;
  const int ntaps = taps_used(p.mode);
  const ChannelRange cr = channel_range(p.C, chunk);
  for_each_pixel(p, [&](const Pixel& px) {
    const int64_t n = px.n, rem = px.rem;
    Taps<acc_t> t;
    pixel_taps(p, mv, n, px.y, px.x, t);
    for (int64_t c = cr.begin; c < cr.end; ++c) {
      const acc_t g = to_acc(grad_out[(n * p.C + c) * HW + rem]);
      acc_t* plane = grad_feat + (n * p.C + c) * HW;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (k < ntaps && t.w[k] != acc_t(0)) atomicAdd(plane + t.idx[k], t.w[k] * g);
    }
  });
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) convert_kernel(const acc_t* __restrict__ src, T* __restrict__ dst,
                                                           int64_t count) {
  grid_stride_loop(count, [&](int64_t i) { dst[i] = from_acc<T>(src[i]); });
}

// Per pixel: sum over channels of grad * d sample / d xs (and d ys), into ws[pix] and ws[P + pix].
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pixel_mv_grad_kernel(MvWarpParams p, const T* __restrict__ grad_out, const T* __restrict__ feat,
                         const T* __restrict__ mv, acc_t* __restrict__ ws) {
  const int64_t HW = p.H * p.W, P = p.N * HW;
  for_each_pixel(p, [&](const Pixel& px) {
    const int64_t n = px.n, rem = px.rem;
    Taps<acc_t> t;
    pixel_taps(p, mv, n, px.y, px.x, t);
    acc_t gx = acc_t(0), gy = acc_t(0);
    for (int64_t c = 0; c < p.C; ++c) {
      const T* plane = feat + (n * p.C + c) * HW;
      acc_t sx = acc_t(0), sy = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const acc_t f = to_acc(plane[t.idx[k]]);
        sx += tap_product(t.dwdx[k], f);
        sy += tap_product(t.dwdy[k], f);
      }
      const acc_t g = to_acc(grad_out[(n * p.C + c) * HW + rem]);
      gx += g * sx;
      gy += g * sy;
    }
    ws[px.flat] = gx;
    ws[P + px.flat] = gy;
  });
}

// One CTA per motion block (n, by, bx): fixed-order strided sums, then a fixed shared-memory tree.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    block_mv_grad_kernel(MvWarpParams p, const acc_t* __restrict__ ws, T* __restrict__ grad_mv) {
  ARSEG_SHARED(red, acc_t[2][kThreads]);
  const int64_t HW = p.H * p.W, P = p.N * HW, blocks = p.Hb * p.Wb;
  const int tid = threadIdx.x;
  for (int64_t b = blockIdx.x; b < p.N * blocks; b += gridDim.x) {
    const int64_t n = b / blocks, r = b - n * blocks, by = r / p.Wb, bx = r - by * p.Wb;
    const int64_t y0 = block_begin(by, p.H, p.Hb), y1 = block_begin(by + 1, p.H, p.Hb);
    const int64_t x0 = block_begin(bx, p.W, p.Wb), x1 = block_begin(bx + 1, p.W, p.Wb);
    const int64_t bw = x1 - x0, count = (y1 - y0) * bw;
    acc_t sx = acc_t(0), sy = acc_t(0);
    for (int64_t i = tid; i < count; i += kThreads) {
      const int64_t q = n * HW + (y0 + i / bw) * p.W + x0 + i % bw;
      sx += ws[q];
      sy += ws[P + q];
    }
    __syncthreads();  // the previous block's tree is finished before red is overwritten
    red[0][tid] = sx;
    red[1][tid] = sy;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (tid < s) {
        red[0][tid] += red[0][tid + s];
        red[1][tid] += red[1][tid + s];
      }
      __syncthreads();
    }
    if (tid == 0) {
      grad_mv[((n * 2 + 0) * p.Hb + by) * p.Wb + bx] = from_acc<T>(red[0][0] * static_cast<acc_t>(p.scale_x));
      grad_mv[((n * 2 + 1) * p.Hb + by) * p.Wb + bx] = from_acc<T>(red[1][0] * static_cast<acc_t>(p.scale_y));
    }
  }
}

// Grid for one thread per pixel (x dimension, looped beyond the limit) times channel chunks (y dimension).
struct PixelGrid {
  dim3 grid;
  int64_t chunk;
};
PixelGrid pixel_grid(const MvWarpParams& p, bool chunk_channels) {
  const int64_t pixels = p.N * p.H * p.W;
  int64_t chunk = chunk_channels ? std::max(kChannelsPerThread, ceil_div(p.C, kMaxGridYZ)) : p.C;
  chunk = std::max<int64_t>(chunk, 1);
  return {dim3(grid_dim(ceil_div(pixels, kThreads), kMaxGridX), grid_dim(ceil_div(p.C, chunk), kMaxGridYZ)),
          chunk};
}

bool has_work(const MvWarpParams& p) { return p.N * p.C * p.H * p.W > 0; }

}  // namespace

template <typename T>
cudaError_t mv_warp_forward(const MvWarpParams& p, const T* feature, const T* mv, T* out, cudaStream_t stream) {
  if (!has_work(p)) return cudaSuccess;
  const PixelGrid g = pixel_grid(p, true);
  ARSEG_LAUNCH(g.grid, kThreads, 0, stream, forward_kernel<T>)(p, feature, mv, out, g.chunk);
  return cudaGetLastError();
}

template <typename T>
size_t mv_warp_backward_feature_workspace(const MvWarpParams& p) {
  using acc_t = typename AccType<T>::type;
  if (sizeof(T) == sizeof(acc_t)) return 0;
  return static_cast<size_t>(p.N * p.C * p.H * p.W) * sizeof(acc_t);
}

template <typename T>
cudaError_t mv_warp_backward_feature(const MvWarpParams& p, const T* grad_output, const T* mv, T* grad_feature,
                                     void* workspace, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  if (!has_work(p)) return cudaSuccess;
  const int64_t count = p.N * p.C * p.H * p.W;
  const bool in_place = sizeof(T) == sizeof(acc_t);
  acc_t* acc = in_place ? reinterpret_cast<acc_t*>(grad_feature) : static_cast<acc_t*>(workspace);
  if (acc == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(acc, 0, static_cast<size_t>(count) * sizeof(acc_t), stream);
  if (err != cudaSuccess) return err;
  const PixelGrid g = pixel_grid(p, true);
  ARSEG_LAUNCH(g.grid, kThreads, 0, stream, backward_feature_kernel<T, acc_t>)(p, grad_output, mv, acc, g.chunk);
  if (!in_place) {
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    ARSEG_LAUNCH(grid_dim(ceil_div(count, kThreads), kMaxGridX), kThreads, 0, stream, convert_kernel<T, acc_t>)
        (acc, grad_feature, count);
  }
  return cudaGetLastError();
}

template <typename T>
size_t mv_warp_backward_mv_workspace(const MvWarpParams& p) {
  return static_cast<size_t>(2 * p.N * p.H * p.W) * sizeof(typename AccType<T>::type);
}

template <typename T>
cudaError_t mv_warp_backward_mv(const MvWarpParams& p, const T* grad_output, const T* feature, const T* mv,
                                T* grad_mv, void* workspace, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const int64_t mv_count = p.N * 2 * p.Hb * p.Wb;
  if (mv_count == 0) return cudaSuccess;
  if (!has_work(p) || p.mode == WarpMode::Nearest)  // no pixels, or a piecewise-constant sample: gradient 0
    return cudaMemsetAsync(grad_mv, 0, static_cast<size_t>(mv_count) * sizeof(T), stream);
  acc_t* ws = static_cast<acc_t*>(workspace);
  if (ws == nullptr) return cudaErrorInvalidValue;
  const PixelGrid g = pixel_grid(p, false);
  ARSEG_LAUNCH(g.grid.x, kThreads, 0, stream, pixel_mv_grad_kernel<T, acc_t>)(p, grad_output, feature, mv, ws);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  ARSEG_LAUNCH(grid_dim(p.N * p.Hb * p.Wb, kMaxGridX), kThreads, 0, stream, block_mv_grad_kernel<T, acc_t>)
      (p, ws, grad_mv);
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_MV_WARP(T)                                                                              \
  template cudaError_t mv_warp_forward<T>(const MvWarpParams&, const T*, const T*, T*, cudaStream_t);            \
  template size_t mv_warp_backward_feature_workspace<T>(const MvWarpParams&);                                     \
  template cudaError_t mv_warp_backward_feature<T>(const MvWarpParams&, const T*, const T*, T*, void*,           \
                                                   cudaStream_t);                                                 \
  template size_t mv_warp_backward_mv_workspace<T>(const MvWarpParams&);                                          \
  template cudaError_t mv_warp_backward_mv<T>(const MvWarpParams&, const T*, const T*, const T*, T*, void*,      \
                                              cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_MV_WARP)

}  // namespace cuda
}  // namespace arseg
