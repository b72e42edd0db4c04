"""`arseg train`: the HR, LR-only and AR (FST) stages on a manifest, on CPU, one GPU or many (torchrun).

Distribution is PyTorch's own: launched by torchrun (env RANK / WORLD_SIZE / LOCAL_RANK) the process group is
initialised (nccl on CUDA, gloo on CPU), the model is wrapped in DistributedDataParallel and the data split by
DistributedSampler; rank 0 alone builds the motion cache, shows progress, writes metrics and checkpoints.
"""
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..models import IMAGENET_MEAN, IMAGENET_STD
from ..models.frames import lr_size
from ..models.creff import resize_ac
from ..models.training import fst_loss, lr_training_step
from . import nets
from .data import ClipCache, FramePairDataset
from .manifest import IGNORE_INDEX, camvid_class_map, read_manifest


def cosine_with_warmup(total_steps, warmup_steps):
    """LR factor: linear warm-up from 1/warmup to 1, then cosine decay to 0 at total_steps."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Distributed:
    """Rank/world/device of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self, device=None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local if self.world > 1 else torch.cuda.current_device())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def sum(self, values):
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()


def _plain_args(args):
    """The parsed arguments that are plain values (the CLI also puts its handler and sub-parser into the
    namespace; those cannot be pickled into a checkpoint and mean nothing there)."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {k: v for k, v in vars(args).items() if isinstance(v, plain)}


class Trainer:
    """Builds everything from parsed `arseg train` arguments; `train()` runs the remaining epochs."""

    def __init__(self, args):
        self.args = args
        self.dist = Distributed(args.device)
        torch.manual_seed(args.seed)
        self.out = Path(args.out)
        rows = read_manifest(args.manifest, split=args.split)
        cache = ClipCache(args.cache_dir or Path(args.manifest).resolve().parent / ".arseg_cache",
                          length=args.length, block_size=args.block_size)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cache.prepare(rows, progress=not args.quiet)
        self.dist.barrier()  # the other ranks read the cache rank 0 built
        augment = None if args.no_augment else {"scale_range": tuple(args.scale_range), "crop_size": args.crop,
                                                 "flip": not args.no_flip}
        self.dataset = FramePairDataset(rows, cache, args.num_classes, augment=augment, seed=args.seed,
                                        class_map=camvid_class_map() if args.class_map == "camvid" else None,
                                        distance=0 if args.stage in ("hr", "lr") else None)
        self.sampler = DistributedSampler(self.dataset, seed=args.seed, drop_last=True) if self.dist.enabled else None
        self.loader = DataLoader(self.dataset, batch_size=args.batch_size, shuffle=self.sampler is None,
                                 sampler=self.sampler, num_workers=args.workers, drop_last=True,
                                 generator=torch.Generator().manual_seed(args.seed))
        if len(self.loader) == 0:
            raise ValueError(f"{len(self.dataset)} training rows per process is fewer than --batch-size "
                             f"{args.batch_size}")
        hr_state = nets.hr_weights(args.hr_checkpoint) if args.hr_checkpoint else None
        net, self.teacher = nets.build_stage(args.stage, args.backbone, args.num_classes, args.kernel_size, hr_state,
                                             args.creff_init, args.creff_position_bias)
        self.net = net.to(self.dist.device)
        if self.teacher is not None:
            self.teacher.to(self.dist.device)
        fusion = [p for n, p in self.net.named_parameters() if p.requires_grad and n.startswith("fuse_attention.")]
        rest = [p for n, p in self.net.named_parameters() if p.requires_grad and not n.startswith("fuse_attention.")]
        params = [{"params": rest}] + ([{"params": fusion, "lr": args.lr * args.creff_lr_mult}] if fusion else [])
        if args.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
        self.total_steps = args.epochs * len(self.loader)
        if args.max_steps:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(self.total_steps, min(args.warmup_steps, self.total_steps)))
        self.model = self.net
        if self.dist.enabled:
            # The no-fusion phase leaves CReFF out of the forward: DDP must then tolerate unused parameters.
            unused = args.stage == "ar" and args.no_fusion_epochs > 0
            self.model = DistributedDataParallel(
                self.net, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                find_unused_parameters=unused)
        self.step, self.epoch = 0, 0
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.dist.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.dist.device).view(1, 3, 1, 1)
        if args.resume:
            self.resume(args.resume if isinstance(args.resume, str) else self.out / "last.pt")

    # ---- checkpoints ----
    def state(self):
        payload = {"stage": self.args.stage, "backbone": self.args.backbone, "num_classes": self.args.num_classes,
                   "kernel_size": self.args.kernel_size, "scale": self.args.scale, "length": self.args.length,
                   "block_size": self.args.block_size, "position_bias": self.args.creff_position_bias,
                   "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                   "args": _plain_args(self.args)}
        if self.teacher is not None:
            payload["hr_model"] = self.teacher.state_dict()
        return payload

    def resume(self, path):
        ckpt = nets.load_checkpoint(str(path))
        for key in ("stage", "backbone", "num_classes"):
            if ckpt[key] != getattr(self.args, key):
                raise ValueError(f"--resume {str(path)!r}: checkpoint has {key}={ckpt[key]!r}, "
                                 f"the command line {getattr(self.args, key)!r}")
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]

    # ---- one step ----
    def _normalize(self, x):
        return (x.to(self.dist.device, non_blocking=True) - self.mean) / self.std

    def _losses(self, batch):
        args = self.args
        frame, labels = self._normalize(batch["frame"]), batch["label"].to(self.dist.device)
        if args.stage == "hr":
            seg = F.cross_entropy(self.model(frame), labels, ignore_index=IGNORE_INDEX)
            return {"loss": seg, "seg_loss": seg.detach()}
        if args.stage == "lr":
            small = resize_ac(frame, lr_size(frame.shape[-2:], args.scale))
            seg = F.cross_entropy(self.model(small, out_size=tuple(labels.shape[-2:])), labels,
                                  ignore_index=IGNORE_INDEX)
            return {"loss": seg, "seg_loss": seg.detach()}
        if self.epoch < args.no_fusion_epochs:  # the release's first phase: LR network alone, FST on its feature
            with torch.no_grad():
                target = self.teacher.features(frame)
            small = resize_ac(frame, lr_size(frame.shape[-2:], args.scale))
            out, feat = self.model(small, out_size=tuple(labels.shape[-2:]), return_feature=True)
            seg = F.cross_entropy(out, labels, ignore_index=IGNORE_INDEX)
            fst = fst_loss(resize_ac(feat, target.shape[-2:]), target)
            return {"loss": seg + args.fst_weight * fst, "seg_loss": seg.detach(), "fst_loss": fst.detach()}
        key = self._normalize(batch["key"])
        motion = batch["motion"].to(self.dist.device)
        return lr_training_step(self.model, self.teacher, frame, labels, key_image=key, mv_to_key=motion,
                                scale=args.scale, fst_weight=args.fst_weight)

    def _train_step(self, batch):
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.dist.device.type == "cuda" and not
               self.args.no_amp else nullcontext())
        with amp:
            losses = self._losses(batch)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"loss is {float(losses['loss'])} at step {self.step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    # ---- epochs ----
    def train(self):
        from tqdm import tqdm

        args = self.args
        metrics_path = self.out / "metrics.jsonl"
        self.started, self.first_step, self.last_record = time.perf_counter(), self.step, None
        while self.epoch < args.epochs and self.step < self.total_steps:
            self.net.train()
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            self.dataset.epoch = self.epoch
            names = ("loss", "seg_loss", "fst_loss")
            sums, images, start = [0.0] * len(names), 0, time.perf_counter()
            bar = tqdm(total=len(self.loader), desc=f"{args.stage} epoch {self.epoch + 1}/{args.epochs}",
                       disable=not self.dist.main or args.quiet, unit="batch", dynamic_ncols=True)
            for batch in self.loader:
                losses = self._train_step(batch)
                n = batch["frame"].shape[0]
                images += n
                sums = [s + losses.get(k, 0.0) * n for s, k in zip(sums, names)]
                rate = images * self.dist.world / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{losses['loss']:.4f}", img_s=f"{rate:.2f}")
                bar.update(1)
                if self.step >= self.total_steps:
                    break
            bar.close()
            seconds = time.perf_counter() - start
            totals = self.dist.sum(sums + [images])
            record = {"epoch": self.epoch + 1, "step": self.step, "stage": args.stage, "images": int(totals[-1]),
                      "seconds": round(seconds, 3), "images_per_s": round(totals[-1] / max(seconds, 1e-9), 3),
                      "lr": self.scheduler.get_last_lr()[0]}
            record.update({k: totals[i] / max(totals[-1], 1) for i, k in enumerate(names)
                           if k != "fst_loss" or args.stage == "ar"})
            self.epoch += 1
            self.last_record = record
            if self.dist.main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                nets.save_checkpoint(self.out / "last.pt", self.state())
            self.dist.barrier()
        return self.out / "last.pt"

    def summary(self, path):
        """One line after train(): steps, the last epoch's mean losses, why it stopped, the checkpoint."""
        args, record = self.args, self.last_record
        if record is None:
            return (f"arseg train: nothing to train: {path} is at step {self.step} of {self.total_steps} "
                    f"(epoch {self.epoch} of {args.epochs})")
        planned = args.epochs * len(self.loader)
        losses = ", ".join(f"{k.replace('_loss', '')} {record[k]:.4f}" for k in ("seg_loss", "fst_loss") if k in record)
        line = (f"arseg train: stage {args.stage}, {self.step - self.first_step} steps in "
                f"{time.perf_counter() - self.started:.1f} s (step {self.step}, epoch {self.epoch}), last epoch's "
                f"mean loss {record['loss']:.4f}" + (f" ({losses})" if args.stage == "ar" else ""))
        if args.max_steps and self.step >= args.max_steps and args.max_steps < planned:
            line += (f"; stopped at --max-steps {args.max_steps} (--epochs {args.epochs} would be {planned} "
                     f"steps)")
        return line + f"; checkpoint {path}"


def run(args, report=print):
    """Train as the parsed arguments say; returns the last checkpoint's path and passes the summary line to
    `report` (rank 0; None: no summary). Cleans up the process group."""
    trainer = Trainer(args)
    try:
        path = trainer.train()
        if report is not None and trainer.dist.main:
            report(trainer.summary(path))
        return path
    finally:
        if trainer.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
