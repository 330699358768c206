"""Figures of the benchmarks, drawn with matplotlib (the Agg backend: files, no window).

:func:`plot_memory` is the :class:`~tesla.domain.ports.MemoryPlot` port: memory in MiB
against the number of matching steps, one line per engine, out-of-memory points marked
on the x axis; on a CPU a second panel shows the peak resident set above each point's
start.
"""

from __future__ import annotations

from pathlib import Path

from tesla.domain.bench import OOM, MemoryResult


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
