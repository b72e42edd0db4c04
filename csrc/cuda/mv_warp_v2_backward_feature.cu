// v2 mv_warp backward for the feature (opt-in, see mv_warp_v2.h): scatter through shared memory.
//
// grad_feature[q] = sum over output pixels p and taps k with idx_k(p) = q of w_k(p) * grad_output[p].
// A CTA owns an output tile of 8 x 32 pixels (one thread per pixel; the taps are computed once and kept in
// registers for all channels). Since every pixel of a motion block moves by the same vector, the tile's taps
// land in a small region of the input: a 13 x 37 window, placed where the tile's centre pixel samples, with a
// margin of 2 pixels for blocks that move differently from the centre. Per chunk of CC channels the CTA adds
// its contributions into the window in shared memory (in the accumulation type), then adds every non-zero
// window element to global memory once, with an atomic of the element type; taps outside the window (motion
// that differs by more than the margin inside one tile) go to global memory directly. For a tile that moves as
// one that is 13*37 / 256 < 1.9 (usually ~ 9*33/256 = 1.16) global atomics per element instead of v1's 4, and
// no float32 workspace and convert pass for fp16/bf16 (each global add rounds a partial sum once).
// Not deterministic (atomics), like v1.
#include "mv_warp_v2_device.cuh"

namespace arseg {
namespace cuda {
namespace v2 {
namespace {

constexpr int kTileY = 8, kTileX = 32;  // kTileY * kTileX == kThreads
constexpr int kMargin = 2;
constexpr int kWinY = kTileY + 1 + 2 * kMargin, kWinX = kTileX + 1 + 2 * kMargin, kCells = kWinY * kWinX;
static_assert(kTileY * kTileX == kThreads, "one thread per tile pixel");

// Channels per shared-memory pass: 13*37 cells * 64 bytes = 30.8 KB of window for any accumulation type.
template <typename acc_t>
constexpr int window_channels() {
  return static_cast<int>(64 / sizeof(acc_t));
}

// Integer displacement floor(coordinate) - position, clamped (it only places the window; any value is correct).
template <typename acc_t>
__device__ __forceinline__ int displacement(acc_t s, int at, int size) {
  if (!is_finite(s)) return 0;
  const acc_t d = floor_(s) - static_cast<acc_t>(at);
  const acc_t lim = static_cast<acc_t>(2 * size + 2 * kMargin);
  return static_cast<int>(d < -lim ? -lim : (d > lim ? lim : d));
}

// VC: channels per grad_output load (NHWC with C % VC == 0 and aligned pointers; 1 otherwise).
template <typename T, Layout L, int VC, int NT>
__global__ void __launch_bounds__(kThreads)
    backward_feature_kernel(MvWarpParams p, const T* __restrict__ grad_out, const T* __restrict__ mv,
                            T* __restrict__ grad_feat, int chunk) {
  using acc_t = typename AccType<T>::type;
  constexpr int CC = window_channels<acc_t>();
  static_assert(CC % VC == 0, "a vector of channels never straddles two passes");
  ARSEG_SHARED(win, acc_t[CC * kCells]);
  const int H = static_cast<int>(p.H), W = static_cast<int>(p.W), HW = H * W, C = static_cast<int>(p.C);
  const int tiles_x = (W + kTileX - 1) / kTileX, tiles = tiles_x * ((H + kTileY - 1) / kTileY);
  const int c_begin = static_cast<int>(blockIdx.y) * chunk, c_end = min(c_begin + chunk, C);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z) {
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int ty0 = tile / tiles_x * kTileY, tx0 = tile % tiles_x * kTileX;
      const int y = ty0 + tid / kTileX, x = tx0 + tid % kTileX;
      const bool valid = y < H && x < W;
      // Window origin: where the tile's centre pixel samples (every thread computes the same value).
      const int cy = min(ty0 + kTileY / 2, H - 1), cx = min(tx0 + kTileX / 2, W - 1);
      acc_t cxs, cys;
      sample_coord(p, mv, n, cy, cx, cxs, cys);
      const int wy0 = ty0 - kMargin + displacement(cys, cy, H), wx0 = tx0 - kMargin + displacement(cxs, cx, W);

      Taps<acc_t> t;
      if (valid)
        pixel_taps(p, mv, n, y, x, t);
      else
        clear_taps(t);
      int cell[NT], gidx[NT];
      acc_t w[NT];
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        w[k] = t.w[k];
        gidx[k] = static_cast<int>(t.idx[k]);
        const int qy = gidx[k] / W, ly = qy - wy0, lx = gidx[k] - qy * W - wx0;
        cell[k] = (w[k] != acc_t(0) && ly >= 0 && ly < kWinY && lx >= 0 && lx < kWinX) ? ly * kWinX + lx : -1;
      }
      const int pix = valid ? y * W + x : 0;

