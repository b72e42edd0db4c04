"""`arseg bench`: fused vs reference kernels on the CReFF workload, timed side by side (the main job)."""
import json
import sys
import time

import torch

from .. import bench
from . import bench_peers, common

IMPLS = ("fused", "reference")
MIN_ROUNDS = 5


def _runnable(case):
    """(callable, None) or (None, reason it cannot run here)."""
    reason = bench.too_big_reason(case)
    if reason:
        return None, reason
    try:
        return bench.build(case), None
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:  # includes OutOfMemoryError
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return None, str(exc).strip().splitlines()[0]


def measure_pair(case, probe, min_time, max_time, progress, impls=IMPLS):
    """{impl: result} for the fused and reference versions of `case` (or `impls`), their rounds interleaved so
    that all see the same machine state. A result has the time summary (bench.summarize_times) and
    peak_extra_bytes, or 'skipped' with the reason."""
    progress("  %s %s %s ..." % (case.op, case.pass_, "/".join(impls)))
    results, runs = {}, {}
    for impl in impls:
        run, reason = _runnable(case.replace(impl=impl))
        if run is None:
            results[impl] = {"skipped": reason}
        else:
            runs[impl] = run
    try:
        timed = bench.time_interleaved(runs, case.device, min_rounds=MIN_ROUNDS, min_time=min_time,
                                       max_time=max_time)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        timed = {}
        for impl in runs:
            results[impl] = {"skipped": str(exc).strip().splitlines()[0]}
    runs.clear()
    for impl, times in timed.items():
        results[impl] = bench.summarize_times(times)
        try:
            results[impl]["peak_extra_bytes"] = probe.measure(case.replace(impl=impl))
        except (RuntimeError, ValueError) as exc:
            results[impl]["memory_error"] = str(exc).strip().splitlines()[0]
    return results


def _ms(r):
    if "median_s" not in r:
        return "skipped"
    return "%.2f (%.2f)" % (r["median_s"] * 1e3, r["iqr_s"] * 1e3)


def table(results, cuda):
    """Rows of the bench table and the notes to print under it."""
    rows, notes = [], []
    for case, res in results:
        fused, ref = res["fused"], res["reference"]
        both = "median_s" in fused and "median_s" in ref
        mem_both = fused.get("peak_extra_bytes") and ref.get("peak_extra_bytes")
        cells = [case.op, case.pass_, _ms(fused), _ms(ref),
                 "%s/%s" % (fused.get("rounds", "-"), ref.get("rounds", "-")),
                 "%.1fx" % (ref["median_s"] / fused["median_s"]) if both else "-"]
        for r in (fused, ref):
            cells.append("%.1f" % (r["peak_extra_bytes"] / 1e6) if "peak_extra_bytes" in r else "-")
        cells.append("%.1fx" % (ref["peak_extra_bytes"] / fused["peak_extra_bytes"]) if mem_both else "-")
        if cuda:
            roof = bench.roofline_seconds(case)
            cells += ["%.3f" % (roof * 1e3), "%.0f%%" % (100 * roof / fused["median_s"]) if "median_s" in fused
                      else "-"]
        rows.append(cells)
        for impl, r in (("fused", fused), ("reference", ref)):
            for key in ("skipped", "memory_error"):
                if key in r:
                    notes.append("%s %s %s %s: %s" % (case.op, case.pass_, impl, key.replace("_", " "), r[key]))
            if "median_s" in r and bench.is_noisy(r):
                notes.append("%s %s %s is noisy: IQR %.0f%% of the median over %d rounds (min %.2f, max %.2f ms); "
                             "the machine is busy or the case too short, rerun with a larger --min-time"
                             % (case.op, case.pass_, impl, 100 * r["spread"], r["rounds"], r["min_s"] * 1e3,
                                r["max_s"] * 1e3))
    headers = ["op", "pass", "fused ms (IQR)", "reference ms (IQR)", "rounds", "speedup", "fused peak MB",
               "ref peak MB", "less memory"]
    if cuda:
        headers += ["roofline ms", "fused vs roofline"]
    return headers, rows, notes


def run(args, parser):
    device = common.resolve_device(args.device, parser)
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
                results.append((case, measure_pair(case, probe, args.min_time, args.max_time, progress)))
        peer_results = []
        if args.peers:
            for pass_ in bench.PASSES:
                case = bench.Case("local_attn", "fused", pass_, size, args.channels, args.kernel_size,
                                  dtype=args.dtype, device=device)
                peer_results.append((case, measure_pair(case, probe, args.min_time, args.max_time, progress,
                                                        ("fused",) + bench.LOCAL_ATTN_PEERS)))
    headers, rows, notes = table(results, cuda)
    print()
    print(common.format_table(headers, rows))
    if peer_results:
        print()
        print(bench_peers.describe(device))
        print(common.format_table(*bench_peers.table(peer_results)))
    print("\nTimes: median (interquartile range) in ms over the timed rounds (fused/reference), after one untimed "
          "warm-up call; fused and reference rounds alternate. Peak MB = peak memory above the inputs during one "
          "call (%s). forward_backward differentiates q, k, v (local_attn) and the feature (mv_warp; codec motion "
          "has no gradient)." % ("torch.cuda.max_memory_allocated" if cuda else "peak RSS of a worker process"))
    if cuda:
        print("Roofline: compulsory traffic (inputs read once, outputs written once) / %.1f TB/s."
              % (bench.PEAK_BANDWIDTH / 1e12))
    for note in notes:
        print("note: " + note)
    print("(%.1f s)" % (time.perf_counter() - started))
    if args.json:
        record = {"device": device, "device_name": where, "dtype": args.dtype, "size": list(size),
                  "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "cases": [dict(case.replace(impl=impl).to_dict(), **r,
                                 min_traffic_bytes=bench.min_traffic_bytes(case.replace(impl=impl)))
                            for case, res in results + peer_results for impl, r in res.items()]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print("wrote " + args.json)
    return 0


def register(sub):
    p = sub.add_parser("bench", parents=[common.device_options(), common.quiet_options("progress lines")],
                       help="time fused vs reference kernels on the CReFF workload (the main job)",
                       description="Time fused vs reference local_attn and mv_warp, forward and forward+backward, "
                                   "with peak extra memory (and the roofline on CUDA).")
    p.add_argument("--dtype", choices=tuple(bench.DTYPES), default="float32")
    p.add_argument("--size", type=common.size, help="feature map HxW (default 720x960 on CUDA, 180x240 on CPU)")
    p.add_argument("--channels", type=common.positive_int, default=64, help="feature channels C (default 64)")
    p.add_argument("--kernel-size", type=common.kernel_size, default=7, help="local_attn window, odd (default 7)")
    p.add_argument("--block", type=common.positive_int, default=4,
                   help="mv_warp motion block side in pixels (default 4)")
    p.add_argument("--min-time", type=common.nonnegative_float, default=1.0,
                   help="seconds to spend timing each case, at least %d rounds (default 1)" % MIN_ROUNDS)
    p.add_argument("--max-time", type=common.nonnegative_float, default=5.0,
                   help="slow cases stop after 3 timed calls once this many seconds are spent (default 5)")
    p.add_argument("--peers", action="store_true",
                   help="also time local_attn's peers side by side with it: FlexAttention (own layout, and its "
                        "layout conversion) and torch.compile(reference); slow: each is compiled first")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.set_defaults(func=run)
    return p
