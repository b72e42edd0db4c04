"""The Python half of benchmarks/gpu_check.sh: GPU timings, sanitizer workloads and the target verdicts.

    python benchmarks/gpu_check.py ops   --json F [--deadline S]   default vs experimental kernels vs peers
    python benchmarks/gpu_check.py arseg --json F [--deadline S]   AR-PSP18 keyframe vs non-keyframe steps
    python benchmarks/gpu_check.py sanitize [--small]              every experimental kernel once, small shapes
    python benchmarks/gpu_check.py targets F [F ...]               one PASS / SHORT / MISSING line per target
    python benchmarks/gpu_check.py dry-run                         all of the above on the CPU at tiny sizes

`ops` times local_attn (K = 7), mv_warp (4x4-pixel blocks) and creff (K = 7, LR at half size) at 64x720x960,
float32 and bfloat16, NCHW and channels_last, forward and forward+backward, each with the default ("verified")
and the experimental kernel set side by side, then the peers: FlexAttention bf16 with the analytic 2D block
mask (its own layout) and torch.compile of the reference (mv_warp, local_attn) or of the unfused chain (creff).
Times are medians in ms (triton's do_bench, L2 flushed, on CUDA; perf_counter rounds on CPU); peak = memory
allocated by one call above its inputs. Rows go to the JSON file as they are measured, so a run cut short by
its deadline keeps what it measured; what the deadline skipped is listed as skipped. Nothing here asserts a
speed: `targets` compares the numbers with the issue's targets and says PASS or SHORT, never fails.
"""
import argparse
import json
import os
import sys
import time

import torch

from arseg_ops import bench
from arseg_ops._loader import experimental_kernels

KERNEL_SETS = {"default": (), "experimental": ("all",)}
HEADLINE = dict(size=(720, 960), channels=64)
TINY = dict(size=(12, 16), channels=8)  # dry-run shapes: every code path, in seconds, on a CPU
PAPER_IMAGES = {"720x960": (720, 960), "1024x2048": (1024, 2048)}
TINY_IMAGES = {"720x960": (24, 32), "1024x2048": (32, 64)}  # same labels, so `targets` reads a dry run too
GOP = 12


# ---- measuring ----

def in_kernel_set(run, kernels):
    """run() with the given experimental kernel families switched on for the duration of every call."""
    names = KERNEL_SETS[kernels]

    def call():
        with experimental_kernels(*names):
            return run()
    return call


def median_ms(run, device):
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(run, warmup=10, rep=60, return_mode="median")
    return bench.summarize_times(bench.time_call(run, device, min_rounds=3, min_time=0.05))["median_s"] * 1e3


def peak_mb(run, device):
    return bench.cuda_peak_extra_bytes(run, device) / 2**20 if device == "cuda" else None


