"""Label images as PNG without an imaging library: zlib writer, PyAV (FFmpeg's PNG decoder) reader."""
import os
import struct
import zlib

import numpy as np


def write_png(path, image):
    """Write uint8 (H, W) as 8-bit grayscale or (H, W, 3) as RGB PNG (filter 0 on every row)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        colour_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"write_png: image must be (H, W) or (H, W, 3) uint8, got {image.shape}")
    h, w = image.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * channels)], axis=1)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def read_label_png(path):
    """A single-channel 8-bit PNG (grayscale, or palette indices) -> uint8 (H, W) numpy array."""
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label image not found: {path!r}")
    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration) as e:
        raise ValueError(f"cannot read {path!r} as a PNG image: {e}") from e
    name = frame.format.name
    if name == "gray":
        return frame.to_ndarray()
    if name == "pal8":  # the class id is the palette index, not the colour
        return _pal8_indices(frame)
    raise ValueError(f"{path!r}: label images must be single-channel 8-bit PNGs (class ids as gray levels or "
                     f"palette indices), got pixel format {name!r}")


def _pal8_indices(frame):
    plane = frame.planes[0]
    data = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return data[:frame.height, :frame.width].copy()
