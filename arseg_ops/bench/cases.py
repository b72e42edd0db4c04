"""Benchmark cases: what to measure (`Case`) and how to run it (`build`).

A `Case` names one measurable call (op, implementation, forward or forward+backward, shape, dtype, device);
`build(case)` turns it into a zero-argument callable on freshly made inputs. Fused and reference cases with
the same parameters get bit-identical inputs (the generator is seeded from the parameters), so every pair is
compared on the same data. `compile=True` runs the measured function under torch.compile(fullgraph=True,
dynamic=False); the first call compiles, so callers warm up before they time or measure memory.
"""
import dataclasses
import zlib

import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import models, reference

from . import peers

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
PASSES = ("forward", "forward_backward")  # what `arseg bench` reports
ALL_PASSES = PASSES + ("backward",)  # backward: gradients through a graph built once, at build time


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # "local_attn" | "mv_warp" | "creff" | "arseg_step"
    # "fused" | "reference" | "unfused" (creff) | "grid_sample" | "copy" (mv_warp) |
    # "keyframe" | "non_keyframe" | "non_keyframe_unfused" (arseg_step)
    impl: str
    pass_: str = "forward"  # "forward" | "forward_backward"
    size: tuple = (180, 240)  # (H, W) of the feature map (the image for arseg_step)
    channels: int = 64
    kernel_size: int = 7
    block: int = 4  # mv_warp: side of a motion block in pixels; 1 = dense flow
    dtype: str = "float32"
    device: str = "cpu"
    batch: int = 1
    backbone: str = "psp18"  # arseg_step only
    compile: bool = False  # run the measured function under torch.compile (see _maybe_compile)
    channels_last: bool = False  # feature maps (and their output gradients) in channels_last memory format

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.pass_ not in ALL_PASSES:
            raise ValueError("pass_ must be one of %s, got %r" % (ALL_PASSES, self.pass_))
        if self.dtype not in DTYPES:
            raise ValueError("dtype must be one of %s, got %r" % (sorted(DTYPES), self.dtype))
        if self.op not in _BUILDERS:
            raise ValueError("op must be one of %s, got %r" % (sorted(_BUILDERS), self.op))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """The case as JSON-friendly fields; the pass is stored under "pass" (a Python keyword, hence `pass_`)."""
        d = dataclasses.asdict(self)
        d["pass"] = d.pop("pass_")
        d["size"] = list(d["size"])
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        if "pass" in d:
            d["pass_"] = d.pop("pass")
        return cls(**d)

    @property
    def shape_label(self):
        return "%dx%dx%d" % ((self.channels,) + self.size) + (" NHWC" if self.channels_last else "")


# The image sizes of the paper's datasets (AR-Seg Table 5 times PSPNet-18 at both): `arseg bench --image-size`
# takes these names besides HxW.
PAPER_IMAGE_SIZES = {"camvid": (720, 960), "cityscapes": (1024, 2048)}


def parse_image_sizes(text):
    """'720x960,cityscapes' -> [(720, 960), (1024, 2048)]: comma-separated HxW sizes or PAPER_IMAGE_SIZES names."""
    sizes = []
    for part in str(text).split(","):
        name = part.strip().lower()
        sizes.append(PAPER_IMAGE_SIZES[name] if name in PAPER_IMAGE_SIZES else parse_size(name))
    return sizes


