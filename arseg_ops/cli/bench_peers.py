"""The peers table of `arseg bench --peers`: local_attn fused vs FlexAttention and torch.compile(reference)."""
from .. import bench
from .bench_format import ms

NAMES = {
    "fused": "arseg_ops.local_attn (fused)",
    "flex": "FlexAttention, compiled, own (B,1,H*W,C) layout",
    "flex_layout": "  NCHW <-> (B,1,H*W,C) conversions for Flex",
    "compiled_reference": "torch.compile(reference.local_attn)",
}


def describe(device):
    return ("Peers of local_attn (same inputs, rounds interleaved). Roofline: compulsory traffic / %.0f GB/s (%s). "
            "FlexAttention computes padding='exclude' (same work); its layout conversions are listed on their own "
            "line. FlexAttention has no CPU backward: that row says skipped."
            % (bench.peak_bandwidth(device) / 1e9,
               "H100 copy bandwidth" if device.startswith("cuda") else "this CPU's measured copy bandwidth"))


def table(peer_results):
    """(headers, rows) with one row per (pass, implementation)."""
    rows = []
    order = list(NAMES)
    for case, res in peer_results:
        fused = res.get("fused", {})
        for impl, r in sorted(res.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
            c = case.replace(impl=impl)
            roof = bench.roofline_seconds(c)
            timed = "median_s" in r
            rows.append([case.pass_, NAMES.get(impl, impl), ms(r) if timed else "skipped: " + r.get("skipped", "?"),
                         "%.2fx" % (r["median_s"] / fused["median_s"]) if timed and "median_s" in fused else "-",
                         "%.1f%%" % (100 * roof / r["median_s"]) if timed and roof else "-",
                         "%.1f" % (r["peak_extra_bytes"] / 1e6) if "peak_extra_bytes" in r else "-"])
    return ["pass", "implementation", "ms (IQR)", "time vs fused", "% of roofline", "peak MB"], rows
