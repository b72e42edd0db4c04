"""Cells and notes shared by the tables of `arseg bench` (kernels, AR-Seg steps, peers).

A result is what bench_command.measure_pair returns for one implementation: the time summary
(bench.summarize_times) with peak_extra_bytes (or memory_error), first_call_s for compiled cases, or 'skipped'.
"""
from .. import bench


def ms(r):
    """'median (IQR)' in ms, or 'skipped'."""
    return "%.2f (%.2f)" % (r["median_s"] * 1e3, r["iqr_s"] * 1e3) if "median_s" in r else "skipped"


def mb(r):
    return "%.1f" % (r["peak_extra_bytes"] / 1e6) if "peak_extra_bytes" in r else "-"


def timed(*results):
    return all("median_s" in r for r in results)


def result_notes(label, impl, r):
    """Why a result is missing or incomplete, and whether its spread makes it untrustworthy."""
    notes = []
    for key in ("skipped", "memory_error"):
        if key in r:
            notes.append("%s %s %s: %s" % (label, impl, key.replace("_", " "), r[key]))
    if "median_s" in r and bench.is_noisy(r):
        notes.append("%s %s is noisy: IQR %.0f%% of the median over %d rounds (min %.2f, max %.2f ms); the machine "
                     "is busy or the case too short, rerun with a larger --min-time"
                     % (label, impl, 100 * r["spread"], r["rounds"], r["min_s"] * 1e3, r["max_s"] * 1e3))
    return notes


def compile_note(label, res):
    """The first (compiling) call of each compiled implementation, which the timings exclude; None if none."""
    firsts = ["%s %.1f s" % (impl, r["first_call_s"]) for impl, r in res.items() if "first_call_s" in r]
    return "%s first call (torch.compile): %s" % (label, ", ".join(firsts)) if firsts else None


# Below this median a multi-threaded CPU call can be mostly the wait for its worker thread (see thread_wait_note).
SHORT_CALL_S = 0.02


def thread_wait_note(device, threads, results):
    """A note for CPU runs with several threads where some fused kernel call is short: each of our kernels splits
    even tiny work across the OpenMP threads, so a call waits until its worker thread gets a core. On a machine
    busy with other processes that is a scheduler time slice (measured on the loaded 2-core VM: 8x12x16 mv_warp
    0.018 ms on 1 thread, 6-14 ms on 2, clustered at multiples of a few ms), while PyTorch's own ops keep small
    tensors on one thread. None when it does not apply."""
    if device != "cpu" or threads < 2:
        return None
    short = [case.op for case, res in results if res.get("fused", {}).get("median_s", 1.0) < SHORT_CALL_S]
    if not short:
        return None
    return ("%s: calls under %d ms on %d CPU threads: each kernel call waits for its worker thread to get a core, "
            "which on a machine busy with other processes takes a scheduler time slice (milliseconds) and can "
            "dominate a call this small, while PyTorch's ops (the baselines) keep small tensors on one thread; "
            "OMP_NUM_THREADS=1 or an idle machine times the work itself"
            % (", ".join(dict.fromkeys(short)), SHORT_CALL_S * 1e3, threads))
