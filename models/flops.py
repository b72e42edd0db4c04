"""Cost accounting: teach torch.utils.flop_counter the arseg ops, and count AR-Seg's GMACs per frame.

PyTorch's FlopCounterMode reports FLOPs = 2 x multiply-accumulates (its convolution and matmul formulas), so
the formulas registered here do the same: local attention costs 2*C*H*W*k^2 MACs per image (C*k^2 for the
similarities, Cv*k^2 for the weighted sum of values, per pixel); a bilinear warp 4 MACs per output element
(nearest: none). Registration happens once, at import.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

_ops = torch.ops.arseg_ops


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _local_attn_macs(query_shape, value_shape, kernel_size):
    n, c, h, w = query_shape
    return n * h * w * kernel_size * kernel_size * (c + value_shape[1])


@register_flop_formula(_ops.local_attn)
def _local_attn_flop(query_shape, key_shape, value_shape, kernel_size=7, *args, out_shape=None, **kwargs):
    return 2 * _local_attn_macs(query_shape, value_shape, kernel_size)


@register_flop_formula(_ops.local_attn_backward)
def _local_attn_backward_flop(grad_shape, query_shape, key_shape, value_shape, kernel_size, *args,
                              out_shape=None, **kwargs):
    # dq and dk (C*k^2 each), dv and d(attention) = <grad, v_j> (Cv*k^2 each): twice the forward.
    return 4 * _local_attn_macs(query_shape, value_shape, kernel_size)


def _warp_macs(feature_shape, mode):
    return 4 * _numel(feature_shape) if mode == "bilinear" else 0


@register_flop_formula(_ops.mv_warp)
def _mv_warp_flop(feature_shape, mv_shape, scale_x=1.0, scale_y=1.0, mode="bilinear", *args, out_shape=None,
                  **kwargs):
    return 2 * _warp_macs(feature_shape, mode)


@register_flop_formula(_ops.mv_warp_backward_feature)
def _mv_warp_backward_feature_flop(grad_shape, mv_shape, scale_x, scale_y, mode, *args, out_shape=None,
                                   **kwargs):
    return 2 * _warp_macs(grad_shape, mode)


@register_flop_formula(_ops.mv_warp_backward_mv)
def _mv_warp_backward_mv_flop(grad_shape, feature_shape, mv_shape, scale_x, scale_y, mode, *args,
                              out_shape=None, **kwargs):
    # d/dx and d/dy of the 4-tap interpolation: two 4-tap sums per element.
    return 4 * _warp_macs(feature_shape, mode)


def _gmacs(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return counter.get_total_flops() / 2 / 1e9, result


def count_gmacs(backbone, size, scale=1.0, keyframe_interval=12, *, num_classes=12, kernel_size=7,
                include_warp=False):
    """Average GMACs per frame of AR-Seg over a GOP: (HR + (L-1) x (LR at `scale` + CReFF)) / L.

    Counts convolutions, linear layers and local attention (the paper's accounting); include_warp=True adds the
    bilinear warp (4 MACs per warped feature element). scale=1.0 means the plain HR network on every frame.
    Runs on meta tensors: no memory, no real arithmetic.
    """
    from .arseg import build_networks, lr_size, warp_to_frame  # deferred: arseg imports this package

    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be (H, W) positive ints, got {size!r}")
    if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    if not isinstance(keyframe_interval, int) or keyframe_interval < 1:
        raise ValueError(f"keyframe_interval must be a positive int, got {keyframe_interval!r}")
    with torch.device("meta"):
        hr_net, lr_net = build_networks(backbone, num_classes, kernel_size)
        image = torch.empty(1, 3, *size)
    hr_net.eval()
    lr_net.eval()
    with torch.no_grad():
        hr_gmacs, _ = _gmacs(lambda: hr_net(image))
        if scale == 1.0:
            return hr_gmacs
        hr_feature = hr_net.features(image)
        mv = torch.zeros(1, 2, 1, 1, device="meta")
        warp_gmacs, warped = _gmacs(lambda: warp_to_frame(hr_feature, mv, size))
        small = torch.empty(1, 3, *lr_size(size, scale), device="meta")
        lr_gmacs, _ = _gmacs(lambda: lr_net(small, warped, out_size=tuple(size)))
    if include_warp:
        lr_gmacs += warp_gmacs
    return (hr_gmacs + (keyframe_interval - 1) * lr_gmacs) / keyframe_interval
