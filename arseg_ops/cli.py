"""The `arseg` command (also `python -m arseg_ops`): bench | flops | segment | motion.

Exit codes: 0 success, 1 a runtime failure (unreadable or unsupported file, failed measurement setup),
2 bad command-line arguments (argparse's convention), 130 interrupted.
"""
import argparse
import os
import sys
import time

# Table 1 of the AR-Seg paper (GMACs per frame, CamVid 720x960, GOP 12), keyed by (backbone, H, W, gop) -> scale.
PAPER_GMACS = {
    ("psp18", 720, 960, 12): {1.0: 309.02, 0.5: 101.98, 0.6: 133.09, 0.7: 169.86},
    ("bisenet18", 720, 960, 12): {1.0: 58.83, 0.5: 18.96},
}
PAPER_NOTES = {
    "bisenet18": "the paper's BiSeNet-18 1.0x figure (58.83) counts its three output modules twice; the clean "
                 "count of the same network is 39.12",
}


class CliError(Exception):
    """A failure to report as `arseg <command>: error: ...` with exit code 1."""


# ---- argument types ----


def _size(text):
    from .bench import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % (text,))
    return value


def _scale(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("expected a number in (0, 1], got %r" % (text,))
    return value


def _existing_file(text):
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError("no such file: %r" % (text,))
    return text


def _default_device():
    import torch

    import arseg_ops

    return "cuda" if torch.cuda.is_available() and arseg_ops.build_info()["cuda"] else "cpu"


def _check_device(device, parser):
    import torch

    import arseg_ops

    if device == "cuda" and not (torch.cuda.is_available() and arseg_ops.build_info()["cuda"]):
        parser.error("--device cuda: needs a CUDA device and an arseg_ops build with CUDA kernels "
                     "(torch %s, CUDA device available: %s, CUDA kernels built: %s)"
                     % (torch.__version__, torch.cuda.is_available(), arseg_ops.build_info()["cuda"]))
    return device


def _format_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---- bench ----

BENCH_IMPLS = ("fused", "reference")


def _measure(case, probe, min_time, max_time, progress):
    """Time and peak extra memory of one case; {'skipped': reason} when it cannot run here."""
    import torch

    from . import bench

    progress("  %s %s %s ..." % (case.op, case.pass_, case.impl))
    reason = bench.too_big_reason(case)
    if reason:
        return {"skipped": reason}
    try:
        run = bench.build(case)
        result = bench.summarize_times(bench.time_call(run, case.device, min_time=min_time, max_time=max_time))
        del run
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:  # includes OutOfMemoryError
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return {"skipped": str(exc).strip().splitlines()[0]}
    try:
        result["peak_extra_bytes"] = probe.measure(case)
    except (RuntimeError, ValueError) as exc:
        result["memory_error"] = str(exc).strip().splitlines()[0]
    return result


def _bench_rows(results, cuda):
    from . import bench

    rows, notes = [], []
    for case, fused, ref in results:
        cells = [case.op, case.pass_]
        for r in (fused, ref):
            cells.append("%.2f" % (r["median_s"] * 1e3) if "median_s" in r else "skipped")
        both = "median_s" in fused and "median_s" in ref
        cells.append("%.1fx" % (ref["median_s"] / fused["median_s"]) if both else "-")
        for r in (fused, ref):
            cells.append("%.1f" % (r["peak_extra_bytes"] / 1e6) if "peak_extra_bytes" in r else "-")
        mem_both = fused.get("peak_extra_bytes") and ref.get("peak_extra_bytes")
        cells.append("%.1fx" % (ref["peak_extra_bytes"] / fused["peak_extra_bytes"]) if mem_both else "-")
        if cuda:
            roof = bench.roofline_seconds(case)
            cells += ["%.3f" % (roof * 1e3), "%.0f%%" % (100 * roof / fused["median_s"]) if "median_s" in fused
                      else "-"]
        rows.append(cells)
        for name, r in (("fused", fused), ("reference", ref)):
            for key in ("skipped", "memory_error"):
                if key in r:
                    notes.append("%s %s %s %s: %s" % (case.op, case.pass_, name, key.replace("_", " "), r[key]))
    return rows, notes


def cmd_bench(args, parser):
    import json

    import torch

    from . import bench

    device = _check_device(args.device or _default_device(), parser)
    cuda = device == "cuda"
    size = args.size or ((720, 960) if cuda else (180, 240))
    torch.manual_seed(0)
    print("arseg bench: the CReFF workload of PSPNet-18 (local_attn k=%d over C=%d features; mv_warp of the "
          "HR feature by %dx%d-pixel block motion)" % (args.kernel_size, args.channels, args.block, args.block))
    where = torch.cuda.get_device_name() if cuda else "CPU, %d threads" % torch.get_num_threads()
    scaled = "" if args.size or cuda else (" (scaled down on CPU from the paper's CamVid 720x960; "
                                          "--size 720x960 for the full size)")
    print("device %s (%s), %s, feature %dx%dx%d%s" % (device, where, args.dtype, args.channels, size[0], size[1],
                                                     scaled))
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else (lambda msg: None)
    results = []
    started = time.perf_counter()
    with bench.MemoryProbe() as probe:
        for op in ("local_attn", "mv_warp"):
            for pass_ in bench.PASSES:
                case = bench.Case(op, "fused", pass_, size, args.channels, args.kernel_size, args.block,
                                  args.dtype, device)
                measured = [_measure(case.replace(impl=impl), probe, args.min_time,
                                     args.max_time, progress) for impl in BENCH_IMPLS]
                results.append((case, *measured))
    headers = ["op", "pass", "fused ms", "reference ms", "speedup", "fused peak MB", "ref peak MB", "less memory"]
    if cuda:
        headers += ["roofline ms", "fused vs roofline"]
    rows, notes = _bench_rows(results, cuda)
    print()
    print(_format_table(headers, rows))
    print("\nTimes are medians after one untimed warm-up call; peak MB = peak memory above the inputs during one "
          "call (%s). forward_backward differentiates q, k, v (local_attn) and the feature (mv_warp; codec "
          "motion has no gradient)." % ("torch.cuda.max_memory_allocated" if cuda else "peak RSS of a worker process"))
    if cuda:
        print("Roofline: compulsory traffic (inputs read once, outputs written once) / %.1f TB/s."
              % (bench.PEAK_BANDWIDTH / 1e12))
    for note in notes:
        print("note: " + note)
    print("(%.1f s)" % (time.perf_counter() - started))
    if args.json:
        record = {"device": device, "device_name": where, "dtype": args.dtype, "size": list(size),
                  "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "cases": [dict(case.replace(impl=impl).to_dict(), **r, min_traffic_bytes=bench.min_traffic_bytes(case))
                            for case, *measured in results for impl, r in zip(BENCH_IMPLS, measured)]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print("wrote " + args.json)
    return 0


# ---- flops ----


def _hr_lr_ar(backbone, size, scale, gop, num_classes=12):
    """(HR GMACs, LR-with-CReFF GMACs, average per frame over a GOP)."""
    from . import models

    hr = models.count_gmacs(backbone, size, scale=1.0, num_classes=num_classes)
    if scale == 1.0:
        return hr, hr, hr
    # count_gmacs averages (HR + (L-1) LR) / L; a GOP of 2 isolates the LR frame's cost exactly.
    lr = 2 * models.count_gmacs(backbone, size, scale=scale, keyframe_interval=2, num_classes=num_classes) - hr
    return hr, lr, (hr + (gop - 1) * lr) / gop


def cmd_flops(args, parser):
    h, w = args.size
    hr, lr, ar = _hr_lr_ar(args.backbone, (h, w), args.scale, args.gop)
    paper = PAPER_GMACS.get((args.backbone, h, w, args.gop), {})
    ref = lambda s: "%.2f" % paper[s] if s in paper else "-"  # noqa: E731
    print("arseg flops: %s at %dx%d, LR scale %g, GOP %d (multiply-accumulates of convolutions, linear layers "
          "and local attention)" % (args.backbone, h, w, args.scale, args.gop))
    rows = [["HR network (1.0x, keyframes)", "%.2f" % hr, ref(1.0)]]
    if args.scale != 1.0:
        rows.append(["LR network %gx + CReFF (other frames)" % args.scale, "%.2f" % lr, "-"])
        rows.append(["AR-Seg average per frame (GOP %d)" % args.gop, "%.2f" % ar, ref(args.scale)])
    print(_format_table(["", "GMACs", "paper"], rows))
    print("AR-Seg needs %.1f%% of the 1.0x model's compute (%.2fx less)." % (100 * ar / hr, hr / ar))
    if args.backbone in PAPER_NOTES and paper:
        print("note: " + PAPER_NOTES[args.backbone])
    return 0


# ---- video commands (arseg_ops/cli_video.py; imported when used: they need PyAV and the models) ----


def cmd_segment(args, parser):
    from .cli_video import segment

    return segment(args, parser)


def cmd_motion(args, parser):
    from .cli_video import motion

    return motion(args, parser)


# ---- parser ----


def build_parser():
    parser = argparse.ArgumentParser(prog="arseg", description="AR-Seg kernels (mv_warp, local_attn): "
                                     "benchmarks, cost accounting and compressed-video segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("bench", help="time fused vs reference kernels on the CReFF workload (the main job)",
                       description="Time fused vs reference local_attn and mv_warp, forward and forward+backward, "
                                   "with peak extra memory (and the roofline on CUDA).")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"), default="float32")
    p.add_argument("--size", type=_size, help="feature map HxW (default 720x960 on CUDA, 180x240 on CPU)")
    p.add_argument("--channels", type=_positive_int, default=64, help="feature channels C (default 64)")
    p.add_argument("--kernel-size", type=_positive_int, default=7, help="local_attn window (default 7)")
    p.add_argument("--block", type=_positive_int, default=4, help="mv_warp motion block side in pixels (default 4)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds to spend timing each case (default 0.3)")
    p.add_argument("--max-time", type=float, default=5.0, help="slow cases stop after 2 timed calls once this "
                   "many seconds are spent (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("flops", help="HR, LR and AR-Seg GMACs per frame next to the paper's numbers",
                       description="Count multiply-accumulates of the HR network, the LR network with CReFF and "
                                   "their GOP average, next to the AR-Seg paper's Table 1 where it applies.")
    p.add_argument("--backbone", choices=("psp18", "bisenet18"), default="psp18")
    p.add_argument("--size", type=_size, default=(720, 960), help="image HxW (default 720x960, CamVid)")
    p.add_argument("--scale", type=_scale, default=0.5, help="LR scale in (0, 1] (default 0.5)")
    p.add_argument("--gop", type=_positive_int, default=12, help="keyframe interval (default 12)")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("segment", help="run AR-Seg over an H.264 video and write a colour-coded video",
                       description="Segment an H.264 video with AR-Seg (HR network on keyframes, LR network + "
                                   "CReFF on the others) and write the class maps as a colour-coded video.")
    p.add_argument("video", help="input H.264 video")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4, .mkv, .mov, .avi)")
    p.add_argument("--backbone", choices=("psp18", "bisenet18"), default="psp18")
    p.add_argument("--scale", type=_scale, default=0.5, help="LR scale in (0, 1] (default 0.5)")
    p.add_argument("--hr-weights", type=_existing_file, help="the release's HR checkpoint (.pth)")
    p.add_argument("--lr-weights", type=_existing_file, help="the release's LR checkpoint (.pth)")
    p.add_argument("--num-classes", type=_positive_int, default=12, help="classes (default 12, CamVid)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--overlay", action="store_true", help="blend the colours over the video frames")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("motion", help="visualize the codec's motion to the keyframe (HSV colour wheel)",
                       description="Show each frame next to its motion accumulated to the keyframe: hue = "
                                   "direction, saturation = speed (white = still).")
    p.add_argument("video", help="input H.264 video")
    p.add_argument("-o", "--output", required=True, help="a .png (one frame) or a video (.mp4, .mkv, .mov, .avi)")
    p.add_argument("--frame", type=int, help="PNG only: frame index (default: the last frame of the first GOP)")
    p.add_argument("--max-motion", type=float, help="pixels of motion shown at full colour (default: the "
                                                    "largest in the output)")
    p.add_argument("--block-size", type=_positive_int, default=4, help="motion grid cell in pixels (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_motion)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args, parser) or 0
    except (CliError, FileNotFoundError, ValueError, OSError) as exc:
        print("arseg %s: error: %s" % (args.command, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("arseg %s: interrupted" % args.command, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
