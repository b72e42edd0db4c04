// v2 mv_warp backward for the motion (opt-in, see mv_warp_v2.h). Deterministic: fixed summation orders only.
//
// grad_mv[n, :, b] = (sx, sy) * sum over the pixels p of block b and the channels c of
//                    grad_output[n, c, p] * d sample(p, c) / d (xs, ys).
// Kernel 1 (per pixel) sums over the channels of one channel slice into ws[slice][2][pixel]; the channels are
// split into slices only when the image alone does not fill the device. NCHW: one thread per pixel (x fastest,
// coalesced planes). NHWC: 256 pixels per CTA with their taps in shared memory, `lanes` threads per pixel walking
// its channel vectors, then a fixed xor-shuffle tree over those lanes.
// Kernel 2: one warp per motion block sums its pixels' slices (lane-strided, then a fixed xor-shuffle tree) and
// multiplies by (sx, sy). `nearest` has gradient exactly 0 (piecewise constant), as on the CPU.
#include "mv_warp_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace v2 {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// d out / d xs and d out / d ys of one channel at one pixel: sum over the taps of dw * feature.
template <typename acc_t>
__device__ __forceinline__ void tap_derivatives(const acc_t (&dwdx)[4], const acc_t (&dwdy)[4], const acc_t (&f)[4],
                                                acc_t& sx, acc_t& sy) {
  sx = acc_t(0);
  sy = acc_t(0);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    sx += tap_product(dwdx[k], f[k]);
    sy += tap_product(dwdy[k], f[k]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pixel_nchw_kernel(MvWarpParams p, const T* __restrict__ grad_out, const T* __restrict__ feat,
                      const T* __restrict__ mv, typename AccType<T>::type* __restrict__ ws, int chunk) {
  using acc_t = typename AccType<T>::type;
  const int W = static_cast<int>(p.W), HW = static_cast<int>(p.H * p.W), C = static_cast<int>(p.C);
  const int64_t P = p.N * HW;
  const int slice = static_cast<int>(blockIdx.y), c0 = slice * chunk, c1 = min(c0 + chunk, C);
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z) {
    grid_stride_loop(HW, [&](int64_t q) {
      const int pix = static_cast<int>(q), y = pix / W;
      Taps<acc_t> t;
      pixel_taps(p, mv, n, y, pix - y * W, t);
      int idx[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) idx[k] = static_cast<int>(t.idx[k]);
      const T* f = feat + (n * C + c0) * static_cast<int64_t>(HW);
      const T* g = grad_out + (n * C + c0) * static_cast<int64_t>(HW) + pix;
      acc_t gx = acc_t(0), gy = acc_t(0);
      for (int c = c0; c < c1; ++c, f += HW, g += HW) {
        acc_t fv[4], sx, sy;
#pragma unroll
        for (int k = 0; k < 4; ++k) fv[k] = to_acc(f[idx[k]]);
        tap_derivatives(t.dwdx, t.dwdy, fv, sx, sy);
        const acc_t gv = to_acc(*g);
        gx += gv * sx;
        gy += gv * sy;
      }
      ws[(2 * slice) * P + n * HW + pix] = gx;
      ws[(2 * slice + 1) * P + n * HW + pix] = gy;
    });
  }
}

template <typename T, int VC>
__global__ void __launch_bounds__(kThreads)
    pixel_nhwc_kernel(MvWarpParams p, const T* __restrict__ grad_out, const T* __restrict__ feat,
                      const T* __restrict__ mv, typename AccType<T>::type* __restrict__ ws, int vec_chunk,
                      int lanes_log2) {
  using acc_t = typename AccType<T>::type;
  ARSEG_SHARED(s_off, int[4][kThreads]);
  ARSEG_SHARED(s_dx, acc_t[4][kThreads]);
  ARSEG_SHARED(s_dy, acc_t[4][kThreads]);
  const int W = static_cast<int>(p.W), HW = static_cast<int>(p.H * p.W), C = static_cast<int>(p.C);
  const int64_t P = p.N * HW;
  const int nvec = C / VC, slice = static_cast<int>(blockIdx.y);
  const int v0 = slice * vec_chunk, v1 = min(v0 + vec_chunk, nvec);
  const int lanes = 1 << lanes_log2, lane = threadIdx.x & (lanes - 1);
  const int slot0 = threadIdx.x >> lanes_log2, slots = kThreads >> lanes_log2;
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z) {
    const T* img = feat + n * HW * static_cast<int64_t>(C);
    const T* gimg = grad_out + n * HW * static_cast<int64_t>(C);
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
        for (int k = 0; k < 4; ++k) {
          s_off[k][threadIdx.x] = static_cast<int>(t.idx[k]) * C;
          s_dx[k][threadIdx.x] = t.dwdx[k];
          s_dy[k][threadIdx.x] = t.dwdy[k];
        }
      }
      __syncthreads();
      const int count = min(kThreads, HW - base);
      // Every thread runs the same number of rounds, so the shuffles below always see full warps.
      for (int round = 0; round * slots < count; ++round) {
        const int slot = slot0 + round * slots;
        acc_t gx = acc_t(0), gy = acc_t(0);
        if (slot < count) {
          int off[4];
          acc_t dwdx[4], dwdy[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            off[k] = s_off[k][slot];
            dwdx[k] = s_dx[k][slot];
            dwdy[k] = s_dy[k][slot];
          }
          const T* g = gimg + (base + slot) * C;
          for (int v = v0 + lane; v < v1; v += lanes) {
            Pack<T, VC> fp[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) fp[k] = load_pack<VC>(img + off[k] + v * VC);
            const Pack<T, VC> gp = load_pack<VC>(g + v * VC);
#pragma unroll
            for (int j = 0; j < VC; ++j) {
              acc_t fv[4], sx, sy;
#pragma unroll
              for (int k = 0; k < 4; ++k) fv[k] = to_acc(fp[k].v[j]);
              tap_derivatives(dwdx, dwdy, fv, sx, sy);
              const acc_t gv = to_acc(gp.v[j]);
              gx += gv * sx;
              gy += gv * sy;
            }
          }
        }
        for (int o = lanes >> 1; o > 0; o >>= 1) {  // lanes of one pixel are aligned in the warp: xor stays inside
          gx += __shfl_xor_sync(kFullMask, gx, o);
          gy += __shfl_xor_sync(kFullMask, gy, o);
        }
        if (slot < count && lane == 0) {
          ws[(2 * slice) * P + n * HW + base + slot] = gx;
          ws[(2 * slice + 1) * P + n * HW + base + slot] = gy;
        }
      }
      __syncthreads();  // the next tile overwrites the taps
    }
  }
}

