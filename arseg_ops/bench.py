"""Measurement core shared by `arseg bench` and the pytest-benchmark suite in benchmarks/.

A `Case` names one measurable call (op, implementation, forward or forward+backward, shape, dtype, device);
`build(case)` turns it into a zero-argument callable on freshly made inputs. Fused and reference cases with
the same parameters get bit-identical inputs (the generator is seeded from the parameters), so every pair is
compared on the same data.

Measurements:
- time: `time_call` excludes warm-up calls (first-call compilation, thread-pool start, lazy allocations) and
  times each call with CUDA events on CUDA (the end event is synchronized) or perf_counter on CPU.
- peak extra memory: on CUDA torch.cuda.max_memory_allocated() minus the allocation before the call. On CPU the
  case runs in a separate worker process (`MemoryProbe`) so the benchmark process's own heap cannot hide or
  inflate it: the worker makes the inputs, warms the op up on a tiny copy of the case, resets its peak RSS
  (Linux /proc/self/clear_refs), runs the case once and reports peak RSS minus the RSS before the call. glibc
  is told to serve every allocation >= 64 KiB with mmap, so freed tensors leave the RSS and one case cannot
  reuse another's pages unseen. Without clear_refs a fresh worker is started per case (peak = ru_maxrss).
- minimum traffic: `min_traffic_bytes` is the compulsory DRAM traffic (each input read once, each output
  written once); divided by PEAK_BANDWIDTH it is the roofline time a memory-bound kernel is held to.
"""
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import time
import zlib

import torch

PEAK_BANDWIDTH = 3.0e12  # bytes/s: H100 device-to-device copy bandwidth (design/overview.md)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
PASSES = ("forward", "forward_backward")  # what `arseg bench` reports
ALL_PASSES = PASSES + ("backward",)  # backward: gradients through a graph built once, at build time


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # "local_attn" | "mv_warp" | "creff" | "arseg_step"
    impl: str  # "fused" | "reference" | "grid_sample" | "copy" (mv_warp) | "keyframe" | "non_keyframe" (arseg_step)
    pass_: str = "forward"  # "forward" | "forward_backward"
    size: tuple = (180, 240)  # (H, W) of the feature map (the image for arseg_step)
    channels: int = 64
    kernel_size: int = 7
    block: int = 4  # mv_warp: side of a motion block in pixels; 1 = dense flow
    dtype: str = "float32"
    device: str = "cpu"
    batch: int = 1
    backbone: str = "psp18"  # arseg_step only

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.pass_ not in ALL_PASSES:
            raise ValueError("pass_ must be one of %s, got %r" % (ALL_PASSES, self.pass_))
        if self.dtype not in DTYPES:
            raise ValueError("dtype must be one of %s, got %r" % (sorted(DTYPES), self.dtype))
        if self.op not in _BUILDERS:
            raise ValueError("op must be one of %s, got %r" % (sorted(_BUILDERS), self.op))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def shape_label(self):
        return "%dx%dx%d" % ((self.channels,) + self.size)


