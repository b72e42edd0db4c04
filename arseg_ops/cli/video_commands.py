"""`arseg segment` and `arseg motion`: AR-Seg and codec motion on H.264 videos.

Outputs are written with arseg_ops.video.encode (H.264) or a small zlib PNG writer (images.py), so no imaging
library is needed beyond PyAV.
"""
import sys
import time

import numpy as np
import torch

from .. import models
from . import common
from .common import CliError
from .flops_command import hr_lr_ar
from .images import draw_motion_legend, even, motion_colours, palette, write_png

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")

# ---- segment ----

RANDOM_WEIGHTS_WARNING = """
!!! WARNING: no --checkpoint or --hr-weights/--lr-weights given: AR-Seg runs with RANDOM weights. !!!
!!! The output video shows no real segmentation; use this run only to measure speed. !!!
"""
# What segment uses without a checkpoint (the release's CamVid setting); a checkpoint brings its own.
RELEASE_DEFAULTS = {"backbone": "psp18", "scale": 0.5, "num_classes": 12}


def _load_state_dict(path, option):
    from ..train import nets

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or non-tensor pickles
        raise CliError("cannot read weights %r: %s" % (path, str(exc).strip().splitlines()[0])) from exc
    if isinstance(obj, dict) and obj.get("format") == nets.FORMAT:
        raise CliError("%s %r is an `arseg train` checkpoint (stage %s), not a release .pth: give a stage ar "
                       "checkpoint as --checkpoint alone" % (option, path, obj.get("stage")))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # the release's training checkpoints wrap the weights
    if not isinstance(obj, dict):
        raise CliError("%r holds a %s, not a state_dict" % (path, type(obj).__name__))
    return obj


def _video():
    """arseg_ops.video, imported when a video command runs: it needs PyAV, which the other commands do not."""
    from .. import video

    return video


def _segment_model(args, parser):
    """ARSeg from --checkpoint (which knows backbone, classes, scale and window), the release's two .pth files,
    or random weights; fills args.backbone / scale / num_classes / kernel_size with what the model uses."""
    from ..train import nets

    if args.checkpoint:
        if args.hr_weights or args.lr_weights:
            parser.error("--checkpoint holds both networks: give it alone, without --hr-weights/--lr-weights")
        try:
            seg, ckpt = nets.arseg_from_checkpoint(args.checkpoint)
        except ValueError as exc:
            raise CliError("--checkpoint: %s" % exc) from None
        for name in RELEASE_DEFAULTS:
            given = getattr(args, name)
            if given is not None and given != ckpt[name]:
                parser.error("--%s %s: the checkpoint was trained with %s %s; leave the option out"
                             % (name.replace("_", "-"), given, name.replace("_", " "), ckpt[name]))
            setattr(args, name, ckpt[name])
        args.kernel_size = ckpt["kernel_size"]
        return seg
    if (args.hr_weights is None) != (args.lr_weights is None):
        parser.error("--hr-weights and --lr-weights go together: give both or neither (or a --checkpoint of "
                     "`arseg train --stage ar`)")
    for name, value in RELEASE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.kernel_size = 7
    weights = None
    if args.hr_weights:
        weights = _load_state_dict(args.hr_weights, "--hr-weights"), _load_state_dict(args.lr_weights,
                                                                                       "--lr-weights")
    seg = models.ARSeg(args.backbone, num_classes=args.num_classes, scale=args.scale)
    if weights:
        seg.load_official(*weights)
    return seg


def weights_note(args):
    if args.checkpoint:
        return " (checkpoint %s)" % args.checkpoint
    return "" if args.hr_weights else " (RANDOM weights)"


def segment(args, parser):
    video = _video()
    common.check_output(args.output, parser, VIDEO_SUFFIXES, "the segmentation video")
    device = common.resolve_device(args.device, parser)
    seg = _segment_model(args, parser).to(device).eval()
    # The video is opened and checked before the RANDOM-weights banner is printed, so a missing or unreadable
    # file is the only message the user sees. Its motion grid is the one the model expects.
    with video.open(args.video, block_size=seg.block_size) as clip:
        if not (args.checkpoint or args.hr_weights):
            print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
        return _segment_clip(args, clip, seg, device)


def _segment_clip(args, clip, seg, device):
    colours = palette(args.num_classes)
    stats = {"frames": 0, "keyframes": 0, "decode_s": 0.0, "segment_s": 0.0}
    started = time.perf_counter()
    with common.progress_bar(clip.frame_count, "segment", args.quiet) as bar:
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
                yield even(rgb)

        _video().encode(rendered(), args.output, gop=12, fps=clip.fps)
    total_s = time.perf_counter() - started
    n, k = stats["frames"], stats["keyframes"]
    hr, lr, _ = hr_lr_ar(args.backbone, size, args.scale, 12, args.num_classes, args.kernel_size)
    average = (k * hr + (n - k) * lr) / n
    model_s = max(stats["segment_s"] - stats["decode_s"], 1e-9)
    print("arseg segment: %s, %s at LR scale %g on %s%s" % (args.video, args.backbone, args.scale, device,
                                                          weights_note(args)))
    print("frames %d, keyframes %d (HR network), %d LR frames with CReFF" % (n, k, n - k))
    print("compute %.2f GMACs/frame on average vs %.2f for the 1.0x model (%.1f%%)" % (average, hr,
                                                                                    100 * average / hr))
    print("speed %.1f frames/s segmentation (model only), %.1f frames/s end to end (decode, motion, model, "
          "encode)" % (n / model_s, n / total_s))
    print("wrote " + args.output)
    return 0


