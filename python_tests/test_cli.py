"""The `arseg` command on tiny synthetic inputs (CPU): every subcommand runs, its outputs exist and decode, and bad
arguments or unreadable files end with a clear message and the documented exit code (2 arguments, 1 files)."""
import colorsys
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from arseg_ops import cli, models, video
from arseg_ops.cli import images

H, W, FRAMES, GOP = 48, 64, 8, 4
PAN_PX = 1.5  # content moves right by 1.5 px per frame


def _pan_frames():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    for t in range(FRAMES):
        x = xx - PAN_PX * t
        image = np.stack([np.sin(x / 3.1) * 100 + 128, np.cos(yy / 4.3 + x / 7.7) * 100 + 128,
                          np.sin((x + yy) / 5.3) * 100 + 128], axis=-1)
        yield np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pan.mp4"
    video.encode(list(_pan_frames()), path, gop=GOP, crf=18, preset="veryfast")
    return str(path)


def _decode(path):
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr().err


# ---- bench ----


def test_bench_small_size_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code, out, _ = _run(["bench", "--device", "cpu", "--size", "12x16", "--channels", "8", "--min-time", "0",
                         "--ops", "local_attn,mv_warp", "--json", str(path), "-q"], capsys)
    assert code == 0
    assert "speedup" in out and "local_attn" in out and "mv_warp" in out and "feature 8x12x16" in out
    record = json.loads(path.read_text())
    cases = record["cases"]
    assert {(c["op"], c["pass"], c["impl"]) for c in cases} == {
        (op, p, impl) for op in ("local_attn", "mv_warp") for p in ("forward", "forward_backward")
        for impl in ("fused", "reference")}
    for case in cases:
        assert case["median_s"] > 0 and case["rounds"] >= 3
        assert case["peak_extra_bytes"] >= 0 and case["min_traffic_bytes"] > 0


def test_bench_rejects_bad_arguments(capsys):
    assert _usage_error(["bench", "--size", "12by16"], capsys)[0] == 2
    assert _usage_error(["bench", "--dtype", "int8"], capsys)[0] == 2
    code, err = _usage_error(["bench", "--channels", "0"], capsys)
    assert code == 2 and "positive integer" in err
    for k in ("4", "17", "0", "-3", "x"):
        code, err = _usage_error(["bench", "--kernel-size", k], capsys)
        assert code == 2 and "arseg bench: error" in err and "odd window size in [1, 15]" in err
    for flag in ("--min-time", "--max-time"):
        code, err = _usage_error(["bench", flag, "-1"], capsys)
        assert code == 2 and "arseg bench: error" in err and ">= 0" in err


def test_bench_table_shows_spread_and_flags_noisy_cases():
    from arseg_ops import bench
    from arseg_ops.cli import bench_command

    case = bench.Case("local_attn", "fused", "forward", (8, 8), 4)
    steady = bench.summarize_times([1.0, 1.0, 1.01, 1.0, 0.99])
    noisy = bench.summarize_times([1.0, 3.0, 0.5, 2.0, 1.0])
    headers, rows, notes = bench_command.table([(case, {"fused": steady, "reference": noisy})], cuda=False)
    assert "rounds" in headers and rows[0][4] == "5/5"
    assert rows[0][2].startswith("1000.00 (")
    assert any("reference is noisy" in n for n in notes) and not any("fused is noisy" in n for n in notes)


def test_usage_errors_name_the_command(capsys):
    code, err = _usage_error(["motion", "missing.mp4", "-o", "x.gif"], capsys)
    assert code == 2 and "arseg motion: error:" in err and "usage: arseg motion" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bench_cuda_without_gpu_is_a_usage_error(capsys):
    code, err = _usage_error(["bench", "--device", "cuda"], capsys)
    assert code == 2 and "CUDA" in err


# ---- flops ----


def test_flops_matches_paper_settings(capsys):
    code, out, _ = _run(["flops"], capsys)
    assert code == 0
    assert "309.02" in out and "101.98" in out  # the paper's column
    hr_line = next(line for line in out.splitlines() if line.startswith("HR network"))
    ar_line = next(line for line in out.splitlines() if line.startswith("AR-Seg average"))
    assert abs(float(hr_line.split()[-2]) - 309.02) / 309.02 < 0.005
    assert abs(float(ar_line.split()[-2]) - 101.98) / 101.98 < 0.005


def test_flops_bisenet_notes_the_double_count(capsys):
    code, out, _ = _run(["flops", "--backbone", "bisenet18", "--scale", "0.5"], capsys)
    assert code == 0 and "58.83" in out and "39.12" in out and "twice" in out


