"""Widgets of the run screen; each redraws from the app's :class:`RunState`.

Every widget carries a ``revision`` reactive that the app binds to its own
(``widget.data_bind(TeslaApp.revision)``): when new events have been folded into the
state the app bumps its revision, Textual propagates it, and each widget's
``watch_revision`` re-reads what it shows from ``app.state``. Widgets never read files
and never block; plots thin long series before drawing.

Plots are a title-and-legend line above a plotext canvas rather than plotext's own
legend, which sits inside the frame and hides the data under it (a lone accuracy point
at the start of a run vanished there). Iteration and epoch axes carry integer ticks;
curves of a single point, and evaluations, are drawn with a dot so they show.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from rich.bar import Bar
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, RichLog, Static
from textual_plotext import PlotextPlot

from tesla.app.tui.preview import half_blocks, tile_preview
from tesla.app.tui.state import (
    BASELINE_SUBJECTS,
    RunState,
    format_accuracy,
    format_bytes,
    format_duration,
    format_mib,
    integer_ticks,
    thin,
)

MAX_PLOT_POINTS = 600
MAX_DOTS = 40  # curves with up to this many points get a dot on each
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")
SUBJECT_COLOURS = {"synthetic": "cyan", "random-real": "magenta", "full-real": "green", "expert test": "yellow"}
STATUS_STYLE = {"running": "bold green", "completed": "bold cyan", "cancelled": "bold yellow",
                "failed": "bold red", "waiting": "dim"}
LOG_STYLE = {"info": "", "warning": "yellow", "error": "bold red", "checkpoint": "cyan", "result": "green"}
RICH_NAMES = {"gray": "bright_black"}  # plotext colour names Rich spells otherwise
DOT = "●"
GAP = "  "  # between the parts of a header line


def _state(widget: Widget) -> RunState:
    return widget.app.state  # type: ignore[attr-defined]


def _num(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


# -- the header ---------------------------------------------------------------------------------

def _bar(fraction: Optional[float], width: int) -> Text:
    text = Text()
    if fraction is None:
        return text.append("─" * width, "dim")
    filled = int(round(fraction * width))
    return text.append("━" * filled, "bold magenta").append("━" * (width - filled), "grey35")


def pack(groups: list[list[Text]], width: int) -> list[Text]:
    """Lay ``groups`` of parts out in lines of at most ``width`` cells: each group starts
    a line, parts follow one another two spaces apart and move whole to the next line
    when they do not fit. Only a part wider than ``width`` itself is cut."""
    lines: list[Text] = []
    for parts in groups:
        line = Text(no_wrap=True, overflow="ellipsis")
        for part in parts:
            if line.cell_len and line.cell_len + len(GAP) + part.cell_len > width:
                lines.append(line)
                line = Text(no_wrap=True, overflow="ellipsis")
            if line.cell_len:
                line.append(GAP)
            line.append_text(part)
        lines.append(line)
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines


def _what(state: RunState) -> list[Text]:
    parts = [Text(state.job or ("run" if state.counts else "waiting for events"), "bold")]
    for label, value in state.header_labels():
        part = Text()
        if label not in ("data", "model"):  # the values speak for themselves
            part.append(f"{label} ", "dim")
        parts.append(part.append(value))
    return parts


def _progress(state: RunState, job_status: Optional[str], width: int) -> list[Text]:
    """Status, progress (with a bar when the line has room for one), rate, time."""
    status = Text(state.status, STATUS_STYLE.get(state.status, "bold"))
    if job_status:
        status.append(f" (job {job_status})", "italic")
    warnings, errors = state.counts.get("warning", 0), state.counts.get("error", 0)
    if warnings:
        status.append(f" ⚠{warnings}", "yellow")
    if errors:
        status.append(f" ✖{errors}", "bold red")
    done = Text(f"{state.unit} {_num(state.done, 'd')}/{_num(state.progress_total, 'd')}")
    tail = []
    if state.fraction is not None:
        tail.append(Text(f"{state.fraction * 100:3.0f}%"))
    rate = state.rate
    unit = "ep/s" if state.is_experts else "it/s"
    if state.has_steps:
        tail.append(Text(f"{_num(rate, '.2f')} {unit}" if rate is None or rate >= 0.1
                         else f"{1 / rate:.1f} s/{state.unit[:2]}"))
    tail.append(Text(f"ETA {format_duration(state.eta)}", "dim"))
    used = sum(p.cell_len for p in [status, done] + tail) + len(GAP) * (len(tail) + 1)
    room = width - used - 2  # the bar sits between single spaces
    if room >= 6:
        done.append(" ").append_text(_bar(state.fraction, min(room, 30)))
        if tail and state.fraction is not None:
            done.append(" ").append_text(tail.pop(0))  # the percentage hugs its bar
    return [status, done] + tail


def _latest(state: RunState) -> list[Text]:
    """The latest loss (or expert epoch), memory, best accuracy and step progress."""
    parts: list[Text] = []
    if state.is_experts and state.epochs:
        last = state.epochs[-1]
        parts += [Text(f"expert {last.expert} epoch {last.epoch}/{last.epochs}"), Text(f"loss {last.train_loss:.4g}")]
        if last.test_acc is not None:
            parts.append(Text(f"train/test {last.train_acc:.1f}/{last.test_acc:.1f}%"))
        else:
            parts.append(Text(f"train {last.train_acc:.1f}%"))
    elif state.has_steps:
        parts += [Text(f"loss {_num(state.last_loss)}"), Text(f"lr {_num(state.last_lr)}")]
    mem = state.latest_memory()
    if mem is not None:
        if mem.device_allocated is not None:
            parts.append(Text(f"dev {format_mib(mem.device_allocated)}/{format_mib(mem.device_peak)} MiB"))
        parts.append(Text(f"host {format_mib(mem.host_rss)} MiB"))
    best = state.best("synthetic")
    if best is not None:
        parts.append(Text(f"best {best.mean:.2f}%", "bold green"))
    for label, (pdone, ptotal) in list(state.progress.items())[-1:]:
        if label != state.unit:  # else the progress line counts it already
            parts.append(Text(f"{label} {pdone}/{_num(ptotal, 'd')}"))
    parts.append(Text(format_duration(state.elapsed), "dim"))  # time since the run started
    return parts


def header_text(state: RunState, job_status: Optional[str] = None, width: int = 80) -> Text:
    """The header, whole at ``width`` cells: what runs; status and progress with rate,
    elapsed time and ETA; the latest loss, memory and best accuracy. Three lines at 80
    columns; parts that do not fit move to an extra line rather than being cut."""
    lines = pack([_what(state), _progress(state, job_status, width), _latest(state)], width)
    return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)


class RunHeader(Static):
    """What runs (job, data, model, IPC, engine, labels), progress with rate and ETA,
    and the latest loss / memory / best accuracy; as many lines as it needs."""

    revision: reactive[int] = reactive(0)

    def watch_revision(self) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        width = self.content_size.width or self.app.size.width - 2
        self.update(header_text(_state(self), getattr(self.app, "job_status", None), width))


# -- run health -------------------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values in [0, 1] as block characters (low to high)."""
    return "".join(SPARKS[min(int(v * len(SPARKS)), len(SPARKS) - 1)] for v in values[-width:])


