"""arseg_ops.train on a tiny synthetic dataset (CPU): training steps, resume, two-process DDP, the joint motion
augmentation, mIoU, manifests and clear errors for bad input. Needs PyAV (skipped without it)."""
import argparse
import json
import os
import socket
import sys

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

import arseg_ops  # noqa: E402
from arseg_ops import cli  # noqa: E402
from arseg_ops.cli import train_commands  # noqa: E402
from arseg_ops.train import augment, loop, manifest, metrics, nets, png, synthetic  # noqa: E402
from arseg_ops.train.data import ClipCache, FramePairDataset  # noqa: E402

L = 4  # GOP length of the tests
NUM_CLASSES = len(synthetic.CLASSES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    path = synthetic.write_dataset(root, sequences=2, val_sequences=1, frames=10, size=(32, 48), label_every=1,
                                   first_label=3, seed=1)
    return str(path)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="arseg")
    sub = parser.add_subparsers(dest="command", required=True)
    train_commands.register(sub)
    return parser.parse_args(argv)


def _train_args(manifest_path, out, *extra):
    return _parse(["train", manifest_path, "--num-classes", str(NUM_CLASSES), "--backbone", "tiny", "--length",
                   str(L), "--batch-size", "2", "--out", str(out), "--quiet", "--warmup-steps", "1", *extra])


# ---- training ----