      for (int c0 = c_begin; c0 < c_end; c0 += CC) {
        const int cn = min(CC, c_end - c0);
        for (int i = tid; i < CC * kCells; i += kThreads) win[i] = acc_t(0);
        __syncthreads();
        if (valid) {
          for (int cc = 0; cc < cn; cc += VC) {
            acc_t g[VC];
            if (VC > 1) {
              const Pack<T, VC> gp = load_pack<VC>(grad_out + elem<L>(n, c0 + cc, pix, C, HW));
#pragma unroll
              for (int j = 0; j < VC; ++j) g[j] = to_acc(gp.v[j]);
            } else {
              g[0] = to_acc(grad_out[elem<L>(n, c0 + cc, pix, C, HW)]);
            }
#pragma unroll
            for (int j = 0; j < VC; ++j) {
#pragma unroll
              for (int k = 0; k < NT; ++k) {
                if (w[k] == acc_t(0)) continue;  // absent tap: nothing to add (and index 0 is not its target)
                const acc_t v = w[k] * g[j];
                if (cell[k] >= 0)
                  atomicAdd(&win[(cc + j) * kCells + cell[k]], v);
                else
                  atomic_add(grad_feat + elem<L>(n, c0 + cc + j, gidx[k], C, HW), v);
              }
            }
          }
        }
        __syncthreads();
        // Flush: NCHW walks the window row by row within a channel, NHWC the channels of a cell first, so that
        // consecutive threads touch consecutive addresses in either layout.
        for (int i = tid; i < cn * kCells; i += kThreads) {
          const int cc = L == Layout::NCHW ? i / kCells : i % cn;
          const int c = L == Layout::NCHW ? i - cc * kCells : i / cn;
          const acc_t v = win[cc * kCells + c];
          if (v == acc_t(0)) continue;  // untouched (or exactly cancelling): adding 0 changes nothing
          const int qy = wy0 + c / kWinX, qx = wx0 + c % kWinX;  // in the image: only in-image taps land here
          atomic_add(grad_feat + elem<L>(n, c0 + cc, qy * W + qx, C, HW), v);
        }
        __syncthreads();  // the next pass zeroes the window
      }
    }
  }
}

template <typename T, Layout L, int NT>
void launch(const MvWarpParams& p, const T* grad_out, const T* mv, T* grad_feat, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  constexpr int CC = window_channels<acc_t>();
  constexpr int VC = L == Layout::NHWC ? channels_per_vector<T>() : 1;
  const int64_t tiles = ceil_div(p.H, kTileY) * ceil_div(p.W, kTileX);
  const int64_t passes = ceil_div(p.C, CC);
  const int64_t parts = parts_for_occupancy(tiles * p.N, std::min<int64_t>(passes, kMaxGridYZ));
  const int chunk = static_cast<int>(ceil_div(passes, parts) * CC);  // a multiple of CC (and so of VC)
  const dim3 grid(grid_dim(tiles, kMaxGridX), grid_dim(ceil_div(p.C, chunk), kMaxGridYZ),
                  grid_dim(p.N, kMaxGridYZ));
  if (VC > 1 && p.C % VC == 0 && aligned(grad_out, 16))
    ARSEG_LAUNCH(grid, kThreads, 0, stream, backward_feature_kernel<T, L, VC, NT>)(p, grad_out, mv, grad_feat, chunk);
  else
    ARSEG_LAUNCH(grid, kThreads, 0, stream, backward_feature_kernel<T, L, 1, NT>)(p, grad_out, mv, grad_feat, chunk);
}

template <typename T, Layout L>
void launch_mode(const MvWarpParams& p, const T* grad_out, const T* mv, T* grad_feat, cudaStream_t stream) {
  if (p.mode == WarpMode::Nearest)
    launch<T, L, 1>(p, grad_out, mv, grad_feat, stream);
  else
    launch<T, L, 4>(p, grad_out, mv, grad_feat, stream);
}

}  // namespace
}  // namespace v2

template <typename T>
cudaError_t mv_warp_v2_backward_feature(const MvWarpParams& p, Layout layout, const T* grad_output, const T* mv,
                                        T* grad_feature, cudaStream_t stream) {
  const int64_t count = p.N * p.C * p.H * p.W;
  if (count == 0) return cudaSuccess;
  if (!mv_warp_v2_supports(p, layout)) return cudaErrorInvalidValue;
  // All-bits-zero is +0 in every element type; the kernel adds into it.
  const cudaError_t err = cudaMemsetAsync(grad_feature, 0, static_cast<size_t>(count) * sizeof(T), stream);
  if (err != cudaSuccess) return err;
  if (layout == Layout::NCHW)
    v2::launch_mode<T, Layout::NCHW>(p, grad_output, mv, grad_feature, stream);
  else
    v2::launch_mode<T, Layout::NHWC>(p, grad_output, mv, grad_feature, stream);
  return cudaGetLastError();
}

#define ARSEG_INSTANTIATE_V2_BACKWARD_FEATURE(T)                                                   \
  template cudaError_t mv_warp_v2_backward_feature<T>(const MvWarpParams&, Layout, const T*, const T*, T*, \
                                                      cudaStream_t);
ARSEG_INSTANTIATE_FOR_FLOATS(ARSEG_INSTANTIATE_V2_BACKWARD_FEATURE)

}  // namespace cuda
}  // namespace arseg