def test_flops_average_is_the_gop_mean(capsys):
    hr = models.count_gmacs("psp18", (64, 96), scale=1.0)
    ar = models.count_gmacs("psp18", (64, 96), scale=0.6, keyframe_interval=5)
    code, out, _ = _run(["flops", "--size", "64x96", "--scale", "0.6", "--gop", "5"], capsys)
    assert code == 0
    assert "%.2f" % hr in out and "%.2f" % ar in out


def test_flops_rejects_bad_scale(capsys):
    code, err = _usage_error(["flops", "--scale", "1.5"], capsys)
    assert code == 2 and "(0, 1]" in err


# ---- segment ----


def test_segment_random_weights_writes_a_decodable_video(clip, tmp_path, capsys):
    out_path = str(tmp_path / "seg.mp4")
    code, out, err = _run(["segment", clip, "-o", out_path, "--backbone", "psp18", "--scale", "0.5",
                           "--device", "cpu", "-q"], capsys)
    assert code == 0
    assert "RANDOM weights" in err
    assert "frames %d, keyframes %d" % (FRAMES, FRAMES // GOP) in out and "frames/s" in out
    frames = _decode(out_path)
    assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)


def test_segment_with_weights_renders_the_class_maps(clip, tmp_path, capsys):
    torch.manual_seed(1)
    seg = models.ARSeg("bisenet18", num_classes=12, scale=0.5).eval()
    hr_path, lr_path = str(tmp_path / "hr.pth"), str(tmp_path / "lr.pth")
    torch.save(seg.hr_net.state_dict(), hr_path)
    torch.save({"state_dict": seg.lr_net.state_dict()}, lr_path)  # training checkpoints wrap the weights
    out_path = str(tmp_path / "seg.mkv")
    code, _, err = _run(["segment", clip, "-o", out_path, "--backbone", "bisenet18", "--hr-weights", hr_path,
                         "--lr-weights", lr_path, "--device", "cpu", "--overlay", "-q"], capsys)
    assert code == 0 and "RANDOM" not in err
    with video.open(clip) as frames:
        frames = list(frames)
    colours = images.palette(12)
    expected = [(colours[c.numpy()].astype(np.float64) + f.image.numpy()) // 2
                for c, f in zip(seg.segment(frames), frames)]
    written = _decode(out_path)
    assert len(written) == len(expected) == FRAMES
    # lossy H.264: close to the overlay of the same class maps, far from a constant colour
    errors = [np.abs(w - e).mean() for w, e in zip(written, expected)]
    spread = [np.abs(e - e.mean(axis=(0, 1))).mean() for e in expected]
    assert max(errors) < 12 and max(errors) < 0.5 * max(spread)


def test_segment_argument_and_file_errors(clip, tmp_path, capsys):
    out_path = str(tmp_path / "o.mp4")
    assert _usage_error(["segment", clip, "-o", str(tmp_path / "o.txt")], capsys)[0] == 2
    assert _usage_error(["segment", clip, "-o", str(tmp_path / "missing" / "o.mp4")], capsys)[0] == 2
    assert _usage_error(["segment", clip, "-o", out_path, "--hr-weights", clip], capsys)[0] == 2
    assert _usage_error(["segment", clip, "-o", out_path, "--hr-weights", "nope.pth", "--lr-weights",
                         "nope.pth"], capsys)[0] == 2
    # the input is checked before the model is built: the error is the only message, no RANDOM-weights banner
    code, _, err = _run(["segment", str(tmp_path / "missing.mp4"), "-o", out_path], capsys)
    assert code == 1 and "not found" in err and "RANDOM" not in err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    code, _, err = _run(["segment", str(junk), "-o", out_path], capsys)
    assert code == 1 and "junk.mp4" in err and "RANDOM" not in err
    assert "not a video file (FFmpeg: invalid data)" in err and "Errno" not in err
    bad_weights = tmp_path / "bad.pth"
    bad_weights.write_text("not a checkpoint")
    code, _, err = _run(["segment", clip, "-o", out_path, "--hr-weights", str(bad_weights), "--lr-weights",
                         str(bad_weights), "--device", "cpu"], capsys)
    assert code == 1 and "cannot read weights" in err


# ---- motion ----


def test_motion_png_shows_the_pan_direction(clip, tmp_path, capsys):
    out_path = str(tmp_path / "motion.png")
    code, out, _ = _run(["motion", clip, "-o", out_path], capsys)
    assert code == 0 and "frame %d" % (GOP - 1) in out  # the last frame of the first GOP
    (image,) = _decode(out_path)
    assert image.shape == (H, 2 * W, 3)
    with video.open(clip) as frames:
        last_of_gop = [f for f in frames][GOP - 1]
    assert np.array_equal(image[:, :W], last_of_gop.image.numpy())
    # content moved right on screen: drawn in the legend's right-hand colour, hue 0, red (mv_to_key points left)
    assert last_of_gop.mv_to_key[0].median() < -1
    away = np.ones((H, W), bool)
    away[_legend_box(float(out.split("full colour at ")[1].split(" px")[0]))[0]] = False
    away[:8], away[-8:], away[:, :8], away[:, -8:] = False, False, False, False
    r, g, b = np.median(image[:, W:][away], axis=0)
    assert r > g + 60 and r > b + 60
    # (test_motion_legend_disc_is_the_colour_key: the disc's right-hand side is this colour)


