"""Training/evaluation pairs (keyframe t-d, labelled frame t, motion t -> t-d, label) from labelled videos.

Motion comes from the H.264 stream, so the keyframe must be where the encoder put it: for every labelled frame t
the frames max(0, t-L+1) .. t of the source are re-encoded with arseg_ops.video.encode as one AR-friendly clip
(I-frame first, then P-frames with one reference frame and no B-frames; the source's own GOP structure does not
matter, as in the authors' release), decoded with arseg_ops.video, and the per-frame vectors are chained into
motion[d] = t -> t-d for every d (arseg_ops._motion.accumulate). Clip and motion are cached on disk under a key
of the source (absolute path, size, mtime), the frame, L and the encoder/block settings: the cache survives
restarts and a changed video or setting gets a new entry.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import av
import numpy as np
import torch

from .. import _motion, video
from .augment import dense_motion, random_augment
from .manifest import IGNORE_INDEX
from .png import read_label_png

CACHE_VERSION = 1


class ClipCache:
    """On-disk cache of (re-encoded clip, chained motion) per labelled frame. length = L (GOP length)."""

    def __init__(self, cache_dir, *, length=12, block_size=4, crf=18, preset="veryfast", memory_mb=1024):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.dir = Path(os.fspath(cache_dir))
        self.settings = {"length": length, "block_size": int(block_size), "crf": int(crf), "preset": str(preset),
                         "version": CACHE_VERSION}
        self.length, self.block_size = length, int(block_size)
        # Decoded entries kept in memory (least recently used dropped first) up to memory_mb: a small dataset
        # is then decoded once per process instead of once per sample.
        self._memory, self._memory_budget, self._memory_used = OrderedDict(), int(memory_mb) << 20, 0

    def _key(self, video_path, frame):
        path = Path(video_path)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {str(path)!r}")
        st = path.stat()
        ident = {"video": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame": int(frame),
                 **self.settings}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    def entry_dir(self, video_path, frame):
        return self.dir / self._key(video_path, frame)

    def prepare(self, rows, progress=True):
        """Build the missing entries, decoding each source video once. progress: one tqdm bar over all missing
        entries (on a terminal)."""
        from tqdm import tqdm

        by_video = {}
        for row in rows:
            if not (self.entry_dir(row.video, row.frame) / "motion.pt").is_file():
                by_video.setdefault(row.video, set()).add(row.frame)
        missing = sum(len(frames) for frames in by_video.values())
        with tqdm(total=missing, desc="motion cache", unit="clip", dynamic_ncols=True,
                  disable=not (progress and missing and sys.stderr.isatty())) as bar:
            for path, frames in by_video.items():
                self._build(path, sorted(frames), bar.update)

    def load(self, video_path, frame):
        """(frames uint8 (n, H, W, 3) for t-n+1 .. t, motion float (n, 2, Hb, Wb) with motion[d] = t -> t-d)."""
        entry = self.entry_dir(video_path, frame)
        if entry in self._memory:
            self._memory.move_to_end(entry)
            return self._memory[entry]
        if not (entry / "motion.pt").is_file():
            self._build(video_path, [frame])
        motion = torch.load(entry / "motion.pt", weights_only=True)
        with av.open(str(entry / "clip.mp4")) as container:  # frames only: the motion is already in motion.pt
            frames = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24"))
                                  for f in container.decode(video=0)])
        size = frames.numel() + motion.numel() * 4
        if size <= self._memory_budget:
            self._memory[entry] = (frames, motion)
            self._memory_used += size
            while self._memory_used > self._memory_budget:
                old_frames, old_motion = self._memory.popitem(last=False)[1]
                self._memory_used -= old_frames.numel() + old_motion.numel() * 4
        return frames, motion

    def _build(self, video_path, frames, built=lambda n: None):
        wanted = {}  # source frame index -> labelled frames that need it
        for t in frames:
            for i in range(max(0, t - self.length + 1), t + 1):
                wanted.setdefault(i, []).append(t)
        held, last, i = {}, max(frames), -1
        try:
            container = av.open(str(video_path))
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot read {str(video_path)!r} as a video: {e}") from e
        with container:
            if not container.streams.video:
                raise ValueError(f"{str(video_path)!r} has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    held[i] = frame.to_ndarray(format="rgb24")
                if i in frames:
                    start = max(0, i - self.length + 1)
                    self._write_entry(video_path, i, [held[j] for j in range(start, i + 1)])
                    built(1)
                    for j in range(start, i + 1):  # frees frames no later labelled frame needs
                        if all(t <= i for t in wanted[j]):
                            held.pop(j, None)
                if i >= last:
                    return
        raise ValueError(f"{str(video_path)!r} has {i + 1} frames; the manifest asks for "
                         f"frame {last} (frames are counted from 0 in decode order)")

    def _write_entry(self, video_path, frame, images):
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
        try:
            # a generator, not the list: encode then shows no bar of its own (prepare's one bar counts entries)
            video.encode(iter(images), tmp / "clip.mp4", gop=self.length, crf=self.settings["crf"],
                         preset=self.settings["preset"])
            with video.open(tmp / "clip.mp4", block_size=self.block_size, strict=True) as clip:
                per_frame = [fr.mv for fr in clip]
            n, bs = len(per_frame), self.block_size
            motion = torch.zeros((n,) + tuple(per_frame[0].shape))
            for d in range(1, n):  # chain frame t-d+1 .. t onto frame t-d
                to_key = torch.zeros_like(motion[0])
                for k in range(n - d, n):
                    to_key = _motion.accumulate(to_key, per_frame[k], bs)
                motion[d] = to_key
            torch.save(motion, tmp / "motion.pt")
            final = self.entry_dir(video_path, frame)
            try:
                os.replace(tmp, final)  # atomic: concurrent builders (DDP ranks) cannot leave half an entry
            except OSError:
                if not (final / "motion.pt").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


class FramePairDataset(torch.utils.data.Dataset):
    """Items: {"key", "frame": float (3, H, W) in [0, 1], "label": int64 (H, W), "motion": (2, H, W) pixel
    motion frame -> key, "distance": int}. d is drawn uniformly from 0..min(L-1, t) unless `distance` is fixed.

    class_map: optional uint8[256] lookup applied to label PNG values (e.g. manifest.camvid_class_map()); after
    it every value must be < num_classes or 255 (void), else ValueError naming the file.
    augment: None, or keyword arguments of augment.random_augment (scale_range, crop_size, flip).
    """

    def __init__(self, rows, cache, num_classes, *, class_map=None, distance=None, augment=None, seed=0):
        self.rows, self.cache, self.num_classes = list(rows), cache, int(num_classes)
        self.class_map = None if class_map is None else np.asarray(class_map, np.uint8)
        if distance is not None and not 0 <= distance < cache.length:
            raise ValueError(f"distance must be in 0..{cache.length - 1}, got {distance!r}")
        self.distance, self.augment, self.seed = distance, augment, int(seed)
        self.epoch = 0  # set by the training loop: together with seed and index it fixes d and the augmentation
        self._labels = {}

    def __len__(self):
        return len(self.rows)

    def label(self, i):
        row = self.rows[i]
        if row.label not in self._labels:
            label = read_label_png(row.label)
            if self.class_map is not None:
                label = self.class_map[label]
            bad = np.unique(label[(label >= self.num_classes) & (label != IGNORE_INDEX)])
            if bad.size:
                raise ValueError(f"{row.label!r}: unknown class ids {bad[:10].tolist()} (expected 0.."
                                 f"{self.num_classes - 1} or {IGNORE_INDEX} for void)")
            self._labels[row.label] = torch.from_numpy(label.astype(np.int64))
        return self._labels[row.label]

    def clip(self, i):
        """(frames uint8 (n, H, W, 3) for t-n+1..t, block motion (n, 2, Hb, Wb) with [d] = t -> t-d, label)."""
        row = self.rows[i]
        frames, motion = self.cache.load(row.video, row.frame)
        label = self.label(i)
        h, w = frames.shape[1:3]
        if tuple(label.shape) != (h, w):
            raise ValueError(f"{row.label!r}: label is {label.shape[1]}x{label.shape[0]} (WxH) but video "
                             f"{row.video!r} is {w}x{h}")
        return frames, motion, label

    def pair(self, i, d, *, generator=None):
        """The sample of row i at keyframe distance d (clamped to the frames before t); augmented (when the
        dataset has augmentation) with the random numbers of `generator`, if given."""
        frames, motion, label = self.clip(i)
        h, w = frames.shape[1:3]
        d = min(int(d), frames.shape[0] - 1)
        to_float = lambda x: x.permute(2, 0, 1).float() / 255.0  # noqa: E731
        sample = {"key": to_float(frames[-1 - d]), "frame": to_float(frames[-1]), "label": label,
                  "motion": dense_motion(motion[d], self.cache.block_size, (h, w))}
        if generator is not None and self.augment is not None:
            sample = random_augment(sample, generator, **self.augment)
        sample["distance"] = d
        return sample

    def __getitem__(self, i):
        # A generator per (seed, epoch, item): identical in every DataLoader worker and DDP rank layout.
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        d = self.distance
        if d is None:
            d = int(torch.randint(0, self.cache.length, (), generator=generator))
        return self.pair(i, d, generator=generator)
