"""The benchmark suite cannot rot: run it on tiny shapes (ARSEG_BENCH_QUICK=1) in a subprocess.

No timing is asserted; the runs check that every case builds, runs, records its peak extra memory, and that a
JSON run works with `pytest-benchmark compare` (the regression workflow the README shows).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_ENV = dict(os.environ, ARSEG_BENCH_QUICK="1")


def _pytest(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env=QUICK_ENV, capture_output=True, text=True, timeout=timeout)


def test_benchmark_suite_runs_with_benchmarks_disabled():
    proc = _pytest("benchmarks/", "--benchmark-disable")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_benchmark_json_records_memory_and_compares(tmp_path):
    path = str(tmp_path / "run.json")
    proc = _pytest("benchmarks/test_bench_local_attn.py", "benchmarks/test_bench_mv_warp.py", "-k",
                   "cpu and forward and (k7 or block4) and not backward", "--benchmark-json=" + path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    with open(path) as f:
        run = json.load(f)
    groups = {}
    for b in run["benchmarks"]:
        info = b["extra_info"]
        assert info["peak_extra_bytes"] >= 0 and info["min_traffic_bytes"] > 0, info
        groups.setdefault(b["group"], set()).add(info["impl"])
    assert groups and all(impls == {"fused", "reference"} for impls in groups.values()), groups
    compare = subprocess.run([sys.executable, "-m", "pytest_benchmark.cli", "compare", path, path], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr
    summary = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "summarize.py"), path],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0 and "| fused |" in summary.stdout, summary.stderr
    assert "NOT MEASUREMENTS: a quick run" in summary.stdout and "time vs baseline = " in summary.stdout
    reference_rows = [line for line in summary.stdout.splitlines() if "| reference |" in line]
    assert reference_rows and all("| fused |" in line for line in reference_rows)  # its baseline, named


def test_summarize_labels_only_quick_runs_and_names_each_baseline(tmp_path):
    def bench(group, impl, median, quick):
        return {"group": group, "name": impl, "stats": {"median": median, "rounds": 5},
                "extra_info": {"impl": impl, "peak_extra_bytes": 2e6, "quick": quick}}

    for quick in (False, True):
        run = {"benchmarks": [bench("creff", "unfused", 0.012, quick), bench("creff", "fused", 0.003, quick),
                              bench("steps", "keyframe", 0.1, quick), bench("steps", "non_keyframe", 0.04, quick)]}
        path = tmp_path / "run.json"
        path.write_text(json.dumps(run))
        out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "summarize.py"), str(path)],
                             capture_output=True, text=True, timeout=60).stdout
        assert ("NOT MEASUREMENTS" in out) == quick
        assert "| creff | unfused | 12.00 | fused | 4.00x |" in out
        assert "| steps | non_keyframe | 40.00 | keyframe | 0.40x |" in out


def test_summarize_without_a_file_prints_usage():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "summarize.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "summarize.py run.json" in proc.stderr
