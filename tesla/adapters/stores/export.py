"""Exports of a stored synthetic set: the published ``.pt`` files and PNG grids.

``export_published`` writes what the MTT/TESLA code and its evaluation scripts load
(``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``) as plain tensors, so
``torch.load(..., weights_only=True)`` reads them. ``export_png_grid`` writes one picture
per class and an overview; images are decoded from model space (un-whitened
when ZCA was used) with the stored normaliser, else scaled per image to [0, 1] so a
whitened set is still visible, nearest-upscaled to a readable size, with the class
names and, where the caller has the real data, real images of each class beside the
distilled ones (:func:`labelled_sheet` draws them with Pillow).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import attrs
import numpy as np
import torch

from .synthetic import SyntheticSet


def export_published(syn: SyntheticSet, out_dir: str) -> list[str]:
    """Write ``images_best.pt`` (N, C, H, W), ``labels_best.pt`` and ``lr_best.pt``.

    ``labels_best.pt`` holds the soft labels (N, K) when the set has them, else the class
    ids (N,) int64; ``lr_best.pt`` is a 0-d float32 tensor (NaN when the set has no lr).
    Returns the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    labels = syn.soft_labels if syn.soft_labels is not None else syn.labels
    lr = float(syn.lr) if syn.lr is not None else float("nan")
    items = {
        "images_best.pt": torch.from_numpy(np.ascontiguousarray(syn.images, dtype=np.float32)),
        "labels_best.pt": torch.from_numpy(np.ascontiguousarray(labels)),
        "lr_best.pt": torch.tensor(lr, dtype=torch.float32),
    }
    paths = []
    for name, tensor in items.items():
        path = os.path.join(out_dir, name)
        torch.save(tensor, path)
        paths.append(path)
    return paths


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Each image scaled to [0, 1] on its own (the fallback display of model-space data)."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def default_decode(syn: SyntheticSet) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stored normaliser's ``decode`` when there is one, else per-image min-max."""
    if syn.normalizer_state:
        try:
            from tesla.adapters.torch.normalize import Normalizer
        except ImportError:
            return _minmax
        return Normalizer.from_state(syn.normalizer_state).decode
    return _minmax


# the side an image is nearest-upscaled to (at least) in the pictures: 16 px CIFAR becomes
# 96 px in a class grid and 64 px in the overview, readable without a zoom
CLASS_SIDE = 96
OVERVIEW_SIDE = 64
PAD = 2
GAP = 12  # between the distilled block and the real one
WHITE = (255, 255, 255)
INK = (20, 20, 20)


