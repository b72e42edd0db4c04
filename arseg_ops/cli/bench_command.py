"""`arseg bench`: fused kernels vs their baselines on the CReFF workload, and AR-Seg keyframe vs non-keyframe
steps, timed side by side (the main job)."""
import argparse
import json
import sys
import time

import torch

from .. import bench
from . import bench_format, bench_peers, bench_steps, common

KERNEL_OPS = ("local_attn", "mv_warp", "creff")
OPS = KERNEL_OPS + ("arseg_step",)
# What each fused kernel is timed against: the pure-PyTorch reference, or for creff the op-by-op chain the
# networks ran before the fused op (mv_warp, resize, three depthwise convs, local_attn, add).
BASELINES = {"local_attn": "reference", "mv_warp": "reference", "creff": "unfused"}
BACKBONES = ("psp18", "bisenet18")
MIN_ROUNDS = 5


def _reason(exc):
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# What a case that cannot run raises: torch.OutOfMemoryError and torch.compile's errors are RuntimeErrors.
_CANNOT_RUN = (RuntimeError, ValueError, TypeError, NotImplementedError)


def _runnable(case):
    """(callable, None) or (None, reason it cannot run here)."""
    reason = bench.too_big_reason(case)
    if reason:
        return None, reason
    try:
        return bench.build(case), None
    except _CANNOT_RUN as exc:
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return None, _reason(exc)


def _first_calls(runs, device, results):
    """{impl: seconds of its first call}: for compiled cases the compilation, which the timings then exclude.
    A run whose first call fails (e.g. a graph break under fullgraph=True) leaves `runs` with its reason in
    `results`, so that the other implementations are still timed."""
    firsts = {}
    for impl in list(runs):
        t0 = time.perf_counter()
        try:
            runs[impl]()
            bench.synchronize(device)
        except _CANNOT_RUN as exc:
            results[impl] = {"skipped": _reason(exc)}
            del runs[impl]
            continue
        firsts[impl] = time.perf_counter() - t0
    return firsts


def measure_pair(case, probe, min_time, max_time, progress, impls=None):
    """{impl: result} for `impls` of `case` (default: fused and its baseline), their rounds interleaved so that
    all see the same machine state. A result has the time summary (bench.summarize_times) and
    peak_extra_bytes, or 'skipped' with the reason; compiled cases also first_call_s (the compiling call)."""
    impls = impls or ("fused", BASELINES[case.op])
    progress("  %s %s%s %s%s ..." % (case.op, case.backbone + " " if case.op == "arseg_step" else "", case.pass_,
                                     "/".join(impls), " (compiling first)" if case.compile else ""))
    if case.compile:
        torch.compiler.reset()  # earlier cases' graphs stay out of the recompile limit (past it: eager, unseen)
    results, runs = {}, {}
    for impl in impls:
        run, reason = _runnable(case.replace(impl=impl))
        if run is None:
            results[impl] = {"skipped": reason}
        else:
            runs[impl] = run
    firsts = _first_calls(runs, case.device, results) if case.compile else {}
    try:
        timed = bench.time_interleaved(runs, case.device, min_rounds=MIN_ROUNDS, min_time=min_time,
                                       max_time=max_time)
    except _CANNOT_RUN as exc:
        timed = {}
        for impl in runs:
            results[impl] = {"skipped": _reason(exc)}
    runs.clear()
    for impl, times in timed.items():
        results[impl] = bench.summarize_times(times)
        if impl in firsts:
            results[impl]["first_call_s"] = firsts[impl]
        try:
            results[impl]["peak_extra_bytes"] = probe.measure(case.replace(impl=impl))
        except (RuntimeError, ValueError) as exc:
            results[impl]["memory_error"] = _reason(exc)
    return results


def table(results, cuda):
    """Rows of the kernel table (fused vs baseline) and the notes to print under it."""
    rows, notes = [], []
    for case, res in results:
        baseline = BASELINES[case.op]
        fused, ref = res["fused"], res[baseline]
        both = bench_format.timed(fused, ref)
        mem_both = fused.get("peak_extra_bytes") and ref.get("peak_extra_bytes")
        cells = [case.op, case.pass_, bench_format.ms(fused), bench_format.ms(ref),
                 "%s/%s" % (fused.get("rounds", "-"), ref.get("rounds", "-")),
                 "%.1fx" % (ref["median_s"] / fused["median_s"]) if both else "-",
                 bench_format.mb(fused), bench_format.mb(ref),
                 "%.1fx" % (ref["peak_extra_bytes"] / fused["peak_extra_bytes"]) if mem_both else "-", baseline]
        if cuda:
            roof = bench.roofline_seconds(case)
            cells += ["%.3f" % (roof * 1e3) if roof else "-",
                      "%.0f%%" % (100 * roof / fused["median_s"]) if roof and "median_s" in fused else "-"]
        rows.append(cells)
        label = "%s %s" % (case.op, case.pass_)
        for impl in ("fused", baseline):
            notes += bench_format.result_notes(label, impl, res[impl])
        note = bench_format.compile_note(label, res)
        if note:
            notes.append(note)
    headers = ["op", "pass", "fused ms (IQR)", "baseline ms (IQR)", "rounds", "speedup", "fused peak MB",
               "baseline peak MB", "less memory", "baseline"]
    if cuda:
        headers += ["roofline ms", "fused vs roofline"]
    return headers, rows, notes