def test_two_steps_checkpoint_and_resume(dataset, tmp_path):
    args = _train_args(dataset, tmp_path / "hr", "--stage", "hr", "--epochs", "1", "--max-steps", "2")
    checkpoint = loop.run(args)
    ckpt = nets.load_checkpoint(str(checkpoint))
    assert ckpt["step"] == 2 and ckpt["epoch"] == 1
    record = json.loads((tmp_path / "hr" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and np.isfinite(record["loss"]) and record["images"] == 4

    resumed = loop.Trainer(_train_args(dataset, tmp_path / "hr", "--stage", "hr", "--epochs", "2",
                                       "--max-steps", "3", "--resume"))
    assert resumed.step == 2 and resumed.epoch == 1
    saved, restored = ckpt["optimizer"]["state"], resumed.optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys() and len(saved) > 0
    for key in saved:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(restored[key][name], saved[key][name], rtol=0, atol=0)
    for name, value in resumed.net.state_dict().items():
        torch.testing.assert_close(value, ckpt["model"][name], rtol=0, atol=0)
    assert resumed.scheduler.state_dict()["last_epoch"] == 2
    resumed.train()
    assert resumed.step == 3
    assert nets.load_checkpoint(str(checkpoint))["step"] == 3


@pytest.mark.parametrize("no_fusion_epochs,creff_init", [(0, "identity"), (1, "default")])
def test_ar_stage_fst_step(dataset, tmp_path, no_fusion_epochs, creff_init):
    hr = loop.run(_train_args(dataset, tmp_path / "hr", "--stage", "hr", "--max-steps", "1"))
    args = _train_args(dataset, tmp_path / "ar", "--stage", "ar", "--hr-checkpoint", str(hr), "--max-steps", "1",
                       "--no-fusion-epochs", str(no_fusion_epochs), "--creff-init", creff_init,
                       "--creff-lr-mult", "2")
    trainer = loop.Trainer(args)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [pytest.approx(1e-3 * f) for f in (1, 2)]
    query_conv = trainer.net.fuse_attention.lr_query_conv.weight
    assert (query_conv.sum().item() == pytest.approx(query_conv.shape[0])) == (creff_init == "identity")
    frozen = nets.classifier(trainer.net).weight.clone()
    hr_weights = nets.load_checkpoint(str(hr))["model"]
    torch.testing.assert_close(frozen, hr_weights["final_conv.weight"])  # shared HR classifier
    trainer.train()
    record = json.loads((tmp_path / "ar" / "metrics.jsonl").read_text())
    assert np.isfinite(record["loss"]) and record["fst_loss"] > 0
    torch.testing.assert_close(nets.classifier(trainer.net).weight, frozen, rtol=0, atol=0)  # stayed frozen
    # the teacher is the HR checkpoint, unchanged
    torch.testing.assert_close(trainer.teacher.state_dict()["stem.0.weight"], hr_weights["stem.0.weight"])


def test_ar_stage_with_position_bias_round_trips(dataset, tmp_path):
    """--creff-position-bias: CReFF's relative-position bias trains (at CReFF's learning rate), the checkpoint
    records it, and arseg_from_checkpoint (eval, segment) rebuilds the network with it."""
    hr = loop.run(_train_args(dataset, tmp_path / "hr", "--stage", "hr", "--max-steps", "1"))
    args = _train_args(dataset, tmp_path / "ar", "--stage", "ar", "--hr-checkpoint", str(hr), "--max-steps", "2",
                       "--kernel-size", "5", "--creff-position-bias", "--creff-lr-mult", "10")
    trainer = loop.Trainer(args)
    bias = trainer.net.fuse_attention.position_bias
    assert bias.shape == (2, 2) and not bias.any()
    assert any(g["lr"] == pytest.approx(1e-2) and any(p is bias for p in g["params"])
               for g in trainer.optimizer.param_groups)
    path = trainer.train()
    assert bias.abs().sum() > 0  # it learnt
    ckpt = nets.load_checkpoint(str(path))
    assert ckpt["position_bias"] is True
    model, _ = nets.arseg_from_checkpoint(str(path))
    torch.testing.assert_close(model.lr_net.fuse_attention.position_bias, bias.detach())
    # without the flag: no bias, and the checkpoint says so
    plain = loop.Trainer(_train_args(dataset, tmp_path / "ar2", "--stage", "ar", "--hr-checkpoint", str(hr),
                                     "--max-steps", "1"))
    assert plain.net.fuse_attention.position_bias is None and plain.state()["position_bias"] is False


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, manifest_path, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    args = _train_args(manifest_path, out, "--stage", "hr", "--max-steps", "1", "--device", "cpu")
    trainer = loop.Trainer(args)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.train()
    params = {name: p.detach() for name, p in trainer.net.named_parameters()}
    # (BatchNorm running statistics are per rank until DDP broadcasts rank 0's at the next forward.)
    torch.save({"before": before, "after": params, "world": trainer.dist.world},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_identical_weights(dataset, tmp_path):
    ClipCache(os.path.join(os.path.dirname(dataset), ".arseg_cache"), length=L).prepare(
        manifest.read_manifest(dataset, split="train"))
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), dataset, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    changed = 0
    for name, value in r0["after"].items():
        torch.testing.assert_close(r1["after"][name], value, rtol=0, atol=0)
        changed += not torch.equal(value, r0["before"][name])
    assert changed > 0  # a step was taken
    assert nets.load_checkpoint(str(tmp_path / "last.pt"))["step"] == 1


# ---- augmentation ----


def _shifted_pair(shift_x, shift_y, size=(32, 48)):
    """key: smooth random texture; frame = key moved right/down by (shift_x, shift_y): motion = -shift."""
    g = torch.Generator().manual_seed(3)
    key = torch.nn.functional.interpolate(torch.rand(1, 3, size[0] // 4, size[1] // 4, generator=g), size=size,
                                          mode="bicubic", align_corners=False)[0]
    frame = torch.roll(key, shifts=(shift_y, shift_x), dims=(1, 2))
    motion = torch.tensor([-float(shift_x), -float(shift_y)]).view(2, 1, 1).expand(2, *size).clone()
    label = torch.randint(0, NUM_CLASSES, size, generator=g)
    return {"key": key, "frame": frame, "label": label, "motion": motion}


def _warp_error(sample, margin):
    pred = arseg_ops.mv_warp(sample["key"][None], sample["motion"][None])[0]
    return (pred - sample["frame"])[:, margin:-margin, margin:-margin].abs().max().item()


def test_flip_negates_dx_and_mirrors_the_field():
    sample = _shifted_pair(4, 2)
    sample["motion"][:, :, :8] = torch.tensor([1.0, 3.0]).view(2, 1, 1)  # a different left block
    flipped = augment.flip_sample(sample)
    assert torch.equal(flipped["motion"][0, :, -8:], torch.full((32, 8), -1.0))  # block moved to the right
    assert torch.equal(flipped["motion"][1, :, -8:], torch.full((32, 8), 3.0))
    assert torch.equal(flipped["motion"][0, :, :40], torch.full((32, 40), 4.0))
    assert torch.equal(flipped["label"], sample["label"].flip(-1))
    consistent = augment.flip_sample(_shifted_pair(4, 2))
    assert _warp_error(consistent, 6) < 1e-5  # the flipped vectors still predict the flipped frame


def test_scale_multiplies_vectors_and_crop_keeps_them():
    sample = _shifted_pair(4, 2, size=(64, 96))
    scaled = augment.scale_sample(sample, (32, 48))
    torch.testing.assert_close(scaled["motion"][:, 0, 0], torch.tensor([-2.0, -1.0]))
    assert scaled["label"].shape == (32, 48) and scaled["label"].dtype == torch.int64
    assert _warp_error(scaled, 6) < 0.05  # bilinear resampling: approximate
    cropped = augment.crop_sample(scaled, -2, 5, 32, 40)  # partly outside: padded
    assert (cropped["label"][:2] == 255).all() and torch.equal(cropped["motion"][:, 2:], scaled["motion"][:, :30, 5:45])
    dense = augment.dense_motion(torch.arange(12.0).view(2, 2, 3), 4, (6, 10))
    assert dense.shape == (2, 6, 10) and dense[0, 5, 9] == 5 and dense[1, 3, 0] == 6 and dense[1, 5, 4] == 10


def test_random_augment_is_reproducible_and_consistent():
    sample = _shifted_pair(3, 1, size=(64, 96))
    a = augment.random_augment(sample, torch.Generator().manual_seed(5), crop_size=(48, 64))
    b = augment.random_augment(sample, torch.Generator().manual_seed(5), crop_size=(48, 64))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["frame"].shape == (3, 48, 64) and a["motion"].shape == (2, 48, 64)


def test_dataset_pairs_motion_predicts_the_frame(dataset):
    # The chained codec motion of real pairs, after the training augmentation, must predict the labelled frame
    # from the keyframe far better than no warp does (a wrong sign, unit, scale or frame order does not).
    rows = manifest.read_manifest(dataset, split="train")
    cache = ClipCache(os.path.join(os.path.dirname(dataset), ".arseg_cache"), length=L)
    for aug in (None, {"scale_range": (0.75, 1.25), "crop_size": None, "flip": True}):
        data = FramePairDataset(rows, cache, NUM_CLASSES, augment=aug)
        warped = unwarped = 0.0
        for i in range(0, len(rows), 2):
            for d in range(1, L):
                s = data.pair(i, d, generator=torch.Generator().manual_seed(10 * i + d))
                error = lambda x: (x - s["frame"])[:, 4:-4, 8:-8].abs().mean().item()  # noqa: E731
                warped += error(arseg_ops.mv_warp(s["key"][None], s["motion"][None])[0])
                unwarped += error(s["key"])
        assert warped < 0.6 * unwarped, (aug, warped, unwarped)


def test_training_pair_feeds_creff_what_inference_does(dataset):
    # A pair as the training step sees it (dense pixel motion, HR feature warped before CReFF) must give the
    # LR network exactly the input ARSeg.non_keyframe gives it at inference (block motion, warp inside CReFF).
    from arseg_ops.models import ARSeg, lr_training_step

    torch.manual_seed(0)
    model = ARSeg("tiny", NUM_CLASSES, 0.5).eval()
    nets.init_creff_identity(model.lr_net.fuse_attention)
    with torch.no_grad():  # a non-zero value conv: the warped HR feature then reaches the output
        model.lr_net.fuse_attention.hr_value_conv.weight[:, 0, 1, 1] = 1.0
    rows = manifest.read_manifest(dataset, split="train")
    data = FramePairDataset(rows, ClipCache(os.path.join(os.path.dirname(dataset), ".arseg_cache"), length=L),
                            NUM_CLASSES)
    frames, motion, label = data.clip(1)
    for d in (1, L - 1):
        pair = data.pair(1, d)
        key, frame = model.normalize(frames[-1 - d]), model.normalize(frames[-1])
        torch.testing.assert_close(model.normalize((pair["key"].permute(1, 2, 0) * 255).round().byte()), key)
        with torch.no_grad():
            train = lr_training_step(model.lr_net, model.hr_net, frame, pair["label"][None], key_image=key,
                                     mv_to_key=pair["motion"][None], scale=0.5)
            model.keyframe(key)
            out = model.non_keyframe(frame, motion[d][None])
        infer = torch.nn.functional.cross_entropy(out, label[None], ignore_index=255)
        torch.testing.assert_close(train["seg_loss"], infer, rtol=1e-5, atol=1e-6)


# ---- metrics ----


def test_miou_against_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = metrics.confusion_matrix(pred, target, 4)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    # IoU: class 0 1/(2+1+1-1)=1/3, class 1 2/(3+3-2)=1/2, class 2 1/(2+2-1)=1/3, class 3 absent (NaN)
    iou = metrics.iou_per_class(cm)
    torch.testing.assert_close(iou[:3], torch.tensor([1 / 3, 1 / 2, 1 / 3], dtype=torch.float64))
    assert torch.isnan(iou[3])
    assert metrics.mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    pred[0, 0] = 3  # a class never in the target: lowers class 0's IoU, is not averaged itself
    assert metrics.mean_iou(metrics.confusion_matrix(pred, target, 4)) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="outside 0..3"):
        metrics.confusion_matrix(pred, torch.full_like(target, 7), 4)


# ---- manifests and bad input ----


def test_manifest_round_trip_and_camvid_layout(tmp_path):
    rows = [manifest.Row(str(tmp_path / "v.mp4"), 3, str(tmp_path / "l.png"), "val")]
    for name in ("m.csv", "m.jsonl"):
        manifest.write_manifest(rows, tmp_path / name)
        assert manifest.read_manifest(tmp_path / name, check_files=False) == rows
    (tmp_path / "cv" / "videos").mkdir(parents=True)
    (tmp_path / "cv" / "videos" / "0001TP.mp4").write_bytes(b"")
    (tmp_path / "cv" / "testannot").mkdir()
    png.write_png(tmp_path / "cv" / "testannot" / "0001TP_006690.png", np.zeros((4, 4), np.uint8))
    found = manifest.scan_camvid(tmp_path / "cv", offsets={"0001TP": 6600})
    assert found == [manifest.Row(str(tmp_path / "cv" / "videos" / "0001TP.mp4"), 90,
                                  str(tmp_path / "cv" / "testannot" / "0001TP_006690.png"), "test")]
    table = manifest.camvid_class_map()
    assert table[11] == 255 and table[10] == 10 and table[255] == 255
    png.write_png(tmp_path / "cv" / "testannot" / "0002XX_000001.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="no video for sequence.*0002XX"):
        manifest.scan_camvid(tmp_path / "cv")


def _one_row_manifest(tmp_path, dataset, **change):
    row = manifest.read_manifest(dataset, split="train")[0]
    row = manifest.Row(**{**row.__dict__, **change})
    manifest.write_manifest([row], tmp_path / "bad.csv")
    return str(tmp_path / "bad.csv")


def test_bad_input_gives_clear_errors(dataset, tmp_path):
    missing_video = _one_row_manifest(tmp_path, dataset, video=str(tmp_path / "nope.mp4"))
    with pytest.raises(FileNotFoundError, match=r"row 0 .*video file not found.*nope\.mp4"):
        manifest.read_manifest(missing_video)
    missing_label = _one_row_manifest(tmp_path, dataset, label=str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match=r"label file not found.*nope\.png"):
        manifest.read_manifest(missing_label)
    cache = ClipCache(tmp_path / "cache", length=L)
    png.write_png(tmp_path / "small.png", np.zeros((16, 16), np.uint8))
    rows = manifest.read_manifest(_one_row_manifest(tmp_path, dataset, label=str(tmp_path / "small.png")))
    with pytest.raises(ValueError, match=r"label is 16x16 \(WxH\) but video .* is 48x32"):
        FramePairDataset(rows, cache, NUM_CLASSES).pair(0, 1)
    png.write_png(tmp_path / "unknown.png", np.full((32, 48), 9, np.uint8))
    rows = manifest.read_manifest(_one_row_manifest(tmp_path, dataset, label=str(tmp_path / "unknown.png")))
    with pytest.raises(ValueError, match=r"unknown class ids \[9\]"):
        FramePairDataset(rows, cache, NUM_CLASSES).pair(0, 1)
    rows = manifest.read_manifest(_one_row_manifest(tmp_path, dataset, frame=500))
    with pytest.raises(ValueError, match="has 10 frames; the manifest asks for frame 500"):
        FramePairDataset(rows, cache, NUM_CLASSES).pair(0, 1)
    (tmp_path / "bad.jsonl").write_text('{"video": "a.mp4", "frame": -1, "label": "a.png"}\n')
    with pytest.raises(ValueError, match="frame must be an integer >= 0"):
        manifest.read_manifest(tmp_path / "bad.jsonl")


def test_cli_exit_codes(dataset, tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "none.csv"), "--num-classes", "6", "--stage", "hr", "--out",
                     str(tmp_path / "o")]) == 1
    assert "arseg train: error: manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", dataset, "--stage", "ar", "--num-classes", "6", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--hr-checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", dataset])
    assert exc.value.code == 2 and "give either --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the release's files carry no class count
        cli.main(["eval", dataset, "--official", dataset, dataset])
    assert exc.value.code == 2 and "--num-classes is required" in capsys.readouterr().err


def test_train_and_eval_through_the_cli(dataset, tmp_path, capsys):
    # cli.main puts the sub-parser into the namespace: the checkpoint must still be writable (it once was not)
    common = [dataset, "--num-classes", str(NUM_CLASSES), "--backbone", "tiny", "--length", str(L)]
    hr = tmp_path / "hr"
    assert cli.main(["train", *common, "--stage", "hr", "--out", str(hr), "--max-steps", "1", "--batch-size",
                     "2", "--quiet"]) == 0
    assert nets.load_checkpoint(str(hr / "last.pt"))["args"]["stage"] == "hr"
    (summary,) = capsys.readouterr().out.splitlines()  # one line: steps, losses, why it stopped, checkpoint
    assert summary.startswith("arseg train: stage hr, 1 steps in ") and "mean loss " in summary
    assert "stopped at --max-steps 1 (--epochs 10 would be 30 steps)" in summary  # 6 rows / batch 2 = 3 a epoch
    assert summary.endswith("checkpoint %s" % (hr / "last.pt"))
    ar = tmp_path / "ar" / "last.pt"
    assert cli.main(["train", *common, "--stage", "ar", "--out", str(ar.parent), "--max-steps", "1",
                     "--batch-size", "2", "--quiet", "--hr-checkpoint", str(hr / "last.pt"), "--kernel-size", "5",
                     "--scale", "0.75"]) == 0
    assert "(seg " in capsys.readouterr().out  # the AR stage reports its seg and fst losses
    # eval takes backbone, classes, window and scale from the checkpoint, and draws the curve
    plot = tmp_path / "miou.png"
    assert cli.main(["eval", dataset, "--length", str(L), "--checkpoint", str(ar), "--plot", str(plot),
                     "--lr-checkpoint", str(_lr_checkpoint(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "AR 0.75x" in out and "LR-only" in out and "wrote %s" % plot in out
    with av.open(str(plot)) as container:
        assert next(container.decode(video=0)).to_ndarray(format="rgb24").shape == (520, 800, 3)


def _lr_checkpoint(tmp_path):
    path = tmp_path / "lr.pt"
    net, _ = nets.build_stage("lr", "tiny", NUM_CLASSES)
    nets.save_checkpoint(path, {"stage": "lr", "backbone": "tiny", "num_classes": NUM_CLASSES, "kernel_size": 7,
                                "scale": 0.5, "model": net.state_dict()})
    return path


def test_eval_options_must_agree_with_the_checkpoint(dataset, tmp_path, capsys):
    ar = _ar_checkpoint(tmp_path)
    for option in (["--num-classes", "3"], ["--backbone", "psp18"], ["--kernel-size", "3"], ["--scale", "0.25"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["eval", dataset, "--length", str(L), "--checkpoint", str(ar), *option])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and option[0] in err and "leave the option out" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", dataset, "--checkpoint", str(ar), "--plot", str(tmp_path / "p.jpg")])
    assert exc.value.code == 2 and "--plot" in capsys.readouterr().err


def _ar_checkpoint(tmp_path, seed=4, name="ar.pt"):
    """A stage-ar checkpoint as `train` writes it, without training (random tiny networks)."""
    from arseg_ops.models import ARSeg

    torch.manual_seed(seed)
    model = ARSeg("tiny", NUM_CLASSES, 0.5)
    path = tmp_path / name
    nets.save_checkpoint(path, {"stage": "ar", "backbone": "tiny", "num_classes": NUM_CLASSES, "kernel_size": 7,
                                "scale": 0.5, "model": model.lr_net.state_dict(),
                                "hr_model": model.hr_net.state_dict()})
    return path


def test_segment_a_video_with_the_trained_checkpoint(dataset, tmp_path, capsys):
    # the AR checkpoint alone segments a video: same class maps as ARSeg built from it, coloured by the palette
    from arseg_ops import video
    from arseg_ops.cli import images

    ar = _ar_checkpoint(tmp_path)
    clip = os.path.join(os.path.dirname(dataset), "videos", "seq00.mp4")
    out_path = str(tmp_path / "seg.mkv")
    assert cli.main(["segment", clip, "-o", out_path, "--checkpoint", str(ar), "--device", "cpu", "-q"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM" not in err and "tiny at LR scale 0.5" in out and "checkpoint" in out
    model, _ = nets.arseg_from_checkpoint(str(ar))
    with video.open(clip) as frames:
        frames = list(frames)
    expected = [images.palette(NUM_CLASSES)[c.numpy()].astype(np.float64) for c in model.eval().segment(frames)]
    with av.open(out_path) as container:
        written = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(written) == len(expected) == 10
    # lossy H.264 of small, busy maps: much closer to these maps than to another network's
    other, _ = nets.arseg_from_checkpoint(str(_ar_checkpoint(tmp_path, seed=5, name="other.pt")))
    wrong = [images.palette(NUM_CLASSES)[c.numpy()].astype(np.float64) for c in other.eval().segment(frames)]
    errors = [np.abs(w - e).mean() for w, e in zip(written, expected)]
    far = [np.abs(w - e).mean() for w, e in zip(written, wrong)]
    assert max(errors) < 20 and all(e < 0.5 * f for e, f in zip(errors, far)), (errors, far)

    # a train checkpoint where the release's .pth goes says to use --checkpoint; the options must agree
    assert cli.main(["segment", clip, "-o", out_path, "--hr-weights", str(ar), "--lr-weights", str(ar)]) == 1
    err = capsys.readouterr().err
    assert "is an `arseg train` checkpoint (stage ar)" in err and "as --checkpoint alone" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["segment", clip, "-o", out_path, "--checkpoint", str(ar), "--num-classes", "12"])
    assert exc.value.code == 2 and "trained with num classes 6" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["segment", clip, "-o", out_path, "--checkpoint", str(ar), "--hr-weights", str(ar)])
    assert exc.value.code == 2 and "give it alone" in capsys.readouterr().err
    hr_only = tmp_path / "hr.pt"
    nets.save_checkpoint(hr_only, dict(nets.load_checkpoint(str(ar)), stage="hr"))
    assert cli.main(["segment", clip, "-o", out_path, "--checkpoint", str(hr_only)]) == 1
    assert "stage 'ar' one" in capsys.readouterr().err


def test_motion_cache_shows_one_progress_bar(dataset, tmp_path, capsys, monkeypatch):
    rows = manifest.read_manifest(dataset)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm and video.encode draw only on a terminal
    ClipCache(tmp_path / "cache", length=L).prepare(rows)
    err = capsys.readouterr().err
    assert err.count("motion cache") >= 1 and "encode" not in err
    assert "%d/%d" % (len(rows), len(rows)) in err
    ClipCache(tmp_path / "cache", length=L).prepare(rows)  # nothing missing: no bar
    assert "motion cache" not in capsys.readouterr().err


# ---- evaluation ----


def test_eval_protocol_with_release_files_and_checkpoint(dataset, tmp_path):
    from arseg_ops.models import ARSeg
    from arseg_ops.train import evaluate

    torch.manual_seed(4)
    model = ARSeg("tiny", NUM_CLASSES, 0.5)
    torch.save(model.hr_net.state_dict(), tmp_path / "hr.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in model.lr_net.state_dict().items()}}, tmp_path / "lr.pth")
    nets.save_checkpoint(tmp_path / "ar.pt", {"stage": "ar", "backbone": "tiny", "num_classes": NUM_CLASSES,
                                              "kernel_size": 7, "scale": 0.5, "model": model.lr_net.state_dict(),
                                              "hr_model": model.hr_net.state_dict()})
    base = ["eval", dataset, "--num-classes", str(NUM_CLASSES), "--backbone", "tiny", "--length", str(L)]
    official = evaluate.evaluate(_parse(base + ["--official", str(tmp_path / "hr.pth"), str(tmp_path / "lr.pth")]))
    ours = evaluate.evaluate(_parse(base + ["--checkpoint", str(tmp_path / "ar.pt")]))
    assert official == ours
    assert len(ours["distances"]) == L and ours["frames"] == 7 and ours["lr_only"] is None
    assert ours["distances"][0] == ours["hr"]  # d = 0: the labelled frame is the keyframe
    assert all(0 <= m <= 1 for m in ours["distances"])
    assert ours["ar_mean"] == pytest.approx(sum(ours["distances"]) / L)
    with pytest.raises(ValueError, match="stage 'ar' one"):
        hr_only = dict(nets.load_checkpoint(str(tmp_path / "ar.pt")), stage="hr")
        nets.save_checkpoint(tmp_path / "hr.pt", hr_only)
        evaluate.evaluate(_parse(base + ["--checkpoint", str(tmp_path / "hr.pt")]))


def test_accuracy_benchmark_runs_end_to_end(tmp_path):
    # benchmarks/accuracy.py at toy size: every stage, the eval and the JSON (numbers meaningless at 2 steps)
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "accuracy.py")
    out = tmp_path / "acc.json"
    subprocess.run([sys.executable, script, "--dir", str(tmp_path / "work"), "--size", "32x48", "--sequences", "2",
                    "--val-sequences", "1", "--frames", "14", "--label-every", "1", "--length", "4",
                    "--hr-steps", "2", "--steps", "2", "--batch-size", "2", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"hr", "lr", "ar", "eval"}
    assert len(result["result"]["distances"]) == 4 and 0 <= result["result"]["lr_only"] <= 1
    ar_args = nets.load_checkpoint(str(tmp_path / "work" / "ar" / "last.pt"))["args"]
    assert ar_args["kernel_size"] == 7 and ar_args["creff_lr_mult"] == 10 and ar_args["creff_init"] == "identity"
    assert ar_args["creff_position_bias"] is True
