"""The results of an evaluation as records: the table a command prints, as Markdown and JSON.

``tesla demo`` and ``tesla run`` print their results as a table and keep them in the run
directory (``results.md``, ``results.json``), so the figures a document quotes come from a
file a command wrote, with the settings beside them. Scores are anything with ``model``,
``subject``, ``mean``, ``std`` (percent) and ``accuracies`` (one per network). Pure.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

SUBJECTS = {"synthetic": "distilled", "random-real": "random real", "full-real": "full real"}


def trained_on(subject: str, *, engine: str, ipc: int) -> str:
    """What a row's networks were trained on, in words: ``distilled (tesla), IPC 10``."""
    if subject == "synthetic":
        return f"distilled ({engine}), IPC {ipc}"
    if subject == "random-real":
        return f"random real, IPC {ipc}"
    return SUBJECTS.get(subject, subject)


def results_markdown(scores: Sequence[Any], *, engine: str, ipc: int, settings: Mapping[str, Any]) -> str:
    """A Markdown table of ``scores``, with the settings that made them listed under it."""
    lines = ["| trained on | model | top-1 % (mean +- std) | networks |", "|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {trained_on(s.subject, engine=engine, ipc=ipc)} | {s.model} | "
                     f"{s.mean:.2f} +- {s.std:.2f} | {len(s.accuracies)} |")
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def results_json(scores: Sequence[Any], *, settings: Mapping[str, Any]) -> str:
    """``{"settings": ..., "scores": [{model, subject, mean, std, accuracies}, ...]}``."""
    return json.dumps({"settings": dict(settings),
                       "scores": [{"model": s.model, "subject": s.subject, "mean": s.mean, "std": s.std,
                                   "accuracies": list(s.accuracies)} for s in scores]}, indent=2)


__all__ = ["results_json", "results_markdown", "trained_on"]
