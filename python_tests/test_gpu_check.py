"""benchmarks/gpu_check.sh and gpu_check.py: what can be checked without a GPU (syntax, the no-GPU exit, the
target verdicts, and every Python stage on the CPU at tiny sizes)."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_without_gpu_it_says_so_and_runs_nothing(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env={"OUT": str(tmp_path),
                                                                                    "PATH": "/usr/bin:/bin:" + str(pathlib.Path(sys.executable).parent)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no CUDA device" in res.stdout and "Nothing was run" in res.stdout
    assert not (tmp_path / "build.log").exists()


def _row(op, pass_, dtype, ms, layout="NCHW", kernels="experimental", impl="fused", **extra):
    return dict(op=op, impl=impl, pass_=pass_, dtype=dtype, layout=layout, kernels=kernels, compiled=False,
                ms=ms, **extra)


def test_target_verdicts():
    gc = load_gpu_check()
    rows = [_row("local_attn", "forward", "float32", 0.40), _row("local_attn", "forward", "bfloat16", 0.30),
            _row("local_attn", "forward", "float32", 0.46, layout="NHWC"),
            _row("local_attn", "forward_backward", "bfloat16", 1.0),
            dict(_row("local_attn", "forward_backward", "bfloat16", 8.0, impl="flex", kernels="default"), compiled=True),
            _row("creff", "forward", "float32", 0.2), _row("creff", "forward_backward", "float32", 0.7),
            _row("arseg_step", "forward", "float32", 10.0, impl="keyframe", image="720x960"),
            _row("arseg_step", "forward", "float32", 3.0, impl="non_keyframe", image="720x960"),
            dict(_row("mv_warp", "forward", "float32", 9.9), error="boom")]  # no "ms" only when it failed
    del rows[-1]["ms"]
    lines = {line.split(":")[0].split(None, 1)[1]: line for line in gc.target_lines(rows)}
    first = lambda line: line.split()[0]  # noqa: E731
    assert first(lines["[experimental] local_attn forward float32 ms"]) == "PASS"
    assert first(lines["[experimental] local_attn forward bfloat16 ms"]) == "SHORT"
    assert "0.300" in lines["[experimental] local_attn forward bfloat16 ms"]
    assert first(lines["[experimental] local_attn forward float32 channels_last / NCHW"]) == "SHORT"  # 1.15 > 1.10
    assert first(lines["[experimental] local_attn forward_backward bf16 vs FlexAttention bf16"]) == "PASS"  # 8x
    assert first(lines["[experimental] creff forward_backward / forward float32"]) == "SHORT"  # 3.5x
    assert first(lines["[experimental] mv_warp forward float32 ms"]) == "MISSING"  # the failed row has no time
    assert first(lines["[default] local_attn forward float32 ms"]) == "MISSING"
    gop = lines["[experimental] AR-PSP18 720x960 float32 eager GOP-12 average / keyframe"]
    assert first(gop) == "PASS" and "%.3f" % ((1 + 11 * 0.3) / 12) in gop


def test_dry_run_runs_every_stage_on_cpu(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=600,
                         env=dict(__import__("os").environ, OUT=str(tmp_path)))
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "dry_run.log").read_text()
    assert "sanitize: " in log and "calls done" in log
    rows = json.loads((tmp_path / "dry_run" / "ops.json").read_text())
    assert {r["op"] for r in rows} == {"local_attn", "mv_warp", "creff"}
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    assert {r["layout"] for r in rows} == {"NCHW", "NHWC"} and {r["kernels"] for r in rows} == {"default", "experimental"}
    steps = json.loads((tmp_path / "dry_run" / "arseg.json").read_text())
    assert {(r["image"], r["impl"]) for r in steps if "ms" in r} == {
        (i, s) for i in ("720x960", "1024x2048") for s in ("keyframe", "non_keyframe")}
    assert "AR-PSP18 1024x2048" in log and ("PASS" in log or "SHORT" in log)
