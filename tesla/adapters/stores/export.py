"""Exports of a stored synthetic set: the published ``.pt`` files and PNG grids.

``export_published`` writes what the MTT/TESLA code and its evaluation scripts load
(``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``) as plain tensors, so
``torch.load(..., weights_only=True)`` reads them. ``export_png_grid`` writes one image
grid per class through torchvision; images are decoded from model space (un-whitened
when ZCA was used) with the stored normaliser, else scaled per image to [0, 1] so a
whitened set is still visible.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

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


def export_png_grid(
    syn: SyntheticSet,
    out_dir: str,
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    per_row: int = 10,
    max_overview_classes: int = 20,
) -> list[str]:
    """Write one PNG grid per class, ``class_<id>.png`` (``per_row`` images a row), and
    ``overview.png``: a row per class (the first ``max_overview_classes``) of up to 10 images.

    Args:
        syn: the set.
        out_dir: folder for the PNGs (created).
        decode: maps model-space images (B, C, H, W) to [0, 1]; default
            :func:`default_decode`.
        per_row: images per grid row.
        max_overview_classes: classes shown in ``overview.png``.

    Returns:
        The paths written, in class order, the overview last.
    """
    from torchvision.utils import save_image

    os.makedirs(out_dir, exist_ok=True)
    decode = decode or default_decode(syn)
    images = torch.from_numpy(np.ascontiguousarray(syn.images, dtype=np.float32))
    labels = np.asarray(syn.labels)
    width = max(3, len(str(max(int(labels.max()) if labels.size else 0, 1))))
    paths = []
    for c in np.unique(labels):
        with torch.no_grad():
            shown = decode(images[torch.from_numpy(labels == c)]).clamp(0.0, 1.0)
        path = os.path.join(out_dir, f"class_{int(c):0{width}d}.png")
        save_image(shown, path, nrow=per_row, padding=2)
        paths.append(path)
    overview = _overview(images, labels, decode, max_classes=max_overview_classes)
    if overview is not None:
        path = os.path.join(out_dir, "overview.png")
        save_image(overview[0], path, nrow=overview[1], padding=2)
        paths.append(path)
    return paths


def _overview(images: torch.Tensor, labels: np.ndarray, decode: Callable, *, max_classes: int,
              per_class: int = 10) -> Optional[tuple[torch.Tensor, int]]:
    """Images for one grid of the first ``max_classes`` classes: a row per class, up to
    ``per_class`` images each (nearest-upsampled to at least 32 px so small sets are visible)."""
    classes = np.unique(labels)[:max_classes]
    if classes.size == 0:
        return None
    k = min(per_class, min(int((labels == c).sum()) for c in classes))
    idx = np.concatenate([np.flatnonzero(labels == c)[:k] for c in classes])
    with torch.no_grad():
        shown = decode(images[torch.from_numpy(idx)]).clamp(0.0, 1.0)
    side = shown.shape[-1]
    if side < 32:
        shown = torch.nn.functional.interpolate(shown, scale_factor=-(-32 // side), mode="nearest")
    return shown, k


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
