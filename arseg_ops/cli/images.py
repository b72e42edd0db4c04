"""Images for the video commands: class palettes, the motion colour wheel and its legend (PNGs via train.png)."""
import numpy as np

from ..train.png import write_png  # noqa: F401  (one PNG writer for every tool)

# CamVid's 11 classes + void in SegNet's CamVid label order and colours (the 12-class setting AR-Seg trains);
# checkpoints trained with another label order need their own palette.
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0),
)
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
                  "bicyclist", "void")

def palette(num_classes):
    """(num_classes, 3) uint8: CamVid's colours first, then distinct generated ones."""
    colours = list(CAMVID_PALETTE[:num_classes])
    for i in range(len(colours), num_classes):  # golden-ratio hue steps stay distinguishable for many classes
        colours.append(tuple(int(255 * c) for c in hsv_to_rgb(np.array((i * 0.618034) % 1.0),
                                                               np.array(0.75), np.array(0.9))))
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB, all in [0, 1]; returns (..., 3) floats."""
    k = (np.stack([np.full_like(h, n) for n in (5.0, 3.0, 1.0)], axis=-1) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def motion_colours(mv, max_motion):
    """(2, Hb, Wb) motion -> (Hb, Wb, 3) uint8 on the HSV colour wheel: hue = direction, saturation = speed
    (white = still, full colour = max_motion pixels or more)."""
    dx, dy = np.asarray(mv, dtype=np.float64)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / max(max_motion, 1e-6), 0, 1)
    return (hsv_to_rgb(hue, sat, np.ones_like(hue)) * 255 + 0.5).astype(np.uint8)


# ---- the motion legend: a colour-wheel disc and the pixels shown at full colour ----

# A 3x5 bitmap font with just the characters a legend label needs ("12.3 px"): there is no imaging library.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ".": ("0", "0", "0", "0", "1"), " ": ("0", "0", "0", "0", "0"),
    "p": ("000", "110", "101", "110", "100"), "x": ("000", "101", "010", "101", "000"),
}
GLYPH_HEIGHT = 5
LEGEND_PAD = 2  # pixels (times the scale) around the disc and the label
LEGEND_BACKGROUND = (48, 48, 48)  # dark, so both the white label and the pale centre of the disc show
LEGEND_TEXT = (255, 255, 255)


def text_mask(text, scale=1):
    """(5*scale, width) bool mask of `text` in the 3x5 font, one blank column between characters."""
    unknown = set(text) - set(_GLYPHS)
    if unknown:
        raise ValueError("text: the legend font has no %s" % ", ".join(map(repr, sorted(unknown))))
    columns = []
    for i, char in enumerate(text):
        if i:
            columns.append(np.zeros((GLYPH_HEIGHT, 1), bool))
        columns.append(np.array([[c == "1" for c in row] for row in _GLYPHS[char]], bool))
    mask = np.concatenate(columns, axis=1) if columns else np.zeros((GLYPH_HEIGHT, 0), bool)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def legend_label(max_motion):
    """The pixels of motion shown at full colour, e.g. "12.3 px" or "0.75 px"."""
    return ("%.1f px" if max_motion >= 10 else "%.2f px") % max_motion


def motion_legend(max_motion, diameter, scale=1):
    """(H, W, 3) uint8 tile: a colour-wheel disc of `diameter` pixels above the label legend_label(max_motion).

    The disc is the key of motion_colours: a pixel's offset from the disc centre (x right, y down, as in the
    image) is drawn as that motion direction, its distance from the centre as the speed, so the rim shows full
    colour (max_motion px or more) and the centre white (still). The disc is centred horizontally, LEGEND_PAD *
    scale pixels below the top edge."""
    label = text_mask(legend_label(max_motion), scale)
    pad = LEGEND_PAD * scale
    width = max(diameter, label.shape[1]) + 2 * pad
    tile = np.empty((diameter + label.shape[0] + 3 * pad, width, 3), np.uint8)
    tile[:] = LEGEND_BACKGROUND
    radius = diameter / 2
    yy, xx = np.mgrid[0:diameter, 0:diameter] + 0.5 - radius  # pixel centres relative to the disc centre
    # the outermost pixel ring reaches full colour (saturation 1 from radius - 1 on)
    disc = motion_colours(np.stack([xx, yy]), max(radius - 1, 1e-6))
    inside = np.hypot(xx, yy) <= radius
    left = (width - diameter) // 2
    tile[pad : pad + diameter, left : left + diameter][inside] = disc[inside]
    top, left = diameter + 2 * pad, (width - label.shape[1]) // 2
    tile[top : top + label.shape[0], left : left + label.shape[1]][label] = LEGEND_TEXT
    return tile


def draw_motion_legend(panel, max_motion):
    """Draw motion_legend into the bottom-right corner of an (H, W, 3) motion panel, in place, sized to the panel.
    Returns the (top, left) corner of the tile, or None when the panel is too small to hold one."""
    h, w = panel.shape[:2]
    scale = max(1, min(h, w) // 240)
    tile = motion_legend(max_motion, diameter=max(9, min(h, w) // 6), scale=scale)
    margin = 2 * scale
    th, tw = tile.shape[:2]
    if th + 2 * margin > h or tw + 2 * margin > w or 4 * th * tw > h * w:  # cover at most a quarter of it
        return None
    top, left = h - th - margin, w - tw - margin
    panel[top : top + th, left : left + tw] = tile
    return top, left


def even(image):
    """Pad an (H, W, 3) image by one edge row/column where needed: H.264 4:2:0 needs even sizes."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image
