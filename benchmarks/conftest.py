"""The benchmark suite's `measure` fixture (devices and workload shapes are in workloads.py).

Every case runs through arseg_ops.bench (the same core as `arseg bench`): inputs are made by bench.build, one
untimed first call absorbs compilation and lazy initialization (and sizes the number of rounds), each timed
call ends with a device synchronize, and extra_info records the case, its peak extra memory (CUDA:
max_memory_allocated; CPU: peak RSS of a worker process) and, for the kernels, the roofline traffic.

ARSEG_BENCH_QUICK=1 shrinks every shape to a few pixels and runs one round: the smoke test uses it so the suite
cannot rot without costing CI time. Numbers from a quick run mean nothing: one round, and at a few pixels a
multi-threaded CPU kernel's call is dominated by waiting for its worker thread (on a loaded machine a scheduler
time slice, ~5-15 ms; see benchmarks/RESULTS.md); summarize.py says so above such tables.
"""
import time

import pytest
from workloads import QUICK

from arseg_ops import bench

TARGET_SECONDS = 2.0  # timed seconds a case aims for (at least 3 rounds, at most 50)


@pytest.fixture(scope="session")
def memory_probe():
    with bench.MemoryProbe() as probe:
        yield probe


@pytest.fixture
def measure(benchmark, memory_probe):
    """measure(case, group): benchmark `case` in `group`; skips (with the reason) what cannot run here."""

    def run_case(case, group):
        reason = bench.too_big_reason(case)
        if reason:
            pytest.skip(reason)
        benchmark.group = group
        try:
            call = bench.build(case)
            started = time.perf_counter()
            call()  # first call, untimed: compilation, lazy initialization, allocator warm-up
            bench.synchronize(case.device)
        except (RuntimeError, NotImplementedError, TypeError) as exc:  # includes torch.OutOfMemoryError
            pytest.skip("%s %s cannot run on %s %s: %s" % (case.impl, case.op, case.device, case.dtype,
                                                           str(exc).strip().splitlines()[0]))
        first = time.perf_counter() - started
        rounds = 1 if QUICK else max(3, min(50, int(TARGET_SECONDS / max(first, 1e-6))))

        def timed():
            call()
            bench.synchronize(case.device)  # the timer stops when the device is done

        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
        del call
        info = benchmark.extra_info
        info.update(case.to_dict())
        info["size"] = "%dx%d" % case.size
        info["quick"] = QUICK  # summarize.py labels a quick run's tables as no measurement
        try:
            info["peak_extra_bytes"] = memory_probe.measure(case)
        except RuntimeError as exc:
            info["peak_extra_error"] = str(exc).strip().splitlines()[0]
        traffic = bench.min_traffic_bytes(case)
        if traffic is not None:
            info["min_traffic_bytes"] = traffic
            info["roofline_s"] = bench.roofline_seconds(case)
        return info

    return run_case
