"""Keeping a run's evaluation results beside it: the bar chart, a Markdown table, JSON.

``tesla demo`` and ``tesla run`` end with a results table on the terminal; the same
figures go into the run directory, with the settings that made them, so a document can
quote a file a command wrote (``results.md``) and show its picture (``results.png``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import attrs

from tesla.domain.ports import ResultsChart, RunFiles
from tesla.domain.report import results_json, results_markdown

RESULTS_CHART = "results.png"
RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"


@attrs.frozen
class KeptScore:
    """A score as ``results.json`` keeps it."""

    model: str
    subject: str
    mean: float
    std: float
    accuracies: tuple

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"


def read_results(files: RunFiles, run_dir: Path) -> tuple:
    """The scores ``results.json`` in ``run_dir`` keeps."""
    data = json.loads(files.read_text(Path(run_dir) / RESULTS_JSON))
    return tuple(KeptScore(model=s["model"], subject=s["subject"], mean=s["mean"], std=s["std"],
                           accuracies=tuple(s["accuracies"])) for s in data["scores"])


def keep_results(scores: Sequence[Any], run_dir: Path, *, chart: Optional[ResultsChart], files: Optional[RunFiles],
                 title: str, engine: str, ipc: int, settings: Mapping[str, Any],
                 chance: Optional[float]) -> tuple:
    """``results.png`` (with ``chart``), ``results.md`` and ``results.json`` (with
    ``files``) in ``run_dir``; returns the paths written."""
    written = []
    if chart is not None:
        written.append(chart(scores, Path(run_dir) / RESULTS_CHART, title=title, chance=chance))
    if files is not None:
        for name, text in ((RESULTS_MD, results_markdown(scores, engine=engine, ipc=ipc, settings=settings)),
                           (RESULTS_JSON, results_json(scores, settings=settings))):
            files.write_atomic(Path(run_dir) / name, text)
            written.append(Path(run_dir) / name)
    return tuple(written)


__all__ = ["KeptScore", "RESULTS_CHART", "RESULTS_JSON", "RESULTS_MD", "keep_results", "read_results"]
