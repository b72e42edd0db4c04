"""Images for the video commands: class palettes, the motion colour wheel, a dependency-free PNG writer."""
import struct
import zlib

import numpy as np

# CamVid's 11 classes + void in SegNet's CamVid label order and colours (the 12-class setting AR-Seg trains);
# checkpoints trained with another label order need their own palette.
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0),
)
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
                  "bicyclist", "void")

def palette(num_classes):
    """(num_classes, 3) uint8: CamVid's colours first, then distinct generated ones."""
    colours = list(CAMVID_PALETTE[:num_classes])
    for i in range(len(colours), num_classes):  # golden-ratio hue steps stay distinguishable for many classes
        colours.append(tuple(int(255 * c) for c in hsv_to_rgb(np.array((i * 0.618034) % 1.0),
                                                               np.array(0.75), np.array(0.9))))
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB, all in [0, 1]; returns (..., 3) floats."""
    k = (np.stack([np.full_like(h, n) for n in (5.0, 3.0, 1.0)], axis=-1) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def motion_colours(mv, max_motion):
    """(2, Hb, Wb) motion -> (Hb, Wb, 3) uint8 on the HSV colour wheel: hue = direction, saturation = speed
    (white = still, full colour = max_motion pixels or more)."""
    dx, dy = np.asarray(mv, dtype=np.float64)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / max(max_motion, 1e-6), 0, 1)
    return (hsv_to_rgb(hue, sat, np.ones_like(hue)) * 255 + 0.5).astype(np.uint8)


def write_png(path, rgb):
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG (zlib only: no imaging library needed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def even(image):
    """Pad an (H, W, 3) image by one edge row/column where needed: H.264 4:2:0 needs even sizes."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image
