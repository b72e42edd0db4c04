"""Cost accounting of the networks: AR-Seg's GMACs per frame.

PyTorch's FlopCounterMode counts convolutions and linear layers; the arseg ops' own formulas (local attention
2*(C+Cv)*H*W*k^2 FLOPs, a bilinear warp 8 FLOPs per output element) are registered with it by the core
(arseg_ops/_opinfo.py), next to the ops they describe. FLOPs = 2 x multiply-accumulates.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from .arseg import build_networks
from .frames import lr_size, warp_to_frame
from .pspnet import PSPModule

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
    Runs on meta tensors: no memory, no real arithmetic. PSPNet's pyramid pooling is counted in the release's
    formulation (bottleneck over 2560 channels at full resolution), as the paper counts it; our default factored
    evaluation of the same function does 2048 * 1024 MACs per feature pixel less (see pspnet.PSPModule).
    """
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
    for module in (*hr_net.modules(), *lr_net.modules()):
        if isinstance(module, PSPModule):
            module.factored = False
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
