"""arseg_ops.models: release-compatible parameter names, forward passes checked against a functional rebuild
written from the architecture description, checkpoint loading, the motion convention, training and costs."""
import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import models

KEYS = json.loads((pathlib.Path(__file__).parent / "data" / "official_state_dict_keys.json").read_text())
ALIAS_PREFIXES = ("feat_conv_out.", "final_conv.")  # BiSeNet release: second names of conv_out's modules


def release_state_dict(name, seed=0):
    """A state_dict with the release's keys and shapes and deterministic, well-scaled random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in KEYS[name]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:  # conv / linear weight: keep activations O(1) through the depth
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=g) * (1.5 / fan_in) ** 0.5
        elif shape == [1]:  # PReLU slope
            sd[key] = torch.rand(shape, generator=g) * 0.3
        elif key.endswith(".weight"):  # BatchNorm scale
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # biases, running means
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


def loaded_arseg(backbone, scale=0.5):
    seg = models.ARSeg(backbone, num_classes=12, scale=scale, kernel_size=7)
    seg.load_official(release_state_dict(f"{backbone}_hr", 1), release_state_dict(f"{backbone}_lr_with_creff", 2))
    return seg.eval()


# ---------------- a functional rebuild from official-architecture.md ----------------


class Functional:
    """The release's forward passes in torch.nn.functional, reading parameters from a state_dict by name."""

    def __init__(self, sd):
        self.sd = sd

    def conv(self, x, p, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, self.sd[p + ".weight"], self.sd.get(p + ".bias"), stride, padding, dilation, groups)

    def bn(self, x, p):
        s = self.sd
        return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                            False, 0.0, 1e-5)

    def cbr(self, x, p, stride=1, padding=0):
        return F.relu(self.bn(self.conv(x, p + ".conv", stride, padding), p + ".bn"))

    def block(self, x, p, stride, dilation):
        out = F.relu(self.bn(self.conv(x, p + ".conv1", stride, dilation, dilation), p + ".bn1"))
        out = self.bn(self.conv(out, p + ".conv2", 1, dilation, dilation), p + ".bn2")
        if p + ".downsample.0.weight" in self.sd:
            x = self.bn(self.conv(x, p + ".downsample.0", stride), p + ".downsample.1")
        return F.relu(out + x)

    def resnet(self, x, p, strides, dilations):
        x = F.relu(self.bn(self.conv(x, p + ".conv1", 2, 3), p + ".bn1"))
        x = F.max_pool2d(x, 3, 2, 1)
        outs = []
        for i, (s, d) in enumerate(zip(strides, dilations)):
            x = self.block(x, f"{p}.layer{i + 1}.0", s, 1)
            x = self.block(x, f"{p}.layer{i + 1}.1", 1, d)
            outs.append(x)
        return outs

    def psp_feature(self, x):
        f = self.resnet(x, "feats", (1, 2, 1, 1), (1, 1, 2, 4))[3]
        priors = [F.interpolate(self.conv(F.adaptive_avg_pool2d(f, s), f"psp.stages.{i}.1"), size=f.shape[-2:],
                                mode="bilinear", align_corners=False) for i, s in enumerate((1, 2, 3, 6))]
        p = F.relu(self.conv(torch.cat(priors + [f], 1), "psp.bottleneck"))
        for up in ("up_1", "up_2", "up_3"):
            p = F.interpolate(p, size=(2 * p.shape[2], 2 * p.shape[3]), mode="bilinear", align_corners=False)
            p = F.prelu(self.bn(self.conv(p, up + ".conv.0", 1, 1), up + ".conv.1"), self.sd[up + ".conv.2.weight"])
        return p

    def psp_classify(self, p, size):
        logits = F.interpolate(self.conv(p, "final_conv"), size=size, mode="bilinear", align_corners=True)
        return F.log_softmax(logits, 1)

    def arm(self, x, p):
        feat = self.cbr(x, p + ".conv", 1, 1)
        att = torch.sigmoid(self.bn(self.conv(feat.mean((2, 3), keepdim=True), p + ".conv_atten"), p + ".bn_atten"))
        return feat * att

    def bisenet_feature(self, x):
        _, feat8, feat16, feat32 = self.resnet(x, "cp.resnet", (1, 2, 2, 2), (1, 1, 1, 1))
        avg = self.cbr(feat32.mean((2, 3), keepdim=True), "cp.conv_avg")
        up32 = F.interpolate(self.arm(feat32, "cp.arm32") + avg, scale_factor=2.0, mode="nearest")
        up32 = F.interpolate(up32, size=feat16.shape[-2:], mode="bilinear", align_corners=True)
        up32 = self.cbr(up32, "cp.conv_head32", 1, 1)
        cp8 = F.interpolate(self.arm(feat16, "cp.arm16") + up32, scale_factor=2.0, mode="nearest")
        cp8 = self.cbr(cp8, "cp.conv_head16", 1, 1)
        sp = self.cbr(self.cbr(self.cbr(x, "sp.conv1", 2, 3), "sp.conv2", 2, 1), "sp.conv3", 2, 1)
        sp = F.interpolate(self.cbr(sp, "sp.conv_out"), size=cp8.shape[-2:], mode="bilinear", align_corners=True)
        feat = self.cbr(torch.cat([sp, cp8], 1), "ffm.convblk")
        att = torch.sigmoid(self.bn(self.conv(feat.mean((2, 3), keepdim=True), "ffm.conv"), "ffm.bn"))
        return self.cbr(feat * att + feat, "conv_out.conv", 1, 1)

    def bisenet_classify(self, feat, size):
        logits = F.interpolate(self.conv(feat, "conv_out.conv_out"), scale_factor=8.0, mode="bilinear",
                               align_corners=False)
        assert logits.shape[-2:] == size  # test sizes are multiples of 8
        return logits

    def creff(self, hr, lr):
        lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="bilinear", align_corners=True)
        c = hr.shape[1]
        q = self.conv(lr_up, "fuse_attention.lr_query_conv", 1, 1, 1, c)
        k = self.conv(hr, "fuse_attention.hr_key_conv", 1, 1, 1, c)
        v = self.conv(hr, "fuse_attention.hr_value_conv", 1, 1, 1, c)
        return lr_up + arseg_ops.reference.local_attn(q, k, v, 7)


