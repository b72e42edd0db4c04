"""Frames and codec motion vectors from H.264 video, accumulated back to each GOP's keyframe.

    from arseg_ops import video
    with video.open("clip.mp4", block_size=4) as clip:
        for fr in clip:
            fr.image       # torch.uint8 (H, W, 3) RGB
            fr.mv_to_key   # torch.float32 (2, ceil(H/bs), ceil(W/bs)): pixel p came from p + mv_to_key in the keyframe
    video.encode("any_input.mkv", "ar_friendly.mp4", gop=12)   # fixed GOP, no B-frames, one reference frame

Motion comes from FFmpeg's decoder (PyAV, codec option flags2=+export_mvs), so it costs no optical flow.
Vectors are in the "pull" convention of arseg_ops.mv_warp: warping the keyframe with
`arseg_ops.mv_warp(key_image, fr.mv_to_key[None])` predicts the current frame. mv_warp maps pixel (y, x) to
cell (floor(y*Hb/H), floor(x*Wb/W)), which is cell (y//bs, x//bs) exactly when H and W are multiples of
block_size. Otherwise expand the field to pixels first:
`fr.mv_to_key.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :H, :W]`.
"""
import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from . import _h264, _motion

__all__ = ["open", "encode", "Clip", "Frame"]

_PICT_TYPES = {1: "I", 2: "P", 3: "B", 5: "I", 6: "P", 7: "B"}  # AVPictureType: I, P, B, SI, SP, BI


def _transcode_hint(path):
    return (f"transcode it first, e.g. arseg_ops.video.encode({str(path)!r}, 'clip_h264.mp4', gop=12) "
            "(fixed GOP, no B-frames, one reference frame)")


def _open_input(path):
    """av.open for reading, with FFmpeg's errors as ValueErrors that name the file (not "[Errno 1094995529]")."""
    try:
        return av.open(str(path))
    except av.error.InvalidDataError as e:
        raise ValueError(f"{str(path)!r}: not a video file (FFmpeg: invalid data)") from e
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read {str(path)!r} as a video: {getattr(e, 'strerror', None) or e}") from e


@dataclass
class Frame:
    """One decoded frame. `mv` points into the previous frame, `mv_to_key` into frame `key_index`."""

    index: int
    pict_type: str
    is_keyframe: bool
    key_index: int
    image: torch.Tensor
    mv: torch.Tensor
    mv_to_key: torch.Tensor


