"""`arseg manifest | synthetic | train | eval`: AR-Seg training and evaluation (arseg_ops.train) from the command line.

Each handler is `handler(args, parser) -> int`: argument errors go through parser.error (exit 2); runtime
failures print `<prog> <cmd>: error: <message>` to stderr and return 1. Nothing here assumes the program name.
"""
import argparse
import sys
import time

from . import common


def _training_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"expected HxW, multiples of 16, e.g. 96x128, got {text!r}")
    return h, w


def _fail(parser, exc):
    print(f"{parser.prog}: error: {exc}", file=sys.stderr)
    return 1


_RUNTIME_ERRORS = (OSError, ValueError, RuntimeError, FloatingPointError)


def _common(p, training):
    p.add_argument("manifest", help="manifest .csv or .jsonl (see `manifest`)")
    p.add_argument("--split", default="train" if training else "val",
                   help="manifest split to use (`synthetic` writes train and val; CamVid has train, val, test)")
    p.add_argument("--length", type=common.positive_int, default=12, help="GOP length L: keyframe distances 0..L-1")
    p.add_argument("--block-size", type=common.positive_int, default=4, help="motion grid cell in pixels")
    p.add_argument("--cache-dir", help="motion/clip cache (default: .arseg_cache next to the manifest)")
    p.add_argument("--class-map", choices=("none", "camvid"), default="none",
                   help="camvid: label value 11 (void) -> 255")
    # eval --checkpoint takes the network from the checkpoint; these then default to its values
    from_ckpt = "" if training else "; with --checkpoint: the checkpoint's"
    p.add_argument("--num-classes", type=common.positive_int, default=None,
                   help="classes (default: 11 with --class-map camvid, else required%s)" % from_ckpt)
    p.add_argument("--backbone", choices=("psp18", "bisenet18", "tiny"), default="psp18" if training else None,
                   help="tiny: a CPU-sized stand-in with the same interface, not from the paper (default psp18%s)"
                        % from_ckpt)
    p.add_argument("--kernel-size", type=common.kernel_size, default=7 if training else None,
                   help="CReFF attention window (default 7%s)" % from_ckpt)
    p.add_argument("--scale", type=common.scale, default=0.5 if training else None,
                   help="LR scale of non-keyframes (default 0.5%s)" % from_ckpt)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available); torchrun sets the GPU")


def _num_classes(args, parser):
    if args.num_classes is None:
        if args.class_map != "camvid":
            parser.error("--num-classes is required without --class-map camvid")
        args.num_classes = 11


def _network_options(args, parser):
    """eval: backbone, classes, CReFF window and scale from the --checkpoint (an option given on the command
    line must agree with it); --official needs the classes (the others default to evaluate.RELEASE_NETWORK)."""
    from ..train import nets

    if not args.checkpoint:
        _num_classes(args, parser)
        return
    ckpt = nets.load_checkpoint(args.checkpoint)
    for name in ("backbone", "num_classes", "kernel_size", "scale"):
        given = getattr(args, name)
        if given is not None and given != ckpt.get(name):
            parser.error(f"--{name.replace('_', '-')} {given}: the checkpoint {args.checkpoint!r} has "
                         f"{name} {ckpt.get(name)!r}; leave the option out to use it")
        setattr(args, name, ckpt.get(name))


