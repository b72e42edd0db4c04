"""`arseg eval`: the paper's protocol on the labelled frames of a manifest split.

For every labelled frame t and every keyframe distance d = 0..L-1 (d <= t), the keyframe t-d runs at full
resolution (HR network) and frame t at `scale` with CReFF fusing the keyframe feature warped by the codec
motion t -> t-d (d = 0: frame t is the keyframe itself, i.e. the HR result). The confusion matrix is summed
per d; the table reports mIoU per d and their mean (the accuracy over a GOP of length L), next to the HR
network on every frame (1.0x) and, given a stage-lr checkpoint, the LR-only network at `scale`.
"""
from pathlib import Path

import torch

from ..models import ARSeg
from ..models.frames import lr_size
from ..models.creff import resize_ac
from . import nets
from .data import ClipCache, FramePairDataset
from .manifest import camvid_class_map, read_manifest
from .metrics import confusion_matrix, mean_iou


# What the release's .pth files are taken to be when an option is left out (its CamVid PSPNet-18 setting); a
# stage-ar checkpoint knows its own network.
RELEASE_NETWORK = {"backbone": "psp18", "kernel_size": 7, "scale": 0.5}


def build_arseg(args):
    """ARSeg from an `arseg train` stage-ar checkpoint, or from the release's (HR, LR) .pth files."""
    if args.official:
        hr_path, lr_path = args.official
        net = {k: getattr(args, k) or v for k, v in RELEASE_NETWORK.items()}
        model = ARSeg(net["backbone"], args.num_classes, net["scale"], net["kernel_size"],
                      block_size=args.block_size)
        model.load_official(nets.release_state_dict(hr_path), nets.release_state_dict(lr_path))
        return model
    return nets.arseg_from_checkpoint(args.checkpoint, args.block_size)[0]


def _load_lr_only(path, backbone, num_classes):
    ckpt = nets.load_checkpoint(path)
    if ckpt["stage"] != "lr":
        raise ValueError(f"--lr-checkpoint {path!r} is a stage {ckpt['stage']!r} checkpoint, not 'lr'")
    if (ckpt["backbone"], ckpt["num_classes"]) != (backbone, num_classes):
        raise ValueError(f"--lr-checkpoint {path!r} is {ckpt['backbone']} with {ckpt['num_classes']} classes; "
                         f"the AR model is {backbone} with {num_classes}")
    net, _ = nets.build_stage("hr", backbone, num_classes)
    net.load_state_dict(ckpt["model"])
    return net, ckpt["scale"]


@torch.no_grad()
def evaluate(args, progress=None):
    """Returns {"distances": [mIoU per d], "ar_mean", "hr", "lr_only" (or None), "frames", "length"}."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_arseg(args).to(device).eval()
    num_classes = model.hr_net.num_classes
    lr_only = None
    if args.lr_checkpoint:
        lr_net, lr_scale = _load_lr_only(args.lr_checkpoint, model.backbone, num_classes)
        lr_only = lr_net.to(device).eval()
    rows = read_manifest(args.manifest, split=args.split)
    cache = ClipCache(args.cache_dir or Path(args.manifest).resolve().parent / ".arseg_cache",
                      length=args.length, block_size=args.block_size)
    cache.prepare(rows)
    data = FramePairDataset(rows, cache, num_classes,
                            class_map=camvid_class_map() if args.class_map == "camvid" else None)
    L = args.length
    cms = [torch.zeros(num_classes, num_classes, dtype=torch.int64) for _ in range(L)]
    cm_hr = torch.zeros_like(cms[0])
    cm_lr = torch.zeros_like(cms[0])
    normalize = lambda x: (x.to(device) - model.mean) / model.std  # noqa: E731
    for i in range(len(rows)):
        frames, motion, label = data.clip(i)
        n = min(L, frames.shape[0])
        images = normalize(frames.flip(0)[:n].permute(0, 3, 1, 2).float() / 255.0)  # images[d] = frame t-d
        frame = images[:1]
        pred_hr = model.keyframe(frame)[0].argmax(0).cpu()  # d = 0: frame t is the keyframe
        cm_hr += confusion_matrix(pred_hr, label, num_classes)
        cms[0] += confusion_matrix(pred_hr, label, num_classes)
        if n > 1:
            model.keyframe(images[1:])  # the keyframes t-1 .. t-n+1 at once, one per distance
            out = model.non_keyframe(frame.expand(n - 1, -1, -1, -1), motion[1:n].to(device))
            for d in range(1, n):
                cms[d] += confusion_matrix(out[d - 1].argmax(0).cpu(), label, num_classes)
        if lr_only is not None:
            small = resize_ac(frame, lr_size(frame.shape[-2:], lr_scale))
            pred = lr_only(small, out_size=tuple(label.shape))[0].argmax(0).cpu()
            cm_lr += confusion_matrix(pred, label, num_classes)
        if progress is not None:
            progress(i + 1, len(rows))
    per_d = [mean_iou(cm) if cm.sum() else float("nan") for cm in cms]
    valid = [m for m in per_d if m == m]
    return {"distances": per_d, "ar_mean": sum(valid) / len(valid), "hr": mean_iou(cm_hr),
            "lr_only": mean_iou(cm_lr) if lr_only is not None else None, "frames": len(rows), "length": L,
            "scale": model.scale}


def format_table(result):
    lines = [f"{'d':>4}  {'AR mIoU':>8}"]
    lines += [f"{d:>4}  {100 * m:8.2f}" for d, m in enumerate(result["distances"])]
    lines.append(f"mean  {100 * result['ar_mean']:8.2f}   (AR {result['scale']}x, GOP {result['length']}, "
                 f"{result['frames']} labelled frames)")
    lines.append(f"HR 1.0x       {100 * result['hr']:8.2f}")
    if result["lr_only"] is not None:
        lines.append(f"LR-only       {100 * result['lr_only']:8.2f}")
    return "\n".join(lines)