def parse_size(text):
    """'720x960' -> (720, 960)."""
    try:
        h, w = (int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ValueError("size must look like HxW (e.g. 720x960), got %r" % (text,)) from None
    if h <= 0 or w <= 0:
        raise ValueError("size must be positive, got %r" % (text,))
    return h, w


# ---- inputs and builders ----


def _generator(case):
    # Same parameters, same inputs: the seed ignores the implementation.
    key = (case.op, case.pass_, case.size, case.channels, case.kernel_size, case.block, case.batch)
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _randn(case, gen, shape, std=1.0, requires_grad=False):
    # Made on the CPU with a CPU generator (identical on every device), then moved.
    t = (torch.randn(shape, generator=gen) * std).to(device=case.device, dtype=DTYPES[case.dtype])
    return t.requires_grad_(requires_grad)


def _feature(case, gen, shape, std=1.0, requires_grad=False):
    """A random (N, C, H, W) feature map in the case's memory format (motion grids stay NCHW: they are tiny)."""
    t = _randn(case, gen, shape, std)
    if case.channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def _maybe_compile(case, fn):
    """fn, or with case.compile torch.compile(fn) as one graph (fullgraph: a graph break is an error, not a
    silent fallback to eager pieces) for these exact shapes (dynamic=False: the kernel that is timed is the one
    the memory probe runs)."""
    return torch.compile(fn, fullgraph=True, dynamic=False) if case.compile else fn


def _forward_or_backward(case, fn, inputs, grad_inputs, out_shape, gen):
    """A callable running fn(*inputs), and for forward_backward also the gradients of grad_inputs."""
    fn = _maybe_compile(case, fn)
    if case.pass_ == "forward":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    grad_out = _feature(case, gen, out_shape)
    if case.pass_ == "backward":
        out = fn(*inputs)
        return lambda: torch.autograd.grad(out, grad_inputs, grad_out, retain_graph=True)

    def run():
        out = fn(*inputs)
        return torch.autograd.grad(out, grad_inputs, grad_out)
    return run


# Peers of the fused local_attn (arseg_ops/bench/peers.py): FlexAttention timed in its own (B, 1, H*W, C) layout
# (padding "exclude": pixels outside the image are not in its sequence; the same work as "zeros"), the NCHW <->
# (B, 1, H*W, C) conversions Flex needs around it (q, k, v in and out back; for forward_backward also dout in
# and dq, dk, dv back), and torch.compile of the unfold reference.
LOCAL_ATTN_PEERS = ("flex", "flex_layout", "compiled_reference")


def _build_local_attn(case, gen):
    fns = {"fused": arseg_ops.local_attn, "reference": reference.local_attn}
    if case.impl not in fns and case.impl not in LOCAL_ATTN_PEERS:
        raise ValueError("local_attn impl must be one of %s, got %r" % (sorted(fns) + list(LOCAL_ATTN_PEERS),
                                                                       case.impl))
    grad = case.pass_ != "forward"
    shape = (case.batch, case.channels) + case.size
    # std C**-0.25 keeps the logits ~N(0, 1), as in a trained network (no denormal-heavy softmax tails).
    q, k, v = (_feature(case, gen, shape, case.channels ** -0.25, grad) for _ in range(3))
    if case.impl in LOCAL_ATTN_PEERS:
        if case.compile:
            raise ValueError("compile=True does not apply to the local_attn peers (they are compiled already)")
        if case.channels_last and case.impl != "compiled_reference":
            raise ValueError("channels_last does not apply to FlexAttention (it has its own (B, 1, H*W, C) layout)")
        return _build_local_attn_peer(case, gen, q, k, v)
    fn = fns[case.impl]
    return _forward_or_backward(case, lambda q, k, v: fn(q, k, v, case.kernel_size), (q, k, v), (q, k, v), v.shape, gen)


def _build_local_attn_peer(case, gen, q, k, v):
    if case.impl == "compiled_reference":
        fn = peers.compiled_reference_local_attn(case.kernel_size)
        return _forward_or_backward(case, fn, (q, k, v), (q, k, v), v.shape, gen)
    if not peers.flex_available():
        raise NotImplementedError("torch %s has no FlexAttention" % torch.__version__)
    h, w = case.size
    if case.impl == "flex_layout":
        backward = case.pass_ != "forward"
        ins = [t.detach() for t in (q, k, v)] + ([v.detach()] if backward else [])  # q, k, v (and dout) in
        outs = [peers.to_sequence(v.detach())] * (4 if backward else 1)  # out (and dq, dk, dv) back

        def convert():
            return [peers.to_sequence(t) for t in ins] + [peers.from_sequence(t, h, w) for t in outs]
        return convert
    if case.device == "cpu" and case.pass_ != "forward":
        raise NotImplementedError("FlexAttention has no CPU backward (forward only on CPU)")
    grad = case.pass_ != "forward"
    fq, fk, fv = (peers.to_sequence(t.detach()).requires_grad_(grad) for t in (q, k, v))
    mask = peers.neighbourhood_block_mask(h, w, case.kernel_size, device=case.device)
    return _forward_or_backward(case, peers.flex_local_attn(mask), (fq, fk, fv), (fq, fk, fv), fv.shape, gen)


def _block_motion(case, gen):
    h, w = case.size
    b = case.block
    return _randn(case, gen, (case.batch, 2, -(-h // b), -(-w // b)), std=3.0)  # a few pixels, like codec motion


def dense_flow_grid_sample(feature, mv):
    """The unfused way to warp by block motion: expand to a dense flow, normalize, grid_sample."""
    n, _, h, w = feature.shape
    hb, wb = mv.shape[2:]
    by = torch.arange(h, device=mv.device) * hb // h
    bx = torch.arange(w, device=mv.device) * wb // w
    flow = mv[:, :, by][:, :, :, bx]
    xs = torch.arange(w, device=mv.device, dtype=mv.dtype).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, device=mv.device, dtype=mv.dtype).view(1, h, 1) + flow[:, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixel (integer = pixel centre).
    grid = torch.stack((2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1), dim=-1)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _build_mv_warp(case, gen):
    fns = {
        "fused": arseg_ops.mv_warp,
        "reference": reference.mv_warp,
        "grid_sample": dense_flow_grid_sample,
        "copy": lambda feature, mv: feature.clone(),  # the same bytes moved, no sampling: the bandwidth bound
    }
    if case.impl not in fns:
        raise ValueError("mv_warp impl must be one of %s, got %r" % (sorted(fns), case.impl))
    if case.impl == "copy" and case.pass_ != "forward":
        raise ValueError("the copy baseline has no backward")
    # Codec motion carries no gradient: forward_backward differentiates the (HR) feature only.
    feature = _feature(case, gen, (case.batch, case.channels) + case.size, requires_grad=case.pass_ != "forward")
    mv = _block_motion(case, gen)
    return _forward_or_backward(case, fns[case.impl], (feature, mv), (feature,), feature.shape, gen)


def _build_creff(case, gen):
    """CReFF from the keyframe feature and the motion, as a non-keyframe runs it: "fused" (one arseg_ops.creff
    call), "unfused" (mv_warp, resize, depthwise convs, local_attn, add) or "reference" (the unfused chain with
    the unfold reference attention). The LR feature has half the height and width."""
    if case.impl not in ("fused", "unfused", "reference"):
        raise ValueError("creff impl must be 'fused', 'unfused' or 'reference', got %r" % (case.impl,))
    if case.impl == "reference" and case.compile:
        raise ValueError("the creff reference swaps arseg_ops.local_attn per call and cannot be compiled; "
                         "compile 'unfused' instead")
    module = models.CReFF(case.channels, kernel_size=case.kernel_size, fused=case.impl == "fused")
    module = module.to(case.device, DTYPES[case.dtype])
    grad = case.pass_ != "forward"
    h, w = case.size
    key = _feature(case, gen, (case.batch, case.channels, h, w), requires_grad=grad)
    lr = _feature(case, gen, (case.batch, case.channels, max(h // 2, 1), max(w // 2, 1)), requires_grad=grad)
    mv = _block_motion(case, gen)
    params = tuple(p for p in module.parameters() if p.requires_grad)
    forward = lambda key, lr: module(key, lr, mv)  # noqa: E731
    if case.impl == "reference":
        # The unfused module with its attention swapped for the unfold reference (looked up per call).
        def forward(key, lr):
            fused = arseg_ops.local_attn
            arseg_ops.local_attn = reference.local_attn
            try:
                return module(key, lr, mv)
            finally:
                arseg_ops.local_attn = fused
    return _forward_or_backward(case, forward, (key, lr), (key, lr) + params, key.shape, gen)


# The steps of an AR-Seg video: HR network on a keyframe; LR network + CReFF (fused op, or the unfused chain).
ARSEG_STEPS = ("keyframe", "non_keyframe", "non_keyframe_unfused")


def _build_arseg_step(case, gen):
    if case.impl not in ARSEG_STEPS:
        raise ValueError("arseg_step impl must be one of %s, got %r" % (ARSEG_STEPS, case.impl))
    if case.pass_ != "forward":
        raise ValueError("arseg_step is inference only (pass_='forward')")
    if case.channels_last:
        raise ValueError("arseg_step takes an image; channels_last applies to the kernel ops' feature maps")
    seg = models.ARSeg(backbone=case.backbone, num_classes=12, kernel_size=case.kernel_size,
                       fused=case.impl != "non_keyframe_unfused", block_size=case.block)
    seg = seg.to(case.device, DTYPES[case.dtype]).eval()
    image = _randn(case, gen, (case.batch, 3) + case.size)
    mv = _block_motion(case, gen)
    with torch.no_grad():
        seg.keyframe(image)  # the non-keyframe step needs the cached HR feature
    step = seg.keyframe if case.impl == "keyframe" else (lambda img: seg.non_keyframe(img, mv))
    step = _maybe_compile(case, step)

    def run():
        with torch.no_grad():
            return step(image)
    return run


def gop_average_over_keyframe(non_key_over_key, gop=12):
    """Average cost per frame over a group of pictures (one keyframe, then gop - 1 non-keyframes) relative to a
    keyframe's cost: (1 + (gop - 1) * non_key_over_key) / gop (AR-Seg's GOP-12 figure for gop=12)."""
    if not isinstance(gop, int) or gop < 1:
        raise ValueError("gop must be a positive int, got %r" % (gop,))
    return (1 + (gop - 1) * non_key_over_key) / gop


_BUILDERS = {"local_attn": _build_local_attn, "mv_warp": _build_mv_warp, "creff": _build_creff,
             "arseg_step": _build_arseg_step}


def build(case):
    """A zero-argument callable that runs `case` once on inputs made now (returns the op's outputs)."""
    return _BUILDERS[case.op](case, _generator(case))