def manifest_cmd(args, parser):
    from ..train.manifest import scan_camvid, write_manifest

    offsets = {}
    for item in args.offset or []:
        seq, _, value = item.partition("=")
        if not seq or not value.lstrip("-").isdigit():
            parser.error(f"--offset: expected SEQ=N, got {item!r}")
        offsets[seq] = int(value)
    if not args.output.lower().endswith((".csv", ".jsonl")):
        parser.error("-o/--output must end in .csv or .jsonl")
    try:
        rows = scan_camvid(args.root, offsets=offsets)
        write_manifest(rows, args.output)
    except _RUNTIME_ERRORS as e:
        return _fail(parser, e)
    counts = {}
    for r in rows:
        counts[r.split] = counts.get(r.split, 0) + 1
    print(f"wrote {len(rows)} rows to {args.output} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


def synthetic_cmd(args, parser):
    from ..train.synthetic import CLASSES, write_dataset

    if args.val_sequences >= args.sequences:
        parser.error("--val-sequences must be smaller than --sequences")
    if args.frames <= args.first_label:
        parser.error("--frames must exceed --first-label")
    try:
        path = write_dataset(args.dir, sequences=args.sequences, val_sequences=args.val_sequences,
                             frames=args.frames, size=args.size, label_every=args.label_every,
                             first_label=args.first_label, seed=args.seed)
    except _RUNTIME_ERRORS as e:
        return _fail(parser, e)
    print(f"wrote {path} ({len(CLASSES)} classes: {', '.join(CLASSES)}; train with --num-classes {len(CLASSES)})")
    return 0


def train_cmd(args, parser):
    from ..train import loop

    _num_classes(args, parser)
    if args.stage == "ar" and not args.hr_checkpoint:
        parser.error("--stage ar needs --hr-checkpoint (the stage hr checkpoint or the release's HR .pth)")
    if args.crop is not None and args.crop[0] % 16:
        parser.error("--crop must be multiples of 16")
    if args.scale_range[0] <= 0 or args.scale_range[0] > args.scale_range[1]:
        parser.error("--scale-range: expected 0 < MIN <= MAX")
    try:
        loop.run(args)  # prints the summary line (steps, losses, checkpoint) on rank 0
    except _RUNTIME_ERRORS as e:
        return _fail(parser, e)
    return 0


def eval_cmd(args, parser):
    import json

    from ..train import evaluate

    if bool(args.checkpoint) == bool(args.official):
        parser.error("give either --checkpoint (stage ar) or --official HR.pth LR.pth")
    if args.plot and not args.plot.lower().endswith(".png"):
        parser.error(f"--plot: the figure is a PNG, got {args.plot!r}")
    start = time.perf_counter()
    try:
        _network_options(args, parser)
        result = evaluate.evaluate(args)
    except _RUNTIME_ERRORS as e:
        return _fail(parser, e)
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(evaluate.format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        from .plot import write_miou_chart

        write_miou_chart(args.plot, result)
        print(f"wrote {args.plot}")
    return 0


def register(subparsers):
    """Add manifest / synthetic / train / eval to an argparse subparsers object."""
    p = subparsers.add_parser("manifest", help="write a manifest for a dataset layout")
    sub = p.add_subparsers(dest="layout", required=True)
    c = sub.add_parser("camvid", help="ROOT/{train,val,test}annot/<seq>_<frame>.png + ROOT[/videos]/<seq>.<ext>")
    c.add_argument("root", help="the CamVid folder (ROOT/trainannot, ROOT/valannot, ROOT/testannot, videos)")
    c.add_argument("-o", "--output", default="manifest.csv", help="manifest path (.csv or .jsonl)")
    c.add_argument("--offset", action="append", metavar="SEQ=N",
                   help="frame number of the video's first frame in the label names (repeatable)")
    c.set_defaults(func=manifest_cmd)

    p = subparsers.add_parser("synthetic", help="generate a small labelled H.264 video dataset",
                              description="Write a small labelled video dataset to try training and evaluation "
                                          "with: DIR/videos/seqNN.mp4 (a panning textured world with sky, ground, "
                                          "moving cars, thin poles, signs and wires), DIR/labels/seqNN_FFFFFF.png "
                                          "(class ids) and DIR/manifest.csv, whose last --val-sequences sequences "
                                          "are split 'val' and the others 'train'.")
    p.add_argument("dir", help="output folder (created if missing)")
    p.add_argument("--sequences", type=common.positive_int, default=6, help="videos in all")
    p.add_argument("--val-sequences", type=int, default=2,
                   help="how many of them form the 'val' split (the rest: 'train')")
    p.add_argument("--frames", type=common.positive_int, default=40, help="frames per sequence")
    p.add_argument("--size", type=_training_size, default=(96, 128), help="frame HxW, multiples of 16")
    p.add_argument("--label-every", type=common.positive_int, default=2,
                   help="label every Nth frame from --first-label on")
    p.add_argument("--first-label", type=int, default=11,
                   help="first labelled frame (earlier frames give the later ones their keyframe distances: "
                        "L-1 = 11 for the default --length 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    p.set_defaults(func=synthetic_cmd)

    p = subparsers.add_parser("train", help="train a stage: hr, lr (LR-only baseline) or ar (LR + CReFF, FST)")
    _common(p, training=True)
    p.add_argument("--stage", choices=("hr", "lr", "ar"), required=True,
                   help="hr: the full-resolution network; lr: the LR-only baseline; ar: LR network + CReFF")
    p.add_argument("--out", required=True, help="folder for last.pt and metrics.jsonl")
    p.add_argument("--hr-checkpoint", help="HR weights: stage hr checkpoint or the release's HR .pth")
    p.add_argument("--epochs", type=common.positive_int, default=10, help="passes over the training rows")
    p.add_argument("--max-steps", type=common.positive_int,
                   help="stop after this many optimizer steps in total (default: --epochs decides)")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="per process")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sgd: with momentum 0.9")
    p.add_argument("--lr", type=common.positive_float, default=1e-3,
                   help="peak learning rate (linear warm-up, then cosine decay to 0)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay of the optimizer")
    p.add_argument("--warmup-steps", type=int, default=50, help="steps of linear learning-rate warm-up")
    p.add_argument("--fst-weight", type=float, default=1.0,
                   help="stage ar: weight of the FST loss (fused feature vs the HR network's) next to the seg loss")
    p.add_argument("--no-fusion-epochs", type=int, default=0, help="stage ar: first epochs without CReFF")
    p.add_argument("--creff-lr-mult", type=common.positive_float, default=1.0,
                   help="stage ar: learning rate of CReFF's parameters as a multiple of --lr")
    p.add_argument("--creff-init", choices=("default", "identity"), default="default",
                   help="stage ar: CReFF's q/k/v convs start with PyTorch's random init (default, as the release) "
                        "or all three as identities (centre tap 1, bias 0)")
    p.add_argument("--creff-position-bias", action="store_true",
                   help="stage ar: CReFF learns a relative-position bias of its attention logits (not in the paper; "
                        "what lets a 7x7 window learn on the synthetic task, see benchmarks/RESULTS.md; CReFF then "
                        "runs op by op, not as the fused op); the checkpoint records it")
    p.add_argument("--crop", type=_training_size, help="training crop HxW (default: the frame size)")
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.5), metavar=("MIN", "MAX"),
                   help="random rescale of each training pair (image, label and motion together)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--no-augment", action="store_true", help="no rescale, crop or flip")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUT/last.pt or the given checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed of initialization, sampling and augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=train_cmd)

    p = subparsers.add_parser("eval", help="mIoU per keyframe distance (the paper's protocol)")
    _common(p, training=False)
    p.add_argument("--checkpoint", help="stage ar checkpoint of `train` (holds the HR network too)")
    p.add_argument("--official", nargs=2, metavar=("HR_PTH", "LR_PTH"), help="the release's state_dicts")
    p.add_argument("--lr-checkpoint", help="stage lr checkpoint: adds the LR-only baseline")
    p.add_argument("--json", help="also write the result as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw mIoU against keyframe distance (AR, HR, LR-only) as a PNG")
    p.set_defaults(func=eval_cmd)
