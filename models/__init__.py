"""arseg_ops.models: the AR-Seg networks (CVPR 2023) built on arseg_ops.mv_warp / local_attn.

    seg = models.ARSeg(backbone="psp18", num_classes=12, scale=0.5, kernel_size=7)   # or "bisenet18"
    seg.load_official(hr_state_dict, lr_state_dict)
    seg.keyframe(image); seg.non_keyframe(image, mv_to_key); seg.segment(frames)
    models.count_gmacs("psp18", (720, 960), scale=0.5)

Parameter names and forward passes follow the authors' release, so their checkpoints load unchanged.
"""
from .arseg import IMAGENET_MEAN, IMAGENET_STD, ARSeg, build_networks
from .backbones import DilatedResNet18, ResNet18
from .bisenet import BiSeNet18, BiSeNet18WithCReFF
from .checkpoint import load_official_state_dict
from .creff import CReFF
from .flops import count_gmacs
from .pspnet import PSPNet18, PSPNet18WithCReFF
from .training import fst_loss, lr_training_step

__all__ = [
    "ARSeg", "CReFF", "PSPNet18", "PSPNet18WithCReFF", "BiSeNet18", "BiSeNet18WithCReFF", "DilatedResNet18",
    "ResNet18", "build_networks", "count_gmacs", "load_official_state_dict", "IMAGENET_MEAN", "IMAGENET_STD",
    "fst_loss", "lr_training_step",
]
