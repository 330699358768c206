"""The Textual app that watches a run: ``tesla monitor RUN_DIR`` and the ``--tui`` of jobs.

The screen knows a run only through ``RUN_DIR/events.jsonl``. A thread worker runs a
:class:`~tesla.app.tui.follow.LogFollower` that reads the log in bounded chunks (every
``poll_interval`` seconds once caught up) and posts each chunk's events as an
:class:`EventsRead` message; the UI thread folds them into a :class:`RunState` and bumps
the ``revision`` reactive the widgets are bound to (at most every
:data:`REDRAW_INTERVAL` while a long log is caught up). No file is touched on the UI
thread, so a slow filesystem or a 50 MB log never freezes the keys. The same code
watches a run in another process, a finished run, and a job started here.

Job mode: given ``job(sink, cancel)``, the app runs it in a thread worker. The job writes
its own ``events.jsonl`` (the services do); the screen just follows the file. ``c`` sets
``cancel`` (the job stops at its next safe point and checkpoints); ``q`` does the same and
quits once the worker has ended, so a run is never torn down mid-write. "job finished"
(or "stopped after cancel") is logged only once the reader has caught up with the job's
last lines, so the Log tab tells events in the order they happened.

Layout: the run header (three lines at 80 columns, whole: a part that does not fit moves
to a fourth line rather than being cut), tabs (Training, Memory, Accuracy, Images, Log)
and the footer with the keys, 1-5 included. At 80x24 the Training tab holds a line of
run health (a distillation's label agreement with its recent history, entropy, and the
collapse and stall streaks against their limits) above the loss and learned-lr plots; from 120x36 on it also shows the memory and accuracy plots in a 2x2
grid. The Accuracy tab shows one row per model and subject (synthetic and its
references, with a bar) above the accuracy plot, and from 120 columns the history of
every evaluation beside the plot; a log of evaluations without iterations (``tesla
evaluate``) gets the table alone.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from tesla.adapters.events.jsonl import read_events
from tesla.app.tui.follow import CHUNK_BYTES, Batch, LogFollower
from tesla.app.tui.state import RunState
from tesla.app.tui.widgets import (
    AccuracyPlot,
    EvalTable,
    HealthLine,
    LogPanel,
    LossPlot,
    MemoryNumbers,
    MemoryPlot,
    PreviewView,
    ResultsTable,
    RunHeader,
    SecondPlot,
)
from tesla.domain.ports import EventSink, NullSink
from tesla.domain.rundir import EVENTS

Job = Callable[[EventSink, threading.Event], Any]

EVENTS_FILE = EVENTS  # the run directory's event log (tesla.domain.rundir)
REDRAW_INTERVAL = 0.2  # seconds between redraws while a long log is being caught up


class EventsRead(Message):
    """A bounded batch of the log, read by the follower's thread."""

    def __init__(self, batch: Batch) -> None:
        super().__init__()
        self.batch = batch


