"""Joint augmentation of a training pair: the same random scale, crop and horizontal flip for the keyframe,
the labelled frame, its label and the motion between them.

A sample is a dict: "key" and "frame" float (3, H, W), "label" int64 (H, W), "motion" float (2, H, W) in image
pixels at pixel resolution (pixel p of the frame came from p + motion[:, p] in the keyframe; `dense_motion`
expands arseg_ops.video's block grid). Geometry acts on the motion field like on an image; in addition the
vectors are multiplied by the scale factors, and the flip negates dx (x -> W-1-x maps p + m to p' - m_x).
"""
import torch
import torch.nn.functional as F

from .manifest import IGNORE_INDEX


def dense_motion(mv, block_size, size):
    """(2, Hb, Wb) block-grid motion -> (2, H, W), each pixel taking its block's vector."""
    h, w = size
    return mv.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[:, :h, :w].contiguous()


def scale_sample(sample, size):
    """Resize everything to size (h, w): images bilinearly, label and motion by nearest neighbour; vectors are
    multiplied by w / W (dx) and h / H (dy)."""
    h, w = size
    H, W = sample["frame"].shape[-2:]
    if (h, w) == (H, W):
        return dict(sample)
    out = dict(sample)
    for k in ("key", "frame"):
        out[k] = F.interpolate(sample[k][None], size=(h, w), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    out["label"] = F.interpolate(sample["label"][None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    motion = F.interpolate(sample["motion"][None], size=(h, w), mode="nearest")[0]
    out["motion"] = motion * motion.new_tensor([w / W, h / H]).view(2, 1, 1)
    return out


def crop_sample(sample, top, left, h, w):
    """Window [top, top+h) x [left, left+w); parts outside the image are padded (images and motion with 0,
    the label with the ignore index). Vectors are unchanged: a translation moves both frames alike."""
    H, W = sample["frame"].shape[-2:]
    pad = (max(0, -left), max(0, left + w - W), max(0, -top), max(0, top + h - H))
    out = {}
    for k, v in sample.items():
        fill = IGNORE_INDEX if k == "label" else 0
        if any(pad):
            v = F.pad(v[None] if v.dim() == 2 else v, pad, value=fill)
            v = v[0] if k == "label" else v
        t, l = top + pad[2], left + pad[0]
        out[k] = v[..., t:t + h, l:l + w].contiguous()
    return out


def flip_sample(sample):
    """Mirror left-right; the motion field is mirrored and its dx negated."""
    out = {k: v.flip(-1) for k, v in sample.items()}
    out["motion"] = out["motion"] * out["motion"].new_tensor([-1.0, 1.0]).view(2, 1, 1)
    return out


def random_augment(sample, generator, *, scale_range=(0.75, 1.5), crop_size=None, flip=True, multiple=16):
    """Random scale in scale_range, random crop of crop_size (default: the input size), random flip (p=0.5).
    The scaled size is rounded to a multiple of `multiple`, which keeps every network's strides exact."""
    H, W = sample["frame"].shape[-2:]
    crop_h, crop_w = crop_size or (H, W)
    lo, hi = scale_range
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    size = (max(multiple, round(H * s / multiple) * multiple), max(multiple, round(W * s / multiple) * multiple))
    sample = scale_sample(sample, size)
    top = int(torch.randint(min(0, size[0] - crop_h), max(0, size[0] - crop_h) + 1, (), generator=generator))
    left = int(torch.randint(min(0, size[1] - crop_w), max(0, size[1] - crop_w) + 1, (), generator=generator))
    sample = crop_sample(sample, top, left, crop_h, crop_w)
    if flip and float(torch.rand((), generator=generator)) < 0.5:
        sample = flip_sample(sample)
    return sample
