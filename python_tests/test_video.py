"""arseg_ops.video: decoding, motion-vector rasterization, accumulation to the keyframe, encoding, bad input.

Clips are synthesized here: a band-limited texture (sum of random sinusoids, so a sub-pixel shift is exact)
panning at VELOCITY px/frame, plus a square with its own texture moving at OBJECT_VELOCITY. In the pull
convention the true displacement to the keyframe of a background pixel at distance d is -d * VELOCITY.
"""
import warnings

import av
import numpy as np
import pytest
import torch

import arseg_ops
from arseg_ops import _h264, _motion, video

HEIGHT, WIDTH, FRAMES, GOP = 144, 192, 30, 12
VELOCITY = (1.25, 0.5)  # background (dx, dy) per frame
OBJECT_VELOCITY = (-2.0, 1.5)
OBJECT_SIZE = 32


def _texture(x, y, rng, waves=12):
    img = np.zeros(x.shape + (3,))
    for c in range(3):
        for _ in range(waves):
            f, theta, phase = rng.uniform(0.03, 0.15), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * f * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    return 127 + 90 * img * (2.5 / waves)


def synthetic_frames(height=HEIGHT, width=WIDTH, frames=FRAMES, seed=0):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for t in range(frames):
        bg = _texture(x - VELOCITY[0] * t, y - VELOCITY[1] * t, np.random.default_rng(seed))
        ox, oy = 100 + OBJECT_VELOCITY[0] * t, 30 + OBJECT_VELOCITY[1] * t
        inside = (x >= ox) & (x < ox + OBJECT_SIZE) & (y >= oy) & (y < oy + OBJECT_SIZE)
        obj = _texture(x - ox, y - oy, np.random.default_rng(seed + 1))
        out.append(np.clip(np.where(inside[..., None], obj, bg), 0, 255).astype(np.uint8))
    return out


