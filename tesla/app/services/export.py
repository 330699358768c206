"""The export service: a stored synthetic set for other tools and as pictures.

Two layouts, through the :class:`~tesla.domain.ports.SetExporter` port:

- ``mtt`` (the default): ``images_best.pt``, ``labels_best.pt`` and ``lr_best.pt`` (what
  the MTT/TESLA code and its evaluation scripts load) in the output folder, and its pictures
  (overview and one per class) in its ``images/`` folder;
- ``ddranking``: ``images.pt``, ``labels.pt``, ``lr.pt``, ``meta.json`` and a
  ``README.md`` with the call to run, as DD-Ranking's evaluators load them (class-sorted,
  in its input space for the dataset; see ``docs/EVALUATION.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tesla.domain.errors import ConfigError
from tesla.domain.ports import ReadSet, SetExporter

LAYOUTS = ("mtt", "ddranking")


def export_set(url: str, out: Path, *, read_set: ReadSet, exporter: SetExporter, published: bool = True,
               png: bool = True, per_row: int = 10, layout: str = "mtt", dataset: Optional[str] = None) -> list[str]:
    """Export the set at ``url`` into ``out`` in ``layout``; returns the paths written.

    ``dataset`` names DD-Ranking's dataset (``ddranking`` layout only; default: the set's)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if dataset is not None and layout != "ddranking":
        raise ConfigError("--dataset names DD-Ranking's dataset: use it with --layout ddranking")
    if png and (isinstance(per_row, bool) or not isinstance(per_row, int) or per_row < 1):
        raise ConfigError(f"--per-row must be an integer >= 1 (got {per_row!r})")
    syn = read_set(url)
    if layout == "ddranking":
        return exporter.ddranking(syn, str(out), dataset)
    written: list[str] = []
    if published:
        written += exporter.published(syn, str(out))
    if png:
        written += exporter.png_grid(syn, str(Path(out) / "images"), per_row)
    return written
