"""Pictures in a terminal: RGB pixels as rich text of upper half blocks.

One character cell shows two pixels stacked vertically: ``"▀"`` painted with the upper
pixel as foreground and the lower one as background. A preview grid (a few synthetic
images per class) is shrunk by box-averaging to fit the widget, keeping its aspect ratio
(a cell is one pixel wide and two pixels tall), so the images are recognisable at 80x24.
"""

from __future__ import annotations

from typing import Sequence

from rich.color import Color
from rich.style import Style
from rich.text import Text

Pixels = Sequence[Sequence[Sequence[int]]]  # (rows, cols, 3) uint8 as nested lists

UPPER_HALF = "\u2580"


def fit_size(rows: int, cols: int, width: int, height: int) -> tuple[int, int]:
    """Pixel size ``(out_rows, out_cols)`` that fits ``width`` x ``height`` cells.

    Never upscales; ``out_rows`` is even where it can be so every cell has two pixels.
    """
    if rows <= 0 or cols <= 0 or width <= 0 or height <= 0:
        return 0, 0
    scale = min(1.0, width / cols, (2 * height) / rows)
    out_cols = max(1, int(cols * scale))
    out_rows = max(1, int(rows * scale))
    return out_rows, out_cols


def downsample(pixels: Pixels, out_rows: int, out_cols: int) -> list[list[tuple[int, int, int]]]:
    """Box-average ``pixels`` (rows, cols, 3) to (out_rows, out_cols) RGB tuples."""
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


def half_blocks(pixels: Pixels, width: int, height: int) -> Text:
    """Rich text of at most ``width`` x ``height`` cells showing ``pixels`` (rows, cols, 3).

    Args:
        pixels: uint8 RGB values as nested lists (a Preview event's ``pixels``).
        width, height: the cells available.
    """
    rows = len(pixels)
    cols = len(pixels[0]) if rows else 0
    out_rows, out_cols = fit_size(rows, cols, width, height)
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


__all__ = ["half_blocks", "downsample", "fit_size"]
