"""`arseg flops`: GMACs per frame of the HR network, the LR network with CReFF and their GOP average."""
from .. import models
from . import common

# Table 1 of the AR-Seg paper (GMACs per frame, CamVid 720x960, GOP 12), keyed by (backbone, H, W, gop) -> scale.
PAPER_GMACS = {
    ("psp18", 720, 960, 12): {1.0: 309.02, 0.5: 101.98, 0.6: 133.09, 0.7: 169.86},
    ("bisenet18", 720, 960, 12): {1.0: 58.83, 0.5: 18.96},
}
PAPER_NOTES = {
    "bisenet18": "the paper's BiSeNet-18 1.0x figure (58.83) counts its three output modules twice; the clean "
                 "count of the same network is 39.12",
}


def hr_lr_ar(backbone, size, scale, gop, num_classes=12, kernel_size=7):
    """(HR GMACs, LR-with-CReFF GMACs, average per frame over a GOP)."""
    hr = models.count_gmacs(backbone, size, scale=1.0, num_classes=num_classes)
    if scale == 1.0:
        return hr, hr, hr
    # count_gmacs averages (HR + (L-1) LR) / L; a GOP of 2 isolates the LR frame's cost exactly.
    lr = 2 * models.count_gmacs(backbone, size, scale=scale, keyframe_interval=2, num_classes=num_classes,
                                kernel_size=kernel_size) - hr
    return hr, lr, (hr + (gop - 1) * lr) / gop


def run(args, parser):
    h, w = args.size
    hr, lr, ar = hr_lr_ar(args.backbone, (h, w), args.scale, args.gop)
    paper = PAPER_GMACS.get((args.backbone, h, w, args.gop), {})

    def ref(s):
        return "%.2f" % paper[s] if s in paper else "-"

    print("arseg flops: %s at %dx%d, LR scale %g, GOP %d (multiply-accumulates of convolutions, linear layers "
          "and local attention)" % (args.backbone, h, w, args.scale, args.gop))
    rows = [["HR network (1.0x, keyframes)", "%.2f" % hr, ref(1.0)]]
    if args.scale != 1.0:
        rows.append(["LR network %gx + CReFF (other frames)" % args.scale, "%.2f" % lr, "-"])
        rows.append(["AR-Seg average per frame (GOP %d)" % args.gop, "%.2f" % ar, ref(args.scale)])
    print(common.format_table(["", "GMACs", "paper"], rows))
    print("AR-Seg needs %.1f%% of the 1.0x model's compute (%.2fx less)." % (100 * ar / hr, hr / ar))
    if args.backbone in PAPER_NOTES and paper:
        print("note: " + PAPER_NOTES[args.backbone])
    return 0


def register(sub):
    p = sub.add_parser("flops", parents=[common.backbone_options(), common.gop_options()],
                       help="HR, LR and AR-Seg GMACs per frame next to the paper's numbers",
                       description="Count multiply-accumulates of the HR network, the LR network with CReFF and "
                                   "their GOP average, next to the AR-Seg paper's Table 1 where it applies.")
    p.add_argument("--size", type=common.size, default=(720, 960), help="image HxW (default 720x960, CamVid)")
    p.set_defaults(func=run)
    return p
