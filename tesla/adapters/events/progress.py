"""Terminal progress for CLI runs: a rich progress bar, or one JSON line per event.

The CLI fans a job's events out to the JSON-lines log and to this sink. Three modes:

* normal: a live rich progress bar with ETA, driven by ``RunStarted.total`` and by
  Iteration / Epoch / Progress events, the latest loss and lr beside it (and a
  distillation's run health: label agreement and entropy, the collapse and stall
  streaks while they run, :func:`health_text`); warnings,
  errors, evaluations and checkpoints print as lines above the bar;
* ``quiet``: nothing but errors;
* ``json_mode`` (``--json``): every event as one JSON line on stdout, nothing else, so
  scripts can pipe it (``jq``) exactly like ``events.jsonl``.

The live display runs while the sink is used as a context manager (``with sink:``) or
between :meth:`start` and :meth:`stop`. Events may come from a worker thread.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tesla.adapters.events.jsonl import encode_event
from tesla.domain.urls import redact_text


def _mib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def health_text(e: Any) -> str:
    """Run health on the progress line: label agreement and entropy (teacher or learned
    labels; hard labels are not measured), and the streaks that stop a run when they grow."""
    parts = []
    agreement, entropy = getattr(e, "agreement", None), getattr(e, "label_entropy", None)
    if agreement is not None:
        parts.append(f"agree {agreement:.0%}")
    if entropy is not None:
        parts.append(f"H {entropy:.2f}")
    if getattr(e, "low_agreement", 0):
        parts.append(f"low x{e.low_agreement}")
    if getattr(e, "stalled", 0):
        parts.append(f"stalled x{e.stalled}")
    return "".join(f"  {p}" for p in parts)


class RichProgressSink:
    """An :class:`~tesla.domain.ports.EventSink` for the terminal.

    Args:
        console: rich console to draw on (a fresh stdout console when None).
        quiet: print only errors.
        json_mode: print each event as one JSON line to stdout (``console.file`` when a
            console is given) instead of a progress display.
    """

    def __init__(self, console: Optional[Console] = None, quiet: bool = False, json_mode: bool = False) -> None:
        self._given_console = console
        self.console = console or Console()
        self.quiet = quiet
        self.json_mode = json_mode
        self._lock = threading.RLock()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._main: Optional[TaskID] = None
        self._tasks: dict[str, TaskID] = {}
        self._live = False
        # figures for summary()
        self.job: Optional[str] = None
        self.status: Optional[str] = None
        self.done = 0
        self.total: Optional[int] = None
        self.last_loss: Optional[float] = None
        self.last_lr: Optional[float] = None
        self.peak_device: Optional[int] = None
        self.peak_host: Optional[int] = None
        self.evaluations: list = []
        self.checkpoints = 0
        self.warnings = 0
        self.errors = 0
        self.run_summary: dict = {}

    # -- live display -------------------------------------------------------------------
    @property
    def _showing(self) -> bool:
        return not (self.quiet or self.json_mode)

    def start(self) -> "RichProgressSink":
        with self._lock:
            if self._showing and not self._live:
                self._progress.start()
                self._live = True
        return self

    def stop(self) -> None:
        with self._lock:
            if self._live:
                self._progress.stop()
                self._live = False

    def __enter__(self) -> "RichProgressSink":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- events -------------------------------------------------------------------------
    def emit(self, event: Any) -> None:
        with self._lock:
            if self.json_mode:
                out = self._given_console.file if self._given_console else sys.stdout
                out.write(encode_event(event).decode("utf-8"))
                out.flush()
            handler = getattr(self, "_on_" + getattr(event, "type", "unknown"), None)
            if handler is not None:
                handler(event)

    def _line(self, text: str, *, error: bool = False) -> None:
        if self.json_mode or (self.quiet and not error):
            return
        self.console.print(redact_text(text), highlight=False)  # a credential in a URL never shows

    def _main_task(self, description: str, total: Optional[int]) -> TaskID:
        if self._main is None:
            self._main = self._progress.add_task(description, total=total, info="")
        else:
            self._progress.update(self._main, description=description, total=total)
        return self._main

    def _advance(self, completed: int, info: str) -> None:
        task = self._main_task(self.job or "run", self.total)
        self.done = completed
        self._progress.update(task, completed=completed, info=info)

    def _on_run_started(self, e: Any) -> None:
        self.job, self.total, self.status = e.job, e.total, "running"
        self._main_task(e.job, e.total)
        where = f" in {e.run_dir}" if e.run_dir else ""
        self._line(f"[bold]{escape(e.job)}[/] started{escape(where)}")

    def _on_iteration(self, e: Any) -> None:
        self.total = self.total or e.total
        self.last_loss, self.last_lr = e.loss, e.lr
        # Iteration.iteration counts finished iterations (1-based); never move backwards.
        self._advance(max(self.done, e.iteration), f"loss {e.loss:.4g}  lr {e.lr:.3g}{health_text(e)}")

    def _on_epoch(self, e: Any) -> None:
        # Experts: one step per finished epoch of any expert (total = experts x epochs).
        acc = "" if e.test_acc is None else f"  test {e.test_acc:.1f}%"
        self.last_loss = e.train_loss
        self._advance(self.done + 1, f"expert {e.expert} epoch {e.epoch}/{e.epochs}  loss {e.train_loss:.4g}{acc}")

    def _on_progress(self, e: Any) -> None:
        if e.label == self.job:  # the job's own progress (bench memory/speed): the main bar moves
            self.total = e.total if e.total is not None else self.total
            self._advance(max(self.done, e.done), "")
            return
        if e.label not in self._tasks:
            self._tasks[e.label] = self._progress.add_task(redact_text(e.label), total=e.total, info="")
        self._progress.update(self._tasks[e.label], completed=e.done, total=e.total)

    def _on_memory(self, e: Any) -> None:
        if e.device_peak is not None:
            self.peak_device = max(self.peak_device or 0, e.device_peak)
        self.peak_host = max(self.peak_host or 0, e.host_rss)

    def _on_evaluation(self, e: Any) -> None:
        self.evaluations.append(e)
        at = "" if e.iteration is None else f" @ it {e.iteration}"
        self._line(f"[cyan]eval{at}[/] {escape(e.model)} {escape(e.subject)}: "
                   f"{e.mean:.2f} ± {e.std:.2f} % (n={e.n})")

    def _on_checkpoint(self, e: Any) -> None:
        self.checkpoints += 1
        if self.job == "experts":  # an expert's id, not an iteration
            self._line(f"[dim]expert {e.iteration} saved: {escape(e.path)}[/]")
        else:
            self._line(f"[dim]checkpoint @ it {e.iteration}: {escape(e.path)}[/]")

    def _on_warning(self, e: Any) -> None:
        self.warnings += 1
        self._line(f"[yellow]warning:[/] {escape(e.message)}")

    def _on_error(self, e: Any) -> None:
        self.errors += 1
        self._line(f"[red]error:[/] {escape(e.message)}", error=True)

    def _on_unknown(self, e: Any) -> None:
        self._line(f"[dim]skipped an event of unknown type {escape(str(e.data.get('type')))}[/]")

    def _on_run_finished(self, e: Any) -> None:
        self.status, self.run_summary = e.status, dict(e.summary)
        if self._main is not None and e.status == "completed" and self.total:
            self._progress.update(self._main, completed=self.total)
            self.done = self.total
        colour = {"completed": "green", "cancelled": "yellow"}.get(e.status, "red")
        self._line(f"[{colour}]{escape(self.job or 'run')} {escape(e.status)}[/]", error=e.status == "failed")

    # -- summary ------------------------------------------------------------------------
    def summary(self) -> dict:
        """Figures of the run so far: job, status, done/total, last loss and lr, peaks
        (bytes), counts, the last evaluation per (model, subject) and RunFinished.summary."""
        last_evals = {(e.model, e.subject): (e.mean, e.std, e.n) for e in self.evaluations}
        return {
            "job": self.job,
            "status": self.status,
            "done": self.done,
            "total": self.total,
            "loss": self.last_loss,
            "lr": self.last_lr,
            "peak_device_bytes": self.peak_device,
            "peak_host_bytes": self.peak_host,
            "checkpoints": self.checkpoints,
            "warnings": self.warnings,
            "errors": self.errors,
            "evaluations": {f"{m} {s}": v for (m, s), v in last_evals.items()},
            "run": self.run_summary,
        }

    def print_summary(self) -> None:
        """Print :meth:`summary` as a small table (nothing in quiet or JSON mode)."""
        if not self._showing:
            return
        s = self.summary()
        table = Table(title=f"{s['job'] or 'run'}: {s['status'] or 'unknown'}", show_header=False, box=None)
        table.add_row("progress", f"{s['done']}/{s['total'] if s['total'] is not None else '?'}")
        if s["loss"] is not None:
            table.add_row("last loss", f"{s['loss']:.4g}")
        if s["lr"] is not None:
            table.add_row("learned lr", f"{s['lr']:.4g}")
        table.add_row("peak device", _mib(s["peak_device_bytes"]))
        table.add_row("peak host RSS", _mib(s["peak_host_bytes"]))
        for name, (mean, std, n) in s["evaluations"].items():
            table.add_row(name, f"{mean:.2f} ± {std:.2f} % (n={n})")
        table.add_row("checkpoints / warnings / errors", f"{s['checkpoints']} / {s['warnings']} / {s['errors']}")
        self.console.print(table)


class ProgressBarSink:
    """One rich bar (done / total tasks, elapsed, ETA) following a job's Progress events.

    For jobs whose only measure of progress is Progress events (``tesla data prepare``).
    The task is created at the first Progress event with the work already done, so a
    resumed job's ETA is estimated from this run's pace only. ``quiet`` draws nothing.
    """

    def __init__(self, console: Optional[Console] = None, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console or Console())
        self.task: Optional[TaskID] = None

    def start(self) -> "ProgressBarSink":
        if not self.quiet:
            self.progress.start()
        return self

    def stop(self) -> None:
        if not self.quiet:
            self.progress.stop()

    def emit(self, event: Any) -> None:
        if self.quiet or event.type != "progress":
            return
        if self.task is None:
            self.task = self.progress.add_task(redact_text(event.label), total=event.total, completed=event.done)
        else:
            self.progress.update(self.task, description=event.label, completed=event.done, total=event.total)


__all__ = ["ProgressBarSink", "RichProgressSink", "health_text"]
