"""Figures of the benchmarks, drawn with matplotlib (the Agg backend: files, no window).

:func:`plot_memory` is the :class:`~tesla.domain.ports.MemoryPlot` port: memory in MiB
against the number of matching steps, one line per engine, out-of-memory points marked
on the x axis; on a CPU a second panel shows the peak resident set above each point's
start.

:func:`plot_quality` is the :class:`~tesla.domain.ports.QualityPlot` port: ``tesla bench
quality``'s table as bars, one per recipe (mean and std over the evaluation networks),
the baseline in its own colour, random real images as a line with its std band, and a
recipe the guard stopped as an empty hatched bar marked "stopped".
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tesla.domain.bench import OOM, MemoryResult
from tesla.domain.quality import TableRow


def plot_memory(result: MemoryResult, path: Path) -> Path:
    """Memory (MiB) against steps, one line per engine; OOM points marked on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = result.measure != "device peak"
    fig, axes = plt.subplots(1, 2 if cpu else 1, figsize=(11 if cpu else 6, 4), squeeze=False)
    rss_title = ("peak RSS above start (a child per point)" if result.isolated
                 else "peak RSS above start (in process: cumulative)")
    panels = [("primary", result.measure)] + ([("rss_delta", rss_title)] if cpu else [])
    for ax, (field, title) in zip(axes[0], panels):
        for engine in dict.fromkeys(p.engine for p in result.points):
            pts = [p for p in result.points if p.engine == engine]
            ok = [(p.steps, (p.primary if field == "primary" else getattr(p, field)) / 2**20) for p in pts
                  if p.status != OOM]
            line = ax.plot([a for a, _ in ok], [b for _, b in ok], marker="o", label=engine)
            oom = [p.steps for p in pts if p.status == OOM]
            if oom:
                ax.plot(oom, [0] * len(oom), "x", color=line[0].get_color(), markersize=10,
                        label=f"{engine} OOM")
        ax.set_xlabel("matching steps N")
        ax.set_ylabel("MiB")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    m = result.settings.model
    fig.suptitle(f"{m.name} width {m.width}, {m.channels}x{m.image_size}x{m.image_size}, {m.num_classes} classes, "
                 f"IPC {result.settings.ipc}, batch {result.settings.batch_syn or 'all'} ({result.settings.device})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_quality(rows: Sequence[TableRow], baseline: str, title: str, path: Path) -> Path:
    """Accuracy per recipe (a panel per evaluation architecture) beside random real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r.model for r in rows))
    names = list(dict.fromkeys(r.recipe for r in rows))
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(max(6.0, 0.9 * len(names) + 2), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = {r.recipe: r for r in rows if r.model == model}
        tops = [(mine[n].mean or 0.0) + (mine[n].std or 0.0) for n in names]
        for i, name in enumerate(names):
            r = mine[name]
            if r.mean is None:
                ax.bar(i, 0.0, color="none", edgecolor="grey", hatch="//")
                ax.text(i, 0.5, r.status, rotation=90, ha="center", va="bottom", fontsize=8, color="firebrick")
                continue
            colour = "tab:orange" if name == baseline else "tab:blue"
            ax.bar(i, r.mean, yerr=r.std, capsize=3, color=colour)
            ax.text(i, r.mean + (r.std or 0.0), f"{r.mean:.1f}", ha="center", va="bottom", fontsize=8)
        ref = next((r for r in mine.values() if r.real_mean is not None), None)
        if ref is not None:
            ax.axhline(ref.real_mean, color="tab:red", linestyle="--",
                       label=f"random real {ref.real_mean:.1f} ± {ref.real_std:.1f}")
            ax.axhspan(ref.real_mean - ref.real_std, ref.real_mean + ref.real_std, color="tab:red", alpha=0.1)
            tops.append(ref.real_mean + ref.real_std)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel("test accuracy, %")
        ax.set_ylim(0, max(tops + [1.0]) * 1.15)
        ax.set_title(f"{model} (baseline {baseline} in orange)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
