"""Figures of the benchmarks, drawn with matplotlib (the Agg backend: files, no window).

:func:`plot_memory` is the :class:`~tesla.domain.ports.MemoryPlot` port: memory in MiB
against the number of matching steps, one line per row (engine, and batch and
micro-batch when the bench had a batch axis), out-of-memory points marked on the x
axis; on a CPU a second panel shows the peak resident set above each point's start;
with a batch axis, panels of memory against the micro-batch at the largest number of
steps, one line per (engine, batch) (instead of the steps panels when only one number of
steps was measured). Engines differ by marker and line style
and are labelled at their last point with a per-engine offset, so equal lines (``tesla``
and ``exact`` save the same activations) stay visible on top of each other.

:func:`plot_speed` is the :class:`~tesla.domain.ports.SpeedPlot` port: median seconds
per iteration as bars, one group per number of steps, each bar labelled with its ratio
to ``unrolled``.

:func:`plot_quality` is the :class:`~tesla.domain.ports.QualityPlot` port: ``tesla bench
quality``'s table as bars, one per recipe (mean and std over the evaluation networks),
the baseline in its own colour, random real images as a line with its std band, and a
recipe the guard stopped as an empty hatched bar marked "stopped".
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tesla.domain.bench import OOM, MemoryResult, SpeedResult
from tesla.domain.quality import TableRow

# per engine: marker, line style, marker size, filled; a larger hollow marker lets the
# line drawn after it show through
STYLE = {"unrolled": ("o", "-", 6, True), "tesla": ("s", "--", 6, True), "exact": ("^", ":", 11, False),
         "tesla-batched": ("D", "-.", 6, True), "exact-remake": ("v", (0, (5, 1, 1, 1)), 9, False)}
LABEL_OFFSET = {"unrolled": 10, "tesla": -12, "exact": 12, "tesla-batched": -24, "exact-remake": 24}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styled(ax, xs, ys, engine: str, label: str, color=None):
    marker, dash, size, filled = STYLE.get(engine, ("o", "-", 6, True))
    line = ax.plot(xs, ys, marker=marker, linestyle=dash, markersize=size, label=label, color=color,
                   markerfacecolor=None if filled else "none", markeredgewidth=1.5, alpha=0.9)
    if xs:
        ax.annotate(engine, (xs[-1], ys[-1]), xytext=(6, LABEL_OFFSET.get(engine, 0)), textcoords="offset points",
                    fontsize=7, color=line[0].get_color(), va="center")
    return line[0]


def _memory_panel(ax, result: MemoryResult, field: str, title: str) -> None:
    from matplotlib import ticker

    pairs = result.pairs
    colors = {pair: f"C{i}" for i, pair in enumerate(pairs)} if len(pairs) > 1 else {}
    for label in dict.fromkeys(result.label(p) for p in result.points):
        pts = [p for p in result.points if result.label(p) == label]
        engine = pts[0].engine
        ok = [(p.steps, p.value(field) / 2**20) for p in pts if p.status != OOM and p.value(field) is not None]
        color = colors.get((pts[0].batch_syn, pts[0].micro_batch))
        line = _styled(ax, [a for a, _ in ok], [b for _, b in ok], engine, label, color)
        oom = [p.steps for p in pts if p.status == OOM]
        if oom:
            ax.plot(oom, [0] * len(oom), "x", color=line.get_color(), markersize=10, label=f"{label} OOM")
    ax.set_xlabel("matching steps N")
    steps = sorted({p.steps for p in result.points})
    if len(steps) <= 12:
        ax.set_xticks(steps)
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel("MiB")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, framealpha=0.6)


def _micro_panel(ax, result: MemoryResult, field: str, title: str) -> None:
    """Memory against the micro-batch at the largest number of steps, per (engine, batch)."""
    from matplotlib import ticker

    n = max(p.steps for p in result.points)
    rows = {}
    for p in result.points:
        if p.steps == n and p.status != OOM and p.value(field) is not None:
            micro = p.micro_batch or result.batch_of(p)
            rows.setdefault((p.engine, result.batch_of(p)), []).append((micro, p.value(field) / 2**20))
    for i, ((engine, batch), pts) in enumerate(rows.items()):
        pts.sort()
        _styled(ax, [a for a, _ in pts], [b for _, b in pts], engine, f"{engine}, batch {batch}", f"C{i}")
    ax.set_xscale("log")
    ticks = sorted({m for pts in rows.values() for m, _ in pts})
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("micro-batch (images per piece of a step)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{title} by micro-batch at {n} steps", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, framealpha=0.6)


def plot_speed(result: SpeedResult, path: Path) -> Path:
    """Median seconds per iteration as bars grouped by steps; ratio to unrolled above each bar."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = list(dict.fromkeys(r.steps for r in result.rows))
    labels = list(dict.fromkeys(r.label for r in result.rows))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(steps) * len(labels) ** 0.5 + 4), 4))
    for i, label in enumerate(labels):
        xs, ys, notes = [], [], []
        for j, n in enumerate(steps):
            r = next((r for r in result.rows if r.label == label and r.steps == n), None)
            if r is None:
                continue
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            ys.append(0 if r.median is None else r.median)
            notes.append(OOM if r.median is None else ("" if r.ratio is None else f"{r.ratio:.2f}x"))
        bars = ax.bar(xs, ys, width=width * 0.95, label=label, color=f"C{i}")
        for bar, note in zip(bars, notes):
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels([f"{n} steps" for n in steps])
    ax.set_ylabel(f"seconds per iteration (median of {result.repeats})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    s, m = result.settings, result.settings.model
    extras = ("" if s.micro_batch is None else f", micro-batch {s.micro_batch}") + \
        ("" if s.threads is None else f", {s.threads} thread(s)")
    ax.set_title(f"{m.name} width {m.width}, {m.channels}x{m.image_size}x{m.image_size}, {m.num_classes} classes, "
                 f"IPC {s.ipc}, batch {s.batch_syn or 'all'}{extras} ({s.device}); above bars: x unrolled",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_memory(result: MemoryResult, path: Path) -> Path:
    """Memory (MiB) against steps, one line per row; OOM points marked on the x axis; with a
    batch axis, a panel of memory against the micro-batch."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = result.measure != "device peak"
    rss_title = ("peak RSS above start (a child per point)" if result.isolated
                 else "peak RSS above start (in process: cumulative)")
    fields = [("primary", result.measure)] + ([("rss_delta", rss_title)] if cpu else [])
    # by steps when there are several step counts (or nothing else to show), by micro-batch
    # when there is a batch axis: a panel per measure and per axis
    by_steps = len({p.steps for p in result.points}) > 1 or len(result.pairs) <= 1
    by_micro = len(result.pairs) > 1 and bool(result.points)
    drawn = [(_memory_panel, f) for f in fields if by_steps] + [(_micro_panel, f) for f in fields if by_micro]
    fig, axes = plt.subplots(1, len(drawn), figsize=(5.5 * len(drawn), 4.5), squeeze=False)
    for ax, (panel, (field, title)) in zip(axes[0], drawn):
        panel(ax, result, field, title)
    s, m = result.settings, result.settings.model
    batches = ",".join(str(b) for b in sorted({result.batch_of(p) for p in result.points})) or str(s.batch)
    threads = "" if s.threads is None else f", {s.threads} thread(s)"
    fig.suptitle(f"{m.name} width {m.width}, {m.channels}x{m.image_size}x{m.image_size}, {m.num_classes} classes, "
                 f"IPC {s.ipc}, batch {batches}{threads} ({s.device})")
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
