"""`arseg bench` for the creff and arseg_step cases and --compile, run in-process on tiny sizes (CPU).

Checks the bookkeeping only (which cases ran, ratios and GOP averages consistent with the timed medians in the
printed table and the JSON, usage errors); never a timing claim.
"""
import contextlib
import io
import json

import pytest

from arseg_ops import bench, cli
from arseg_ops.cli import bench_command, bench_steps

TINY = ["--device", "cpu", "--size", "16x24", "--channels", "8", "--min-time", "0", "--max-time", "0"]


def _run(argv, capsys):
    code = cli.main(argv)
    out, _ = capsys.readouterr()
    return code, out


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr().err


def _table_rows(out, first_cells):
    """The printed rows whose first cell is one of first_cells, split into cells."""
    return [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in first_cells]


def _gop12(ratio):
    return (1 + 11 * ratio) / 12


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of the two new cases (both backbones): its stdout and its JSON record."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["bench"] + TINY + ["--ops", "creff,arseg_step", "--json", str(path), "-q"])
    assert code == 0
    return out.getvalue(), json.loads(path.read_text())


def test_creff_fused_vs_unfused_rows_and_json(tiny_run):
    out, record = tiny_run
    creff = [c for c in record["cases"] if c["op"] == "creff"]
    assert {(c["pass"], c["impl"]) for c in creff} == {(p, i) for p in bench.PASSES for i in ("fused", "unfused")}
    for c in creff:
        assert c["median_s"] > 0 and c["rounds"] >= 3 and c["peak_extra_bytes"] >= 0 and c["compile"] is False
    rows = _table_rows(out, ["creff"])
    assert len(rows) == 2 and all(row[-1] == "unfused" for row in rows)
    for row in rows:
        pass_ = row[1]
        fused, unfused = (next(c for c in creff if c["pass"] == pass_ and c["impl"] == i) for i in ("fused", "unfused"))
        assert row[2] == "%.2f" % (fused["median_s"] * 1e3) and row[4] == "%.2f" % (unfused["median_s"] * 1e3)
        assert "%.1fx" % (unfused["median_s"] / fused["median_s"]) in row


def test_arseg_step_ratio_and_gop12_are_consistent(tiny_run):
    out, record = tiny_run
    assert record["gop"] == 12 and record["image_size"] == [16, 24]
    medians = {(c["backbone"], c["impl"]): c["median_s"] for c in record["cases"] if c["op"] == "arseg_step"}
    assert set(medians) == {(b, s) for b in ("psp18", "bisenet18") for s in bench.ARSEG_STEPS}
    summary = record["arseg_step"]
    assert {(s["backbone"], s["creff"]) for s in summary} == {(b, p) for b in ("psp18", "bisenet18")
                                                              for p in ("fused", "unfused")}
    rows = {(row[0], row[2]): row for row in _table_rows(out, ["psp18", "bisenet18"])}
    assert "GOP-12 avg/key" in out
    for s in summary:
        step = "non_keyframe" if s["creff"] == "fused" else "non_keyframe_unfused"
        key, non_key = medians[(s["backbone"], "keyframe")], medians[(s["backbone"], step)]
        assert s["keyframe_median_s"] == key and s["non_keyframe_median_s"] == non_key
        assert s["non_key_over_key"] == pytest.approx(non_key / key, rel=1e-12)
        assert s["gop_average_over_key"] == pytest.approx(_gop12(s["non_key_over_key"]), rel=1e-12)
        row = rows[(s["backbone"], s["creff"])]
        # backbone, image, CReFF, key ms, (IQR), non-key ms, (IQR), rounds, non-key/key, GOP-12, key MB, non-key MB
        assert row[1] == "16x24" and row[3] == "%.2f" % (key * 1e3) and row[5] == "%.2f" % (non_key * 1e3)
        assert row[8] == "%.2f" % s["non_key_over_key"] and row[9] == "%.2f" % s["gop_average_over_key"]


def test_gop_average_formula():
    assert bench.gop_average_over_keyframe(0.73) == pytest.approx(0.7525)  # the issue's CPU row: 0.73 -> 0.75
    assert bench.gop_average_over_keyframe(0.5, gop=4) == pytest.approx((1 + 3 * 0.5) / 4)
    assert bench.gop_average_over_keyframe(0.3, gop=1) == 1.0
    with pytest.raises(ValueError, match="gop"):
        bench.gop_average_over_keyframe(0.5, gop=0)


def test_steps_table_follows_gop_and_reports_skips():
    case = bench.Case("arseg_step", "keyframe", "forward", (8, 8), 3, backbone="psp18")
    key = bench.summarize_times([2.0] * 5)
    non_key = bench.summarize_times([0.5] * 5)
    res = {"keyframe": key, "non_keyframe": non_key, "non_keyframe_unfused": {"skipped": "out of memory"}}
    headers, rows, notes = bench_steps.table([(case, res)], gop=4)
    assert "GOP-4 avg/key" in headers
    assert rows[0][6:8] == ["0.25", "%.2f" % ((1 + 3 * 0.25) / 4)] and rows[1][6:8] == ["-", "-"]
    assert any("non_keyframe_unfused skipped: out of memory" in n for n in notes)
    summary = bench_steps.summary([(case, res)], gop=4)
    assert len(summary) == 1 and summary[0]["gop_average_over_key"] == pytest.approx(0.4375)