class TeslaApp(App):
    """Follows ``run_dir/events.jsonl``; with ``job``, also runs it in a worker thread.

    Args:
        run_dir: the run directory (its ``events.jsonl`` may not exist yet in job mode).
        job: ``job(sink, cancel)`` run in a thread; it must return when ``cancel`` is set.
            ``sink`` is a do-nothing sink: the job's events reach the screen through the
            file it writes.
        poll_interval: seconds between reads of a log that has stopped growing.
        read_chunk: at most this many bytes of the log are parsed per batch.
        read: the log reader (:func:`~tesla.adapters.events.jsonl.read_events`; tests
            slow it down to stand for a slow filesystem).

    Attributes:
        caught_up: the reader has reached the end of the log (as of its last read).
        batches: how many batches have been folded.
    """

    TITLE = "tesla"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    CSS = """
    RunHeader { height: auto; max-height: 6; padding: 0 1; background: $boost; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    #training-grid { grid-size: 2 1; grid-gutter: 0 1; height: 1fr; }
    .big-only { display: none; }
    Screen.-wide.-tall #training-grid { grid-size: 2 2; grid-gutter: 1 1; }
    Screen.-wide.-tall .big-only { display: block; }
    MemoryNumbers { height: 2; padding: 0 1; }
    HealthLine { height: auto; max-height: 2; padding: 0 1; }
    ResultsTable { height: auto; max-height: 8; }
    #accuracy-body { height: 1fr; }
    EvalTable { display: none; }
    Screen.-wide EvalTable { display: block; width: 48; height: 1fr; }
    #accuracy-plot { height: 1fr; }
    #tab-accuracy.-no-axis #accuracy-body { display: none; }
    #tab-accuracy.-no-axis ResultsTable { max-height: 100%; }
    PreviewView { padding: 0 1; }
    """

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("1", "show_tab('tab-training')", "Training"),
        Binding("2", "show_tab('tab-memory')", "Memory"),
        Binding("3", "show_tab('tab-accuracy')", "Accuracy"),
        Binding("4", "show_tab('tab-images')", "Images"),
        Binding("5", "show_tab('tab-log')", "Log"),
    ]

    revision: reactive[int] = reactive(0)

    def __init__(self, run_dir: Path | str, job: Optional[Job] = None, *, poll_interval: float = 0.25,
                 read_chunk: int = CHUNK_BYTES, read: Callable[..., tuple[list, int]] = read_events) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.events_path = self.run_dir / EVENTS_FILE
        self.job = job
        self.poll_interval = poll_interval
        self.read_chunk = read_chunk
        self._read = read
        self.cancel_event = threading.Event()
        self.state = RunState()
        self.job_status: Optional[str] = "starting" if job is not None else None
        self.caught_up = False
        self.batches = 0
        self._follower: Optional[LogFollower] = None
        self._reader: Optional[Worker] = None
        self._last_bump = 0.0
        self._state_seen, self._state_obj = -1, self.state
        self._worker: Optional[Worker] = None
        self._job_end: Optional[tuple[int, str, str]] = None  # (wake token, note, level) to log once caught up
        self._quit_when_done = False
        self.sub_title = str(self.run_dir)

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        bind = TeslaApp.revision
        yield RunHeader(id="run-header").data_bind(bind)
        with TabbedContent(id="tabs"):
            with TabPane("Training", id="tab-training"):
                yield HealthLine(id="health").data_bind(bind)
                with Grid(id="training-grid"):
                    yield LossPlot(id="loss-plot").data_bind(bind)
                    yield SecondPlot(id="second-plot").data_bind(bind)
                    yield MemoryPlot(id="overview-memory", classes="big-only").data_bind(bind)
                    yield AccuracyPlot(id="overview-accuracy", classes="big-only").data_bind(bind)
            with TabPane("Memory", id="tab-memory"):
                yield MemoryNumbers(id="memory-numbers").data_bind(bind)
                yield MemoryPlot(id="memory-plot").data_bind(bind)
            with TabPane("Accuracy", id="tab-accuracy"):
                yield ResultsTable(id="results-table").data_bind(bind)
                with Horizontal(id="accuracy-body"):
                    yield EvalTable(id="eval-table").data_bind(bind)
                    yield AccuracyPlot(id="accuracy-plot").data_bind(bind)
            with TabPane("Images", id="tab-images"):
                yield PreviewView(id="preview").data_bind(bind)
            with TabPane("Log", id="tab-log"):
                yield LogPanel(id="log").data_bind(bind)
        yield Footer()

    def on_mount(self) -> None:
        self._start_reader()
        if self.job is not None:
            self._worker = self._run_job()
            self._set_job_status("running")

    # -- following the log ----------------------------------------------------------------
    def _start_reader(self) -> None:
        self._follower = LogFollower(self.events_path, lambda batch: self.post_message(EventsRead(batch)),
                                     poll=self.poll_interval, chunk=self.read_chunk, read=self._read)
        follower = self._follower

        def read_log() -> None:
            worker = get_current_worker()
            follower.run(cancelled=lambda: worker.is_cancelled)

        self._reader = self.run_worker(read_log, thread=True, exit_on_error=False, name="tesla log reader",
                                       group="reader")

    def on_events_read(self, message: EventsRead) -> None:
        """Fold one bounded batch of the log (the reader waits until this is done)."""
        batch = message.batch
        try:
            if batch.reset:  # the log was replaced or truncated: a new run, start over
                self.state = RunState()
                self.state.note("info", f"{EVENTS_FILE} was replaced; reading it again from the start")
            self.state.apply_all(batch.events)
            self.batches += 1
            self.caught_up = batch.eof
            if batch.eof and self._job_end is not None and batch.wake >= self._job_end[0]:
                self._log_job_end()
        finally:
            if self._follower is not None:
                self._follower.consumed()
        if batch.eof or time.monotonic() - self._last_bump >= REDRAW_INTERVAL:
            self._bump()

    def _bump(self) -> None:
        """Tell the widgets (bound to ``revision``) that the state has moved on."""
        self._last_bump = time.monotonic()
        if self.state.revision != self._state_seen or self.state is not self._state_obj:
            self._state_seen, self._state_obj = self.state.revision, self.state
            self.revision += 1
            # evaluations without iterations (``tesla evaluate``): the table says it all
            no_axis = bool(self.state.evaluations) and not self.state.has_steps
            for pane in self.query("#tab-accuracy"):
                pane.set_class(no_axis, "-no-axis")

    # -- the job --------------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, name="tesla job", group="job")
    def _run_job(self) -> Any:
        assert self.job is not None
        return self.job(NullSink(), self.cancel_event)

    def _set_job_status(self, status: str, note: Optional[str] = None, level: str = "info") -> None:
        self.job_status = status
        self.state.note(level, note or f"job {status}")
        self._bump()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._reader and event.state == WorkerState.ERROR:
            self.state.note("error", f"the log reader stopped: {event.worker.error}")
            self._bump()
            self._log_job_end()
            return
        if event.worker is not self._worker:
            return
        if event.state == WorkerState.SUCCESS:
            cancelled = self.cancel_event.is_set()
            self._end_job("cancelled" if cancelled else "finished",
                          "job stopped after cancel" if cancelled else "job finished")
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            self._end_job("failed", f"job failed: {type(error).__name__}: {error}", "error")
            self.notify(f"job failed: {error}", severity="error", timeout=10)
        elif event.state == WorkerState.CANCELLED:
            self._end_job("cancelled", "job cancelled")

    def _end_job(self, status: str, note: str, level: str = "info") -> None:
        """The job's thread has returned: its last lines are in the file but perhaps not
        read yet. Log ``note`` once the reader has caught up with them."""
        self.job_status = status
        self._bump()
        if self._follower is None or self._reader is None or self._reader.is_finished:
            self._job_end = (0, note, level)
            self._log_job_end()
            return
        self._job_end = (self._follower.wake(), note, level)

    def _log_job_end(self) -> None:
        if self._job_end is None:
            return
        _, note, level = self._job_end
        self._job_end = None
        self.state.note(level, note)
        self._bump()
        if self._quit_when_done:
            self.exit()

    @property
    def job_running(self) -> bool:
        return self._worker is not None and self._worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    # -- actions --------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            if self.job is None:
                return False  # monitor mode: nothing to cancel, hide the key
            return True if self.job_running and not self.cancel_event.is_set() else None
        return True

    def action_cancel_job(self) -> None:
        """Ask the job to stop at its next safe point (it checkpoints first)."""
        if not self.job_running or self.cancel_event.is_set():
            return
        self.cancel_event.set()
        self._set_job_status("cancelling", "cancel requested: the job stops at its next safe point", "warning")
        self.refresh_bindings()

    async def action_quit(self) -> None:
        """Quit; a running job is cancelled first and the app exits when it has stopped."""
        if self.job_running:
            self._quit_when_done = True
            if not self.cancel_event.is_set():
                self.action_cancel_job()
            self.notify("stopping the job; quitting when it has stopped")
            return
        self.exit()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_unmount(self) -> None:
        # However the app ends, neither the job nor the reader may outlive it unasked.
        self.cancel_event.set()
        if self._follower is not None:
            self._follower.stop()


__all__ = ["TeslaApp", "EVENTS_FILE"]
