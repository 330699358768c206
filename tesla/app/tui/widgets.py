"""Widgets of the run screen; each redraws from the app's :class:`RunState`.

Every widget carries a ``revision`` reactive that the app binds to its own
(``widget.data_bind(TeslaApp.revision)``): when new events have been folded into the
state the app bumps its revision, Textual propagates it, and each widget's
``watch_revision`` re-reads what it shows from ``app.state``. Widgets never read files
and never block; plots thin long series before drawing.
"""

from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, RichLog, Static
from textual_plotext import PlotextPlot

from tesla.app.tui.preview import half_blocks
from tesla.app.tui.state import (
    BASELINE_SUBJECTS,
    RunState,
    format_bytes,
    format_duration,
    thin,
)

MAX_PLOT_POINTS = 600
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")
STATUS_STYLE = {"running": "bold green", "completed": "bold cyan", "cancelled": "bold yellow",
                "failed": "bold red", "waiting": "dim"}
LOG_STYLE = {"info": "", "warning": "yellow", "error": "bold red", "checkpoint": "cyan"}


def _state(widget: Widget) -> RunState:
    return widget.app.state  # type: ignore[attr-defined]


def _num(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def _bar(fraction: Optional[float], width: int = 20) -> Text:
    text = Text()
    if fraction is None:
        return text.append("─" * width, "dim")
    filled = int(round(fraction * width))
    return text.append("━" * filled, "bold magenta").append("━" * (width - filled), "grey35")


def header_text(state: RunState, job_status: Optional[str] = None, width: int = 80) -> Text:
    """The three header lines, each cropped to ``width``: what runs; status and progress
    with rate and ETA; the latest loss, memory, best accuracy and elapsed time."""
    line1 = Text(no_wrap=True, overflow="ellipsis")
    line1.append(state.job or "waiting for events", "bold")
    for label, value in state.header_labels():
        line1.append("  ")
        if label not in ("data", "model"):  # the values speak for themselves
            line1.append(f"{label} ", "dim")
        line1.append(value)

    line2 = Text(no_wrap=True, overflow="ellipsis")
    line2.append(state.status, STATUS_STYLE.get(state.status, "bold"))
    if job_status:
        line2.append(f" (job {job_status})", "italic")
    warnings, errors = state.counts.get("warning", 0), state.counts.get("error", 0)
    if warnings:
        line2.append(f" ⚠{warnings}", "yellow")
    if errors:
        line2.append(f" ✖{errors}", "bold red")
    done, total = state.done, state.progress_total
    line2.append(f"  {state.unit} {_num(done, 'd')}/{_num(total, 'd')} ")
    tail = Text()
    if state.fraction is not None:
        tail.append(f" {state.fraction * 100:3.0f}%")
    rate = state.rate
    unit = "ep/s" if state.is_experts else "it/s"
    tail.append(f"  {_num(rate, '.2f')} {unit}" if rate is None or rate >= 0.1
                else f"  {1 / rate:.1f} s/{state.unit[:2]}")
    tail.append(f"  ETA {format_duration(state.eta)}", "dim")
    line2.append_text(_bar(state.fraction, max(6, min(30, width - line2.cell_len - tail.cell_len))))
    line2.append_text(tail)

    line3 = Text(no_wrap=True, overflow="ellipsis")
    if state.is_experts and state.epochs:
        last = state.epochs[-1]
        line3.append(f"expert {last.expert} epoch {last.epoch}/{last.epochs}  ")
        line3.append(f"loss {last.train_loss:.4g}  train {last.train_acc:.1f}%")
        if last.test_acc is not None:
            line3.append(f"  test {last.test_acc:.1f}%")
    else:
        line3.append(f"loss {_num(state.last_loss)}  lr {_num(state.last_lr)}")
    mem = state.latest_memory()
    if mem is not None:
        if mem.device_allocated is not None:
            line3.append(f"  dev {format_bytes(mem.device_allocated)}/{format_bytes(mem.device_peak)}")
        line3.append(f"  host {format_bytes(mem.host_rss)}")
    best = state.best("synthetic")
    if best is not None:
        line3.append(f"  best {best.mean:.2f}%", "bold green")
    for label, (pdone, ptotal) in list(state.progress.items())[-1:]:
        line3.append(f"  {label} {pdone}/{_num(ptotal, 'd')}")
    line3.append(f"  {format_duration(state.elapsed)}", "dim")
    for line in (line1, line2, line3):
        line.truncate(width, overflow="ellipsis")
    return Text("\n", no_wrap=True, overflow="ellipsis").join([line1, line2, line3])


class RunHeader(Static):
    """What runs (job, data, model, IPC, engine, labels), progress with rate and ETA,
    and the latest loss / memory / best accuracy."""

    revision: reactive[int] = reactive(0)

    def watch_revision(self) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        width = self.content_size.width or self.app.size.width - 2
        self.update(header_text(_state(self), getattr(self.app, "job_status", None), width))


class SeriesPlot(PlotextPlot):
    """A plotext line plot of some of the state's series; subclasses pick which."""

    revision: reactive[int] = reactive(0)
    title = "plot"

    def series(self, state: RunState) -> dict[str, list[tuple[float, float]]]:
        raise NotImplementedError

    def decorate(self, state: RunState, series: dict) -> None:
        """Extra drawing after the series (reference lines, limits)."""

    def plot_title(self, state: RunState) -> str:
        return self.title

    def watch_revision(self) -> None:
        self.replot()

    def replot(self) -> None:
        state = _state(self)
        plt = self.plt
        plt.clear_data()
        plt.ylim(None, None)
        series = {k: v for k, v in self.series(state).items() if v}
        plt.title(self.plot_title(state) + ("" if series else " (no data yet)"))
        for i, (label, points) in enumerate(series.items()):
            pts = thin(points, MAX_PLOT_POINTS)
            plt.plot([p[0] for p in pts], [p[1] for p in pts], label=label,
                     marker="braille", color=COLOURS[i % len(COLOURS)])
        self.decorate(state, series)
        self.refresh()


class LossPlot(SeriesPlot):
    """Matching loss per iteration (expert runs: train loss per epoch)."""

    def plot_title(self, state: RunState) -> str:
        return "train loss (expert)" if state.is_experts else "matching loss"

    def series(self, state: RunState) -> dict:
        return state.loss_series()


class SecondPlot(SeriesPlot):
    """The learned student lr (expert runs: train and test accuracy)."""

    def plot_title(self, state: RunState) -> str:
        return state.second_title

    def series(self, state: RunState) -> dict:
        return state.second_series()


class MemoryPlot(SeriesPlot):
    """Device allocated/peak and host RSS in MiB, from zero, with a reference line at the
    first sample's peak: constant memory shows as a line lying on the reference."""

    title = "memory MiB"

    def series(self, state: RunState) -> dict:
        return state.memory_series()

    def decorate(self, state: RunState, series: dict) -> None:
        ref = state.memory_reference
        if ref is None:
            return
        self.plt.hline(ref, "gray")
        top = max([ref] + [p[1] for pts in series.values() for p in pts])
        self.plt.ylim(0, top * 1.15 if top > 0 else 1)


class AccuracyPlot(SeriesPlot):
    """Mean accuracy of networks trained on the synthetic set over iterations, against
    the random-real (and full-real) baselines, drawn as flat lines across the run."""

    title = "accuracy %"

    def series(self, state: RunState) -> dict:
        series = state.accuracy_series()
        xs = [p[0] for pts in series.values() for p in pts] + [float(state.iteration or 0)]
        lo, hi = min(xs), max(xs)
        for label in list(series):
            if label.endswith(BASELINE_SUBJECTS) and hi > lo:
                last = series[label][-1][1]
                series[label] = [(lo, last), (hi, last)]
        return series


class MemoryNumbers(Static):
    """Current and highest memory figures as text."""

    revision: reactive[int] = reactive(0)

    def watch_revision(self) -> None:
        state = _state(self)
        mem = state.latest_memory()
        if mem is None:
            self.update(Text("no memory samples yet", "dim"))
            return
        dev_peak, host_peak = state.peak_memory()
        text = Text(no_wrap=True, overflow="ellipsis")
        if mem.device_allocated is not None:
            text.append("device ", "bold").append(f"allocated {format_bytes(mem.device_allocated)}  "
                                                  f"peak {format_bytes(mem.device_peak)}  "
                                                  f"max peak {format_bytes(dev_peak)}\n")
        else:
            text.append("device ", "bold").append("- (CPU run: no device allocator)\n", "dim")
        text.append("host   ", "bold").append(f"RSS {format_bytes(mem.host_rss)}  max {format_bytes(host_peak)}  ")
        text.append(f"reference {state.memory_reference:.1f} MiB  samples {len(state.memory)}", "dim")
        self.update(text)


class EvalTable(DataTable):
    """Every Evaluation: iteration, model, subject, mean ± std, n."""

    revision: reactive[int] = reactive(0)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("iter", "model", "subject", "accuracy %", "n")
        self._shown = 0
        self._state: Optional[RunState] = None

    def watch_revision(self) -> None:
        state = _state(self)
        if not hasattr(self, "_shown"):
            return  # not mounted yet; on_mount's first revision comes next
        if state is not self._state:  # the log was replaced: start over
            self.clear()
            self._shown, self._state = 0, state
        for e in state.evaluations[self._shown:]:
            style = "bold green" if e.subject == "synthetic" else ""
            self.add_row(_num(e.iteration, "d"), e.model, Text(e.subject, style),
                         f"{e.mean:.2f} ± {e.std:.2f}", str(e.n))
        self._shown = len(state.evaluations)


class PreviewView(Widget):
    """The last Preview grid drawn with half blocks, shrunk to fit."""

    revision: reactive[int] = reactive(0)

    DEFAULT_CSS = """
    PreviewView { width: 1fr; height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cache: tuple[Any, tuple[int, int], Text] | None = None

    def watch_revision(self) -> None:
        preview = _state(self).preview
        if self._cache is None or self._cache[0] is not preview:
            self.refresh()

    def render(self) -> Text:
        preview = _state(self).preview
        if preview is None:
            return Text("no preview yet: the run sends one with each checkpoint", "dim")
        size = (self.size.width, max(self.size.height - 1, 1))
        if self._cache is not None and self._cache[0] is preview and self._cache[1] == size:
            return self._cache[2]
        caption = Text(f"iteration {preview.iteration} · {preview.per_class} per class\n", "dim")
        text = caption + half_blocks(preview.pixels, *size)
        self._cache = (preview, size, text)
        return text


class LogPanel(RichLog):
    """Warnings, errors, checkpoints and run start/finish, appended as they come."""

    revision: reactive[int] = reactive(0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, **kwargs)
        self._seen = 0
        self._state: Optional[RunState] = None

    def watch_revision(self) -> None:
        state = _state(self)
        if state is not self._state:
            self.clear()
            self._seen, self._state = 0, state
        dropped = state.log_count - len(state.log)  # lines the bounded log already let go
        lines = list(state.log)[max(self._seen - dropped, 0):]
        for line in lines:
            where = "" if line.iteration is None else f"[{line.iteration}] "
            self.write(Text(f"{line.level:<10} {where}{line.text}", LOG_STYLE.get(line.level, "")))
        self._seen = state.log_count


__all__ = ["RunHeader", "LossPlot", "SecondPlot", "MemoryPlot", "AccuracyPlot", "MemoryNumbers",
           "EvalTable", "PreviewView", "LogPanel", "header_text"]
