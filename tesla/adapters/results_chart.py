"""The evaluation results as a bar chart (matplotlib, the Agg backend: a file, no window).

One group of bars per evaluated model, one bar per subject (the distilled set, random
real images at the same IPC, the whole real training set), the standard deviation over
the networks as an error bar and the mean written on each bar, and chance (100 / classes)
as a dashed line: the picture beside the table that ``tesla demo`` and ``tesla run`` print.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

SUBJECTS = {"synthetic": "distilled", "random-real": "random real, same IPC", "full-real": "full real data"}
COLOURS = {"synthetic": "#1f77b4", "random-real": "#9e9e9e", "full-real": "#2ca02c"}


def plot_results(scores: Sequence[Any], path: Path, *, title: str, chance: Optional[float] = None) -> Path:
    """Write the chart of ``scores`` (each with ``model``, ``subject``, ``mean``, ``std`` in
    percent and ``accuracies``) to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(s.model for s in scores))
    subjects = [k for k in SUBJECTS if any(s.subject == k for s in scores)]
    subjects += [k for k in dict.fromkeys(s.subject for s in scores) if k not in subjects]
    width = 0.8 / max(1, len(subjects))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 + 2.2 * len(models)), 4.4))
    top = 0.0
    labelled: set = set()
    for j, subject in enumerate(subjects):
        for i, model in enumerate(models):
            found = [s for s in scores if s.model == model and s.subject == subject]
            if not found:
                continue
            s = found[-1]
            x = i + (j - (len(subjects) - 1) / 2) * width
            ax.bar(x, s.mean, width * 0.92, yerr=s.std, capsize=4, color=COLOURS.get(subject, "#ff7f0e"),
                   label=None if subject in labelled else SUBJECTS.get(subject, subject))
            labelled.add(subject)
            ax.text(x, s.mean + s.std + 0.8, f"{s.mean:.1f} ± {s.std:.1f}", ha="center", va="bottom", fontsize=9)
            top = max(top, s.mean + s.std)
    if chance is not None:
        ax.axhline(chance, color="#d62728", linestyle="--", linewidth=1, label=f"chance ({chance:g} %)")
    ax.set_xticks(range(len(models)), [f"{m}\n(n={_networks(scores, m)})" for m in models])
    ax.set_ylabel("top-1 test accuracy, %")
    ax.set_ylim(0, max(10.0, top * 1.15 + 3))
    ax.set_title(textwrap.fill(title, 72), fontsize=10)  # a long data path wraps instead of leaving the figure
    ax.grid(axis="y", alpha=0.3)
    # below the axes: a legend inside would sit on the tallest bar's label
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(subjects) + (chance is not None),
              fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _networks(scores: Sequence[Any], model: str) -> str:
    counts = sorted({len(s.accuracies) for s in scores if s.model == model})
    return "/".join(map(str, counts))
