"""The AR-Seg pipeline: HR network on keyframes, LR network + motion-warped HR feature + CReFF on other frames.

The motion-vector convention (image pixels, block grid, scaling to the feature grid) is in models/frames.py.
"""
import numpy as np
import torch
import torch.nn as nn

from .bisenet import BiSeNet18, BiSeNet18WithCReFF
from .checkpoint import load_official_state_dict
from .creff import resize_ac
from .frames import lr_size, motion_scale
from .pspnet import PSPNet18, PSPNet18WithCReFF
from .tinynet import TinyNet, TinyNetWithCReFF
from .training import lr_training_step

# Default input normalization: ImageNet statistics on the [0, 1] scale, RGB (the backbones are ImageNet-pretrained
# ResNet-18s). Pass mean/std to ARSeg if a checkpoint was trained with other statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = {
    "psp18": (PSPNet18, PSPNet18WithCReFF),
    "bisenet18": (BiSeNet18, BiSeNet18WithCReFF),
    "tiny": (TinyNet, TinyNetWithCReFF),  # CPU-sized stand-in for trying the recipe; not in the paper
}


def build_networks(backbone, num_classes=12, kernel_size=7, *, fused=True, position_bias=False):
    """(HR network, LR network with CReFF) for backbone "psp18" | "bisenet18" | "tiny", without training-only
    heads. fused: CReFF as one arseg_ops.creff call (True) or op by op (False); position_bias: CReFF with a
    learned relative-position bias of its attention logits (see CReFF; runs op by op)."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    hr_cls, lr_cls = BACKBONES[backbone]
    return hr_cls(num_classes), lr_cls(num_classes, kernel_size, fused=fused, position_bias=position_bias)


class ARSeg(nn.Module):
    """AR-Seg inference: `keyframe(image)` runs and caches the HR feature; `non_keyframe(image, mv_to_key)`
    runs the LR network at `scale` and fuses the warped cached feature. Images are (N, 3, H, W) normalized
    float (see `normalize`); outputs are at (H, W): log-probabilities (psp18) or logits (bisenet18).
    fused=True (default): the non-keyframe hands the cached feature and the motion to CReFF, which warps, resizes
    and fuses in one arseg_ops.creff call; fused=False runs the unfused chain (mv_warp, resize, convs,
    local_attn). Parameters and checkpoints are the same either way.
    position_bias: CReFF with a learned relative-position bias of its attention logits (models.CReFF; off in the
    release's networks, needed for a 7x7 window to learn on the synthetic task; it runs the CReFF op by op).
    block_size: the motion grid's cell in image pixels (arseg_ops.video.open's block_size, 4 by default):
    non_keyframe then requires the grid that tiles the image, (ceil(H / block_size), ceil(W / block_size)), so a
    field from another block size or image size is an error rather than silently stretched over the image.
    None accepts any grid (mv_warp maps it proportionally onto the image).
    """

    def __init__(self, backbone="psp18", num_classes=12, scale=0.5, kernel_size=7, *,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, fused=True, block_size=4, position_bias=False):
        super().__init__()
        if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 1):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
        self.block_size = block_size
        self.backbone = backbone
        self.scale = float(scale)
        self.hr_net, self.lr_net = build_networks(backbone, num_classes, kernel_size, fused=fused,
                                                  position_bias=position_bias)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._key_feature = None
        self._key_size = None

    # ---- checkpoints ----
    def load_official(self, hr_state_dict, lr_state_dict):
        """Load the release's (HR, LR) state_dicts; "module." prefixes are accepted. Strict: see
        checkpoint.load_official_state_dict (ValueError listing missing/unexpected/mismatched keys)."""
        load_official_state_dict(self.hr_net, hr_state_dict, name="hr_state_dict")
        load_official_state_dict(self.lr_net, lr_state_dict, name="lr_state_dict")
        return self

    # ---- per-frame inference ----
    @staticmethod
    def _check_image(image, what):
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{what}: image must be a (N, 3, H, W) float tensor, got {shape}")
        if not image.is_floating_point():
            raise TypeError(f"{what}: image must be normalized float (use ARSeg.normalize for uint8), "
                            f"got {image.dtype}")

    def keyframe(self, image):
        """HR network on a keyframe; caches its fusion feature for the following non-keyframes."""
        self._check_image(image, "keyframe")
        size = tuple(image.shape[-2:])
        feature = self.hr_net.features(image)
        self._key_feature, self._key_size = feature, size
        return self.hr_net.classify(feature, size)

    def non_keyframe(self, image, mv_to_key):
        """LR network on image resized by `scale`, fused with the cached HR feature warped by `mv_to_key`
        ((N, 2, Hb, Wb) image-pixel motion to the keyframe)."""
        self._check_image(image, "non_keyframe")
        if self._key_feature is None:
            raise RuntimeError("non_keyframe: no keyframe has been processed yet; call keyframe() first")
        size = tuple(image.shape[-2:])
        if size != self._key_size or image.shape[0] != self._key_feature.shape[0]:
            raise ValueError(f"non_keyframe: image batch/size {(image.shape[0],) + size} differs from the "
                             f"keyframe's {(self._key_feature.shape[0],) + self._key_size}")
        if not isinstance(mv_to_key, torch.Tensor) or mv_to_key.dim() != 4 or mv_to_key.shape[:2] != (
                image.shape[0], 2):
            shape = tuple(mv_to_key.shape) if isinstance(mv_to_key, torch.Tensor) else type(mv_to_key).__name__
            raise ValueError(f"non_keyframe: mv_to_key must be a ({image.shape[0]}, 2, Hb, Wb) tensor, got {shape}")
        if self.block_size is not None:
            grid = tuple(-(-n // self.block_size) for n in size)
            if tuple(mv_to_key.shape[-2:]) != grid:
                raise ValueError(f"non_keyframe: mv_to_key grid {mv_to_key.shape[-2]}x{mv_to_key.shape[-1]} does "
                                 f"not tile the {size[0]}x{size[1]} image with {self.block_size}-pixel blocks: "
                                 f"expected {grid[0]}x{grid[1]} (ARSeg(block_size=...) sets the block size; "
                                 f"None accepts any grid)")
        mv_to_key = mv_to_key.to(device=self._key_feature.device, dtype=self._key_feature.dtype)
        small = resize_ac(image, lr_size(size, self.scale))
        mv_scale = motion_scale(self._key_feature.shape[-2:], size)
        return self.lr_net(small, self._key_feature, mv=mv_to_key, mv_scale=mv_scale, out_size=size)

    def reset(self):
        """Forget the cached keyframe feature."""
        self._key_feature = self._key_size = None

    # ---- training ----
    def lr_training_step(self, image, labels, **kwargs):
        """One LR-branch training step with this model's networks and scale: see models.lr_training_step."""
        return lr_training_step(self.lr_net, self.hr_net, image, labels, scale=self.scale, **kwargs)

    # ---- videos ----
    def normalize(self, image):
        """uint8 RGB (H, W, 3) or (N, H, W, 3), array or tensor -> (N, 3, H, W) float: (x/255 - mean) / std."""
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        if image.dtype != torch.uint8 or image.dim() not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(f"normalize: expected a uint8 RGB image (H, W, 3) or (N, H, W, 3), "
                             f"got {image.dtype} {tuple(image.shape)}")
        image = image.unsqueeze(0) if image.dim() == 3 else image
        x = image.to(self.mean.device).permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0
        return (x - self.mean) / self.std

    @torch.no_grad()
    def segment(self, frames):
        """Yield an int64 class map (H, W) per frame. `frames`: arseg_ops.video frames (.image uint8 (H, W, 3)
        RGB, .is_keyframe, .mv_to_key (2, Hb, Wb)) or (image, is_keyframe, mv_to_key) tuples. The first frame
        must be a keyframe. Images are normalized with this model's mean/std (ImageNet's by default)."""
        self.reset()
        device = self.mean.device
        for i, frame in enumerate(frames):
            if isinstance(frame, (tuple, list)):
                if len(frame) != 3:
                    raise ValueError(f"segment: frame {i} must be (image, is_keyframe, mv_to_key), "
                                     f"got a sequence of length {len(frame)}")
                image, is_key, mv = frame
            else:
                image, is_key, mv = frame.image, frame.is_keyframe, frame.mv_to_key
            x = self.normalize(image)
            if is_key:
                out = self.keyframe(x)
            else:
                if mv is None:
                    raise ValueError(f"segment: frame {i} is not a keyframe but has no mv_to_key")
                mv = torch.as_tensor(mv, dtype=torch.float32, device=device)
                out = self.non_keyframe(x, mv.unsqueeze(0) if mv.dim() == 3 else mv)
            yield out[0].argmax(dim=0).cpu()