def functional_forward(backbone, hr_sd, lr_sd, image, scale):
    """(keyframe output, zero-motion non-keyframe output) of the release's pipeline on `image`."""
    hr, lr = Functional(hr_sd), Functional(lr_sd)
    net = backbone.removesuffix("18")  # "psp" | "bisenet"
    feature, classify = f"{net}_feature", f"{net}_classify"
    size = tuple(image.shape[-2:])
    hr_feat = getattr(hr, feature)(image)
    small = F.interpolate(image, size=(int(size[0] * scale), int(size[1] * scale)), mode="bilinear",
                          align_corners=True)
    lr_feat = getattr(lr, feature)(small)
    return getattr(hr, classify)(hr_feat, size), getattr(lr, classify)(lr.creff(hr_feat, lr_feat), size)

# ---------------- tests ----------------


@pytest.mark.parametrize("backbone, shape", [("psp18", (1, 3, 32, 48)), ("bisenet18", (2, 3, 64, 96))])
def test_forward_matches_functional_rebuild(backbone, shape):
    # float64 throughout, so that any difference is a difference in the computation, not in rounding
    seg = loaded_arseg(backbone).double()
    image = torch.randn(shape, dtype=torch.float64)
    hr_sd = {k: v.double() for k, v in release_state_dict(f"{backbone}_hr", 1).items()}
    lr_sd = {k: v.double() for k, v in release_state_dict(f"{backbone}_lr_with_creff", 2).items()}
    with torch.no_grad():
        key_out = seg.keyframe(image)
        lr_out = seg.non_keyframe(image, torch.zeros(shape[0], 2, shape[2] // 4, shape[3] // 4, dtype=torch.float64))
        exp_key, exp_lr = functional_forward(backbone, hr_sd, lr_sd, image, 0.5)
    assert key_out.shape == exp_key.shape == (shape[0], 12, *shape[2:])
    assert lr_out.shape == exp_lr.shape == key_out.shape
    assert exp_key.std() > 0.1 and exp_lr.std() > 0.1  # not a degenerate (constant) network
    torch.testing.assert_close(key_out, exp_key, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(lr_out, exp_lr, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backbone, feat_stride", [("psp18", 1), ("bisenet18", 8)])
@pytest.mark.parametrize("size", [(32, 32), (48, 32), (40, 52), (26, 38)])
def test_output_shapes(backbone, feat_stride, size):
    seg = models.ARSeg(backbone, scale=0.6, block_size=None).eval()  # None: any motion grid
    image = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert seg.keyframe(image).shape == (1, 12, *size)
        assert seg.non_keyframe(image, torch.zeros(1, 2, 3, 5)).shape == (1, 12, *size)
    if size[0] % 8 == 0 and size[1] % 8 == 0:
        assert seg._key_feature.shape[-2:] == (size[0] // feat_stride, size[1] // feat_stride)


@pytest.mark.parametrize("hr_cls, lr_cls, name", [
    (models.PSPNet18, models.PSPNet18WithCReFF, "psp18"),
    (models.BiSeNet18, models.BiSeNet18WithCReFF, "bisenet18"),
])
def test_parameter_names_and_shapes_match_release(hr_cls, lr_cls, name):
    for net, key in ((hr_cls(12, aux_heads=True), f"{name}_hr"), (lr_cls(12, 7, aux_heads=True),
                                                                 f"{name}_lr_with_creff")):
        ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
        release = [(k, s) for k, s in KEYS[key] if not (name == "bisenet18" and k.startswith(ALIAS_PREFIXES))]
        assert sorted(ours) == sorted(release)


@pytest.mark.parametrize("backbone", ["psp18", "bisenet18"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_official_round_trip(backbone, prefix):
    hr_sd = release_state_dict(f"{backbone}_hr", 3)
    lr_sd = release_state_dict(f"{backbone}_lr_with_creff", 4)
    seg = models.ARSeg(backbone)
    seg.load_official({prefix + k: v for k, v in hr_sd.items()}, {prefix + k: v for k, v in lr_sd.items()})
    for net, sd in ((seg.hr_net, hr_sd), (seg.lr_net, lr_sd)):
        state = net.state_dict()
        for k, v in state.items():
            torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
        ignored = set(sd) - set(state)
        assert all(k.startswith(("classifier.", "conv_out16.", "conv_out32.") + ALIAS_PREFIXES) for k in ignored)


def test_load_official_errors_name_the_keys():
    seg = models.ARSeg("psp18")
    hr_sd, lr_sd = release_state_dict("psp18_hr"), release_state_dict("psp18_lr_with_creff")
    bad = dict(lr_sd, **{"fuse_attention.hr_key_conv.weight": torch.zeros(64, 1, 5, 5)})
    with pytest.raises(ValueError, match=r"lr_state_dict.*\n.*shape mismatches \(1\): fuse_attention\.hr_key_conv"
                                         r"\.weight: checkpoint shape \[64, 1, 5, 5\], model shape \[64, 1, 3, 3\]"):
        seg.load_official(hr_sd, bad)
    missing = {k: v for k, v in hr_sd.items() if k != "up_2.conv.2.weight"}
    with pytest.raises(ValueError, match=r"hr_state_dict.*\n.*missing keys \(1\): up_2\.conv\.2\.weight"):
        seg.load_official(missing, lr_sd)
    # A BiSeNet checkpoint is not a PSPNet one: everything is reported, nothing is loaded.
    with pytest.raises(ValueError, match="unexpected keys"):
        seg.load_official(release_state_dict("bisenet18_hr"), lr_sd)


@pytest.mark.parametrize("backbone, feat_stride", [("psp18", 1), ("bisenet18", 8)])
def test_motion_is_scaled_to_the_feature_grid(backbone, feat_stride):
    seg = loaded_arseg(backbone)
    image = torch.randn(1, 3, 64, 64)
    size = (64, 64)
    with torch.no_grad():
        seg.keyframe(image)
        feat = seg._key_feature
        small = F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=True)
        # Zero motion: the warp is the identity.
        out = seg.non_keyframe(image, torch.zeros(1, 2, 16, 16))
        torch.testing.assert_close(out, seg.lr_net(small, feat, out_size=size))
        # 2 feature pixels to the right in image pixels: the warp samples feat[..., x + 2], zeros past the edge.
        mv = torch.zeros(1, 2, 16, 16)
        mv[:, 0] = 2.0 * feat_stride
        shifted = torch.zeros_like(feat)
        shifted[..., :-2] = feat[..., 2:]
        out = seg.non_keyframe(image, mv)
        torch.testing.assert_close(out, seg.lr_net(small, shifted, out_size=size), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, seg.lr_net(small, feat, out_size=size), atol=1e-3)


def test_non_keyframe_needs_a_keyframe():
    seg = models.ARSeg("bisenet18").eval()
    with pytest.raises(RuntimeError, match="no keyframe"):
        seg.non_keyframe(torch.randn(1, 3, 32, 32), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="backbone must be one of"):
        models.ARSeg("resnet50")


def test_non_keyframe_refuses_a_motion_grid_that_does_not_tile_the_image():
    # 240x320 with 4-pixel blocks is a 60x80 grid; a 30x40 one (8-pixel blocks) would be stretched silently
    seg = models.ARSeg("tiny").eval()
    image = torch.randn(1, 3, 240, 320)
    with torch.no_grad():
        seg.keyframe(image)
        with pytest.raises(ValueError, match=r"grid 30x40 does not tile the 240x320 image with 4-pixel blocks: "
                                             r"expected 60x80"):
            seg.non_keyframe(image, torch.randn(1, 2, 30, 40))
        assert seg.non_keyframe(image, torch.randn(1, 2, 60, 80)).shape == (1, 12, 240, 320)
        eight = models.ARSeg("tiny", block_size=8).eval()
        eight.load_state_dict(seg.state_dict())
        eight.keyframe(image)
        assert eight.non_keyframe(image, torch.randn(1, 2, 30, 40)).shape == (1, 12, 240, 320)
        odd = torch.randn(1, 3, 30, 42)  # partial blocks at the edges: ceil(30/4) x ceil(42/4)
        seg.keyframe(odd)
        assert seg.non_keyframe(odd, torch.randn(1, 2, 8, 11)).shape == (1, 12, 30, 42)
        with pytest.raises(ValueError, match="expected 8x11"):
            seg.non_keyframe(odd, torch.randn(1, 2, 7, 10))
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="block_size must be a positive int or None"):
            models.ARSeg("tiny", block_size=bad)


def test_segment_switches_branches_and_normalizes():
    seg = loaded_arseg("bisenet18")
    g = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=g) for _ in range(3)]
    mv = torch.randn(2, 8, 12, generator=g)
    frames = [(images[0], True, None), (images[1], False, mv), (images[2].numpy(), False, mv.numpy())]
    maps = list(seg.segment(frames))
    x = (torch.stack(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(models.IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(models.IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = [seg.keyframe(x[:1]), seg.non_keyframe(x[1:2], mv[None]), seg.non_keyframe(x[2:], mv[None])]
    for got, exp in zip(maps, expected):
        assert got.shape == (32, 48) and got.dtype == torch.int64
        assert torch.equal(got, exp[0].argmax(0))
    with pytest.raises(RuntimeError, match="no keyframe"):
        list(seg.segment([(images[0], False, mv)]))


@pytest.mark.parametrize("backbone", ["psp18", "bisenet18"])
def test_training_step_reaches_creff_and_lr_network(backbone):
    seg = models.ARSeg(backbone, scale=0.5).train()
    image, key = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 12, (2, 32, 32))
    labels[0, :4] = 255  # ignored pixels
    mv = torch.randn(2, 2, 4, 4)
    losses = seg.lr_training_step(image, labels, key_image=key, mv_to_key=mv)
    losses["loss"].backward()
    assert losses["seg_loss"] > 0 and losses["fst_loss"] > 0
    for name, p in seg.lr_net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert seg.lr_net.fuse_attention.hr_value_conv.weight.grad.abs().sum() > 0
    assert seg.lr_net.fuse_attention.lr_query_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.hr_net.parameters())  # HR is frozen


def test_fst_loss_is_mse_against_a_constant_target():
    a = torch.randn(2, 4, 5, 5, requires_grad=True)
    b = torch.randn(2, 4, 5, 5, requires_grad=True)
    loss = models.fst_loss(a, b)
    torch.testing.assert_close(loss, ((a - b) ** 2).mean())
    loss.backward()
    assert b.grad is None and a.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        models.fst_loss(a, b[:, :2])


def test_training_step_under_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        hr_net, lr_net = models.build_networks("bisenet18")
        ddp = DistributedDataParallel(lr_net)  # find_unused_parameters=False: every parameter must be used
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        before = lr_net.fuse_attention.hr_key_conv.weight.detach().clone()
        for _ in range(2):  # DDP reports unused parameters at the start of the following iteration
            models.lr_training_step(ddp, hr_net, torch.randn(2, 3, 32, 32), torch.randint(0, 12, (2, 32, 32)),
                                    optimizer=opt)
        assert not torch.equal(before, lr_net.fuse_attention.hr_key_conv.weight)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backbone, scale, expected", [
    ("psp18", 1.0, 308.6), ("psp18", 0.5, 101.9), ("psp18", 0.6, 132.96), ("psp18", 0.7, 169.68),
    ("bisenet18", 1.0, 39.1),
])
def test_count_gmacs_reproduces_the_paper(backbone, scale, expected):
    assert models.count_gmacs(backbone, (720, 960), scale=scale, keyframe_interval=12) == pytest.approx(
        expected, rel=5e-3)


def test_flop_counter_counts_local_attention_and_warp():
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w, k = 8, 10, 12, 5
    creff = models.CReFF(c, k, fused=False)
    hr, lr = torch.randn(1, c, h, w), torch.randn(1, c, h // 2, w // 2)
    with FlopCounterMode(display=False) as counter:
        arseg_ops.mv_warp(creff(hr, lr), torch.zeros(1, 2, 2, 3))
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.arseg_ops.local_attn] == 2 * (2 * c * h * w * k * k)
    assert counts[torch.ops.arseg_ops.mv_warp] == 2 * (4 * c * h * w)
    total = 2 * (2 * c * h * w * k * k + 3 * c * h * w * 9 + 4 * c * h * w)
    assert counter.get_total_flops() == total
    # The fused op counts as its convs and attention: the same total.
    creff.fused = True
    with FlopCounterMode(display=False) as counter:
        arseg_ops.mv_warp(creff(hr, lr), torch.zeros(1, 2, 2, 3))
    assert counter.get_flop_counts()["Global"][torch.ops.arseg_ops.creff] == 2 * (2 * c * h * w * k * k + 27 * c * h * w)
    assert counter.get_total_flops() == total


@pytest.mark.parametrize("position_bias", [False, True])
def test_lr_branch_compiles(position_bias):
    # backend="aot_eager" traces the full graph (fake kernels, autograd formulas) in ~3 s; "inductor" works too
    # but takes ~40 s to compile on a 2-core CI machine.
    torch._dynamo.reset()
    net = models.BiSeNet18WithCReFF(12, 7, position_bias=position_bias).eval()
    if position_bias:
        with torch.no_grad():
            net.fuse_attention.position_bias.normal_()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x, hr = torch.randn(1, 3, 32, 32), torch.randn(1, 256, 8, 8, requires_grad=True)
    out = compiled(x, hr, out_size=(64, 64))
    torch.testing.assert_close(out, net(x, hr, out_size=(64, 64)))
    out.square().mean().backward()
    assert hr.grad is not None and net.fuse_attention.hr_key_conv.weight.grad is not None



@pytest.mark.parametrize("backbone", ["psp18", "bisenet18"])
def test_fused_and_unfused_creff_agree(backbone):
    """ARSeg(fused=True) hands the keyframe feature and the motion to one arseg_ops.creff call; fused=False runs
    mv_warp, resize, convs and local_attn op by op. Same checkpoint, same outputs (features and logits)."""
    # float64, so that any difference is one of computation (fp32 agreement is test_creff's business)
    fused, unfused = loaded_arseg(backbone).double(), loaded_arseg(backbone).double()
    unfused.lr_net.fuse_attention.fused = False
    assert models.ARSeg(backbone, fused=False).lr_net.fuse_attention.fused is False
    image, key_image = torch.randn(1, 3, 32, 48, dtype=torch.float64), torch.randn(1, 3, 32, 48, dtype=torch.float64)
    mv = torch.randn(1, 2, 8, 12, dtype=torch.float64) * 6  # image pixels: several feature pixels, some outside
    with torch.no_grad():
        outs = []
        for seg in (fused, unfused):
            seg.keyframe(key_image)
            outs.append(seg.non_keyframe(image, mv))
        feat = fused._key_feature
        small = F.interpolate(image, size=(16, 24), mode="bilinear", align_corners=True)
        lr_feat = fused.lr_net.features(small)
        scale = models.frames.motion_scale(feat.shape[-2:], (32, 48))
        fused_creff = fused.lr_net.fuse_attention(feat, lr_feat, mv, mv_scale=scale)
        unfused_creff = unfused.lr_net.fuse_attention(feat, lr_feat, mv, mv_scale=scale)
    assert fused_creff.abs().max() > 0.1
    torch.testing.assert_close(fused_creff, unfused_creff, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=1e-9)


def test_readme_networks_snippet_runs_as_written(tmp_path, monkeypatch):
    # The README's `arseg_ops.models` example, verbatim, on a small clip and random release-format weights
    pytest.importorskip("av")
    import os
    import re

    import numpy as np

    from arseg_ops import video

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    section = readme.split("## Networks: `arseg_ops.models`", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    video.encode([g.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(3)], "clip.mp4", gop=2)
    hr_net, lr_net = models.build_networks("psp18")
    torch.save(hr_net.state_dict(), "hr.pth")
    torch.save({"module." + k: v for k, v in lr_net.state_dict().items()}, "lr.pth")
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert len(namespace["class_maps"]) == 3 and namespace["class_maps"][0].shape == (32, 48)
    assert namespace["logits"].shape == (1, 12, 32, 48)


@pytest.mark.parametrize("k", [3, 7])
def test_creff_position_bias_adds_a_relative_bias_to_the_logits(k):
    """CReFF(position_bias=True): logit(p, p + (dx, dy)) = <q_p, k_{p+d}> + sum_f a[0, f] cos(w_f dx) +
    a[1, f] cos(w_f dy), w_f = pi f / (r + 1); taps outside the image keep logit 0 and value 0 (zero padding)."""
    torch.manual_seed(0)
    c, h, w, r = 5, 9, 11, k // 2
    creff = models.CReFF(c, k, position_bias=True).double()
    with torch.no_grad():
        creff.position_bias.normal_()
    hr, lr = torch.randn(2, c, h, w, dtype=torch.float64), torch.randn(2, c, 5, 6, dtype=torch.float64)
    out = creff(hr, lr)
    lr_up = F.interpolate(lr, size=(h, w), mode="bilinear", align_corners=True)
    q, kk, v = creff.lr_query_conv(lr_up), creff.hr_key_conv(hr), creff.hr_value_conv(hr)
    keys = F.unfold(kk, k, padding=r).view(2, c, k * k, h, w)
    values = F.unfold(v, k, padding=r).view(2, c, k * k, h, w)
    inside = F.unfold(torch.ones(1, 1, h, w, dtype=torch.float64), k, padding=r).view(1, k * k, h, w)
    freq = torch.arange(1, r + 1, dtype=torch.float64) * math.pi / (r + 1)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    a = creff.position_bias.detach()
    bx = (a[0, :, None] * torch.cos(freq[:, None] * offsets)).sum(0)  # (k,) over dx
    by = (a[1, :, None] * torch.cos(freq[:, None] * offsets)).sum(0)  # (k,) over dy
    bias = (by[:, None] + bx[None, :]).reshape(1, k * k, 1, 1)  # unfold order: dy major, dx minor
    logits = ((q[:, :, None] * keys).sum(1) + bias) * inside
    expected = lr_up + (logits.softmax(1)[:, None] * values).sum(2)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert creff.position_bias.grad is not None and creff.position_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_creff_position_bias_is_relative_at_any_position_and_dtype(dtype, tol):
    """The position channels' dot product depends on the offset only, also 2000 pixels in (phases are reduced
    in integers, then cast: bfloat16 cannot hold pixel indices above 256)."""
    torch.manual_seed(0)
    creff = models.CReFF(4, 7, position_bias=True)
    with torch.no_grad():
        creff.position_bias.normal_()
    q_part, k_part = creff.position_channels(torch.zeros(1, 4, 3, 2048, dtype=dtype))
    assert q_part.dtype == k_part.dtype == dtype and q_part.shape == (1, 12, 3, 2048)
    r, a = 3, creff.position_bias.detach().double()
    freq = torch.arange(1, r + 1, dtype=torch.float64) * math.pi / (r + 1)
    for x in (3, 700, 2040):
        for dx in range(-3, 4):
            got = (q_part[0, :, 1, x].double() * k_part[0, :, 1, x + dx].double()).sum()
            expected = (a[0] * torch.cos(freq * dx)).sum() + a[1].sum()  # dy = 0
            assert abs(got - expected) <= tol * (1 + a.abs().sum()), (x, dx, got, expected)
