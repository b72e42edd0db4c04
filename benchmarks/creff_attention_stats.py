"""Attention statistics of a trained AR checkpoint's CReFF on the eval protocol of benchmarks/accuracy.py.

    python benchmarks/creff_attention_stats.py WORK_DIR TAG KERNEL_SIZE [--num-classes 6] [--length 12]

WORK_DIR is an accuracy.py --dir (it holds data/manifest.csv and TAG/last.pt). While `arseg eval` runs the
checkpoint, every CReFF call also computes its k x k softmax (the reference math: unfold, dot products, no
scale, plus CReFF's position bias when it has one) and records, averaged over all pixels of all val frames:
the largest weight, the entropy over log(k*k) (1 = uniform), how often the aligned neighbour (the window
centre) has the largest weight, and the spread of the logits. Prints one JSON line. A diagnostic: it explains accuracy numbers, it is not one.
"""
import argparse
import json
import math
import os
import tempfile

import torch
import torch.nn.functional as F

import arseg_ops
from arseg_ops import cli
from arseg_ops.models import creff as creff_module


def window_stats(module, hr_feature, lr_feature, mv, mv_scale, kernel_size):
    """[max weight, entropy / log k^2, P(argmax = centre), logit std] of one CReFF call, pixel means."""
    with torch.no_grad():
        hr = hr_feature if mv is None else arseg_ops.mv_warp(hr_feature, mv.to(hr_feature.dtype), scale=mv_scale)
        q = module.lr_query_conv(creff_module.resize_ac(lr_feature, hr.shape[-2:]))
        k = module.hr_key_conv(hr)
        q, k = module.with_position_channels(q, k)  # CReFF's learned position bias, when it has one
        n, c, h, w = q.shape
        keys = F.unfold(k, kernel_size, padding=kernel_size // 2).view(n, c, kernel_size ** 2, h, w)
        logits = (q.unsqueeze(2) * keys).sum(1)
        a = logits.softmax(1)
        entropy = -(a * a.clamp_min(1e-12).log()).sum(1) / math.log(kernel_size ** 2)
        centre = (a.argmax(1) == kernel_size ** 2 // 2).float()
        return [a.max(1).values.mean().item(), entropy.mean().item(), centre.mean().item(),
                logits.std(1).mean().item()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work_dir")
    p.add_argument("tag")
    p.add_argument("kernel_size", type=int)
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--length", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(1)
    stats = []
    forward = creff_module.CReFF.forward

    def recording_forward(self, hr_feature, lr_feature, mv=None, *, mv_scale=1.0):
        stats.append(window_stats(self, hr_feature, lr_feature, mv, mv_scale, args.kernel_size))
        return forward(self, hr_feature, lr_feature, mv, mv_scale=mv_scale)

    creff_module.CReFF.forward = recording_forward
    manifest = os.path.join(args.work_dir, "data", "manifest.csv")
    with tempfile.TemporaryDirectory() as tmp:
        cli.main(["eval", manifest, "--num-classes", str(args.num_classes), "--backbone", "tiny", "--length",
                  str(args.length), "--checkpoint", os.path.join(args.work_dir, args.tag, "last.pt"),
                  "--json", os.path.join(tmp, "eval.json")])
    creff_module.CReFF.forward = forward
    if not stats:
        raise SystemExit("no CReFF call was made: is %s an AR checkpoint?" % args.tag)
    s = torch.tensor(stats).mean(0).tolist()
    print(json.dumps({"work_dir": args.work_dir, "tag": args.tag, "kernel_size": args.kernel_size,
                      "max_weight": s[0], "entropy_over_log_k2": s[1], "argmax_is_centre": s[2], "logit_std": s[3],
                      "uniform_weight": 1 / args.kernel_size ** 2}))


if __name__ == "__main__":
    main()