// One warp per motion block (n, by, bx).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    block_kernel(MvWarpParams p, const acc_t* __restrict__ ws, int slices, T* __restrict__ grad_mv) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31;
  const int64_t HW = p.H * p.W, P = p.N * HW, blocks = p.Hb * p.Wb;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; b < p.N * blocks;
       b += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t n = b / blocks, r = b - n * blocks, by = r / p.Wb, bx = r - by * p.Wb;
    const int64_t y0 = block_begin(by, p.H, p.Hb), y1 = block_begin(by + 1, p.H, p.Hb);
    const int64_t x0 = block_begin(bx, p.W, p.Wb), x1 = block_begin(bx + 1, p.W, p.Wb);
    const int64_t bw = x1 - x0, count = (y1 - y0) * bw;
    acc_t sx = acc_t(0), sy = acc_t(0);
    for (int64_t i = lane; i < count; i += 32) {
      const int64_t q = n * HW + (y0 + i / bw) * p.W + x0 + i % bw;
      for (int s = 0; s < slices; ++s) {
        sx += ws[(2 * s) * P + q];
        sy += ws[(2 * s + 1) * P + q];
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      sx += __shfl_xor_sync(kFullMask, sx, o);
      sy += __shfl_xor_sync(kFullMask, sy, o);
    }
    if (lane == 0) {
      grad_mv[((n * 2 + 0) * p.Hb + by) * p.Wb + bx] = from_acc<T>(sx * static_cast<acc_t>(p.scale_x));
      grad_mv[((n * 2 + 1) * p.Hb + by) * p.Wb + bx] = from_acc<T>(sy * static_cast<acc_t>(p.scale_y));
    }
  }
}

// How the channels are cut into slices: the count of channel units (channels, or channel vectors for NHWC)
// per slice. Shared by the workspace size and the launch, so both see the same number of slices.
struct Slicing {
  bool vec;      // NHWC with 16-byte channel vectors
  int64_t units; // channel units in total
  int chunk;     // units per slice
  int64_t slices;
};

