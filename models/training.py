"""Training pieces for AR-Seg's LR branch: the feature-similarity loss (FST) and one training step.

The LR network (with CReFF) is trained on a non-keyframe with the segmentation loss plus FST: the MSE between
its fused feature (the classifier's input) and the frozen HR network's feature of the same frame, so that the
LR branch's classifier input matches the space the HR classifier was trained on.
"""
import torch
import torch.nn.functional as F

from .frames import lr_size, warp_to_frame
from .creff import resize_ac


def fst_loss(lr_fused_feature, hr_feature, *, reduction="mean"):
    """Feature-similarity loss: MSE(lr_fused_feature, hr_feature); the HR feature is a constant target."""
    if not isinstance(lr_fused_feature, torch.Tensor) or not isinstance(hr_feature, torch.Tensor):
        raise TypeError("fst_loss: lr_fused_feature and hr_feature must be tensors")
    if lr_fused_feature.shape != hr_feature.shape:
        raise ValueError(f"fst_loss: lr_fused_feature {tuple(lr_fused_feature.shape)} and hr_feature "
                         f"{tuple(hr_feature.shape)} must have the same shape")
    return F.mse_loss(lr_fused_feature, hr_feature.detach(), reduction=reduction)


def lr_training_step(lr_net, hr_net, image, labels, *, key_image=None, mv_to_key=None, scale=0.5,
                     fst_weight=1.0, ignore_index=255, optimizer=None):
    """One step for the LR branch. Returns {"loss", "seg_loss", "fst_loss"} (tensors; "loss" has a graph).

    image (N,3,H,W) normalized current frame, labels (N,H,W) int64; key_image/mv_to_key: the keyframe and
    image-pixel motion to it (default: the frame itself with zero motion). The HR network runs frozen (eval,
    no grad); `lr_net` may be wrapped in DistributedDataParallel: all its parameters take part in the forward.
    With an optimizer, also does zero_grad / backward / step.
    """
    if labels.dim() != 3 or labels.shape[0] != image.shape[0] or labels.dtype != torch.int64:
        raise ValueError(f"lr_training_step: labels must be int64 (N, H, W) with N={image.shape[0]}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    size = tuple(image.shape[-2:])
    if key_image is None:
        key_image = image
    if mv_to_key is None:
        mv_to_key = image.new_zeros(image.shape[0], 2, 1, 1)
    hr_net.eval()
    with torch.no_grad():
        hr_key = hr_net.features(key_image)
        hr_target = hr_key if key_image is image else hr_net.features(image)
        warped = warp_to_frame(hr_key, mv_to_key, size)
    small = resize_ac(image, lr_size(size, scale))
    out, fused = lr_net(small, warped, out_size=tuple(labels.shape[-2:]), return_feature=True)
    # cross_entropy applies log_softmax, which leaves PSPNet's log-probabilities unchanged: one loss for both.
    seg = F.cross_entropy(out, labels, ignore_index=ignore_index)
    fst = fst_loss(fused, hr_target)
    loss = seg + fst_weight * fst
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"loss": loss, "seg_loss": seg.detach(), "fst_loss": fst.detach()}
