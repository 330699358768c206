"""The export service: a stored synthetic set in the published layout and as pictures.

``images_best.pt``, ``labels_best.pt`` and ``lr_best.pt`` (what the MTT/TESLA code and
its evaluation scripts load) in the output folder, and its pictures (overview and one per class) in its
``images/`` folder, through the :class:`~tesla.domain.ports.SetExporter` port.
"""

from __future__ import annotations

from pathlib import Path

from tesla.domain.ports import ReadSet, SetExporter


def export_set(url: str, out: Path, *, read_set: ReadSet, exporter: SetExporter, published: bool = True,
               png: bool = True, per_row: int = 10) -> list[str]:
    """Export the set at ``url`` into ``out``; returns the paths written."""
    syn = read_set(url)
    written: list[str] = []
    if published:
        written += exporter.published(syn, str(out))
    if png:
        written += exporter.png_grid(syn, str(Path(out) / "images"), per_row)
    return written
