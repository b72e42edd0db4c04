"""arseg_ops: fused CPU/CUDA kernels for AR-Seg (motion-vector warping and local attention).

    arseg_ops.mv_warp(feature, mv, *, scale=1.0, mode="bilinear", padding_mode="zeros")
    arseg_ops.local_attn(query, key, value, kernel_size=7, *, scale=1.0, padding="zeros")
    arseg_ops.creff(key_feature, mv, lr_feature, weight, bias, *, kernel_size=7, scale=1.0, mv_scale=1.0)

All are dispatcher ops (torch.ops.arseg_ops.*) with autograd and fake kernels. Pure-PyTorch versions of the
same math live in arseg_ops.reference; networks in arseg_ops.models; video decoding in arseg_ops.video.
"""
from ._loader import build_info, load_library

load_library()

from . import reference  # noqa: E402
from ._ops import creff, local_attn, mv_warp  # noqa: E402

__version__ = "0.1.0"
__all__ = ["mv_warp", "local_attn", "creff", "reference", "build_info", "__version__"]
