// Torch-free interface of the second-generation mv_warp CUDA kernels (mv_warp_v2_forward.cu,
// mv_warp_v2_backward.cu). OPT-IN: no GPU has run them yet, so the glue (mv_warp_cuda.cpp) calls them only when
// arseg::experimental_kernel("mv_warp") is true (ARSEG_EXPERIMENTAL_KERNELS=mv_warp, or
// arseg_ops._loader.experimental_kernels("mv_warp")); the first-generation kernels (kernels.h) stay the default.
//
// What changes against the first generation:
//  - both layouts: NCHW (contiguous) and NHWC (torch.channels_last), each with its own kernels, so channels_last
//    tensors are read and written in place instead of being copied to NCHW and back;
//  - the taps of a pixel are computed once and reused for every channel a CTA handles (v1 recomputed them for
//    every 16-channel chunk); in-plane offsets are 32-bit (hence mv_warp_v2_supports);
//  - 16-byte vector accesses: NCHW forward stores 4 (2 for double) pixels per thread at once; NHWC moves 16 bytes
//    of channels per access when C and the pointers allow it;
//  - backward feature: a CTA accumulates its tile's scatter in shared memory (fp32, or fp64 for double) over a
//    window that follows the tile's motion, and adds each touched element to global memory once, with an atomic
//    of the element type: ~1.2 global atomics per element instead of 4, no fp32 workspace, no convert pass;
//  - backward mv: per-pixel channel sums (split over channel slices when the image is small), then one warp per
//    motion block reduces them with a fixed shuffle tree. Deterministic, as in v1.
// Same semantics as v1 (mv_warp_math.h, the CPU kernels): same taps, same sample coordinates.
#pragma once

#include "kernels.h"

namespace arseg {
namespace cuda {

// Memory layout of feature / out / grad tensors (mv and grad_mv are always contiguous (N, 2, Hb, Wb)).
enum class Layout : int { NCHW = 0, NHWC = 1 };

// True when the v2 kernels can run `p` in `layout`: in-plane offsets (H*W, and H*W*C for NHWC), C, H*Hb and
// W*Wb fit in 32 bits. Otherwise the glue uses the v1 kernels.
bool mv_warp_v2_supports(const MvWarpParams& p, Layout layout);

template <typename T>
cudaError_t mv_warp_v2_forward(const MvWarpParams& p, Layout layout, const T* feature, const T* mv, T* out,
                               cudaStream_t stream);

// grad_feature is zeroed here and then accumulated with atomics: the summation order is not fixed.
template <typename T>
cudaError_t mv_warp_v2_backward_feature(const MvWarpParams& p, Layout layout, const T* grad_output, const T* mv,
                                        T* grad_feature, cudaStream_t stream);

// Bytes of workspace mv_warp_v2_backward_mv needs: 2 * slices * N*H*W AccType<T> (slices depend on the shape
// and the current device's SM count, the same in both calls).
template <typename T>
size_t mv_warp_v2_backward_mv_workspace(const MvWarpParams& p, Layout layout);

// Deterministic (fixed summation order, no atomics).
template <typename T>
cudaError_t mv_warp_v2_backward_mv(const MvWarpParams& p, Layout layout, const T* grad_output, const T* feature,
                                   const T* mv, T* grad_mv, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace arseg