class Recorder:
    """Measures rows and appends them to a JSON list file as it goes (a killed run keeps its rows)."""

    def __init__(self, path, deadline_s):
        self.path, self.rows, self.t0, self.deadline_s = path, [], time.time(), deadline_s

    def left_s(self):
        return self.deadline_s - (time.time() - self.t0)

    def measure(self, label, case, kernels="default", **extra):
        row = dict(label=label, op=case.op, impl=case.impl, kernels=kernels, pass_=case.pass_, dtype=case.dtype,
                   layout="NHWC" if case.channels_last else "NCHW", size="%dx%d" % case.size,
                   compiled=bool(case.compile) or case.impl in ("flex", "compiled_reference"), **extra)
        if self.left_s() < 0:
            row["skipped"] = "deadline"
        else:
            try:
                run = in_kernel_set(bench.build(case), kernels)
                t = time.time()
                run()  # first call: compiles what is compiled, allocates lazy workspaces
                row["first_call_s"] = round(time.time() - t, 3)
                row["ms"] = median_ms(run, case.device)
                row["peak_mb"] = peak_mb(run, case.device)
            except Exception as exc:  # a case that fails is a result too; keep going
                row["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            if case.device == "cuda":
                torch.cuda.empty_cache()
        self.rows.append(row)
        print(format_row(row), "[+%.0fs]" % (time.time() - self.t0), flush=True)
        with open(self.path, "w") as f:
            json.dump(self.rows, f, indent=1)
        return row


def format_row(r):
    if "ms" in r:
        what = "%9.3f ms  peak %s" % (r["ms"], "%8.1f MB" % r["peak_mb"] if r.get("peak_mb") is not None else "   - ")
    else:
        what = "SKIPPED (%s)" % r["skipped"] if "skipped" in r else "FAILED %s" % r["error"]
    return "%-44s %-12s %-16s %-9s %-4s %s" % (r["label"], r["kernels"], r["pass_"], r["dtype"], r["layout"], what)


def ops_cases(device, shape):
    """(label, case, kernel set) in the order they are measured: what the targets need first, peers last."""
    base = dict(device=device, kernel_size=7, **shape)
    ours = {"local_attn": "fused", "mv_warp": "fused", "creff": "fused"}
    for op, impl in ours.items():
        for dtype in ("float32", "bfloat16"):
            for channels_last in (False, True):
                for pass_ in bench.PASSES:
                    case = bench.Case(op, impl, pass_, dtype=dtype, channels_last=channels_last, **base)
                    for kernels in KERNEL_SETS:
                        yield op, case, kernels
    for pass_ in bench.PASSES:
        if device == "cuda" or pass_ == "forward":  # FlexAttention has no CPU backward
            yield "local_attn FlexAttention", bench.Case("local_attn", "flex", pass_, dtype="bfloat16", **base), "default"
    peers = (("local_attn compiled reference", "local_attn", "compiled_reference", False),
             ("mv_warp compiled reference", "mv_warp", "reference", True),
             ("creff compiled unfused chain", "creff", "unfused", True))
    for dtype in ("bfloat16", "float32"):
        for label, op, impl, compile_ in peers:
            for pass_ in bench.PASSES:
                yield label, bench.Case(op, impl, pass_, dtype=dtype, compile=compile_, **base), "default"


def arseg_cases(device, images, compile_ok=True):
    """AR-PSP18 keyframe and non-keyframe steps, eager fp32 and bf16 (both kernel sets) and compiled bf16."""
    for name, size in images.items():
        for dtype, compile_ in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
            if compile_ and not compile_ok:
                continue
            for kernels in (("experimental",) if compile_ else tuple(KERNEL_SETS)):
                for step in ("keyframe", "non_keyframe"):
                    case = bench.Case("arseg_step", step, "forward", size, 3, 7, dtype=dtype, device=device,
                                      backbone="psp18", compile=compile_)
                    yield "AR-PSP18 %s %s%s" % (name, step, " compiled" if compile_ else ""), case, kernels, name


def run_ops(path, deadline_s, device="cuda", shape=HEADLINE, skip_compiled=False):
    rec = Recorder(path, deadline_s)
    for label, case, kernels in ops_cases(device, shape):
        if skip_compiled and (case.compile or case.impl in ("compiled_reference", "flex")):
            continue
        rec.measure(label, case, kernels)
    return rec.rows


def run_arseg(path, deadline_s, device="cuda", images=PAPER_IMAGES, compile_ok=True):
    rec = Recorder(path, deadline_s)
    for label, case, kernels, image in arseg_cases(device, images, compile_ok):
        if case.compile:
            torch.compiler.reset()  # each compiled step gets its own graph budget
        rec.measure(label, case, kernels, image=image)
    return rec.rows


# ---- sanitizer workloads ----

def sanitize(small, device="cuda"):
    """Every experimental kernel (and the default ones) forward and backward on small odd shapes: the
    workload for compute-sanitizer memcheck / racecheck / synccheck. `small`: float32, K = 7 and 11 only."""
    import arseg_ops
    torch.manual_seed(0)
    dtypes = (torch.float32,) if small else (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    kernel_sizes = (7, 11) if small else (1, 3, 5, 7, 9, 11)
    layouts = (torch.contiguous_format, torch.channels_last)
    calls = 0

    def r(*shape, fmt=torch.contiguous_format, s=1.0, dtype=torch.float32):
        t = (torch.randn(*shape, device=device) * s).to(dtype).contiguous(memory_format=fmt)
        return t.requires_grad_(True)

    for names in KERNEL_SETS.values():
        with experimental_kernels(*names):
            for dtype in dtypes:
                for fmt in layouts:
                    for K in kernel_sizes:
                        q, k = r(2, 17, 9, 21, fmt=fmt, dtype=dtype), r(2, 17, 9, 21, fmt=fmt, dtype=dtype)
                        v = r(2, 33, 9, 21, fmt=fmt, dtype=dtype)
                        for padding in ("zeros",) if small else ("zeros", "exclude"):
                            out = arseg_ops.local_attn(q, k, v, K, scale=0.25, padding=padding)
                            out.backward(torch.randn_like(out))
                        key, lr = r(2, 19, 13, 37, fmt=fmt, dtype=dtype), r(2, 19, 7, 19, fmt=fmt, dtype=dtype)
                        weight, bias = r(3, 19, 1, 3, 3, s=0.3, dtype=dtype), r(3, 19, s=0.3, dtype=dtype)
                        mv = r(2, 2, 4, 10, s=3.0, dtype=dtype)
                        out = arseg_ops.creff(key, mv, lr, weight, bias, kernel_size=K, scale=0.2, mv_scale=0.5)
                        out.backward(torch.randn_like(out))
                        # Codec motion (no gradient): the fused creff_backward when creff is experimental.
                        out = arseg_ops.creff(key, mv.detach(), lr, weight, bias, kernel_size=K, scale=0.2,
                                              mv_scale=0.5)
                        out.backward(torch.randn_like(out))
                        calls += 3
                    f, mv = r(2, 19, 24, 40, fmt=fmt, dtype=dtype), r(2, 2, 6, 10, s=3.0, dtype=dtype)
                    for mode in ("bilinear", "nearest"):
                        for padding_mode in ("zeros", "border"):
                            out = arseg_ops.mv_warp(f, mv, mode=mode, padding_mode=padding_mode)
                            out.backward(torch.randn_like(out))
                            calls += 1
    bench.synchronize(device)
    print("gpu_check sanitize: %d calls done (default and experimental kernels)" % calls)


# ---- targets ----

def find(rows, **want):
    for r in rows:
        if "ms" in r and all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _headline(op, dtype, pass_, layout="NCHW", kernels="experimental"):
    return dict(op=op, impl="fused", dtype=dtype, pass_=pass_, layout=layout, kernels=kernels, compiled=False)


def _limit(text, value, limit):
    """A PASS/SHORT line for "value <= limit" (value None: MISSING)."""
    if value is None:
        return "MISSING %s: not measured" % text
    return "%s %s: %.3f (target <= %.3f)" % ("PASS " if value <= limit else "SHORT", text, value, limit)


def _ratio_min(text, value, limit):
    if value is None:
        return "MISSING %s: not measured" % text
    return "%s %s: %.2fx (target >= %.1fx)" % ("PASS " if value >= limit else "SHORT", text, value, limit)


def _ms(rows, **want):
    r = find(rows, **want)
    return r["ms"] if r else None


def _div(a, b):
    return a / b if a is not None and b else None


def target_lines(rows):
    """One line per target of issues 20 and 21, for the experimental kernels (the default ones for reference)."""
    lines = []
    for kernels in ("experimental", "default"):
        tag = "[%s]" % kernels
        for op, pass_, dtype, limit in (("local_attn", "forward", "float32", 0.45), ("local_attn", "forward", "bfloat16", 0.25),
                                        ("local_attn", "forward_backward", "float32", 2.0),
                                        ("local_attn", "forward_backward", "bfloat16", 1.2),
                                        ("mv_warp", "forward", "float32", 0.17),
                                        ("mv_warp", "forward_backward", "float32", 0.5),
                                        ("creff", "forward", "float32", 0.35), ("creff", "forward", "bfloat16", 0.20)):
            lines.append(_limit("%s %s %s %s ms" % (tag, op, pass_, dtype),
                                _ms(rows, **_headline(op, dtype, pass_, kernels=kernels)), limit))
        flex = _ms(rows, op="local_attn", impl="flex", pass_="forward_backward", dtype="bfloat16")
        ours = _ms(rows, **_headline("local_attn", "bfloat16", "forward_backward", kernels=kernels))
        lines.append(_ratio_min("%s local_attn forward_backward bf16 vs FlexAttention bf16" % tag, _div(flex, ours), 7.0))
        for dtype in ("float32", "bfloat16"):
            fb = _ms(rows, **_headline("creff", dtype, "forward_backward", kernels=kernels))
            fw = _ms(rows, **_headline("creff", dtype, "forward", kernels=kernels))
            lines.append(_limit("%s creff forward_backward / forward %s" % (tag, dtype), _div(fb, fw), 3.0))
        for op in ("local_attn", "mv_warp", "creff"):
            for dtype in ("float32", "bfloat16"):
                for pass_ in bench.PASSES:
                    cl = _ms(rows, **_headline(op, dtype, pass_, "NHWC", kernels))
                    nchw = _ms(rows, **_headline(op, dtype, pass_, "NCHW", kernels))
                    lines.append(_limit("%s %s %s %s channels_last / NCHW" % (tag, op, pass_, dtype), _div(cl, nchw), 1.10))
    for image, limit in (("720x960", 0.40), ("1024x2048", 0.32)):
        for dtype, compiled, kernels in (("float32", False, "experimental"), ("bfloat16", False, "experimental"),
                                         ("bfloat16", True, "experimental"), ("float32", False, "default")):
            want = dict(op="arseg_step", image=image, dtype=dtype, compiled=compiled, kernels=kernels)
            key, non_key = _ms(rows, impl="keyframe", **want), _ms(rows, impl="non_keyframe", **want)
            ratio = _div(non_key, key)
            gop = bench.gop_average_over_keyframe(ratio, GOP) if ratio is not None else None
            lines.append(_limit("[%s] AR-PSP18 %s %s%s GOP-%d average / keyframe" % (
                kernels, image, dtype, " compiled" if compiled else " eager", GOP), gop, limit))
    return lines


def print_targets(paths):
    rows = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                rows += json.load(f)
        else:
            print("(no %s: that stage did not run)" % path)
    print("\n".join(target_lines(rows)))


def dry_run(out_dir):
    """Every stage on the CPU at tiny sizes: proves the code paths, measures nothing worth reading."""
    os.makedirs(out_dir, exist_ok=True)
    ops, arseg = os.path.join(out_dir, "ops.json"), os.path.join(out_dir, "arseg.json")
    print("== dry run on the CPU at tiny sizes (no GPU numbers; compiled peers skipped)")
    run_ops(ops, 1e9, "cpu", TINY, skip_compiled=True)
    run_arseg(arseg, 1e9, "cpu", TINY_IMAGES, compile_ok=False)
    sanitize(True, "cpu")
    print_targets([ops, arseg])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("ops", "arseg", "sanitize", "targets", "dry-run"))
    p.add_argument("files", nargs="*", help="targets: the JSON files of the ops and arseg stages")
    p.add_argument("--json", help="ops / arseg: where the rows go")
    p.add_argument("--deadline", type=float, default=1e9, help="ops / arseg: seconds after which cases are skipped")
    p.add_argument("--small", action="store_true", help="sanitize: float32, K = 7 and 11 only (for racecheck)")
    p.add_argument("--out", default="/tmp/arseg_gpu_check_dry_run", help="dry-run: where its JSON files go")
    args = p.parse_args(argv)
    if args.stage in ("ops", "arseg", "sanitize") and not torch.cuda.is_available():
        sys.exit("gpu_check.py %s: no CUDA device visible to torch %s (use dry-run on a CPU)" % (args.stage, torch.__version__))
    if args.stage in ("ops", "arseg") and not args.json:
        p.error("%s needs --json FILE" % args.stage)
    if args.stage == "ops":
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)
        run_ops(args.json, args.deadline)
    elif args.stage == "arseg":
        run_arseg(args.json, args.deadline)
    elif args.stage == "sanitize":
        sanitize(args.small)
    elif args.stage == "targets":
        print_targets(args.files)
    else:
        dry_run(args.out)


if __name__ == "__main__":
    main()