def _measure(args, device, size, image_size, progress):
    """(kernel results, AR-Seg step results, peer results): lists of (case, {impl: result})."""
    results, step_results, peer_results = [], [], []
    with bench.MemoryProbe() as probe:
        for op in (op for op in args.ops if op in KERNEL_OPS):
            for pass_ in args.passes:
                case = bench.Case(op, "fused", pass_, size, args.channels, args.kernel_size, args.block,
                                  args.dtype, device, compile=args.compile, channels_last=args.channels_last)
                results.append((case, measure_pair(case, probe, args.min_time, args.max_time, progress)))
        if "arseg_step" in args.ops:
            for image in image_size:  # a list of image sizes
                for backbone in args.backbones:  # inference: forward only, whatever --passes says
                    case = bench.Case("arseg_step", "keyframe", "forward", image, 3, args.kernel_size,
                                      dtype=args.dtype, device=device, backbone=backbone, compile=args.compile)
                    step_results.append((case, measure_pair(case, probe, args.min_time, args.max_time, progress,
                                                            bench.ARSEG_STEPS)))
        if args.peers:  # already compiled peers; --compile does not apply
            for pass_ in args.passes:
                case = bench.Case("local_attn", "fused", pass_, size, args.channels, args.kernel_size,
                                  dtype=args.dtype, device=device, channels_last=args.channels_last)
                peer_results.append((case, measure_pair(case, probe, args.min_time, args.max_time, progress,
                                                        ("fused",) + bench.LOCAL_ATTN_PEERS)))
    return results, step_results, peer_results


def legend(args, cuda, results, peer_results):
    """What the tables' columns mean, for the cases that ran (the forward_backward note only when that pass
    did)."""
    compiled = " (compiled cases: after their first, compiling call)" if args.compile else ""
    text = ("Times: median (interquartile range) in ms over the timed rounds, after one untimed warm-up call%s; the "
            "rounds of the implementations compared alternate. rounds a/b = timed calls of the first/second "
            "implementation (fused/baseline; keyframe/non-keyframe for arseg_step): at least %d each, more until "
            "--min-time is spent. Peak MB = peak memory above the inputs during one call (%s)."
            % (compiled, MIN_ROUNDS, "torch.cuda.max_memory_allocated" if cuda else "peak RSS of a worker process"))
    if any(case.pass_ == "forward_backward" for case, _ in results + peer_results):
        text += (" forward_backward differentiates q, k, v (local_attn), the feature (mv_warp; codec motion has no "
                 "gradient), the keyframe and LR features and the conv weights (creff).")
    if results:
        text += (" Baselines: the pure-PyTorch reference (local_attn, mv_warp); the unfused chain mv_warp, resize, 3 "
                 "depthwise convs, local_attn, add (creff).")
    return text


def _print_header(args, device, where, size, image_size):
    what = []
    if any(op in KERNEL_OPS for op in args.ops):
        what.append("fused kernels vs their baselines on the CReFF workload of PSPNet-18 (local_attn k=%d over C=%d "
                    "features; mv_warp of the HR feature by %dx%d-pixel block motion; creff, the whole fusion)"
                    % (args.kernel_size, args.channels, args.block, args.block))
    if "arseg_step" in args.ops:
        what.append("AR-Seg keyframe vs non-keyframe steps (%s)" % ", ".join(args.backbones))
    print("arseg bench: " + "; ".join(what))
    scaled = "" if args.size or device == "cuda" else (" (scaled down on CPU from the paper's CamVid 720x960; "
                                                       "--size 720x960 for the full size)")
    shapes = []
    if any(op in KERNEL_OPS for op in args.ops):
        shapes.append("feature %dx%dx%d%s%s" % (args.channels, size[0], size[1],
                                               " channels_last" if args.channels_last else "", scaled))
    if "arseg_step" in args.ops:
        shapes.append("image %s" % ", ".join("%dx%d" % s for s in image_size))
    mode = "torch.compile (fullgraph, static shapes)" if args.compile else "eager"
    print("device %s (%s), %s, %s, %s" % (device, where, args.dtype, mode, ", ".join(shapes)))


def _write_json(path, args, device, where, size, image_size, results, step_results, peer_results):
    record = {"device": device, "device_name": where, "dtype": args.dtype, "size": list(size),
              "image_size": list(image_size[0]), "image_sizes": [list(s) for s in image_size], "compile": args.compile, "gop": args.gop, "channels_last": args.channels_last,
              "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "cases": [dict(case.replace(impl=impl).to_dict(), **r,
                             min_traffic_bytes=bench.min_traffic_bytes(case.replace(impl=impl)))
                        for case, res in results + step_results + peer_results for impl, r in res.items()],
              "arseg_step": bench_steps.summary(step_results, args.gop)}
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print("wrote " + path)