class Clip:
    """An opened video: width, height, fps, frame_count (None if the container does not say) and the frames.

    Iterate once (frames are decoded on the fly); use as a context manager or call close().
    """

    def __init__(self, path, *, block_size=4, fill_intra=True, strict=False):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.path = Path(os.fspath(path))
        if not self.path.exists():
            raise FileNotFoundError(f"video file not found: {str(self.path)!r}")
        self.block_size = block_size
        self.fill_intra = bool(fill_intra)
        self.strict = bool(strict)
        self._warned = set()
        self._iterated = False
        self._container = _open_input(self.path)
        try:
            self._setup_stream()
            self._check_header()
        except Exception:
            self._container.close()
            raise

    def _setup_stream(self):
        if not self._container.streams.video:
            raise ValueError(f"{str(self.path)!r} has no video stream")
        stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if ctx.name != "h264":
            raise ValueError(
                f"{str(self.path)!r} is {ctx.name} video, whose decoder exports no motion vectors usable here: "
                f"H.264 is needed; {_transcode_hint(self.path)}")
        ctx.options = {"flags2": "+export_mvs"}
        ctx.thread_count = 1  # one core per clip: parallelism belongs to the caller (one clip per worker)
        self._stream = stream
        self.width, self.height = ctx.width, ctx.height
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{str(self.path)!r}: video stream has no frame size (corrupt header?)")
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.frame_count = int(stream.frames) if stream.frames else None
        self._sps = _h264.sps_from_extradata(ctx.extradata)

    # ---- stream checks ----

    def _warn_once(self, cause, message, stacklevel):
        if self.strict:
            raise ValueError(f"{str(self.path)!r}: {message} (strict=True)")
        if cause not in self._warned:
            self._warned.add(cause)
            warnings.warn(f"{str(self.path)!r}: {message}", RuntimeWarning, stacklevel=stacklevel)

    # stacklevel: _warn_once <- the check <- _frames (a generator) <- the caller's loop, or
    # _warn_once <- the check <- _check_header <- Clip.__init__ <- open <- the caller of open
    _IN_LOOP, _AT_OPEN = 4, 6

    def _check_header(self):
        """Check what the container's header already says, so strict=True fails at open. Streams that carry their
        SPS in-band only (raw Annex B without extradata) are checked again at the first keyframe (_frames)."""
        self._check_references(self._sps, self._AT_OPEN)
        # has_b_frames is the decoder's reordering delay: from the SPS (VUI max_num_reorder_frames) or from the
        # reordering FFmpeg saw while probing. Frames shown out of decoding order break the chain to the
        # previous frame just as B-frames do; B-frames seen later are caught per frame.
        if self._stream.codec_context.has_b_frames:
            self._warn_b_frames(self._AT_OPEN)

    def _check_references(self, sps, stacklevel):
        if sps is not None and sps.max_num_ref_frames > 1:
            self._warn_once("refs", (
                f"H.264 stream allows {sps.max_num_ref_frames} reference frames (SPS max_num_ref_frames); motion "
                "vectors may point past the previous frame, so motion accumulated to the keyframe is "
                f"unreliable; {_transcode_hint(self.path)}"), stacklevel)

    def _warn_b_frames(self, stacklevel):
        self._warn_once("bframes", (
            "H.264 stream has B-frames: their vectors may point to frames other than the previous one, so motion "
            f"accumulated to the keyframe is unreliable; {_transcode_hint(self.path)}"), stacklevel)

    # ---- iteration ----

    def __iter__(self):
        if self._iterated:
            raise RuntimeError("a Clip can be iterated only once; open the file again")
        self._iterated = True
        return self._frames()

    def _packets(self):
        """Demuxed packets from the first keyframe on (earlier ones cannot be decoded against a keyframe)."""
        started = False
        for packet in self._container.demux(self._stream):
            if packet.size == 0 and packet.dts is None:
                yield packet  # the flush packet at the end
                continue
            if not started:
                if not packet.is_keyframe:
                    self._skipped_before_key += 1
                    continue
                started = True
                if self._sps is None:  # raw streams may carry the SPS in-band only
                    self._sps = _h264.sps_from_extradata(bytes(packet))
            yield packet

    def _frames(self):
        self._skipped_before_key = 0
        bs = self.block_size
        index = 0
        key_index = None
        to_key = None
        try:
            for packet in self._packets():
                for av_frame in self._stream.codec_context.decode(packet):
                    pict = _PICT_TYPES.get(int(av_frame.pict_type), "P")
                    is_key = pict == "I" or bool(av_frame.key_frame)
                    if key_index is None and not is_key:
                        self._skipped_before_key += 1
                        continue
                    if key_index is None:
                        self._check_references(self._sps, self._IN_LOOP)
                    if self._skipped_before_key and key_index is None:
                        warnings.warn(
                            f"{str(self.path)!r} does not start with a keyframe: skipped "
                            f"{self._skipped_before_key} packet(s)/frame(s) before the first one",
                            RuntimeWarning, stacklevel=2)
                    if pict == "B":
                        self._warn_b_frames(self._IN_LOOP)
                    # threads=1: swscale would otherwise start a thread per core for every frame
                    image = torch.from_numpy(av_frame.to_ndarray(format="rgb24", threads=1))
                    if is_key:
                        key_index = index
                        mv = torch.zeros(2, -(-self.height // bs), -(-self.width // bs))
                        to_key = mv.clone()
                    else:
                        mv = self._motion(av_frame)
                        to_key = _motion.accumulate(to_key, mv, bs)
                    yield Frame(index, pict, is_key, key_index, image, mv, to_key)
                    index += 1
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot decode {str(self.path)!r} (corrupt data?): {e}") from e
        if key_index is None and self._skipped_before_key:
            warnings.warn(f"{str(self.path)!r}: no keyframe found; all {self._skipped_before_key} "
                          "packet(s) skipped", RuntimeWarning, stacklevel=2)

    def _motion(self, av_frame):
        side = av_frame.side_data.get("MOTION_VECTORS")
        vectors = side.to_ndarray() if side is not None else None
        field, known = _motion.rasterize(vectors, self.height, self.width, self.block_size)
        if self.fill_intra:  # otherwise intra cells keep the 0 that rasterize leaves there
            _motion.fill_holes(field, known)
        return torch.from_numpy(field)

    # ---- lifetime ----

    def close(self):
        self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (f"Clip({str(self.path)!r}, {self.width}x{self.height}, fps={self.fps}, "
                f"frame_count={self.frame_count}, block_size={self.block_size})")


def open(path, *, block_size=4, fill_intra=True, strict=False):  # noqa: A001 (mirrors builtins.open on purpose)
    """Open an H.264 video for frames + motion vectors. See the module docstring; returns a `Clip`.

    block_size: cell size of the motion grid in pixels. fill_intra: fill intra-coded cells (no vector) from
    their neighbours instead of leaving them 0. strict: raise ValueError instead of warning when the stream has
    B-frames or several reference frames (motion to the keyframe would be unreliable): here, when the container
    header says so (SPS max_num_ref_frames, the decoder's frame reordering), otherwise at the first frame that
    shows it (an SPS sent in-band only, B-frames the header did not announce).
    Raises FileNotFoundError for a missing file and ValueError for data that is not (H.264) video.
    """
    return Clip(path, block_size=block_size, fill_intra=fill_intra, strict=strict)


# ---- encoding ----


def _frames_from_iterable(frames):
    for i, frame in enumerate(frames):
        array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"frames_or_path: frame {i} must be uint8 RGB of shape (H, W, 3), "
                             f"got {array.dtype} {tuple(array.shape)}")
        yield av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")


def encode(frames_or_path, dst, *, gop=12, crf=23, bitrate=None, preset="medium", fps=None):
    """Write AR-friendly H.264 (libx264): keyframe every `gop` frames exactly, no B-frames, one reference frame.

    frames_or_path: an iterable of RGB uint8 (H, W, 3) numpy arrays / tensors, or the path of any video PyAV
    can read (its first video stream is transcoded). fps: frame rate of the output (default: the source's, or
    25 for frames). Quality: constant `crf`, or an average `bitrate` in bit/s when given. The container follows
    dst's extension (.mp4, .mkv, ...). Width and height must be even (4:2:0 chroma). Returns the number of frames
    written. A tqdm progress bar is shown when the frame count is known and stderr is a terminal.
    """
    if isinstance(gop, bool) or not isinstance(gop, int) or gop < 1:
        raise ValueError(f"gop must be a positive int, got {gop!r}")
    if bitrate is not None and (not isinstance(bitrate, (int, float)) or bitrate <= 0):
        raise ValueError(f"bitrate must be a positive number of bit/s or None, got {bitrate!r}")
    with contextlib.ExitStack() as stack:
        total = None
        if isinstance(frames_or_path, (str, os.PathLike)):
            src_path = Path(os.fspath(frames_or_path))
            if not src_path.exists():
                raise FileNotFoundError(f"video file not found: {str(src_path)!r}")
            src = stack.enter_context(_open_input(src_path))
            if not src.streams.video:
                raise ValueError(f"{str(src_path)!r} has no video stream")
            in_stream = src.streams.video[0]
            total = in_stream.frames or None
            fps = fps or in_stream.average_rate or in_stream.guessed_rate or 25
            source = src.decode(in_stream)
        else:
            total = len(frames_or_path) if hasattr(frames_or_path, "__len__") else None
            fps = fps or 25
            source = _frames_from_iterable(frames_or_path)
        rate = Fraction(fps).limit_denominator(100000)
        out = stack.enter_context(av.open(os.fspath(dst), "w"))
        stream = None
        from tqdm import tqdm

        bar = stack.enter_context(tqdm(total=total, disable=total is None or not sys.stderr.isatty(),
                                       unit="frame", desc="encode"))
        count = 0
        for frame in source:
            if stream is None:
                stream = _add_h264_stream(out, frame.width, frame.height, rate, gop, crf, bitrate, preset)
            frame = frame.reformat(format="yuv420p")
            frame.pict_type = 0  # AV_PICTURE_TYPE_NONE: a decoded source I-frame would force a keyframe
            frame.pts, frame.time_base = count, 1 / rate
            out.mux(stream.encode(frame))
            count += 1
            bar.update(1)
        if stream is None:
            raise ValueError("frames_or_path: no frames to encode")
        out.mux(stream.encode(None))
    return count


def _add_h264_stream(out, width, height, rate, gop, crf, bitrate, preset):
    if width % 2 or height % 2:
        raise ValueError(f"frames_or_path: H.264 4:2:0 needs even width and height, got {width}x{height}")
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / rate
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:ref=1"
    options = {"x264-params": params, "preset": str(preset)}
    if bitrate is None:
        options["crf"] = str(crf)
    else:
        stream.bit_rate = int(bitrate)
    stream.options = options
    return stream
