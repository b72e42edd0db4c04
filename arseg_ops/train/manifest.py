"""Manifests of labelled video frames (CSV or JSON lines) and the CamVid layout scanner.

A manifest row is (video, frame, label, split): frame `frame` (0-based decode order) of `video` is annotated by
the single-channel PNG `label` (class ids; 255 = void). Relative paths are relative to the manifest's folder.
CSV files have the header `video,frame,label,split`; JSON lines files one object with those keys per line.
"""
import csv
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

FIELDS = ("video", "frame", "label", "split")
IGNORE_INDEX = 255

# CamVid's 11 evaluation classes as in the SegNet release of the labels (label PNGs hold ids 0..10, 11 = void).
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
CAMVID_VOID = 11
CAMVID_SPLITS = {"train": "trainannot", "val": "valannot", "test": "testannot"}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".mxf", ".264", ".h264")
_CAMVID_NAME = re.compile(r"^(?P<seq>.+)_(?P<frame>\d+)$")


@dataclass(frozen=True)
class Row:
    video: str
    frame: int
    label: str
    split: str = "train"


def _row(raw, where, base):
    missing = [k for k in ("video", "frame", "label") if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (expected {', '.join(FIELDS)})")
    try:
        frame = int(raw["frame"])
    except (TypeError, ValueError):
        frame = -1
    if frame < 0:
        raise ValueError(f"{where}: frame must be an integer >= 0, got {raw['frame']!r}")
    video, label = (str(base / raw[k]) for k in ("video", "label"))  # absolute paths stay absolute
    return Row(video, frame, label, str(raw.get("split") or "train"))


def read_manifest(path, *, split=None, check_files=True):
    """Rows of a .csv or .jsonl manifest (optionally only one split). check_files: raise FileNotFoundError
    naming the row when a video or label file does not exist."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {str(path)!r}")
    base = path.parent
    rows = []
    with open(path, newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"video", "frame", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{str(path)!r}: CSV header must be {','.join(FIELDS)}, got {reader.fieldnames}")
            for n, raw in enumerate(reader, start=2):
                rows.append(_row(raw, f"{path}:{n}", base))
        elif path.suffix.lower() in (".jsonl", ".json"):
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e}") from None
                if not isinstance(raw, dict):
                    raise ValueError(f"{path}:{n}: expected an object with keys {', '.join(FIELDS)}")
                rows.append(_row(raw, f"{path}:{n}", base))
        else:
            raise ValueError(f"{str(path)!r}: manifest must end in .csv or .jsonl")
    if split is not None:
        rows = [r for r in rows if r.split == split]
    if check_files:
        for n, row in enumerate(rows):
            for kind in ("video", "label"):
                if not os.path.isfile(getattr(row, kind)):
                    raise FileNotFoundError(f"{str(path)!r} row {n} (frame {row.frame}): {kind} file not found: "
                                            f"{getattr(row, kind)!r}")
    if not rows:
        raise ValueError(f"{str(path)!r}: no rows" + (f" with split {split!r}" if split else ""))
    return rows


def write_manifest(rows, path):
    """Write rows (Row or dicts) as .csv or .jsonl (by suffix); paths inside the manifest's folder are stored
    relative to it so the dataset can be moved as a whole."""
    path = Path(os.fspath(path))
    base = path.parent.resolve()

    def rel(p):
        p = Path(p).resolve()
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)

    records = []
    for row in rows:
        d = asdict(row) if isinstance(row, Row) else dict(row)
        records.append({"video": rel(d["video"]), "frame": int(d["frame"]), "label": rel(d["label"]),
                        "split": d.get("split", "train")})
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix.lower() in (".jsonl", ".json"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    else:
        raise ValueError(f"{str(path)!r}: manifest must end in .csv or .jsonl")
    return len(records)


def _find_video(root, seq):
    for folder in (root / "videos", root):
        for suffix in VIDEO_SUFFIXES:
            for name in (seq + suffix, seq + suffix.upper()):
                if (folder / name).is_file():
                    return folder / name
    return None


def scan_camvid(root, *, offsets=None):
    """Rows for the CamVid layout: ROOT/{train,val,test}annot/<seq>_<frame>.png label images and the sequence
    videos ROOT/videos/<seq>.<ext> (or ROOT/<seq>.<ext>). The file name's frame number minus offsets[seq]
    (default 0) is the 0-based frame index in the video. Label values stay CamVid's (void = 11): map them with
    `camvid_class_map()` in the dataset."""
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise FileNotFoundError(f"CamVid root not found: {str(root)!r}")
    offsets = dict(offsets or {})
    rows, missing = [], set()
    for split, folder in CAMVID_SPLITS.items():
        for png in sorted((root / folder).glob("*.png")):
            m = _CAMVID_NAME.match(png.stem)
            if not m:
                raise ValueError(f"{str(png)!r}: CamVid label names must be <sequence>_<frame>.png")
            seq, frame = m["seq"], int(m["frame"]) - int(offsets.get(m["seq"], 0))
            video = _find_video(root, seq)
            if video is None:
                missing.add(seq)
                continue
            if frame < 0:
                raise ValueError(f"{str(png)!r}: frame {m['frame']} minus offset {offsets[seq]} is negative")
            rows.append(Row(str(video), frame, str(png), split))
    if missing:
        raise FileNotFoundError(f"{str(root)!r}: no video for sequence(s) {', '.join(sorted(missing))} (looked "
                                f"for <seq>{{{','.join(VIDEO_SUFFIXES)}}} in {root / 'videos'} and {root})")
    if not rows:
        raise ValueError(f"{str(root)!r}: no label images in {', '.join(CAMVID_SPLITS.values())}")
    return rows


def camvid_class_map():
    """Lookup table uint8[256] for CamVid label PNGs: void (11) -> 255, every other id unchanged (ids 12..254
    are not CamVid classes; the dataset reports them as unknown class ids)."""
    import numpy as np

    table = np.arange(256, dtype=np.uint8)
    table[CAMVID_VOID] = IGNORE_INDEX
    return table
