"""A procedural labelled H.264 video dataset small enough to train AR-Seg on two CPU cores.

Each sequence pans a textured world (sky band with thin wires, ground band, thin poles carrying small signs)
past the camera at a few pixels per frame, while cars (textured rectangles) drive at their own speed. Poles and
wires are 1 px wide and signs 3-4 px: exact at full resolution, smeared below a pixel at 0.5x, which is where
plain low resolution loses accuracy and the warped high-resolution keyframe feature can give it back. Frames and
labels are rendered together, so labels are exact; videos are AR-friendly H.264 (arseg_ops.video.encode).
"""
import os
from pathlib import Path

import numpy as np

from .. import video
from .manifest import Row, write_manifest
from .png import write_png

CLASSES = ("sky", "ground", "car", "pole", "sign", "wire")
SKY, GROUND, CAR, POLE, SIGN, WIRE = range(len(CLASSES))


def _texture(rng, h, w, base, amplitude):
    """Smooth colour texture: a few random sinusoids per channel around `base` (RGB)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        acc = np.zeros((h, w), np.float32)
        for _ in range(4):
            fy, fx = rng.uniform(-0.35, 0.35, 2)
            acc += np.sin(fx * xx + fy * yy + rng.uniform(0, 6.3))
        out[..., c] = base[c] + amplitude * acc / 4
    return out


def _world(rng, h, w):
    """(image float (h, w, 3), label uint8 (h, w)) of the static, panned part of a scene."""
    horizon = int(h * rng.uniform(0.45, 0.6))
    image = np.concatenate([_texture(rng, horizon, w, (120, 160, 215), 45),
                            _texture(rng, h - horizon, w, (110, 100, 80), 40)], axis=0)
    label = np.full((h, w), GROUND, np.uint8)
    label[:horizon] = SKY
    for _ in range(rng.integers(2, 4)):  # wires: 1 px, gently sagging across the sky
        y0, sag = rng.integers(3, horizon - 6), rng.uniform(2, 5)
        xs = np.arange(w)
        ys = np.round(y0 + sag * np.sin(np.pi * (xs % 97) / 97)).astype(int).clip(0, horizon - 1)
        image[ys, xs] = (40, 40, 45)
        label[ys, xs] = WIRE
    x = int(rng.integers(4, 16))
    while x < w - 4:  # poles: 1 px (sometimes 2), from the ground up into the sky, each with a sign
        width = 1 + int(rng.random() < 0.3)
        top = int(rng.integers(2, horizon // 2))
        bottom = int(rng.integers(horizon + 4, h - 2))
        image[top:bottom, x:x + width] = (60, 55, 50)
        label[top:bottom, x:x + width] = POLE
        size = int(rng.integers(3, 5))
        sy = int(rng.integers(top, max(top + 1, horizon - size)))
        colour = ((220, 40, 40), (230, 200, 30), (40, 90, 220))[int(rng.integers(3))]
        image[sy:sy + size, x - 1:x - 1 + size] = colour
        label[sy:sy + size, x - 1:x - 1 + size] = SIGN
        x += int(rng.integers(9, 24))
    return image, label


def render_sequence(rng, size=(96, 128), frames=40):
    """Yield (image uint8 (H, W, 3), label uint8 (H, W)) for one sequence."""
    h, w = size
    pan = int(rng.choice([-2, -1, 1, 2]))
    world_w = w + abs(pan) * frames + 2
    world, world_label = _world(rng, h, world_w)
    cars = []
    for _ in range(int(rng.integers(2, 4))):
        ch, cw = int(rng.integers(h // 8, h // 4)), int(rng.integers(w // 6, w // 3))
        y = int(rng.integers(int(h * 0.6), h - ch))
        body = _texture(rng, ch, cw, rng.uniform(40, 220, 3), 30)
        body[ch // 4:ch // 2, cw // 6:cw - cw // 6] *= 0.45  # windows
        cars.append({"y": y, "x": float(rng.uniform(-cw, w)), "v": float(rng.choice([-1, 1]) * rng.uniform(1, 3)),
                     "body": body})
    noise_rng = np.random.default_rng(int(rng.integers(1 << 31)))
    for t in range(frames):
        offset = (abs(pan) * frames + 1) + pan * t if pan < 0 else pan * t
        image = world[:, offset:offset + w].copy()
        label = world_label[:, offset:offset + w].copy()
        for car in cars:
            x0 = int(round(car["x"] + car["v"] * t)) % (w + car["body"].shape[1]) - car["body"].shape[1]
            ch, cw = car["body"].shape[:2]
            lo, hi = max(0, x0), min(w, x0 + cw)
            if lo < hi:
                image[car["y"]:car["y"] + ch, lo:hi] = car["body"][:, lo - x0:hi - x0]
                label[car["y"]:car["y"] + ch, lo:hi] = CAR
        image += noise_rng.normal(0, 4, image.shape).astype(np.float32)
        yield np.clip(image, 0, 255).astype(np.uint8), label


def write_dataset(out_dir, *, sequences=6, val_sequences=2, frames=40, size=(96, 128), label_every=2,
                  first_label=11, gop=12, seed=0):
    """Write <out>/videos/seqNN.mp4, <out>/labels/seqNN_FFFFFF.png and <out>/manifest.csv (split train for the
    first sequences, val for the last `val_sequences`). Labelled frames: first_label, +label_every, ..."""
    if size[0] % 16 or size[1] % 16:
        raise ValueError(f"size must be multiples of 16 (0.5x keeps the networks' strides exact), got {size}")
    if not 0 <= val_sequences < sequences:
        raise ValueError(f"val_sequences must be in 0..{sequences - 1}, got {val_sequences}")
    out = Path(os.fspath(out_dir))
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sequences):
        name = f"seq{s:02d}"
        images, labels = zip(*render_sequence(rng, size, frames))
        video_path = out / "videos" / f"{name}.mp4"
        video.encode(list(images), video_path, gop=gop, crf=18, preset="veryfast")
        split = "val" if s >= sequences - val_sequences else "train"
        for t in range(first_label, frames, label_every):
            label_path = out / "labels" / f"{name}_{t:06d}.png"
            write_png(label_path, labels[t])
            rows.append(Row(str(video_path), t, str(label_path), split))
    write_manifest(rows, out / "manifest.csv")
    return out / "manifest.csv"
