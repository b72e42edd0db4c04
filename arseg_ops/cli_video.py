"""`arseg segment` and `arseg motion`: AR-Seg and codec motion on H.264 videos (see arseg_ops.cli for the parser).

Outputs are written with arseg_ops.video.encode (H.264) or a small zlib PNG writer, so no imaging library is
needed beyond PyAV.
"""
import os
import struct
import sys
import time
import warnings
import zlib

from .cli import CliError, _check_device, _default_device

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")

# CamVid's 11 classes + void in SegNet's CamVid label order and colours (the 12-class setting AR-Seg trains);
# checkpoints trained with another label order need their own palette.
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0),
)
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
                  "bicyclist", "void")

# ---- images and palettes ----


def palette(num_classes):
    """(num_classes, 3) uint8: CamVid's colours first, then distinct generated ones."""
    import numpy as np

    colours = list(CAMVID_PALETTE[:num_classes])
    for i in range(len(colours), num_classes):  # golden-ratio hue steps stay distinguishable for many classes
        colours.append(tuple(int(255 * c) for c in hsv_to_rgb(np.array((i * 0.618034) % 1.0),
                                                               np.array(0.75), np.array(0.9))))
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB, all in [0, 1]; returns (..., 3) floats."""
    import numpy as np

    k = (np.stack([np.full_like(h, n) for n in (5.0, 3.0, 1.0)], axis=-1) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def motion_colours(mv, max_motion):
    """(2, Hb, Wb) motion -> (Hb, Wb, 3) uint8 on the HSV colour wheel: hue = direction, saturation = speed
    (white = still, full colour = max_motion pixels or more)."""
    import numpy as np

    dx, dy = np.asarray(mv, dtype=np.float64)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / max(max_motion, 1e-6), 0, 1)
    return (hsv_to_rgb(hue, sat, np.ones_like(hue)) * 255 + 0.5).astype(np.uint8)


def write_png(path, rgb):
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG (zlib only: no imaging library needed)."""
    import numpy as np

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _even(image):
    """Pad an (H, W, 3) image by one edge row/column where needed: H.264 4:2:0 needs even sizes."""
    import numpy as np

    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image


def _check_output(path, parser, suffixes, what):
    if not path.lower().endswith(suffixes):
        parser.error("-o/--output: %s must end with one of %s, got %r" % (what, ", ".join(suffixes), path))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error("-o/--output: folder %r does not exist" % folder)


def _progress_bar(total, desc, quiet):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, disable=quiet, file=sys.stderr)


# ---- segment ----

RANDOM_WEIGHTS_WARNING = """
!!! WARNING: no --hr-weights/--lr-weights given: AR-Seg runs with RANDOM weights. !!!
!!! The output video shows no real segmentation; use this run only to measure speed. !!!
"""


def _load_state_dict(path):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or non-tensor pickles
        raise CliError("cannot read weights %r: %s" % (path, str(exc).strip().splitlines()[0])) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(obj, dict):
        raise CliError("%r holds a %s, not a state_dict" % (path, type(obj).__name__))
    return obj


