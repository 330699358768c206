"""Pictures in a terminal: a preview grid re-tiled to the space there is, as half blocks.

One character cell shows two pixels stacked vertically: ``"▀"`` painted with the upper
pixel as foreground and the lower one as background.

A Preview event holds one picture: torchvision's ``make_grid`` of a few synthetic images
per class, classes as columns and ``per_class`` rows, with a one-pixel border. Drawn as
it comes, that strip (10 classes of 16 px: 171 x 52 px) is squeezed into 78 columns at
80x24 and each image shrinks to about 7 px. So :func:`tile_preview` cuts the grid back
into its images and lays them out again for the cells available -- fewer images per class
and classes in two rows when that makes the images markedly bigger -- and
:func:`half_blocks` scales the result to fit: box-averaged when shrinking, an integer
nearest-neighbour factor when there is room to grow (crisp pixels, no blur).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import attrs
from rich.color import Color
from rich.style import Style
from rich.text import Text

Pixels = Sequence[Sequence[Sequence[int]]]  # (rows, cols, 3) uint8 as nested lists

UPPER_HALF = "\u2580"
NEAR_BEST = 0.85  # a layout this close to the biggest images counts as good as it
BLACK = (0, 0, 0)


def fit_size(rows: int, cols: int, width: int, height: int, upscale: bool = False) -> tuple[int, int]:
    """Pixel size ``(out_rows, out_cols)`` that fits ``width`` x ``height`` cells.

    A cell is one pixel wide and two tall. Shrinks as much as needed, keeping the aspect;
    with ``upscale``, grows by the largest whole factor that fits (nearest neighbour
    stays sharp at whole factors), otherwise never grows.
    """
    if rows <= 0 or cols <= 0 or width <= 0 or height <= 0:
        return 0, 0
    scale = min(width / cols, (2 * height) / rows)
    scale = math.floor(scale) if upscale and scale >= 1 else min(1.0, scale)
    return max(1, int(rows * scale)), max(1, int(cols * scale))


def downsample(pixels: Pixels, out_rows: int, out_cols: int) -> list[list[tuple[int, int, int]]]:
    """Resample ``pixels`` (rows, cols, 3) to (out_rows, out_cols) RGB tuples: the mean
    of each output pixel's box when shrinking, the nearest pixel when growing."""
    rows, cols = len(pixels), len(pixels[0]) if pixels else 0
    out = []
    for i in range(out_rows):
        r0 = i * rows // out_rows
        r1 = max(r0 + 1, (i + 1) * rows // out_rows)
        line = []
        for j in range(out_cols):
            c0 = j * cols // out_cols
            c1 = max(c0 + 1, (j + 1) * cols // out_cols)
            acc = [0, 0, 0]
            n = 0
            for r in range(r0, r1):
                row = pixels[r]
                for c in range(c0, c1):
                    p = row[c]
                    acc[0] += p[0]
                    acc[1] += p[1]
                    acc[2] += p[2]
                    n += 1
            line.append((acc[0] // n, acc[1] // n, acc[2] // n))
        out.append(line)
    return out


def half_blocks(pixels: Pixels, width: int, height: int, upscale: bool = False) -> Text:
    """Rich text of at most ``width`` x ``height`` cells showing ``pixels`` (rows, cols, 3).

    Args:
        pixels: uint8 RGB values as nested lists (a Preview event's ``pixels``).
        width, height: the cells available.
        upscale: grow a small picture by a whole factor to fill the cells.
    """
    rows = len(pixels)
    cols = len(pixels[0]) if rows else 0
    out_rows, out_cols = fit_size(rows, cols, width, height, upscale)
    text = Text(no_wrap=True, overflow="crop")
    if out_rows == 0:
        return text
    small = downsample(pixels, out_rows, out_cols)
    for i in range(0, out_rows, 2):
        top = small[i]
        bottom = small[i + 1] if i + 1 < out_rows else None
        for j in range(out_cols):
            style = Style(
                color=Color.from_rgb(*top[j]),
                bgcolor=Color.from_rgb(*bottom[j]) if bottom is not None else None,
            )
            text.append(UPPER_HALF, style)
        if i + 2 < out_rows:
            text.append("\n")
    return text


# -- re-tiling ------------------------------------------------------------------------------------

@attrs.frozen
class Layout:
    """``shown`` images of each class stacked in a block; ``across`` class blocks a row."""

    shown: int
    across: int
    rows: int  # pixel size of the laid-out picture
    cols: int
    scale: float  # its scale in the cells available (before rounding to whole factors)


@attrs.frozen
class Tiled:
    """A preview ready to draw: ``pixels`` and what they show."""

    pixels: list
    classes: Optional[int]  # None: the grid could not be cut into images (drawn whole)
    shown: int
    per_class: int
    size: int  # an image's side in pixels before scaling
    scale: float

    def describe(self) -> str:
        if self.classes is None:
            return f"{self.per_class} per class"
        px = max(1, round(self.size * self.scale))
        return f"{self.classes} classes, {self.shown} of {self.per_class} per class, {px} px each"


def grid_geometry(rows: int, cols: int, per_class: int) -> Optional[tuple[int, int, int]]:
    """``(image side, padding, classes)`` of a ``make_grid`` picture of square images,
    ``per_class`` rows of them, or None when the sizes fit no such grid."""
    if per_class <= 0:
        return None
    for pad in (1, 2, 0):
        side, rest = divmod(rows - pad, per_class)
        side -= pad
        if rest or side <= 0:
            continue
        classes, rest = divmod(cols - pad, side + pad)
        if not rest and classes > 0:
            return side, pad, classes
    return None


def choose_layout(classes: int, per_class: int, side: int, pad: int, width: int, height: int) -> Layout:
    """The layout of the biggest images in ``width`` x ``height`` cells; among those
    within :data:`NEAR_BEST` of the biggest, the one showing the most images."""
    layouts = []
    for shown in range(1, per_class + 1):
        for across in range(1, classes + 1):
            bands = -(-classes // across)
            cols = across * (side + pad) + pad
            rows = bands * (shown * (side + pad) + pad) + pad
            layouts.append(Layout(shown, across, rows, cols, min(width / cols, 2 * height / rows)))
    best = max(min(lay.scale, 1.0) for lay in layouts)
    good = [lay for lay in layouts if min(lay.scale, 1.0) >= NEAR_BEST * best]
    return max(good, key=lambda lay: (lay.shown, lay.scale))


def tile_preview(pixels: Pixels, per_class: int, width: int, height: int) -> Tiled:
    """Cut a ``make_grid`` preview (classes as columns, ``per_class`` rows) into its
    images and lay them out anew for ``width`` x ``height`` cells: class blocks of
    ``shown`` images each, ``across`` blocks a band, a gap between bands."""
    rows, cols = len(pixels), len(pixels[0]) if pixels else 0
    geometry = grid_geometry(rows, cols, per_class) if rows and cols else None
    if geometry is None:
        return Tiled([list(r) for r in pixels], None, per_class, per_class, 0, 1.0)
    side, pad, classes = geometry
    lay = choose_layout(classes, per_class, side, pad, width, height)
    out = [[BLACK] * lay.cols for _ in range(lay.rows)]
    for c in range(classes):
        band, col = divmod(c, lay.across)
        left = pad + col * (side + pad)
        for i in range(lay.shown):
            top = pad + band * (lay.shown * (side + pad) + pad) + i * (side + pad)
            src_top, src_left = pad + i * (side + pad), pad + c * (side + pad)
            for r in range(side):
                out[top + r][left:left + side] = [tuple(p) for p in pixels[src_top + r][src_left:src_left + side]]
    scale = math.floor(lay.scale) if lay.scale >= 1 else lay.scale
    return Tiled(out, classes, lay.shown, per_class, side, scale)


__all__ = ["half_blocks", "downsample", "fit_size", "tile_preview", "choose_layout", "grid_geometry", "Tiled",
           "Layout"]
