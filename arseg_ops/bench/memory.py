"""Peak extra memory of a case: in-process on CUDA, in a worker process (peak RSS) on CPU.

On CUDA: torch.cuda.max_memory_allocated() minus the allocation before the call. On CPU the case runs in a
separate worker process (`MemoryProbe`) so the benchmark process's own heap cannot hide or inflate it: the
worker makes the inputs, warms the op up on a tiny copy of the case (a compiled case: on the case itself,
which compiles it), resets its peak RSS (Linux /proc/self/clear_refs), runs the case once and reports peak RSS
minus the RSS before the call. glibc is told to serve every allocation >= 64 KiB with mmap, so freed tensors
leave the RSS and one case cannot reuse another's pages unseen. Without clear_refs a fresh worker is started per
case (peak = ru_maxrss).
"""
import gc
import json
import os
import subprocess
import sys

import torch

from .cases import DTYPES, Case, build
from .timing import synchronize


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
    if case.compile:
        torch.compiler.reset()  # earlier cases' graphs stay out of the recompile limit (past it: eager, unseen)
        run = build(case)
        run()  # compiles (for exactly this shape: dynamic=False); the compiler's memory stays out of the peak
    else:
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


def memory_worker():
    """Serve MemoryProbe: one JSON case per stdin line, one JSON reply per stdout line."""
    torch.set_num_threads(torch.get_num_threads())
    reply_to = sys.stdout
    sys.stdout = sys.stderr  # stray prints from the measured code must not corrupt the replies
    for line in sys.stdin:
        reply = {"reusable": False}
        try:
            case = Case.from_dict(json.loads(line))
            reply["peak_extra_bytes"], reply["reusable"] = _worker_measure(case)
        except Exception as exc:  # reported to the parent, which records the case as failed
            reply["error"] = "%s: %s" % (type(exc).__name__, exc)
        gc.collect()
        _malloc_trim()
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()
