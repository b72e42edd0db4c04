"""`arseg eval --plot`: mIoU against keyframe distance (AR, and the HR and LR-only levels) as a PNG line chart,
drawn with numpy and the 5x7 font (no plotting library is a dependency of arseg)."""
import math

import numpy as np

from .font import GLYPH_HEIGHT, text_mask
from .images import write_png

WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)
COLOURS = {"ar": (31, 119, 180), "hr": (214, 39, 40), "lr_only": (44, 160, 44)}  # blue, red, green
FONT_SCALE = 2
LINE_WIDTH = 3


class Chart:
    """A blank chart of `size` (H, W) pixels with x in [x0, x1] and y in [y0, y1] mapped onto its plot area."""

    MARGIN = {"left": 80, "right": 24, "top": 48, "bottom": 140}  # the legend goes under the x axis label

    def __init__(self, size, x_range, y_range):
        self.image = np.empty(size + (3,), np.uint8)
        self.image[:] = WHITE
        h, w = size
        m = self.MARGIN
        self.left, self.right, self.top, self.bottom = m["left"], w - m["right"], m["top"], h - m["bottom"]
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range

    def px(self, x, y):
        """(row, column) of the data point (x, y), as floats."""
        col = self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)
        row = self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)
        return row, col

    def dot(self, row, col, colour, radius):
        h, w = self.image.shape[:2]
        r0, r1 = max(0, int(round(row - radius))), min(h, int(round(row + radius)) + 1)
        c0, c1 = max(0, int(round(col - radius))), min(w, int(round(col + radius)) + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = (yy - row) ** 2 + (xx - col) ** 2 <= radius ** 2
        self.image[r0:r1, c0:c1][inside] = colour

    def segment(self, a, b, colour, width=LINE_WIDTH, dash=0):
        """A line between pixel positions a and b; dash > 0: dashes and gaps of `dash` pixels."""
        length = math.hypot(b[0] - a[0], b[1] - a[1])
        for t in np.linspace(0, 1, max(2, int(length) + 1)):
            if dash and int(t * length // dash) % 2:
                continue
            self.dot(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), colour, width / 2)

    def text(self, text, row, col, colour=BLACK, anchor="left", vertical=False):
        """Text with its top-left corner (anchor "left"), top-centre ("centre") or top-right ("right") at
        (row, col); vertical: rotated a quarter turn anticlockwise, centred on (row, col)."""
        mask = text_mask(text, FONT_SCALE)
        if vertical:
            mask = np.rot90(mask)
            row, col = row - mask.shape[0] // 2, col - mask.shape[1] // 2
        else:
            col -= {"left": 0, "centre": mask.shape[1] // 2, "right": mask.shape[1]}[anchor]
        row, col = int(row), int(col)
        h, w = self.image.shape[:2]  # clipped at the canvas edges
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + mask.shape[0], h), min(col + mask.shape[1], w)
        if r0 < r1 and c0 < c1:
            self.image[r0:r1, c0:c1][mask[r0 - row:r1 - row, c0 - col:c1 - col]] = colour
        return mask.shape[1]


def _y_range(values):
    """A y axis in % of 10-point steps around the values, at least 20 points tall, within [0, 100]."""
    lo, hi = min(values), max(values)
    lo, hi = math.floor(lo / 10) * 10, math.ceil(hi / 10) * 10
    if hi - lo < 20:
        lo, hi = max(0, hi - 20), max(0, hi - 20) + 20
    return max(0, lo), min(100, max(hi, lo + 10))


def draw_miou_chart(result, size=(520, 800)):
    """(image, chart): the chart of an `evaluate` result: AR mIoU (%) at each keyframe distance d (frames), the
    HR network on every frame and the LR-only network (when evaluated) as horizontal levels, with axes, ticks,
    units and a legend."""
    ar = [100 * m for m in result["distances"]]
    levels = [("hr", "HR network 1.0x on every frame", 100 * result["hr"])]
    if result.get("lr_only") is not None:
        levels.append(("lr_only", "LR-only network %gx" % result["scale"], 100 * result["lr_only"]))
    finite = [v for v in ar if v == v] + [v for _, _, v in levels]
    length = len(ar)
    chart = Chart(size, (-0.5, length - 0.5), _y_range(finite))
    top, bottom, left, right = chart.top, chart.bottom, chart.left, chart.right
    glyph = GLYPH_HEIGHT * FONT_SCALE
    # y grid, ticks and labels (every 10 points, or 20 on a tall range)
    step = 10 if chart.y1 - chart.y0 <= 60 else 20
    for y in range(int(chart.y0), int(chart.y1) + 1, step):
        row = chart.px(0, y)[0]
        chart.image[int(round(row)), left:right] = GRID
        chart.segment((row, left - 6), (row, left), BLACK, width=2)
        chart.text("%d" % y, row - glyph // 2, left - 10, anchor="right")
    # x ticks at every distance (every other one past 16)
    x_step = 1 if length <= 16 else 2
    for d in range(0, length, x_step):
        col = chart.px(d, 0)[1]
        chart.segment((bottom, col), (bottom + 6, col), BLACK, width=2)
        chart.text("%d" % d, bottom + 10, col, anchor="centre")
    chart.image[top:bottom + 1, left - 1:left + 1] = BLACK  # axes
    chart.image[bottom:bottom + 2, left:right + 1] = BLACK
    chart.text("keyframe distance d (frames)", bottom + 16 + glyph, (left + right) / 2, anchor="centre")
    chart.text("mIoU (%)", (top + bottom) / 2, 16, vertical=True)
    chart.text("mIoU against keyframe distance (GOP %d, %d labelled frames)" % (length, result["frames"]),
               12, size[1] / 2, anchor="centre")
    for key, _, value in levels:
        row = chart.px(0, value)[0]
        chart.segment((row, left + 2), (row, right), COLOURS[key], dash=10)
    points = [chart.px(d, v) for d, v in enumerate(ar) if v == v]
    for a, b in zip(points, points[1:]):
        chart.segment(a, b, COLOURS["ar"])
    for p in points:
        chart.dot(p[0], p[1], COLOURS["ar"], 4)
    # legend: under the x axis label, clear of the curves
    entries = [("ar", "AR-Seg %gx + CReFF at distance d (mean %.1f)" % (result["scale"], 100 * result["ar_mean"]))]
    entries += [(key, "%s (%.1f)" % (label, value)) for key, label, value in levels]
    if result.get("lr_only") is None:
        entries.append((None, "LR-only network: not evaluated (eval --lr-checkpoint)"))
    row = bottom + 2 * glyph + 40
    width = 52 + max(text_mask(label, FONT_SCALE).shape[1] for _, label in entries) + 8
    box = chart.image[row - 8:row + len(entries) * (glyph + 8), left + 6:left + 6 + width]
    box[:] = BLACK
    box[1:-1, 1:-1] = WHITE
    for key, label in entries:
        centre = row + glyph / 2
        if key:
            chart.segment((centre, left + 14), (centre, left + 44), COLOURS[key], dash=0 if key == "ar" else 10)
        chart.text(label, row, left + 52)
        row += glyph + 8
    return chart.image, chart


def write_miou_chart(path, result):
    image, _ = draw_miou_chart(result)
    write_png(path, image)