# ---- motion ----


def _motion_image(frame, max_motion):
    """The frame and how its content moved on screen since the keyframe, side by side (motion cells drawn at
    their pixels), with the colour-wheel legend in the motion panel's bottom-right corner.

    mv_to_key points from a pixel to where its content was in the keyframe, so the screen motion since the
    keyframe is -mv_to_key: a background panning left is drawn in the disc's left colour."""
    image = frame.image.numpy()
    h, w = image.shape[:2]
    cells = motion_colours(-frame.mv_to_key.numpy(), max_motion)
    hb, wb = cells.shape[:2]
    # the block lookup of mv_warp: pixel (y, x) uses cell (floor(y*Hb/H), floor(x*Wb/W))
    pixels = cells[(np.arange(h) * hb // h)[:, None], (np.arange(w) * wb // w)[None, :]]
    draw_motion_legend(pixels, max_motion)
    return np.concatenate([image, pixels], axis=1)


def _motion_scale(fields):
    """Pixels shown at full colour: the 99th percentile of the motion magnitudes (robust to stray vectors)."""
    mags = np.concatenate([np.hypot(*np.asarray(f, dtype=np.float64)).ravel() for f in fields])
    return float(np.percentile(mags, 99)) if mags.size and np.percentile(mags, 99) > 0 else 1.0


def motion(args, parser):
    video = _video()
    png = args.output.lower().endswith(".png")
    common.check_output(args.output, parser, (".png",) + VIDEO_SUFFIXES, "the motion visualization")
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
        write_png(args.output, even(_motion_image(chosen, max_motion)))
        print("arseg motion: frame %d (keyframe %d), motion on screen since the keyframe, full colour at %.2f px; "
              "wrote %s" % (chosen.index, chosen.key_index, max_motion, args.output))
        return 0
    max_motion = args.max_motion
    if max_motion is None:  # a first pass over the motion only, so every frame shares one colour scale
        with video.open(args.video, block_size=args.block_size) as clip:
            max_motion = _motion_scale([frame.mv_to_key for frame in clip])
    with video.open(args.video, block_size=args.block_size) as clip, \
            common.progress_bar(clip.frame_count, "motion", args.quiet) as bar:
        def rendered():
            for frame in clip:
                bar.update(1)
                yield even(_motion_image(frame, max_motion))

        count = video.encode(rendered(), args.output, gop=12, fps=clip.fps)
    print("arseg motion: %d frames, motion on screen since each keyframe, full colour at %.2f px; wrote %s"
          % (count, max_motion, args.output))
    return 0


def register(sub):
    p = sub.add_parser("segment", parents=[common.device_options(), common.quiet_options("progress bar")],
                       help="run AR-Seg over an H.264 video and write a colour-coded video",
                       description="Segment an H.264 video with AR-Seg (HR network on keyframes, LR network + "
                                   "CReFF on the others) and write the class maps as a colour-coded video. The "
                                   "weights: a --checkpoint of `arseg train --stage ar` (it knows its backbone, "
                                   "classes, scale and CReFF window), or the release's --hr-weights and "
                                   "--lr-weights; without either, random weights (for timing only).")
    p.add_argument("video", help="input H.264 video")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4, .mkv, .mov, .avi)")
    p.add_argument("--checkpoint", type=common.existing_file,
                   help="last.pt of `arseg train --stage ar` (holds the HR network too); give it alone")
    p.add_argument("--hr-weights", type=common.existing_file, help="the release's HR checkpoint (.pth)")
    p.add_argument("--lr-weights", type=common.existing_file, help="the release's LR checkpoint (.pth)")
    p.add_argument("--backbone", choices=("psp18", "bisenet18"),
                   help="network of the release's weights (default psp18; a --checkpoint knows its own)")
    p.add_argument("--scale", type=common.scale, help="LR scale in (0, 1] (default 0.5; a --checkpoint knows its own)")
    p.add_argument("--num-classes", type=common.positive_int,
                   help="classes (default 12, CamVid's; a --checkpoint knows its own)")
    p.add_argument("--overlay", action="store_true", help="blend the colours over the video frames")
    p.set_defaults(func=segment)

    p = sub.add_parser("motion", parents=[common.quiet_options("progress bar")],
                       help="visualize the codec's motion since the keyframe (HSV colour wheel)",
                       description="Show each frame next to how its content moved on screen since the keyframe "
                                   "(the codec's motion accumulated over the GOP): hue = the direction it moved, "
                                   "saturation = how far (white = still). The legend disc in the corner is the "
                                   "key in screen terms: its right edge's colour = moved right, top = moved up, "
                                   "and so on; the number under it is the distance in pixels drawn at full "
                                   "colour.")
    p.add_argument("video", help="input H.264 video")
    p.add_argument("-o", "--output", required=True, help="a .png (one frame) or a video (.mp4, .mkv, .mov, .avi)")
    p.add_argument("--frame", type=int, help="PNG only: frame index (default: the last frame of the first GOP)")
    p.add_argument("--max-motion", type=float,
                   help="pixels of motion shown at full colour (default: the 99th percentile of the motion "
                        "magnitudes, of the frame for a PNG, of the whole video for a video)")
    p.add_argument("--block-size", type=common.positive_int, default=4, help="motion grid cell in pixels (default 4)")
    p.set_defaults(func=motion)
