"""Markdown tables (as in RESULTS.md) from a pytest-benchmark JSON file written by this suite.

    pytest benchmarks/ --benchmark-json=run.json && python benchmarks/summarize.py run.json

One row per case: median time, peak extra memory, and both as multiples of the group's baseline row, named in
the "baseline" column (the fused kernel; the keyframe step for the AR-Seg group; else the group's first row), so
"reference 12.0x" reads "the reference takes 12 times as long as the fused kernel on the same inputs".
"% of roofline" = compulsory traffic / peak bandwidth / median (arseg_ops.bench.roofline: 3.0 TB/s on CUDA, a
measured copy bandwidth on CPU). A run made with ARSEG_BENCH_QUICK=1 is labelled as no measurement.
"""
import json
import sys
from collections import OrderedDict

BASELINES = ("fused", "keyframe")


QUICK_WARNING = ("**NOT MEASUREMENTS: a quick run (ARSEG_BENCH_QUICK=1)**: shapes of a few pixels, one round per "
                 "case, to check that the suite runs. At such sizes a multi-threaded CPU kernel's time is mostly the "
                 "wait for its worker thread to be scheduled (milliseconds on a loaded machine), not its work.")


def is_quick(run):
    return any(b.get("extra_info", {}).get("quick") for b in run["benchmarks"])


def _ratio(value, base):
    return "%.2fx" % (value / base) if value and base else "-"


def tables(run):
    groups = OrderedDict()
    for b in run["benchmarks"]:
        info = b.get("extra_info", {})
        groups.setdefault(b["group"], []).append((info.get("impl", b["name"]), b["stats"]["median"],
                                                  info.get("peak_extra_bytes"), b["stats"]["rounds"],
                                                  info.get("roofline_s")))
    lines = ["| group | impl | median ms | baseline | time vs baseline | % of roofline | peak extra MB | memory vs "
             "baseline | rounds |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for group, rows in groups.items():
        base = next((r for r in rows if r[0] in BASELINES), rows[0])
        for impl, median, peak, rounds, roof in sorted(rows, key=lambda r: r[0] not in BASELINES):
            lines.append("| %s | %s | %.2f | %s | %s | %s | %s | %s | %d |" % (
                group, impl, median * 1e3, base[0], _ratio(median, base[1]),
                "%.0f%%" % (100 * roof / median) if roof and median else "-",
                "%.1f" % (peak / 1e6) if peak is not None else "-", _ratio(peak, base[2]), rounds))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        run = json.load(f)
    machine = run.get("machine_info", {})
    print("%s, %s, Python %s" % (run.get("datetime", "?"), machine.get("cpu", {}).get("brand_raw", "?"),
                                 machine.get("python_version", "?")))
    print()
    if is_quick(run):
        print(QUICK_WARNING)
        print()
    print(tables(run))
    print()
    print("time vs baseline = this row's median / the median of the row named in `baseline` (same group, same "
          "inputs); memory likewise.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
