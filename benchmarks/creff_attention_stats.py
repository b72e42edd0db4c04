"""Attention statistics of a trained AR checkpoint's CReFF on the val protocol: python attn_stats.py DIR TAG K"""
import sys, json, math, torch, torch.nn.functional as F
import arseg_ops
from arseg_ops import cli
from arseg_ops.models import creff as C
work, tag, K = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
stats = []
orig = C.CReFF.forward
def fwd(self, hr_feature, lr_feat, mv=None, *, mv_scale=1.0):
    with torch.no_grad():
        hr = hr_feature if mv is None else arseg_ops.mv_warp(hr_feature, mv.to(hr_feature.dtype), scale=mv_scale)
        lr_up = C.resize_ac(lr_feat, hr.shape[-2:])
        q = self.lr_query_conv(lr_up); k = self.hr_key_conv(hr)
        N, Ch, H, W = q.shape
        ku = F.unfold(k, K, padding=K // 2).view(N, Ch, K * K, H, W)
        logit = (q.unsqueeze(2) * ku).sum(1)
        a = logit.softmax(1)
        ent = -(a * a.clamp_min(1e-12).log()).sum(1) / math.log(K * K)
        stats.append([a.max(1).values.mean().item(), ent.mean().item(),
                      (a.argmax(1) == K * K // 2).float().mean().item(), logit.std(1).mean().item()])
    return orig(self, hr_feature, lr_feat, mv, mv_scale=mv_scale)
C.CReFF.forward = fwd
m = f"{work}/data/manifest.csv"
cli.main([m, "--num-classes", "6"][:0] + ["eval", m, "--num-classes", "6", "--backbone", "tiny", "--length", "12",
          "--checkpoint", f"{work}/{tag}/last.pt", "--json", f"/tmp/acc/_attn_{tag}.json"])
s = torch.tensor(stats).mean(0).tolist()
print(json.dumps({"work": work, "tag": tag, "K": K, "max_weight": s[0], "entropy_over_log_K2": s[1],
                  "argmax_centre": s[2], "logit_std": s[3], "uniform_weight": 1 / K / K}))
