"""The benchmark core's statistics and interleaving (no timing claims: only the bookkeeping is checked)."""
import pytest

from arseg_ops import bench


def test_summarize_times_quartiles_match_numpy_linear_interpolation():
    np = pytest.importorskip("numpy")
    times = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]
    s = bench.summarize_times(times)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    assert s["median_s"] == pytest.approx(med) and s["q1_s"] == pytest.approx(q1) and s["q3_s"] == pytest.approx(q3)
    assert s["iqr_s"] == pytest.approx(q3 - q1) and s["rounds"] == 6
    assert s["min_s"] == 0.1 and s["max_s"] == 0.9 and s["spread"] == pytest.approx((q3 - q1) / med)
    with pytest.raises(ValueError):
        bench.summarize_times([])


def test_time_interleaved_alternates_rounds_and_respects_minimums():
    order = []
    runs = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = bench.time_interleaved(runs, "cpu", warmup=1, min_rounds=4, min_time=0.0)
    assert len(times["a"]) == len(times["b"]) == 4
    assert order[:2] == ["a", "b"]  # warm-up calls
    assert order[2:] == ["a", "b"] * 4  # timed rounds alternate


def test_case_json_round_trip_uses_the_pass_key():
    case = bench.Case("mv_warp", "fused", "forward_backward", (12, 16), 8, block=2)
    d = case.to_dict()
    assert d["pass"] == "forward_backward" and "pass_" not in d
    assert bench.Case.from_dict(d) == case


def test_roofline_traffic_comes_from_the_op_metadata():
    from arseg_ops import _opinfo

    case = bench.Case("local_attn", "fused", "forward", (10, 20), 8)
    assert bench.min_traffic_bytes(case) == _opinfo.local_attn_traffic((1, 8, 10, 20), 8, 4, "forward")
    assert bench.min_traffic_bytes(case) == 1 * 10 * 20 * 4 * 8 * 4  # q, k, v read, out written, float32