def write_clip(path, frames, codec="libx264", options=None, fps=25):
    """Encode frames with any PyAV encoder and options (for the streams video.encode refuses to make)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = options or {}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory, frames):
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    assert video.encode(frames, path, gop=GOP, crf=18) == FRAMES
    return path


@pytest.fixture(scope="module")
def decoded(clip_path):
    with video.open(clip_path) as clip:
        return clip, list(clip)


def interior(field, margin=5):
    return field[:, margin:-margin, margin:-margin]


# ---- decoding and shapes ----


def test_gop_structure_and_metadata(decoded):
    clip, frs = decoded
    assert (clip.width, clip.height, clip.fps, clip.frame_count) == (WIDTH, HEIGHT, 25.0, FRAMES)
    assert [fr.index for fr in frs] == list(range(FRAMES))
    assert [fr.pict_type for fr in frs] == ["I" if i % GOP == 0 else "P" for i in range(FRAMES)]
    assert [fr.is_keyframe for fr in frs] == [i % GOP == 0 for i in range(FRAMES)]
    assert [fr.key_index for fr in frs] == [i - i % GOP for i in range(FRAMES)]


def test_shapes_dtypes_and_images(decoded, frames):
    _, frs = decoded
    for fr in frs:
        assert fr.image.dtype == torch.uint8 and fr.image.shape == (HEIGHT, WIDTH, 3)
        for field in (fr.mv, fr.mv_to_key):
            assert field.dtype == torch.float32 and field.shape == (2, HEIGHT // 4, WIDTH // 4)
        if fr.is_keyframe:
            assert not fr.mv.any() and not fr.mv_to_key.any()
    # Content and RGB order: compared at the 2x2 chroma resolution of 4:2:0 (the texture has fine colour detail).
    def pooled(img):
        return img.float().reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean((1, 3))

    decoded_img, source = pooled(frs[5].image), pooled(torch.from_numpy(frames[5]))
    assert (decoded_img - source).abs().mean() < 5.0
    assert (decoded_img.flip(-1) - source).abs().mean() > 15.0


@pytest.mark.parametrize("distance", [1, 5, 11])
def test_mv_to_key_matches_true_displacement(decoded, distance):
    _, frs = decoded
    for key in (0, GOP):
        fr = frs[key + distance]
        assert fr.key_index == key
        median = interior(fr.mv_to_key).flatten(1).median(dim=1).values
        truth = torch.tensor([-distance * VELOCITY[0], -distance * VELOCITY[1]])
        assert (median - truth).abs().max() <= 0.35, (distance, median, truth)


def test_per_frame_mv_is_one_step(decoded):
    _, frs = decoded
    median = interior(frs[3].mv).flatten(1).median(dim=1).values
    assert torch.allclose(median, -torch.tensor(VELOCITY), atol=0.3)


def _psnr(a, b, margin=16):
    a, b = a[..., margin:-margin, margin:-margin], b[..., margin:-margin, margin:-margin]
    return 10 * torch.log10(255.0**2 / ((a - b) ** 2).mean())


def test_warped_keyframe_predicts_frame(decoded):
    _, frs = decoded
    key = frs[0].image.permute(2, 0, 1)[None].float()
    fr = frs[8]
    target = fr.image.permute(2, 0, 1)[None].float()
    warped = arseg_ops.mv_warp(key, fr.mv_to_key[None])  # 144x192 is a multiple of block_size: cell = y//4, x//4
    gain = _psnr(warped, target) - _psnr(key, target)
    assert gain > 5.0, float(gain)


def test_block_size_and_odd_multiples(tmp_path, frames):
    # 142x190 is not a multiple of 4 (cells cover a partial last row/column) and block_size 8 merges cells.
    small = [f[:142, :190].copy() for f in frames[:4]]
    path = tmp_path / "odd.mp4"
    video.encode(small, path, gop=GOP)
    for bs, shape in ((4, (2, 36, 48)), (8, (2, 18, 24)), (3, (2, 48, 64))):
        with video.open(path, block_size=bs) as clip:
            frs = list(clip)
        assert [fr.mv.shape for fr in frs] == [shape] * 4
        median = interior(frs[3].mv_to_key, 2).flatten(1).median(dim=1).values
        assert torch.allclose(median, -3 * torch.tensor(VELOCITY), atol=0.35)


# ---- rasterization, intra fill and accumulation against independent computations ----

MV_DTYPE = np.dtype([("source", "<i4"), ("w", "u1"), ("h", "u1"), ("src_x", "<i2"), ("src_y", "<i2"),
                     ("dst_x", "<i2"), ("dst_y", "<i2"), ("flags", "<u8"), ("motion_x", "<i4"),
                     ("motion_y", "<i4"), ("motion_scale", "<u2")])


def _vectors(rows):
    """rows of (source, x0, y0, w, h, motion_x, motion_y) with quarter-pel motion -> AVMotionVector records."""
    out = np.zeros(len(rows), MV_DTYPE)
    for k, (source, x0, y0, w, h, mx, my) in enumerate(rows):
        out[k] = (source, w, h, 0, 0, x0 + w // 2, y0 + h // 2, 0, mx, my, 4)
    return out


def test_rasterize_blocks_sources_and_holes():
    # 32x24 image: a 16x16 block, a 16x8 and an 8x16 partition, two 8x8 blocks, a future (B) vector, a hole.
    vectors = _vectors([
        (-1, 0, 0, 16, 16, 5, -2),
        (-1, 16, 0, 16, 8, 8, 0), (-1, 16, 8, 16, 8, -4, 4),
        (-1, 0, 16, 8, 8, 1, 1),
        (1, 8, 16, 8, 8, 40, 40),  # points to the future: ignored, so this 8x8 is a hole
        (-1, 16, 16, 8, 8, 2, 6),
        # 24..32 x 16..24 has no vector (intra)
    ])
    field, known = _motion.rasterize(vectors, 24, 32, 4)
    assert field.shape == (2, 6, 8) and field.dtype == np.float32
    expected = np.zeros((2, 6, 8), np.float32)
    expected[:, 0:4, 0:4] = np.array([1.25, -0.5])[:, None, None]
    expected[:, 0:2, 4:8] = np.array([2.0, 0.0])[:, None, None]
    expected[:, 2:4, 4:8] = np.array([-1.0, 1.0])[:, None, None]
    expected[:, 4:6, 0:2] = np.array([0.25, 0.25])[:, None, None]
    expected[:, 4:6, 4:6] = np.array([0.5, 1.5])[:, None, None]
    np.testing.assert_array_equal(field, expected)
    holes = np.zeros((6, 8), bool)
    holes[4:6, 2:4] = holes[4:6, 6:8] = True
    np.testing.assert_array_equal(known, ~holes)

    filled = _motion.fill_holes(field.copy(), known)
    np.testing.assert_array_equal(filled[:, ~holes], expected[:, ~holes])
    # first pass: cells with known 4-neighbours take their mean, e.g. (4, 2) has (3, 2) above and (4, 1) left
    np.testing.assert_allclose(filled[:, 4, 2], (expected[:, 3, 2] + expected[:, 4, 1]) / 2)
    # (5, 7) has no known neighbour at first; second pass: the mean of (4, 7) and (5, 6) filled in pass one
    # (which took (3, 7) and (5, 5) respectively)
    np.testing.assert_allclose(filled[:, 5, 7], (expected[:, 3, 7] + expected[:, 5, 5]) / 2, rtol=1e-6)


def test_rasterize_block_size_8_and_overlap_mean():
    # overlapping blocks (not produced by H.264) take the general path: the mean over the vectors
    vectors = _vectors([(-1, 0, 0, 16, 16, 4, 8), (-1, 0, 0, 8, 8, 8, 0)])
    field, known = _motion.rasterize(vectors, 16, 16, 8)
    assert known.all()
    np.testing.assert_allclose(field[:, 0, 0], [1.5, 1.0])
    np.testing.assert_allclose(field[:, 1, 1], [1.0, 2.0])
    # a block not aligned to its size (also general path) still lands on its 4x4 units
    field, known = _motion.rasterize(_vectors([(-1, 4, 8, 8, 8, -4, 12)]), 16, 16, 4)
    np.testing.assert_array_equal(known, np.pad(np.ones((2, 2), bool), ((2, 0), (1, 1))))
    np.testing.assert_array_equal(field[:, 2, 1], [-1.0, 3.0])


def test_aligned_fast_path_matches_general_path(clip_path):
    with av.open(str(clip_path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        side = [f.side_data.get("MOTION_VECTORS") for f in c.decode(stream)]
    checked = 0
    for vectors in (s.to_ndarray() for s in side if s is not None):
        w, h = vectors["w"].astype(np.int64), vectors["h"].astype(np.int64)
        blocks = (w, h, vectors["dst_x"] - w // 2, vectors["dst_y"] - h // 2,
                  vectors["motion_x"] / 4.0, vectors["motion_y"] / 4.0, HEIGHT // 4, WIDTH // 4)
        fast = _motion._paint_aligned(*blocks)
        general = _motion._average_blocks(*blocks)
        assert fast is not None
        np.testing.assert_array_equal(fast[0], general[0])
        np.testing.assert_array_equal(fast[1], general[1])
        checked += 1
    assert checked == FRAMES - 3  # every P-frame


def _accumulate_reference(prev, mv, bs):
    """Per-cell loop: bilinear sampling of prev at the cell coordinates of p + mv, clamped to the grid."""
    _, h, w = mv.shape
    out = np.empty_like(mv)
    for i in range(h):
        for j in range(w):
            x = min(max(j + mv[0, i, j] / bs, 0.0), w - 1)
            y = min(max(i + mv[1, i, j] / bs, 0.0), h - 1)
            x0, y0 = max(min(int(np.floor(x)), w - 2), 0), max(min(int(np.floor(y)), h - 2), 0)
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            fx, fy = x - x0, y - y0
            sample = ((1 - fy) * ((1 - fx) * prev[:, y0, x0] + fx * prev[:, y0, x1])
                      + fy * ((1 - fx) * prev[:, y1, x0] + fx * prev[:, y1, x1]))
            out[:, i, j] = mv[:, i, j] + sample
    return out


@pytest.mark.parametrize("bs, shape", [(4, (9, 13)), (3, (9, 13)), (4, (1, 6))])
def test_accumulate_matches_per_cell_bilinear(bs, shape):
    gen = torch.Generator().manual_seed(3)
    prev = torch.randn(2, *shape, generator=gen) * 5
    mv = torch.randn(2, *shape, generator=gen) * 3 * bs  # reaches past the borders: exercises the clamp
    got = _motion.accumulate(prev, mv, bs)
    expected = _accumulate_reference(prev.double().numpy(), mv.double().numpy(), bs)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    # the same sampling is arseg_ops.mv_warp on the cell grid
    op = mv + arseg_ops.mv_warp(prev[None], mv[None], scale=1.0 / bs, padding_mode="border")[0]
    np.testing.assert_allclose(got.numpy(), op.numpy(), atol=1e-4)


def test_fill_intra_false_leaves_zeros(tmp_path, frames):
    # A new object appearing mid-GOP must be intra coded: with fill_intra=False its cells are exactly 0.
    cut = [f.copy() for f in frames[:4]]
    cut[2][40:100, 60:140] = synthetic_frames(frames=1, seed=7)[0][40:100, 60:140]
    path = tmp_path / "cut.mp4"
    video.encode(cut, path, gop=GOP)
    with video.open(path, fill_intra=False) as clip:
        raw = list(clip)[2].mv
    with video.open(path) as clip:
        filled = list(clip)[2].mv
    zero = (raw == 0).all(dim=0)
    assert zero[12:24, 18:32].float().mean() > 0.5  # most of the new region is intra
    assert torch.equal(raw[:, ~zero], filled[:, ~zero])
    assert (filled[:, zero] != 0).any(dim=0).float().mean() > 0.9


# ---- encoding ----


def test_encode_tensors_and_transcode(tmp_path, frames):
    tensors = torch.from_numpy(np.stack(frames[:13]))
    src = tmp_path / "src.mkv"
    assert video.encode(tensors, src, gop=5, bitrate=400_000, fps=10) == 13
    out = tmp_path / "out.mp4"
    assert video.encode(src, out, gop=4, preset="ultrafast") == 13
    with video.open(out) as clip:
        assert clip.fps == 10.0
        assert [fr.pict_type for fr in clip] == ["I" if i % 4 == 0 else "P" for i in range(13)]


def test_encode_bad_input(tmp_path, frames):
    with pytest.raises(ValueError, match="uint8 RGB"):
        video.encode([frames[0].astype(np.float32)], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="even width and height"):
        video.encode([frames[0][:, :191].copy()], tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="gop"):
        video.encode(frames[:2], tmp_path / "c.mp4", gop=0)
    with pytest.raises(FileNotFoundError):
        video.encode(tmp_path / "missing.mp4", tmp_path / "d.mp4")


# ---- bad input ----


def test_missing_and_non_video_files(tmp_path, clip_path):
    with pytest.raises(FileNotFoundError):
        video.open(tmp_path / "nope.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(ValueError, match=r"notes\.mp4'?: not a video file \(FFmpeg: invalid data\)$"):
        video.open(text)
    with pytest.raises(ValueError, match=r"notes\.mp4'?: not a video file") as raised:
        video.encode(text, tmp_path / "out.mp4")
    assert "Errno" not in str(raised.value)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip_path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.mp4"):
        with video.open(truncated) as clip:
            list(clip)
    with pytest.raises(ValueError, match="block_size"):
        video.open(clip_path, block_size=0)


def test_hevc_is_refused_and_transcodable(tmp_path, frames):
    assert "libx265" in av.codecs_available, "PyAV's FFmpeg should bundle libx265"
    hevc = write_clip(tmp_path / "hevc.mp4", frames[:6], "libx265", {"x265-params": "log-level=error"})
    with pytest.raises(ValueError, match=r"H\.264 is needed.*video\.encode"):
        video.open(hevc)
    fixed = tmp_path / "fixed.mp4"
    video.encode(hevc, fixed)
    with video.open(fixed) as clip:
        assert [fr.pict_type for fr in clip] == ["I"] + ["P"] * 5


@pytest.mark.parametrize("params, cause", [
    ("keyint=12:bframes=0:ref=3", "3 reference frames"),
    ("keyint=12:bframes=2:b-pyramid=none:ref=1", "has B-frames"),
])
def test_unreliable_streams_warn_once_or_raise(tmp_path, frames, params, cause):
    path = write_clip(tmp_path / "multi.mp4", frames[:12], "libx264", {"x264-params": params})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with video.open(path) as clip:
            # the container header (SPS, decoder reordering delay) already tells: warned at open
            assert [w for w in caught if cause in str(w.message)]
            frs = list(clip)
    assert len(frs) == 12
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and cause in str(w.message)]
    assert len(ours) == 1 and "video.encode" in str(ours[0].message)
    assert ours[0].filename == __file__  # attributed to the caller of video.open, not library code
    # strict mode raises at open, before any frame is decoded; x264 with B-frames also uses 2 reference
    # frames, so it may stop at either cause first
    with pytest.raises(ValueError, match="unreliable.*strict=True"):
        video.open(path, strict=True)


def test_strict_falls_back_to_the_in_band_sps(tmp_path, frames, monkeypatch):
    """A stream whose SPS is not in the container header (raw Annex B without extradata) is checked at its first
    keyframe: simulated by hiding the header's SPS from the open-time check."""
    path = write_clip(tmp_path / "refs.h264", frames[:4], "libx264", {"x264-params": "bframes=0:ref=3"})
    parse = _h264.sps_from_extradata
    calls = []

    def header_hidden(data):
        calls.append(data)
        return None if len(calls) == 1 else parse(data)

    monkeypatch.setattr(_h264, "sps_from_extradata", header_hidden)
    clip = video.open(path, strict=True)  # nothing known at open
    with clip, pytest.raises(ValueError, match="3 reference frames.*strict=True"):
        next(iter(clip))
    assert len(calls) == 2


