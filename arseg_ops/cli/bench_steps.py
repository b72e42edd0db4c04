"""The AR-Seg steps table of `arseg bench`: keyframe vs non-keyframe per backbone, and their GOP average.

AR-Seg runs the HR network on one frame per group of pictures (GOP) and the LR network + CReFF on the other
gop - 1, so what it saves is read off two ratios of one side-by-side run: non-keyframe / keyframe, and the average
frame over a GOP / keyframe = (1 + (gop - 1) * non-key/key) / gop. Both are given for the non-keyframe with the
fused CReFF op and with the unfused chain (mv_warp, resize, depthwise convs, local_attn, add).
"""
from .. import bench
from . import bench_format

# (name of the CReFF path, the non-keyframe step that uses it); the keyframe is the same for both.
CREFF_PATHS = (("fused", "non_keyframe"), ("unfused", "non_keyframe_unfused"))


def summary(step_results, gop):
    """One JSON-ready dict per (backbone, CReFF path) whose keyframe and non-keyframe were both timed."""
    out = []
    for case, res in step_results:
        key = res.get("keyframe", {})
        for path, step in CREFF_PATHS:
            non_key = res.get(step, {})
            if not bench_format.timed(key, non_key):
                continue
            ratio = non_key["median_s"] / key["median_s"]
            out.append({"backbone": case.backbone, "image_size": list(case.size), "creff": path, "gop": gop,
                        "compile": case.compile, "keyframe_median_s": key["median_s"],
                        "non_keyframe_median_s": non_key["median_s"], "non_key_over_key": ratio,
                        "gop_average_over_key": bench.gop_average_over_keyframe(ratio, gop)})
    return out


def table(step_results, gop):
    """(headers, rows, notes): one row per backbone and CReFF path."""
    rows, notes = [], []
    for case, res in step_results:
        key = res.get("keyframe", {})
        image = "%dx%d" % case.size
        for path, step in CREFF_PATHS:
            non_key = res.get(step, {})
            both = bench_format.timed(key, non_key)
            ratio = non_key["median_s"] / key["median_s"] if both else None
            rows.append([case.backbone, image, path, bench_format.ms(key), bench_format.ms(non_key),
                         "%s/%s" % (key.get("rounds", "-"), non_key.get("rounds", "-")),
                         "%.2f" % ratio if both else "-",
                         "%.2f" % bench.gop_average_over_keyframe(ratio, gop) if both else "-",
                         bench_format.mb(key), bench_format.mb(non_key)])
        label = "arseg_step %s" % case.backbone
        for step, r in res.items():
            notes += bench_format.result_notes(label, step, r)
        note = bench_format.compile_note(label, res)
        if note:
            notes.append(note)
    headers = ["backbone", "image", "CReFF", "keyframe ms (IQR)", "non-keyframe ms (IQR)", "rounds", "non-key/key",
               "GOP-%d avg/key" % gop, "key peak MB", "non-key peak MB"]
    return headers, rows, notes


def describe(gop, scale=0.5):
    return ("AR-Seg steps (random weights, batch 1, LR scale %g): keyframe = HR network; non-keyframe = LR network "
            "+ CReFF on the cached keyframe feature and the block motion, with the fused op or the unfused chain. "
            "Keyframe and non-keyframe rounds alternate. GOP-%d avg/key = (1 + %d * non-key/key) / %d: the average "
            "frame of a GOP relative to a keyframe." % (scale, gop, gop - 1, gop))
