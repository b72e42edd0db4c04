"""Networks per training stage, the shared frozen classifier, and the checkpoint file format.

Stages (the paper's): "hr" trains the full-resolution network; "lr" the same network on frames resized by
`scale` (the LR-only baseline); "ar" the LR network with CReFF, initialised from the HR weights, trained with FST
against the frozen HR network whose classifier it shares (copied and frozen).
"""
import os

import torch

from ..models import build_networks
from ..models.checkpoint import load_official_state_dict

STAGES = ("hr", "lr", "ar")
FORMAT = "arseg-train-1"


def classifier(net):
    """The 1x1 classifier conv after the fusion feature (PSPNet: final_conv, BiSeNet: conv_out.conv_out)."""
    return net.conv_out.conv_out if hasattr(net, "conv_out") else net.final_conv


def init_creff_identity(creff):
    """q, k, v convs = identity (centre tap 1, bias 0): at the start the fused feature is the LR feature plus a
    content-weighted mean of the warped HR feature, so q, k and v all get gradient from the first step. Measured
    with a 7x7 window (benchmarks/accuracy.py, seed 0, 2026-12-06): 15% recovery against -3% for PyTorch's
    init; the earlier variant with v = 0 (q, k got no gradient at first) learnt less than PyTorch's init."""
    with torch.no_grad():
        for conv in (creff.lr_query_conv, creff.hr_key_conv, creff.hr_value_conv):
            conv.weight.zero_()
            conv.weight[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
            conv.bias.zero_()


def build_stage(stage, backbone, num_classes, kernel_size=7, hr_state=None, creff_init="default",
                position_bias=False):
    """(trained network, frozen HR network or None). For "lr"/"ar", hr_state (an HR state_dict) initialises
    the trained network; "ar" needs it (the frozen teacher and the shared classifier). creff_init: "default"
    (PyTorch's, as the release) or "identity" (init_creff_identity). position_bias: CReFF's learned
    relative-position bias of the logits (models.CReFF)."""
    if creff_init not in ("identity", "default"):
        raise ValueError(f"creff_init must be 'identity' or 'default', got {creff_init!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    hr_net, lr_net = build_networks(backbone, num_classes, kernel_size, position_bias=position_bias)
    if stage == "hr":
        return hr_net, None
    if hr_state is not None:
        load_official_state_dict(hr_net, hr_state, name="HR weights")
    if stage == "lr":
        return hr_net, None
    if hr_state is None:
        raise ValueError("stage 'ar' needs the HR network's weights (--hr-checkpoint)")
    # Every HR tensor has the same name in the LR network; only CReFF (fuse_attention) is new.
    missing, unexpected = lr_net.load_state_dict(hr_net.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fuse_attention.") for k in missing), (missing, unexpected)
    if creff_init == "identity":
        init_creff_identity(lr_net.fuse_attention)
    for p in classifier(lr_net).parameters():
        p.requires_grad_(False)
    hr_net.eval()
    for p in hr_net.parameters():
        p.requires_grad_(False)
    return lr_net, hr_net


def save_checkpoint(path, payload):
    """Write atomically (tmp file + rename) so an interrupted save never leaves a truncated checkpoint."""
    tmp = f"{path}.tmp"
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an `arseg train` checkpoint (for the release's .pth files use "
                         "`arseg eval --official HR.pth LR.pth`)")
    return ckpt


def release_state_dict(path):
    """A state_dict saved by the authors' release (optionally under a "state_dict" key)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path!r} holds a {type(ckpt).__name__}, not a state_dict")
    return ckpt


def hr_weights(path):
    """The HR network's state_dict from an `arseg train` checkpoint (stage hr, or the teacher of stage ar) or
    from the release's HR .pth."""
    ckpt = release_state_dict(path)
    if ckpt.get("format") != FORMAT:
        return ckpt
    if ckpt["stage"] == "hr":
        return ckpt["model"]
    if ckpt["stage"] == "ar":
        return ckpt["hr_model"]
    raise ValueError(f"{path!r} is a stage {ckpt['stage']!r} checkpoint; the HR network comes from stage hr")


def arseg_from_checkpoint(path, block_size=None):
    """(ARSeg, checkpoint) from an `arseg train --stage ar` checkpoint, which holds everything inference needs:
    backbone, classes, LR scale, CReFF window, the LR network with CReFF ("model") and the frozen HR network
    ("hr_model"). block_size: the motion grid cell (default: the checkpoint's training value, else 4)."""
    from ..models import ARSeg

    ckpt = load_checkpoint(path)
    if ckpt["stage"] != "ar":
        raise ValueError(f"{path!r} is a stage {ckpt['stage']!r} checkpoint; AR-Seg needs the stage 'ar' one "
                         "(it holds the LR network with CReFF and the HR network; a stage 'lr' network, the LR-only "
                         "baseline, goes to `arseg eval --lr-checkpoint`)")
    model = ARSeg(ckpt["backbone"], ckpt["num_classes"], ckpt["scale"], ckpt["kernel_size"],
                  block_size=block_size or ckpt.get("block_size", 4),
                  position_bias=ckpt.get("position_bias", False))  # older checkpoints: none
    model.hr_net.load_state_dict(ckpt["hr_model"])
    model.lr_net.load_state_dict(ckpt["model"])
    return model, ckpt