def test_motion_b_frame_warning_is_one_plain_line(tmp_path, capsys):
    path = str(tmp_path / "b.mp4")
    with av.open(path, "w") as container:  # video.encode refuses to make B-frames
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"x264-params": "keyint=8:bframes=2:b-pyramid=none:ref=1"}
        for frame in _pan_frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    code, _, err = _run(["motion", path, "-o", str(tmp_path / "m.png")], capsys)
    assert code == 0
    (line,) = [line for line in err.splitlines() if "has B-frames" in line]
    assert line.startswith("arseg motion: warning: ") and "b.mp4" in line
    assert ".py" not in err and "RuntimeWarning" not in err and "for frame in" not in err


def _legend_box(max_motion):
    """Where the motion command draws its legend on an H x W motion panel, and the legend itself."""
    panel = np.zeros((H, W, 3), np.uint8)
    top, left = images.draw_motion_legend(panel, max_motion)
    bottom, right = np.argwhere(panel.any(axis=2)).max(axis=0) + 1  # the tile has no black pixel
    return (slice(top, bottom), slice(left, right)), panel[top:bottom, left:right]


def test_motion_png_keyframe_is_white_with_the_legend(clip, tmp_path, capsys):
    out_path = str(tmp_path / "key.png")
    assert _run(["motion", clip, "-o", out_path, "--frame", "0", "--max-motion", "4"], capsys)[0] == 0
    (image,) = _decode(out_path)
    panel = image[:, W:].copy()
    box, legend = _legend_box(4.0)
    assert np.array_equal(panel[box], legend)  # PNG is lossless: the legend exactly as drawn
    panel[box] = 255
    assert (panel == 255).all()


def test_motion_legend_disc_is_the_colour_key():
    diameter = 41
    tile = images.motion_legend(12.345, diameter)
    radius = diameter / 2
    cy, cx = images.LEGEND_PAD + radius, tile.shape[1] / 2
    for degrees in range(0, 360, 30):  # image axes: x right, y down, as motion_colours reads (dx, dy)
        theta = np.radians(degrees)
        for rho, saturated in ((radius - 1, True), (radius / 2, False)):
            y, x = int(cy + rho * np.sin(theta)), int(cx + rho * np.cos(theta))
            hue, sat, val = colorsys.rgb_to_hsv(*(tile[y, x] / 255.0))
            assert abs((hue - degrees / 360 + 0.5) % 1.0 - 0.5) < 0.03, (degrees, tile[y, x])
            assert val > 0.99 and (sat > 0.95 if saturated else 0.3 < sat < 0.7), (degrees, rho, tile[y, x])
    assert (tile[int(cy), int(cx)] == 255).all()  # still: white
    assert tuple(tile[images.LEGEND_PAD, 0]) == images.LEGEND_BACKGROUND  # outside the disc
    # the label below the disc: exactly the bitmap text of the full-colour pixels
    label = images.text_mask("12.3 px")
    top = diameter + 2 * images.LEGEND_PAD
    left = (tile.shape[1] - label.shape[1]) // 2
    area = tile[top : top + label.shape[0], left : left + label.shape[1]]
    assert label.sum() > 20 and np.array_equal((area == images.LEGEND_TEXT).all(axis=2), label)


def test_legend_text_and_label():
    assert images.legend_label(12.345) == "12.3 px" and images.legend_label(0.75) == "0.75 px"
    one = images.text_mask("1")
    assert one.shape == (5, 3) and one[:, 1].all()  # the stem of the 1
    assert images.text_mask("1", scale=2).shape == (10, 6)
    with pytest.raises(ValueError, match="'q'"):
        images.text_mask("q")


def test_motion_video_decodes(clip, tmp_path, capsys):
    out_path = str(tmp_path / "motion.mp4")
    code, out, _ = _run(["motion", clip, "-o", out_path, "-q"], capsys)
    assert code == 0 and "%d frames" % FRAMES in out
    frames = _decode(out_path)
    assert len(frames) == FRAMES and frames[0].shape == (H, 2 * W, 3)


