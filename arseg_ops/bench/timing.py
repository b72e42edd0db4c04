"""Timing: calls are timed one by one (CUDA events on CUDA, perf_counter on CPU) after untimed warm-up calls.

Each case reports the median and the spread of its rounds (interquartile range, min, max), so a noisy machine
shows in the numbers instead of hiding behind a single figure. `time_interleaved` alternates the rounds of
several callables (fused, reference, ...) so that all of them see the same machine state, which keeps their
ratio meaningful when the machine is busy.
"""
import time

import torch

NOISY_SPREAD = 0.2  # a case whose IQR exceeds 20% of its median is flagged as noisy


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed_once(run, device):
    if str(device).startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _finished(times, min_rounds, max_rounds, min_time, max_time):
    if len(times) >= max_rounds:
        return True
    if max_time is not None and len(times) >= min(3, min_rounds) and sum(times) >= max_time:
        return True  # a slow case stops early (keeps the reference cases affordable), with 3 rounds at least
    return len(times) >= min_rounds and sum(times) >= min_time


def time_call(run, device, *, warmup=1, min_rounds=5, max_rounds=200, min_time=1.0, max_time=None):
    """Seconds of each timed call of `run` (a list), after `warmup` untimed calls: at least min_rounds calls,
    more until min_time is spent; with max_time, a slow case stops after 3 calls once max_time is spent."""
    return time_interleaved({"run": run}, device, warmup=warmup, min_rounds=min_rounds, max_rounds=max_rounds,
                            min_time=min_time, max_time=max_time)["run"]


def time_interleaved(runs, device, *, warmup=1, min_rounds=5, max_rounds=200, min_time=1.0, max_time=None):
    """{name: [seconds per call]} for a dict of callables timed in alternating rounds (a, b, a, b, ...).

    Every callable gets `warmup` untimed calls first; then each round calls every callable that is not finished
    (see time_call for when one is), until all are.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize(device)
    times = {name: [] for name in runs}
    while True:
        active = [name for name in runs if not _finished(times[name], min_rounds, max_rounds, min_time, max_time)]
        if not active:
            return times
        for name in active:
            times[name].append(_timed_once(runs[name], device))


def _quantile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_times(times):
    """Median, quartiles, IQR, min, max (seconds), rounds, and `spread` = IQR / median."""
    if not times:
        raise ValueError("summarize_times: no timed rounds")
    s = sorted(times)
    median = _quantile(s, 0.5)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "min_s": s[0], "max_s": s[-1],
            "rounds": len(s), "spread": (q3 - q1) / median if median > 0 else 0.0}


def is_noisy(summary):
    return summary["spread"] > NOISY_SPREAD