def segment(args, parser):
    import numpy as np

    from . import models, video
    from .cli import _hr_lr_ar

    _check_output(args.output, parser, VIDEO_SUFFIXES, "the segmentation video")
    if (args.hr_weights is None) != (args.lr_weights is None):
        parser.error("--hr-weights and --lr-weights go together: give both or neither")
    device = _check_device(args.device or _default_device(), parser)
    seg = models.ARSeg(args.backbone, num_classes=args.num_classes, scale=args.scale)
    if args.hr_weights:
        seg.load_official(_load_state_dict(args.hr_weights), _load_state_dict(args.lr_weights))
    else:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    seg = seg.to(device).eval()
    colours = palette(args.num_classes)
    stats = {"frames": 0, "keyframes": 0, "decode_s": 0.0, "segment_s": 0.0}
    started = time.perf_counter()
    with video.open(args.video) as clip, _progress_bar(clip.frame_count, "segment", args.quiet) as bar:
        size = (clip.height, clip.width)
        pending = []  # the frame whose class map seg.segment yields next

        def frames():
            decoded = iter(clip)
            while True:
                t0 = time.perf_counter()
                frame = next(decoded, None)
                stats["decode_s"] += time.perf_counter() - t0
                if frame is None:
                    return
                pending.append(frame)
                yield frame

        def rendered():
            maps = seg.segment(frames())
            while True:
                t0 = time.perf_counter()
                classes = next(maps, None)  # .cpu() inside segment waits for the device
                stats["segment_s"] += time.perf_counter() - t0
                if classes is None:
                    return
                frame = pending.pop()
                stats["frames"] += 1
                stats["keyframes"] += bool(frame.is_keyframe)
                rgb = colours[classes.numpy()]
                if args.overlay:
                    rgb = ((rgb.astype(np.uint16) + frame.image.numpy()) // 2).astype(np.uint8)
                bar.update(1)
                yield _even(rgb)

        video.encode(rendered(), args.output, gop=12, fps=clip.fps)
    total_s = time.perf_counter() - started
    n, k = stats["frames"], stats["keyframes"]
    hr, lr, _ = _hr_lr_ar(args.backbone, size, args.scale, 12, args.num_classes)
    average = (k * hr + (n - k) * lr) / n
    model_s = max(stats["segment_s"] - stats["decode_s"], 1e-9)
    print("arseg segment: %s, %s at LR scale %g on %s%s" % (args.video, args.backbone, args.scale, device,
                                                          "" if args.hr_weights else " (RANDOM weights)"))
    print("frames %d, keyframes %d (HR network), %d LR frames with CReFF" % (n, k, n - k))
    print("compute %.2f GMACs/frame on average vs %.2f for the 1.0x model (%.1f%%)" % (average, hr,
                                                                                    100 * average / hr))
    print("speed %.1f frames/s segmentation (model only), %.1f frames/s end to end (decode, motion, model, "
          "encode)" % (n / model_s, n / total_s))
    print("wrote " + args.output)
    return 0


# ---- motion ----


def _motion_image(frame, max_motion):
    """The frame and its motion to the keyframe, side by side (motion cells drawn at their pixels)."""
    import numpy as np

    image = frame.image.numpy()
    h, w = image.shape[:2]
    cells = motion_colours(frame.mv_to_key.numpy(), max_motion)
    hb, wb = cells.shape[:2]
    # the block lookup of mv_warp: pixel (y, x) uses cell (floor(y*Hb/H), floor(x*Wb/W))
    pixels = cells[(np.arange(h) * hb // h)[:, None], (np.arange(w) * wb // w)[None, :]]
    return np.concatenate([image, pixels], axis=1)


def _motion_scale(fields):
    """Pixels shown at full colour: the 99th percentile of the motion magnitudes (robust to stray vectors)."""
    import numpy as np

    mags = np.concatenate([np.hypot(*np.asarray(f, dtype=np.float64)).ravel() for f in fields])
    return float(np.percentile(mags, 99)) if mags.size and np.percentile(mags, 99) > 0 else 1.0


def motion(args, parser):
    from . import video

    png = args.output.lower().endswith(".png")
    _check_output(args.output, parser, (".png",) + VIDEO_SUFFIXES, "the motion visualization")
    if args.frame is not None and (not png or args.frame < 0):
        parser.error("--frame: a frame index >= 0, for PNG output only")
    if args.max_motion is not None and not args.max_motion > 0:
        parser.error("--max-motion: expected a positive number of pixels, got %r" % (args.max_motion,))
    if png:
        chosen, count = None, 0
        with video.open(args.video, block_size=args.block_size) as clip:
            for frame in clip:
                count += 1
                if args.frame is None and frame.is_keyframe and chosen is not None:
                    break  # the first GOP ended: keep its last frame (the longest motion chain)
                if args.frame is None or frame.index == args.frame:
                    chosen = frame
                    if args.frame is not None:
                        break
        if chosen is None:
            raise CliError("--frame %d: the video has only %d frames" % (args.frame, count))
        max_motion = args.max_motion or _motion_scale([chosen.mv_to_key])
        write_png(args.output, _even(_motion_image(chosen, max_motion)))
        print("arseg motion: frame %d (keyframe %d), full colour at %.2f px; wrote %s"
              % (chosen.index, chosen.key_index, max_motion, args.output))
        return 0
    max_motion = args.max_motion
    if max_motion is None:  # a first pass over the motion only, so every frame shares one colour scale
        with video.open(args.video, block_size=args.block_size) as clip:
            max_motion = _motion_scale([frame.mv_to_key for frame in clip])
    with video.open(args.video, block_size=args.block_size) as clip, \
            _progress_bar(clip.frame_count, "motion", args.quiet) as bar:
        def rendered():
            for frame in clip:
                bar.update(1)
                yield _even(_motion_image(frame, max_motion))

        count = video.encode(rendered(), args.output, gop=12, fps=clip.fps)
    print("arseg motion: %d frames, full colour at %.2f px; wrote %s" % (count, max_motion, args.output))
    return 0