def run(args, parser):
    device = common.resolve_device(args.device, parser)
    cuda = device == "cuda"
    size = args.size or ((720, 960) if cuda else (180, 240))
    image_size = args.image_size or [size]
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if cuda else "CPU, %d threads" % torch.get_num_threads()
    _print_header(args, device, where, size, image_size)
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else (lambda msg: None)
    started = time.perf_counter()
    results, step_results, peer_results = _measure(args, device, size, image_size, progress)
    notes = []
    if results:
        headers, rows, notes = table(results, cuda)
        print()
        print(common.format_table(headers, rows))
    if step_results:
        headers, rows, step_notes = bench_steps.table(step_results, args.gop)
        notes += step_notes
        print()
        print(bench_steps.describe(args.gop))
        print(common.format_table(headers, rows))
    if peer_results:
        print()
        print(bench_peers.describe(device))
        print(common.format_table(*bench_peers.table(peer_results)))
    print("\n" + legend(args, cuda, results, peer_results))
    if cuda and results:
        print("Roofline: compulsory traffic (inputs read once, outputs written once) / %.1f TB/s."
              % (bench.PEAK_BANDWIDTH / 1e12))
    wait = bench_format.thread_wait_note(device, torch.get_num_threads(), results)
    for note in notes + ([wait] if wait else []):
        print("note: " + note)
    print("total time of this run: %.1f s (setup, warm-up, timed rounds and memory probes)"
          % (time.perf_counter() - started))
    if args.json:
        _write_json(args.json, args, device, where, size, image_size, results, step_results, peer_results)
    return 0


def _image_sizes(text):
    try:
        return bench.parse_image_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub):
    p = sub.add_parser("bench", parents=[common.device_options(), common.quiet_options("progress lines"),
                                         common.gop_options()],
                       help="time fused kernels vs their baselines, and AR-Seg keyframe vs non-keyframe steps "
                            "(the main job)",
                       description="Time fused vs reference local_attn and mv_warp, fused creff vs the unfused "
                                   "chain (forward and forward+backward, with peak extra memory, and the roofline "
                                   "on CUDA), and AR-Seg's keyframe vs non-keyframe steps with their ratio and GOP "
                                   "average. The default run (all ops, both passes, both backbones, 64x180x240 "
                                   "features and 180x240 images on CPU) takes one to two minutes on 2 CPU cores; "
                                   "--ops narrows it.")
    p.add_argument("--ops", type=common.comma_list(OPS), default=OPS,
                   help="comma-separated ops to time, from %s (default: all)" % ", ".join(OPS))
    p.add_argument("--passes", type=common.comma_list(bench.PASSES), default=bench.PASSES,
                   help="comma-separated passes of the kernel ops, from %s (default: both; arseg_step is always "
                        "forward)" % ", ".join(bench.PASSES))
    p.add_argument("--backbones", type=common.comma_list(BACKBONES), default=BACKBONES,
                   help="comma-separated arseg_step networks, from %s (default: both)" % ", ".join(BACKBONES))
    p.add_argument("--dtype", choices=tuple(bench.DTYPES), default="float32", help="element type of every input")
    p.add_argument("--size", type=common.size,
                   help="feature map HxW of local_attn, mv_warp and creff (default 720x960 on CUDA, 180x240 on CPU)")
    p.add_argument("--image-size", type=_image_sizes,
                   help="image HxW of arseg_step, or several comma-separated, each HxW or a dataset of the paper "
                        "(%s; e.g. camvid,cityscapes) (default: --size; PSPNet-18's CReFF feature is the image size)"
                        % ", ".join("%s = %dx%d" % ((k,) + v) for k, v in bench.PAPER_IMAGE_SIZES.items()))
    p.add_argument("--channels", type=common.positive_int, default=64, help="feature channels C (default 64)")
    p.add_argument("--kernel-size", type=common.kernel_size, default=7,
                   help="local_attn window, odd (default 7; also CReFF's window in creff and arseg_step)")
    p.add_argument("--block", type=common.positive_int, default=4,
                   help="mv_warp motion block side in pixels (default 4)")
    p.add_argument("--min-time", type=common.nonnegative_float, default=1.0,
                   help="seconds to spend timing each case, at least %d rounds (default 1)" % MIN_ROUNDS)
    p.add_argument("--max-time", type=common.nonnegative_float, default=5.0,
                   help="slow cases stop after 3 timed calls once this many seconds are spent (default 5)")
    p.add_argument("--compile", action="store_true",
                   help="time every case under torch.compile(fullgraph=True, dynamic=False); the first, compiling "
                        "call is excluded from the timings and shown in a note. Slow on CPU: about 10 s per creff "
                        "case and 1-2 minutes per network step (e.g. --ops creff --compile)")
    p.add_argument("--peers", action="store_true",
                   help="also time local_attn's peers side by side with it: FlexAttention (own layout, and its "
                        "layout conversion) and torch.compile(reference); slow: each is compiled first")
    p.add_argument("--channels-last", action="store_true",
                   help="feature maps of local_attn, mv_warp and creff (and their output gradients) in channels_last "
                        "memory format (default: NCHW); FlexAttention keeps its own layout and is skipped")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.set_defaults(func=run)
    return p