def scale_for(side: int, target: int) -> int:
    """The integer factor that brings ``side`` px to at least ``target`` px (1: as is)."""
    return max(1, -(-target // max(1, side)))


@attrs.frozen
class Sheet:
    """Where the images of a labelled picture go, in pixels: a header line, then rows of
    a label column, ``columns`` distilled images and, after a gap, ``real_columns`` real
    images, each ``cell`` px square with ``pad`` px between them."""

    rows: int
    columns: int
    real_columns: int
    cell: int
    left: int  # width of the label column (0: no labels)
    top: int  # height of the header line
    pad: int = PAD
    gap: int = GAP

    def position(self, row: int, col: int, real: bool = False) -> tuple[int, int]:
        """The top-left pixel of image ``col`` of ``row`` (the real block with ``real``)."""
        x = self.left + self.pad + col * (self.cell + self.pad)
        if real:
            x += self.columns * (self.cell + self.pad) + self.gap
        return x, self.top + self.pad + row * (self.cell + self.pad)

    @property
    def size(self) -> tuple[int, int]:
        width = self.left + self.pad + self.columns * (self.cell + self.pad)
        if self.real_columns:
            width += self.gap + self.real_columns * (self.cell + self.pad)
        return width, self.top + self.pad + self.rows * (self.cell + self.pad)


def _font(size: int = 14) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tiles(images: torch.Tensor, scale: int) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H*scale, W*scale, 3) uint8, nearest-upscaled."""
    x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x[:, :3], scale_factor=scale, mode="nearest") if scale > 1 else x[:, :3]
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def labelled_sheet(rows: Sequence[torch.Tensor], real_rows: Optional[Sequence[torch.Tensor]], *, scale: int,
                   row_labels: Sequence[str] = (), headers: tuple[str, str] = ("distilled", "real")) -> tuple[Any, Sheet]:
    """A picture of decoded images: row ``i`` holds ``rows[i]`` (k, C, H, W) in [0, 1] and,
    after a gap, ``real_rows[i]``; labels in a column on the left, headers on top.

    Returns:
        (the PIL image, its :class:`Sheet`).
    """
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda t: int(probe.textlength(t, font=font))  # noqa: E731
    side = int(rows[0].shape[-1]) * scale
    columns = max(int(r.shape[0]) for r in rows)
    real_columns = max((int(r.shape[0]) for r in real_rows), default=0) if real_rows else 0
    left = (max(text_w(t) for t in row_labels) + 10) if any(row_labels) else 0
    # the real block starts after the distilled one's header, however few images are under it
    gap = max(GAP, text_w(headers[0]) + 10 - columns * (side + PAD)) if real_columns else GAP
    sheet = Sheet(rows=len(rows), columns=columns, real_columns=real_columns, cell=side, left=left, top=22, gap=gap)
    canvas = Image.new("RGB", sheet.size, WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((sheet.position(0, 0)[0], 3), headers[0], fill=INK, font=font)
    if real_columns:
        draw.text((sheet.position(0, 0, real=True)[0], 3), headers[1], fill=INK, font=font)
    for r, images in enumerate(rows):
        for real, block in ((False, images), (True, real_rows[r] if real_rows else None)):
            if block is None:
                continue
            for c, tile in enumerate(_tiles(block, scale)):
                canvas.paste(Image.fromarray(tile), sheet.position(r, c, real=real))
        if r < len(row_labels) and row_labels[r]:
            x, y = sheet.position(r, 0)
            draw.text((4, y + side // 2), row_labels[r], fill=INK, font=font, anchor="lm")
    return canvas, sheet


RealImages = Callable[[int, int], torch.Tensor]  # (class id, n) -> (n, C, H, W) real images, model space


def class_label(c: int, names: Optional[Sequence[str]]) -> str:
    """``3 cat`` (the class id and its name when the set records one)."""
    return f"{c} {names[c]}" if names is not None and 0 <= c < len(names) else str(c)


def export_png_grid(
    syn: SyntheticSet,
    out_dir: str,
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    per_row: int = 10,
    max_overview_classes: int = 20,
    real: Optional[RealImages] = None,
    class_names: Optional[Sequence[str]] = None,
) -> list[str]:
    """Write one picture per class, ``class_<id>.png``, and ``overview.png``.

    Every image is nearest-upscaled to a readable size (:data:`CLASS_SIDE` px in a class
    picture, :data:`OVERVIEW_SIDE` in the overview) and every picture says what it shows:
    the class id and name, and "distilled" over the set's images. With ``real`` the same
    number of real images of the class stand beside them ("real"), so what the
    distillation did to a class is seen at a glance. ``overview.png`` is a row per class
    (the first ``max_overview_classes``), up to 10 images each, the class named on the left.

    Args:
        syn: the set.
        out_dir: folder for the PNGs (created).
        decode: maps model-space images (B, C, H, W) to [0, 1]; default
            :func:`default_decode`. Real images are decoded the same way.
        per_row: images per row of a class picture.
        max_overview_classes: classes shown in ``overview.png``.
        real: ``real(c, n)`` gives n real images of class c in model space (the data's
            ``sample_class``), or None.
        class_names: names by class id (default: the set's recorded ``class_names``).

    Returns:
        The paths written, in class order, the overview last.
    """
    os.makedirs(out_dir, exist_ok=True)
    decode = decode or default_decode(syn)
    names = list(class_names) if class_names is not None else syn.attrs.get("class_names")
    images = torch.from_numpy(np.ascontiguousarray(syn.images, dtype=np.float32))
    labels = np.asarray(syn.labels)
    width = max(3, len(str(max(int(labels.max()) if labels.size else 0, 1))))
    shown = _Decoded(images, labels, decode, real)
    paths = []
    for c in np.unique(labels):
        c = int(c)
        mine = shown.distilled(c)
        rows = [mine[i:i + per_row] for i in range(0, mine.shape[0], per_row)]
        real_rows = None
        if real is not None:
            others = shown.real(c, mine.shape[0])
            real_rows = [others[i:i + per_row] for i in range(0, others.shape[0], per_row)]
        picture, _ = labelled_sheet(rows, real_rows, scale=scale_for(int(images.shape[-1]), CLASS_SIDE),
                                    row_labels=[class_label(c, names)])
        path = os.path.join(out_dir, f"class_{c:0{width}d}.png")
        picture.save(path)
        paths.append(path)
    overview = _overview(shown, labels, names, max_classes=max_overview_classes)
    if overview is not None:
        path = os.path.join(out_dir, "overview.png")
        overview[0].save(path)
        paths.append(path)
    return paths


class _Decoded:
    """The set's and the real images of a class, decoded to [0, 1] once each."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, decode: Callable,
                 real: Optional[RealImages]) -> None:
        self.images, self.labels, self.decode, self.real_images = images, labels, decode, real
        self._real: dict = {}

    def distilled(self, c: int, k: Optional[int] = None) -> torch.Tensor:
        idx = np.flatnonzero(self.labels == c)[:k]
        with torch.no_grad():
            return self.decode(self.images[torch.from_numpy(idx)]).clamp(0.0, 1.0)

    def real(self, c: int, n: int) -> Optional[torch.Tensor]:
        if self.real_images is None:
            return None
        if self._real.get(c) is None or self._real[c].shape[0] < n:
            with torch.no_grad():
                self._real[c] = self.decode(torch.as_tensor(self.real_images(c, n), dtype=torch.float32)).clamp(0, 1)
        return self._real[c][:n]


def _overview(shown: _Decoded, labels: np.ndarray, names: Optional[Sequence[str]], *, max_classes: int,
              per_class: int = 10) -> Optional[tuple[Any, Sheet]]:
    """The overview picture: a row per class (the first ``max_classes``), up to
    ``per_class`` distilled images (and as many real ones), upscaled to at least
    :data:`OVERVIEW_SIDE` px."""
    classes = [int(c) for c in np.unique(labels)[:max_classes]]
    if not classes:
        return None
    k = min(per_class, min(int((labels == c).sum()) for c in classes))
    rows = [shown.distilled(c, k) for c in classes]
    real_rows = [shown.real(c, k) for c in classes] if shown.real_images is not None else None
    scale = scale_for(int(rows[0].shape[-1]), OVERVIEW_SIDE)
    return labelled_sheet(rows, real_rows, scale=scale, row_labels=[class_label(c, names) for c in classes])


class SetExportOnDisk:
    """The :class:`~tesla.domain.ports.SetExporter` port: the two exports above and
    DD-Ranking's files (:mod:`.export_ddranking`), into folders."""

    def published(self, syn: SyntheticSet, folder: str) -> list[str]:
        return export_published(syn, str(folder))

    def png_grid(self, syn: SyntheticSet, folder: str, per_row: int) -> list[str]:
        return export_png_grid(syn, str(folder), decode=default_decode(syn), per_row=per_row)

    def ddranking(self, syn: SyntheticSet, folder: str, dataset: Optional[str]) -> list[str]:
        from .export_ddranking import export_ddranking

        return export_ddranking(syn, str(folder), dataset=dataset)