def health_parts(state: RunState) -> list[Text]:
    """Label agreement (with its recent history) and entropy, and the collapse and stall
    streaks against the limits that stop the run."""
    h, limits = state.health, state.health_limits()
    parts = [Text("health", "bold")]
    if h is None:
        return parts + [Text("no iteration yet", "dim")]
    low = h.agreement is not None and h.agreement < limits.min_agreement
    if h.agreement is None:
        parts.append(Text("labels: class ids (agreement not measured)", "dim"))
    else:
        part = Text("agreement ").append(f"{h.agreement:.0%}", "bold red" if low else "bold green")
        history = sparkline([v for _, v in state.agreements], 12)
        if len(history) > 1:
            part.append(f" {history}", "red" if low else "green")
        parts += [part, Text(f"min {limits.min_agreement:.0%}", "dim")]
    if h.entropy is not None:
        parts.append(Text(f"entropy {h.entropy:.2f} nats"))
    if h.agreement is not None:
        parts.append(Text(f"below min {h.low_agreement}/{limits.collapse_iterations}",
                          "bold red" if h.low_agreement else "dim"))
    if limits.stall_iterations:
        parts.append(Text(f"stalled {h.stalled}/{limits.stall_iterations}", "bold yellow" if h.stalled else "dim"))
    return parts