def test_kernel_table_compares_creff_with_the_unfused_chain():
    case = bench.Case("creff", "fused", "forward", (8, 8), 4)
    res = {"fused": bench.summarize_times([1.0] * 5), "unfused": bench.summarize_times([3.0] * 5)}
    res["fused"]["first_call_s"], res["unfused"]["first_call_s"] = 12.5, 9.0
    headers, rows, notes = bench_command.table([(case, res)], cuda=True)  # creff has no roofline: "-"
    assert rows[0][headers.index("speedup")] == "3.0x" and rows[0][headers.index("baseline")] == "unfused"
    assert rows[0][headers.index("roofline ms")] == "-"
    assert any("first call (torch.compile): fused 12.5 s, unfused 9.0 s" in n for n in notes)


@pytest.mark.parametrize("argv, argument", [
    (["--ops", "creff,flops"], "--ops"),
    (["--ops", ""], "--ops"),
    (["--passes", "backward"], "--passes"),
    (["--backbones", "resnet50"], "--backbones"),
    (["--gop", "0"], "--gop"),
    (["--image-size", "16by24"], "--image-size"),
])
def test_bad_values_are_usage_errors_naming_the_argument(argv, argument, capsys):
    code, err = _usage_error(["bench"] + argv, capsys)
    assert code == 2 and "arseg bench: error: argument %s" % argument in err


def test_case_compile_flag_round_trips_and_is_refused_where_it_cannot_apply():
    case = bench.Case("creff", "unfused", "forward", (8, 8), 4, compile=True)
    assert bench.Case.from_dict(case.to_dict()) == case and case.to_dict()["compile"] is True
    with pytest.raises(ValueError, match="peers"):
        bench.build(bench.Case("local_attn", "flex", "forward", (8, 8), 4, compile=True))
    with pytest.raises(ValueError, match="reference"):
        bench.build(case.replace(impl="reference"))


@pytest.mark.slow  # torch.compile of two tiny graphs (Inductor, C++ on CPU) and again in the memory worker: ~20 s
def test_compile_run_on_a_tiny_creff_case(tmp_path, capsys):
    path = tmp_path / "compiled.json"
    code, out = _run(["bench"] + TINY + ["--ops", "creff", "--passes", "forward", "--compile", "--json", str(path),
                                         "-q"], capsys)
    assert code == 0 and "torch.compile (fullgraph, static shapes)" in out
    record = json.loads(path.read_text())
    assert record["compile"] is True
    cases = record["cases"]
    assert {c["impl"] for c in cases} == {"fused", "unfused"}
    for c in cases:
        assert c["compile"] is True and c["median_s"] > 0 and c["first_call_s"] > 0 and "skipped" not in c
        assert c["peak_extra_bytes"] >= 0
    assert "creff forward first call (torch.compile): fused" in out


def test_a_compiled_implementation_that_fails_is_skipped_and_the_others_still_timed(monkeypatch):
    calls = []

    def fake_build(case):
        if case.impl == "unfused":
            def broken():
                raise RuntimeError("Unsupported: graph break in fake_op\nmore detail")
            return broken
        return lambda: calls.append(case.impl)

    class Probe:
        def measure(self, case):
            return 123

    monkeypatch.setattr(bench, "build", fake_build)
    case = bench.Case("creff", "fused", "forward", (8, 8), 4, compile=True)
    res = bench_command.measure_pair(case, Probe(), 0.0, None, lambda msg: None)
    assert res["unfused"] == {"skipped": "Unsupported: graph break in fake_op"}
    assert res["fused"]["rounds"] == bench_command.MIN_ROUNDS and res["fused"]["peak_extra_bytes"] == 123
    assert res["fused"]["first_call_s"] >= 0 and len(calls) == 1 + 1 + bench_command.MIN_ROUNDS  # first, warm-up


def test_legend_explains_rounds_and_notes_only_the_passes_and_waits_that_apply():
    import argparse

    from arseg_ops.cli import bench_format

    args = argparse.Namespace(compile=False)
    fwd = bench.Case("mv_warp", "fused", "forward", (12, 16), 8, 7, 4, "float32", "cpu")
    short = {"fused": {"median_s": 0.011}, "reference": {"median_s": 0.0008}}
    text = bench_command.legend(args, False, [(fwd, short)], [])
    assert "rounds a/b = timed calls of the first/second implementation" in text
    assert "forward_backward" not in text and "Baselines:" in text
    both = bench_command.legend(args, False, [(fwd, short), (fwd.replace(pass_="forward_backward"), short)], [])
    assert "forward_backward differentiates" in both
    assert "Baselines:" not in bench_command.legend(args, False, [], [])  # an arseg_step-only run
    note = bench_format.thread_wait_note("cpu", 2, [(fwd, short)])
    assert note.startswith("mv_warp: calls under 20 ms on 2 CPU threads") and "OMP_NUM_THREADS=1" in note
    assert bench_format.thread_wait_note("cpu", 1, [(fwd, short)]) is None
    assert bench_format.thread_wait_note("cuda", 2, [(fwd, short)]) is None
    assert bench_format.thread_wait_note("cpu", 2, [(fwd, {"fused": {"median_s": 0.5}})]) is None


def test_run_ends_with_a_labelled_total_time(capsys):
    assert cli.main(["bench"] + TINY + ["--ops", "mv_warp", "--passes", "forward", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("total time of this run: ") and "forward_backward" not in out


def test_channels_last_run_times_every_kernel_op_in_that_layout(tmp_path, capsys):
    path = tmp_path / "cl.json"
    code, out = _run(["bench"] + TINY + ["--ops", "local_attn,mv_warp,creff", "--passes", "forward",
                                         "--channels-last", "--json", str(path), "-q"], capsys)
    assert code == 0 and "feature 8x16x24 channels_last" in out
    record = json.loads(path.read_text())
    assert record["channels_last"] is True
    assert {c["op"] for c in record["cases"]} == {"local_attn", "mv_warp", "creff"}
    for c in record["cases"]:
        assert c["channels_last"] is True and c["median_s"] > 0 and "skipped" not in c