def parse_size(text):
    """'720x960' -> (720, 960)."""
    try:
        h, w = (int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ValueError("size must look like HxW (e.g. 720x960), got %r" % (text,)) from None
    if h <= 0 or w <= 0:
        raise ValueError("size must be positive, got %r" % (text,))
    return h, w


# ---- inputs and builders ----


def _generator(case):
    # Same parameters, same inputs: the seed ignores the implementation.
    key = (case.op, case.pass_, case.size, case.channels, case.kernel_size, case.block, case.batch)
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _randn(case, gen, shape, std=1.0, requires_grad=False):
    # Made on the CPU with a CPU generator (identical on every device), then moved.
    t = (torch.randn(shape, generator=gen) * std).to(device=case.device, dtype=DTYPES[case.dtype])
    return t.requires_grad_(requires_grad)


def _forward_or_backward(case, fn, inputs, grad_inputs, out_shape, gen):
    """A callable running fn(*inputs), and for forward_backward also the gradients of grad_inputs."""
    if case.pass_ == "forward":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    grad_out = _randn(case, gen, out_shape)
    if case.pass_ == "backward":
        out = fn(*inputs)
        return lambda: torch.autograd.grad(out, grad_inputs, grad_out, retain_graph=True)

    def run():
        out = fn(*inputs)
        return torch.autograd.grad(out, grad_inputs, grad_out)
    return run


def _build_local_attn(case, gen):
    import arseg_ops
    from arseg_ops import reference

    fns = {"fused": arseg_ops.local_attn, "reference": reference.local_attn}
    if case.impl not in fns:
        raise ValueError("local_attn impl must be one of %s, got %r" % (sorted(fns), case.impl))
    grad = case.pass_ != "forward"
    shape = (case.batch, case.channels) + case.size
    # std C**-0.25 keeps the logits ~N(0, 1), as in a trained network (no denormal-heavy softmax tails).
    q, k, v = (_randn(case, gen, shape, case.channels ** -0.25, grad) for _ in range(3))
    fn = fns[case.impl]
    return _forward_or_backward(case, lambda q, k, v: fn(q, k, v, case.kernel_size), (q, k, v), (q, k, v), v.shape, gen)


def _block_motion(case, gen):
    h, w = case.size
    b = case.block
    return _randn(case, gen, (case.batch, 2, -(-h // b), -(-w // b)), std=3.0)  # a few pixels, like codec motion


def dense_flow_grid_sample(feature, mv):
    """The unfused way to warp by block motion: expand to a dense flow, normalize, grid_sample."""
    import torch.nn.functional as F

    n, _, h, w = feature.shape
    hb, wb = mv.shape[2:]
    by = torch.arange(h, device=mv.device) * hb // h
    bx = torch.arange(w, device=mv.device) * wb // w
    flow = mv[:, :, by][:, :, :, bx]
    xs = torch.arange(w, device=mv.device, dtype=mv.dtype).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, device=mv.device, dtype=mv.dtype).view(1, h, 1) + flow[:, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixel (integer = pixel centre).
    grid = torch.stack((2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1), dim=-1)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _build_mv_warp(case, gen):
    import arseg_ops
    from arseg_ops import reference

    fns = {
        "fused": arseg_ops.mv_warp,
        "reference": reference.mv_warp,
        "grid_sample": dense_flow_grid_sample,
        "copy": lambda feature, mv: feature.clone(),  # the same bytes moved, no sampling: the bandwidth bound
    }
    if case.impl not in fns:
        raise ValueError("mv_warp impl must be one of %s, got %r" % (sorted(fns), case.impl))
    if case.impl == "copy" and case.pass_ != "forward":
        raise ValueError("the copy baseline has no backward")
    # Codec motion carries no gradient: forward_backward differentiates the (HR) feature only.
    feature = _randn(case, gen, (case.batch, case.channels) + case.size, requires_grad=case.pass_ != "forward")
    mv = _block_motion(case, gen)
    return _forward_or_backward(case, fns[case.impl], (feature, mv), (feature,), feature.shape, gen)


def _build_creff(case, gen):
    import arseg_ops
    from arseg_ops import models, reference

    if case.impl not in ("fused", "reference"):
        raise ValueError("creff impl must be 'fused' or 'reference', got %r" % (case.impl,))
    module = models.CReFF(case.channels, kernel_size=case.kernel_size).to(case.device, DTYPES[case.dtype])
    grad = case.pass_ != "forward"
    hr, lr = (_randn(case, gen, (case.batch, case.channels) + case.size, requires_grad=grad) for _ in range(2))
    params = tuple(p for p in module.parameters() if p.requires_grad)
    forward = module
    if case.impl == "reference":
        # The same module with its attention swapped for the unfold reference (CReFF looks the op up per call).
        def forward(hr, lr):
            fused = arseg_ops.local_attn
            arseg_ops.local_attn = reference.local_attn
            try:
                return module(hr, lr)
            finally:
                arseg_ops.local_attn = fused
    return _forward_or_backward(case, forward, (hr, lr), (hr, lr) + params, lr.shape, gen)


def _build_arseg_step(case, gen):
    from arseg_ops import models

    if case.impl not in ("keyframe", "non_keyframe"):
        raise ValueError("arseg_step impl must be 'keyframe' or 'non_keyframe', got %r" % (case.impl,))
    if case.pass_ != "forward":
        raise ValueError("arseg_step is inference only (pass_='forward')")
    seg = models.ARSeg(backbone=case.backbone, num_classes=12).to(case.device, DTYPES[case.dtype]).eval()
    image = _randn(case, gen, (case.batch, 3) + case.size)
    mv = _block_motion(case, gen)
    with torch.no_grad():
        seg.keyframe(image)  # the non-keyframe step needs the cached HR feature
    step = seg.keyframe if case.impl == "keyframe" else (lambda img: seg.non_keyframe(img, mv))

    def run():
        with torch.no_grad():
            return step(image)
    return run


_BUILDERS = {"local_attn": _build_local_attn, "mv_warp": _build_mv_warp, "creff": _build_creff,
             "arseg_step": _build_arseg_step}


def build(case):
    """A zero-argument callable that runs `case` once on inputs made now (returns the op's outputs)."""
    return _BUILDERS[case.op](case, _generator(case))


# ---- time ----


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(run, device, *, warmup=1, min_rounds=3, max_rounds=100, min_time=0.3, max_time=None):
    """Seconds per call after `warmup` untimed calls: >= min_rounds calls, more until min_time is spent; with
    max_time, slow cases stop after 2 calls once max_time is spent (keeps the reference cases affordable)."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    cuda = str(device).startswith("cuda")
    while len(times) < max_rounds and (len(times) < min_rounds or sum(times) < min_time):
        if max_time is not None and len(times) >= 2 and sum(times) >= max_time:
            break
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return times


def summarize_times(times):
    s = sorted(times)
    return {"median_s": s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2,
            "min_s": s[0], "rounds": len(s)}


# ---- memory ----


def _element_size(case):
    return torch.empty((), dtype=DTYPES[case.dtype]).element_size()


def estimate_peak_bytes(case):
    """A generous estimate of a case's peak extra memory, to skip cases that cannot fit before running them."""
    e = _element_size(case)
    p = case.batch * case.size[0] * case.size[1]
    c = case.channels
    grad = case.pass_ != "forward"
    if case.op == "local_attn" and case.impl == "reference":
        kk = case.kernel_size ** 2
        # unfolded key and value (C*k*k per pixel each), their products, logits and softmax; autograd keeps the
        # unfolded copies and makes gradients of the same size.
        return int(p * kk * e * (4 * c + 4) * (2.0 if grad else 1.0))
    if case.op == "arseg_step":
        return int(p * e * 3 * 64 * 4)  # a ResNet-18 at full resolution: a few 64-channel maps
    return int(p * c * e * (8 if grad else 3))


def available_bytes(device):
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def too_big_reason(case):
    """None when the case should fit in memory, else why it is skipped."""
    need, have = estimate_peak_bytes(case), available_bytes(case.device)
    if need <= 0.8 * have:
        return None
    why = " (it unfolds k*k copies of key and value)" if case.op == "local_attn" and case.impl == "reference" else ""
    return "%s %s %s needs ~%.1f GB%s; %.1f GB available on %s" % (
        case.impl, case.op, case.pass_, need / 1e9, why, have / 1e9, case.device)


def cuda_peak_extra_bytes(run, device):
    """Peak CUDA memory allocated during one call of `run` beyond what was allocated before it."""
    run()  # warm-up: lazy workspaces are not part of the op's footprint
    synchronize(device)
    gc.collect()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run()
    synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - base


_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}


class MemoryProbe:
    """Peak extra memory of cases: in-process on CUDA, in a worker process (peak RSS) on CPU.

    Use as a context manager; `measure(case)` returns bytes, or raises RuntimeError with the worker's error.
    """

    def __init__(self):
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def measure(self, case):
        if case.device.startswith("cuda"):
            return cuda_peak_extra_bytes(build(case), case.device)
        if self._proc is None:
            env = dict(os.environ, **_WORKER_ENV)
            self._proc = subprocess.Popen([sys.executable, "-m", "arseg_ops.bench", "--memory-worker"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self._proc.stdin.write(json.dumps(case.to_dict()) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            self._proc = None
            hint = " (killed: probably out of memory)" if code in (-9, 137) else ""
            raise RuntimeError("memory worker exited with code %s%s" % (code, hint))
        reply = json.loads(line)
        if not reply.get("reusable", False):
            self.close()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["peak_extra_bytes"]


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/self/status" % field)


def _reset_peak_rss():
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tiny(case):
    return case.replace(size=tuple(min(s, 16) for s in case.size))


def _worker_measure(case):
    build(_tiny(case))()  # first-call costs (thread pool, lazy init) stay out of the measurement
    run = build(case)
    gc.collect()
    _malloc_trim()
    reset = _reset_peak_rss()
    base = _proc_status_kb("VmRSS")
    out = run()
    peak = _proc_status_kb("VmHWM")
    del out, run
    return max(peak - base, 0) * 1024, reset


def _memory_worker():
    """Serve MemoryProbe: one JSON case per stdin line, one JSON reply per stdout line."""
    torch.set_num_threads(torch.get_num_threads())
    reply_to = sys.stdout
    sys.stdout = sys.stderr  # stray prints from the measured code must not corrupt the replies
    for line in sys.stdin:
        reply = {"reusable": False}
        try:
            case = Case(**json.loads(line))
            reply["peak_extra_bytes"], reply["reusable"] = _worker_measure(case)
        except Exception as exc:  # reported to the parent, which records the case as failed
            reply["error"] = "%s: %s" % (type(exc).__name__, exc)
        gc.collect()
        _malloc_trim()
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()


# ---- roofline ----


def min_traffic_bytes(case):
    """Compulsory DRAM traffic of local_attn / mv_warp cases (each input read once, each output written once)."""
    e = _element_size(case)
    p = case.batch * case.size[0] * case.size[1]
    c = case.channels
    if case.op == "local_attn":
        fwd = p * 4 * c * e  # q, k, v in; out
        # backward: q, k, v, out, dout and the saved log-sum-exp in; dq, dk, dv out (lse 4 bytes a pixel each way)
        bwd = p * 8 * c * e + 4 * p
        return {"forward": fwd, "backward": bwd, "forward_backward": fwd + 4 * p + bwd}[case.pass_]
    if case.op == "mv_warp":
        mv = case.batch * 2 * math.ceil(case.size[0] / case.block) * math.ceil(case.size[1] / case.block) * e
        fwd = 2 * p * c * e + mv  # feature in, out
        return {"forward": fwd, "backward": fwd, "forward_backward": 2 * fwd}[case.pass_]  # dout in, dfeature out
    return None


def roofline_seconds(case):
    traffic = min_traffic_bytes(case)
    return None if traffic is None else traffic / PEAK_BANDWIDTH


if __name__ == "__main__" and sys.argv[1:] == ["--memory-worker"]:
    _memory_worker()