def test_stream_not_starting_with_keyframe(tmp_path, clip_path):
    cut = tmp_path / "cut.mp4"
    with av.open(str(clip_path)) as src, av.open(str(cut), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(src.demux(src.streams.video[0])):
            if packet.dts is None or k < 3:  # drop the first keyframe and two P-frames
                continue
            packet.stream = stream
            dst.mux(packet)
    with pytest.warns(RuntimeWarning, match="does not start with a keyframe"):
        with video.open(cut) as clip:
            frs = list(clip)
    assert len(frs) == FRAMES - GOP
    assert frs[0].is_keyframe and frs[0].index == 0 and frs[0].key_index == 0
    assert [fr.key_index for fr in frs] == [i - i % GOP for i in range(FRAMES - GOP)]


# ---- SPS parsing ----


def test_sps_from_avcc_and_annexb(clip_path, tmp_path, frames):
    with av.open(str(clip_path)) as c:
        avcc = c.streams.video[0].codec_context.extradata
    sps = _h264.sps_from_extradata(avcc)
    assert sps.max_num_ref_frames == 1 and sps.profile_idc in (66, 77, 100)
    sps_nal = avcc[8 : 8 + int.from_bytes(avcc[6:8], "big")]
    annexb = b"\x00\x00\x00\x01" + sps_nal + b"\x00\x00\x00\x01\x68\xee\x3c\x80"
    assert _h264.sps_from_extradata(annexb) == sps
    multi = write_clip(tmp_path / "r4.mp4", frames[:2], "libx264", {"x264-params": "ref=4:bframes=0"})
    with av.open(str(multi)) as c:
        assert _h264.sps_from_extradata(c.streams.video[0].codec_context.extradata).max_num_ref_frames == 4
    assert _h264.sps_from_extradata(b"") is None and _h264.sps_from_extradata(b"\x01\x02garbage") is None


def test_exp_golomb_and_emulation_prevention():
    assert _h264.remove_emulation_prevention(b"\x00\x00\x03\x01\x00\x00\x03\x00\x03") == b"\x00\x00\x01\x00\x00\x00\x03"
    # bits: 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2, 3 and se(4) = -2
    reader = _h264._BitReader(bytes([0b10100110, 0b01000010, 0b10000000]))
    assert [reader.ue() for _ in range(4)] == [0, 1, 2, 3]
    assert reader.se() == -2
