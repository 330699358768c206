"""The export service: a stored synthetic set in the published layout and as pictures.

``images_best.pt``, ``labels_best.pt`` and ``lr_best.pt`` (what the MTT/TESLA code and
its evaluation scripts load) in the output folder, and one PNG grid per class in its
``images/`` folder, through the :class:`~tesla.domain.ports.SetExporter` port.
"""

from __future__ import annotations

from pathlib import Path

from tesla.domain.errors import ConfigError
from tesla.domain.ports import ReadSet, SetExporter


def export_set(url: str, out: Path, *, read_set: ReadSet, exporter: SetExporter, published: bool = True,
               png: bool = True, per_row: int = 10) -> list[str]:
    """Export the set at ``url`` into ``out``; returns the paths written."""
    if png and (isinstance(per_row, bool) or not isinstance(per_row, int) or per_row < 1):
        raise ConfigError(f"--per-row must be an integer >= 1 (got {per_row!r})")
    syn = read_set(url)
    written: list[str] = []
    if published:
        written += exporter.published(syn, str(out))
    if png:
        written += exporter.png_grid(syn, str(Path(out) / "images"), per_row)
    return written
