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


@pytest.mark.parametrize("op", ["local_attn", "mv_warp", "creff"])
def test_channels_last_cases_feed_channels_last_features_and_match_nchw(op):
    import torch
    case = bench.Case(op, "fused", "forward_backward", (10, 14), 6)
    results = {}
    for channels_last in (False, True):
        c = case.replace(channels_last=channels_last)
        assert c.to_dict()["channels_last"] is channels_last
        torch.manual_seed(0)  # creff's module initialises its weights from the global generator
        out = bench.build(c.replace(pass_="forward"))()  # each op's output follows its feature's layout
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert out.is_contiguous() != channels_last
        torch.manual_seed(0)
        results[channels_last] = (out,) + tuple(bench.build(c)())
    for a, b in zip(results[False], results[True]):  # same seed, same values, whatever the layout
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channels_last_does_not_apply_to_flex_or_network_steps():
    with pytest.raises(ValueError, match="channels_last"):
        bench.build(bench.Case("arseg_step", "keyframe", "forward", (16, 16), 3, channels_last=True))
    if bench.peers.flex_available():
        with pytest.raises(ValueError, match="channels_last"):
            bench.build(bench.Case("local_attn", "flex", "forward", (8, 8), 4, channels_last=True))