class HealthLine(Static):
    """Run health of a distillation (:mod:`tesla.domain.health`): is each image's label
    still its class, how sure the labels are, and how close the guard is to stopping the
    run. Hidden for runs that do not record it (expert runs, older logs)."""

    revision: reactive[int] = reactive(0)

    def watch_revision(self) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        state = _state(self)
        self.display = state.records_health
        if not state.records_health:
            return
        width = self.content_size.width or self.app.size.width - 2
        self.update(Text("\n", no_wrap=True, overflow="ellipsis").join(pack([health_parts(state)], width)))


# -- plots --------------------------------------------------------------------------------------

@attrs.frozen
class Curve:
    """One series of a plot: ``points`` are ``(x, y)``; ``value`` is shown in the legend;
    ``dots`` draws a dot on every point; ``flat`` draws a reference across the x range."""

    label: str
    points: list
    colour: str
    value: str = ""
    dots: bool = False
    flat: bool = False


class Canvas(PlotextPlot):
    """The plotext frame of a :class:`SeriesPlot`; integer x ticks fitted to its width."""

    DEFAULT_CSS = "Canvas { height: 1fr; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.x_range: Optional[tuple[float, float]] = None
        self.integer_x = True

    def render(self) -> Any:
        plt = self.plt
        if self.x_range is not None and self.integer_x:
            label = max(len(str(int(v))) for v in self.x_range) + 3  # a tick label and its spacing
            ticks = integer_ticks(*self.x_range, max(2, (self.size.width - 8) // label))
            plt.xticks(ticks, [str(t) for t in ticks])
        return super().render()


class SeriesPlot(Vertical):
    """A title-and-legend line over a plotext canvas; subclasses pick the curves.

    The legend names every curve in its colour with its latest value, outside the frame,
    so nothing it would cover is hidden.
    """

    revision: reactive[int] = reactive(0)

    DEFAULT_CSS = """
    SeriesPlot { height: 1fr; }
    SeriesPlot > .legend { width: 1fr; height: 1; padding: 0 1; }
    """

    title = "plot"

    def compose(self) -> ComposeResult:
        yield Static(classes="legend")
        yield Canvas()

    def curves(self, state: RunState) -> list[Curve]:
        raise NotImplementedError

    def plot_title(self, state: RunState) -> str:
        return self.title

    def limits(self, state: RunState, curves: list[Curve], x_range: tuple[float, float]) -> None:
        """Axis limits after the curves are drawn (the default: plotext's own)."""

    def x_extent(self, state: RunState, curves: list[Curve]) -> list[float]:
        """The x values the axis must span (the default: every point's)."""
        return [p[0] for c in curves for p in c.points]

    def watch_revision(self) -> None:
        self.replot()

    def replot(self) -> None:
        if not self.is_mounted or not self.children:
            return
        state = _state(self)
        curves = [c for c in self.curves(state) if c.points]
        legend = self.query_one(".legend", Static)
        legend.update(self.legend(state, curves, self.size.width - 2))  # less the legend's padding
        canvas = self.query_one(Canvas)
        plt = canvas.plt
        plt.clear_data()
        plt.xlim(None, None)
        plt.ylim(None, None)
        if not curves:
            canvas.x_range = None
            canvas.refresh()
            return
        xs = self.x_extent(state, curves)
        lo, hi = min(xs), max(xs)
        for curve in sorted(curves, key=lambda c: not c.flat):  # references first, under the data
            self.draw(plt, curve, lo, hi)
        if hi == lo:  # one x: give it room so the point sits inside the frame
            plt.xlim(lo - 1, hi + 1)
        canvas.x_range = (lo, hi)
        self.limits(state, curves, (lo, hi))
        canvas.refresh()

    @staticmethod
    def draw(plt: Any, curve: Curve, lo: float, hi: float) -> None:
        pts = thin(curve.points, MAX_PLOT_POINTS)
        if curve.flat:
            y = pts[-1][1]
            pts = [(lo, y), (hi, y)] if hi > lo else [(lo, y)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if len(pts) > 1:
            plt.plot(xs, ys, marker="braille", color=curve.colour)
        if len(pts) == 1 or (curve.dots and len(pts) <= MAX_DOTS):
            plt.scatter(xs if not curve.flat else xs[-1:], ys if not curve.flat else ys[-1:],
                        marker=DOT, color=curve.colour)

    def legend(self, state: RunState, curves: list[Curve], width: int = 0, values: bool = True) -> Text:
        """One line: the title, then each curve's mark, name and latest value. When it is
        wider than ``width`` the values go first (the header and tables show them), then
        the end is cut."""
        title = self.plot_title(state)
        if len(curves) == 1 and curves[0].label in title:  # the title names the one curve
            curve = curves[0]
            text = Text(DOT + " ", RICH_NAMES.get(curve.colour, curve.colour)).append(title, "bold")
            if values:
                text.append(f" {curve.value}", "dim")
        else:
            text = Text(title, "bold")
            if not curves:
                text.append(" (no data yet)", "dim")
            for curve in curves:
                colour = RICH_NAMES.get(curve.colour, curve.colour)
                text.append(GAP).append(DOT if not curve.flat else "─", colour).append(f" {curve.label}")
                if curve.value and values:
                    text.append(f" {curve.value}", "dim")
        if width and text.cell_len > width:
            if values:
                return self.legend(state, curves, width, values=False)
            text.truncate(width, overflow="ellipsis")
        text.no_wrap = True
        return text

    def on_resize(self) -> None:
        self.replot()  # the legend fits its line anew


def _last(points: list, fmt: str) -> str:
    return format(points[-1][1], fmt) if points else ""


class LossPlot(SeriesPlot):
    """Matching loss per iteration (expert runs: train loss per epoch)."""

    def plot_title(self, state: RunState) -> str:
        return "train loss (expert)" if state.is_experts else "matching loss"

    def curves(self, state: RunState) -> list[Curve]:
        return [Curve(label, pts, COLOURS[i], _last(pts, ".4g"))
                for i, (label, pts) in enumerate(state.loss_series().items())]


class SecondPlot(SeriesPlot):
    """The learned student lr (expert runs: train and test accuracy)."""

    SHORT = {"train acc": "train", "test acc": "test"}  # the title says "accuracy"

    def plot_title(self, state: RunState) -> str:
        return "accuracy %" if state.is_experts else "learned lr"

    def curves(self, state: RunState) -> list[Curve]:
        fmt = ".1f" if state.is_experts else ".4g"
        return [Curve(self.SHORT.get(label, label), pts, COLOURS[i], _last(pts, fmt))
                for i, (label, pts) in enumerate(state.second_series().items())]


class MemoryPlot(SeriesPlot):
    """Device allocated/peak and host RSS in MiB, from zero, with a reference line at the
    first sample's peak: constant memory shows as a line lying on the reference."""

    title = "memory MiB"

    SHORT = {"device alloc": "alloc", "device peak": "peak"}  # the legend's room is short

    def curves(self, state: RunState) -> list[Curve]:
        curves = [Curve(self.SHORT.get(label, label), pts, COLOURS[i], _last(pts, ".0f"))
                  for i, (label, pts) in enumerate(state.memory_series().items())]
        ref = state.memory_reference
        if ref is not None and curves:
            curves.append(Curve("first peak", [(curves[0].points[0][0], ref)], "gray", flat=True))
        return curves

    def limits(self, state: RunState, curves: list[Curve], x_range: tuple[float, float]) -> None:
        top = max(p[1] for c in curves for p in c.points)
        self.query_one(Canvas).plt.ylim(0, top * 1.15 if top > 0 else 1)


class AccuracyPlot(SeriesPlot):
    """Mean accuracy of networks trained on the synthetic set over iterations, one curve
    per evaluated model, each evaluation a dot; the random-real and full-real references
    drawn as flat lines across the run. An evaluation without an iteration (``tesla
    evaluate`` on a finished set) sits at the run's last iteration."""

    title = "accuracy %"

    def x_extent(self, state: RunState, curves: list[Curve]) -> list[float]:
        return super().x_extent(state, curves) + ([float(state.iteration)] if state.iteration is not None else [])

    def curves(self, state: RunState) -> list[Curve]:
        curves = []
        for i, (label, pts) in enumerate(state.accuracy_series().items()):
            subject = next((s for s in BASELINE_SUBJECTS + ("synthetic", "expert test") if label.endswith(s)), "")
            colour = SUBJECT_COLOURS.get(label, COLOURS[i % len(COLOURS)])
            flat = subject in BASELINE_SUBJECTS
            curves.append(Curve(label, pts, colour, _last(pts, ".2f"), dots=not flat and subject != "expert test",
                                flat=flat))
        return curves

    def limits(self, state: RunState, curves: list[Curve], x_range: tuple[float, float]) -> None:
        # margins so the dots at the ends do not sit on the frame
        ys = [p[1] for c in curves for p in c.points]
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.08, 1.0)
        plt = self.query_one(Canvas).plt
        plt.ylim(lo - pad, hi + pad)
        xlo, xhi = x_range
        xpad = max((xhi - xlo) * 0.03, 1.0)
        plt.xlim(xlo - xpad, xhi + xpad)


# -- tables and text ----------------------------------------------------------------------------

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


class ResultsTable(DataTable):
    """Per model and subject (synthetic, then its random-real and full-real references):
    the latest accuracy with a bar, its iteration, the best so far and how many runs."""

    revision: reactive[int] = reactive(0)
    BAR_WIDTH = 12

    COLUMNS = ("model", "subject", "accuracy %", "", "iter", "best", "n")

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.show_cursor = False
        self.add_columns(*self.COLUMNS)
        self._shown: Optional[tuple] = None
        self.watch_revision()

    def watch_revision(self) -> None:
        if not hasattr(self, "_shown"):
            return  # not mounted yet
        results = _state(self).results()
        self.display = bool(results)  # an expert run has none: the plot takes the room
        key = tuple((r.latest, r.best, r.count) for r in results)
        if key == self._shown:
            return
        self._shown = key
        self.clear(columns=True)  # columns too, so their widths follow the rows shown now
        self.add_columns(*self.COLUMNS)
        for r in results:
            colour = SUBJECT_COLOURS.get(r.subject, "white")
            best = f"{r.best.mean:.2f}" + (f" @{r.best.iteration}" if r.best.iteration is not None else "")
            self.add_row(r.model, Text(r.subject, "bold " + colour if r.subject == "synthetic" else colour),
                         format_accuracy(r.latest),
                         Bar(100, 0, max(0.0, min(r.latest.mean, 100.0)), width=self.BAR_WIDTH, color=colour),
                         _num(r.latest.iteration, "d"), best if r.count > 1 else "", str(r.latest.n))


class EvalTable(DataTable):
    """Every Evaluation in order: iteration, model, subject, mean ± std, n."""

    revision: reactive[int] = reactive(0)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("iter", "model", "subject", "accuracy %", "n")
        self._shown = 0
        self._state: Optional[RunState] = None
        self.watch_revision()

    def watch_revision(self) -> None:
        state = _state(self)
        if not hasattr(self, "_shown"):
            return  # not mounted yet
        if state is not self._state:  # the log was replaced: start over
            self.clear()
            self._shown, self._state = 0, state
        for e in state.evaluations[self._shown:]:
            style = "bold green" if e.subject == "synthetic" else ""
            self.add_row(_num(e.iteration, "d"), e.model, Text(e.subject, style), format_accuracy(e), str(e.n))
        self._shown = len(state.evaluations)


class PreviewView(Widget):
    """The last Preview: its images re-tiled and scaled to fill the widget (nearest when
    growing, box-averaged when shrinking), as half blocks."""

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
        tiled = tile_preview(preview.pixels, preview.per_class, *size)
        caption = Text(f"iteration {preview.iteration} · {tiled.describe()}\n", "dim")
        text = caption + half_blocks(tiled.pixels, *size, upscale=True)
        self._cache = (preview, size, text)
        return text


class LogPanel(RichLog):
    """Run start/finish, evaluation results, warnings, errors and checkpoints, appended
    as they come."""

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
           "ResultsTable", "EvalTable", "PreviewView", "LogPanel", "header_text", "pack", "Curve"]