template <typename T>
Slicing slicing(const MvWarpParams& p, Layout layout, const void* feat, const void* grad_out) {
  constexpr int VC = channels_per_vector<T>();
  const bool vec = layout == Layout::NHWC && p.C % VC == 0 && (feat == nullptr || aligned(feat, 16)) &&
                   (grad_out == nullptr || aligned(grad_out, 16));
  const int64_t units = vec ? p.C / VC : p.C;
  // At most 8 slices: the workspace stays at most 16 values per pixel.
  const int64_t parts = parts_for_occupancy(ceil_div(p.H * p.W, kThreads) * p.N, std::min<int64_t>(units, 8));
  const int chunk = static_cast<int>(ceil_div(std::max<int64_t>(units, 1), parts));
  return {vec, units, chunk, ceil_div(std::max<int64_t>(units, 1), chunk)};
}

}  // namespace
}  // namespace v2

template <typename T>
size_t mv_warp_v2_backward_mv_workspace(const MvWarpParams& p, Layout layout) {
  // Alignment is unknown here: slice with the vector path's unit count when it could apply. The vector and
  // scalar paths of NHWC give the same slice count whenever the launch falls back (checked in the launcher).
  const v2::Slicing s = v2::slicing<T>(p, layout, nullptr, nullptr);
  return static_cast<size_t>(2 * s.slices * p.N * p.H * p.W) * sizeof(typename AccType<T>::type);
}

template <typename T>
cudaError_t mv_warp_v2_backward_mv(const MvWarpParams& p, Layout layout, const T* grad_output, const T* feature,
                                   const T* mv, T* grad_mv, void* workspace, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const int64_t mv_count = p.N * 2 * p.Hb * p.Wb;
  if (mv_count == 0) return cudaSuccess;
  if (p.N * p.C * p.H * p.W == 0 || p.mode == WarpMode::Nearest)  // no pixels, or piecewise constant: 0
    return cudaMemsetAsync(grad_mv, 0, static_cast<size_t>(mv_count) * sizeof(T), stream);
  if (!mv_warp_v2_supports(p, layout)) return cudaErrorInvalidValue;
  acc_t* ws = static_cast<acc_t*>(workspace);
  if (ws == nullptr) return cudaErrorInvalidValue;
  v2::Slicing s = v2::slicing<T>(p, layout, feature, grad_output);
  const v2::Slicing sized = v2::slicing<T>(p, layout, nullptr, nullptr);
  if (s.slices > sized.slices) {  // misaligned NHWC pointers: scalar units, but no more slices than allocated
    s.chunk = static_cast<int>(ceil_div(s.units, sized.slices));
    s.slices = ceil_div(s.units, s.chunk);
  }
  const int64_t tiles = ceil_div(p.H * p.W, v2::kThreads);
  const dim3 grid(grid_dim(tiles, kMaxGridX), static_cast<unsigned>(s.slices), grid_dim(p.N, kMaxGridYZ));
  constexpr int VC = v2::channels_per_vector<T>();
  if (layout == Layout::NCHW)
    ARSEG_LAUNCH(grid, v2::kThreads, 0, stream, v2::pixel_nchw_kernel<T>)(p, grad_output, feature, mv, ws, s.chunk);
  else if (s.vec)
    ARSEG_LAUNCH(grid, v2::kThreads, 0, stream, v2::pixel_nhwc_kernel<T, VC>)
        (p, grad_output, feature, mv, ws, s.chunk, v2::lanes_log2(s.chunk));
  else
    ARSEG_LAUNCH(grid, v2::kThreads, 0, stream, v2::pixel_nhwc_kernel<T, 1>)
        (p, grad_output, feature, mv, ws, s.chunk, v2::lanes_log2(s.chunk));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t warps_per_cta = v2::kThreads / 32;
  ARSEG_LAUNCH(grid_dim(ceil_div(p.N * p.Hb * p.Wb, warps_per_cta), kMaxGridX), v2::kThreads, 0, stream,
               v2::block_kernel<T, acc_t>)(p, ws, static_cast<int>(s.slices), grad_mv);
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_V2_BACKWARD_MV(T)                                                                   \
  template size_t mv_warp_v2_backward_mv_workspace<T>(const MvWarpParams&, Layout);                           \
  template cudaError_t mv_warp_v2_backward_mv<T>(const MvWarpParams&, Layout, const T*, const T*, const T*, T*, \
                                                 void*, cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_V2_BACKWARD_MV)

}  // namespace cuda
}  // namespace arseg