def test_motion_errors(clip, tmp_path, capsys):
    assert _usage_error(["motion", clip, "-o", str(tmp_path / "m.gif")], capsys)[0] == 2
    assert _usage_error(["motion", clip, "-o", str(tmp_path / "m.mp4"), "--frame", "1"], capsys)[0] == 2
    assert _usage_error(["motion", clip, "-o", str(tmp_path / "m.png"), "--max-motion", "-1"], capsys)[0] == 2
    code, _, err = _run(["motion", clip, "-o", str(tmp_path / "m.png"), "--frame", "99"], capsys)
    assert code == 1 and "only %d frames" % FRAMES in err


# ---- image helpers, against independent implementations ----


def test_png_writer_round_trips_through_ffmpeg(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    images.write_png(path, image)
    (decoded,) = _decode(path)
    assert np.array_equal(decoded, image)


def test_hsv_matches_colorsys():
    rng = np.random.default_rng(0)
    h, s, v = rng.random(50), rng.random(50), rng.random(50)
    ours = images.hsv_to_rgb(h, s, v)
    theirs = np.array([colorsys.hsv_to_rgb(*x) for x in zip(h, s, v)])
    assert np.allclose(ours, theirs)


# ---- entry points and help ----


@pytest.mark.parametrize("command", [None, "bench", "flops", "segment", "motion"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([command] if command else []) + ["--help"])
    assert exc.value.code == 0 and "usage: arseg" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    assert _usage_error([], capsys)[0] == 2


def test_module_and_console_script_entry_points():
    env = dict(os.environ)
    for argv in ([sys.executable, "-m", "arseg_ops", "flops", "--size", "32x32"],
                 [os.path.join(os.path.dirname(sys.executable), "arseg"), "bench", "--size", "1by1"]):
        if not os.path.exists(argv[0]):
            pytest.skip("the arseg console script is not installed next to this Python")
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if "flops" in argv:
            assert proc.returncode == 0 and "GMACs" in proc.stdout
        else:
            assert proc.returncode == 2 and "HxW" in proc.stderr


# ---- eval --plot ----


def test_miou_chart_draws_each_value_where_the_axes_say():
    from arseg_ops.cli import font, plot

    result = {"distances": [0.7, 0.61, 0.55, float("nan"), 0.5], "hr": 0.7, "lr_only": 0.42, "ar_mean": 0.59,
              "frames": 9, "length": 5, "scale": 0.5}
    image, chart = plot.draw_miou_chart(result)
    assert image.shape == (520, 800, 3) and (chart.y0, chart.y1) == (40, 70)  # 10-point steps around the values

    def colour_at(x, y):
        row, col = chart.px(x, y)
        return tuple(image[int(round(row)), int(round(col))])

    for d, m in enumerate(result["distances"]):
        if m == m:  # NaN (no frame at that distance) is left out
            assert colour_at(d, 100 * m) == plot.COLOURS["ar"], d
    assert colour_at(3, 55) != plot.COLOURS["ar"] and colour_at(3, 50) != plot.COLOURS["ar"]
    for key, level in (("hr", 70), ("lr_only", 42)):  # the levels, dashed across the plot
        row = image[int(round(chart.px(0, level)[0])), chart.left:chart.right]
        assert 0.3 < (row == plot.COLOURS[key]).all(axis=1).mean() < 0.9, key
    # the axis label's text is drawn (rotated for y), in the 5x7 font
    label = font.text_mask("keyframe distance d (frames)", plot.FONT_SCALE)
    ink = (image[chart.bottom:, :] == 0).all(axis=2)
    assert any(np.array_equal(ink[r:r + label.shape[0], c:c + label.shape[1]], label)
               for r in range(ink.shape[0] - label.shape[0])
               for c in (int((chart.left + chart.right) / 2 - label.shape[1] // 2),))
    # without an LR-only network the legend says how to add it
    plot.draw_miou_chart(dict(result, lr_only=None))
    with pytest.raises(ValueError, match="font has no"):
        font.text_mask("µ")


def _command_parsers(parser, name="arseg"):
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _command_parsers(sub, name + " " + sub_name)


def test_every_help_describes_each_option_and_shows_its_default():
    for name, parser in _command_parsers(cli.build_parser()):
        text = " ".join(parser.format_help().split())  # argparse wraps lines
        for action in parser._actions:
            if action.dest in ("help", "command", "layout"):
                continue
            assert action.help, "%s %s has no help" % (name, action.option_strings or action.dest)
            default = action.default
            if action.option_strings and default is not None and default is not False:
                if isinstance(default, tuple):
                    default = ("x" if len(default) == 2 and isinstance(default[0], int) else
                               " " if action.nargs else ",").join(map(str, default))
                # stated in the option's own words ("default: all") or appended by cli.common.HelpFormatter
                assert "default" in action.help or "(default: %s)" % default in text, (name, action.option_strings)
    synthetic = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["synthetic"].format_help().split())
    assert "--val-sequences VAL_SEQUENCES how many of them form the 'val' split" in synthetic
    assert "(default: 96x128)" in synthetic
