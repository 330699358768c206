"""The terminal UI: the pure RunState fold, the half-block preview, the app driven by
Textual's pilot on recorded runs (following a growing log, job mode with cancel), the
``monitor`` command's error path, and SVG snapshots at 80x24 and 120x40.

Recorded runs live in ``tui_fixtures/`` (written by ``tui_fixtures/make_fixtures.py``).
Snapshots: ``pytest tests/e2e/test_tui.py --snapshot-update`` rewrites ``__snapshots__``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tesla.adapters.events.jsonl import JsonlSink, read_events
from tesla.app.cli.monitor import register
from tesla.app.tui.app import TeslaApp
from tesla.app.tui.preview import fit_size, half_blocks
from tesla.app.tui.state import RunState, format_duration, thin
from tesla.app.tui.widgets import EvalTable, LogPanel, RunHeader
from tesla.domain import events as ev

FIXTURES = Path(__file__).parent / "tui_fixtures"
DISTILL = FIXTURES / "distill_run"
EXPERTS = FIXTURES / "experts_run"


def _events(run: Path) -> list:
    events, _ = read_events(run / "events.jsonl")
    return events


def _header(app: TeslaApp) -> str:
    return str(app.query_one(RunHeader).render())


async def _wait_for(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` holds (bounded, never asserted on time)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    assert condition(), "condition not reached"


async def _caught_up(pilot) -> None:
    """Wait until the reader thread has read the whole log and the screen shows it."""
    await _wait_for(pilot, lambda: pilot.app.caught_up)
    await pilot.pause()


# -- RunState: pure folding ----------------------------------------------------------------

def test_state_folds_a_distillation_run():
    state = RunState()
    state.apply_all(_events(DISTILL))
    assert (state.job, state.status, state.done, state.progress_total) == ("distill", "running", 50, 50)
    assert len(state.losses) == 50 and state.losses[0][0] == 1
    assert state.last_loss == state.losses[-1][1]
    assert len(state.lrs) == 50 and len(state.memory) == 10
    assert dict(state.header_labels()) == {"data": "cifar10 zca", "model": "ConvNet", "IPC": "10",
                                           "engine": "tesla", "labels": "teacher-target"}
    # rate from the events' durations (last 20 iterations), never the wall clock
    recent = [0.5 + 0.02 * (i % 5) for i in range(31, 51)]
    assert state.rate == pytest.approx(20 / sum(recent))
    assert state.eta == 0.0
    assert state.elapsed > 0
    assert state.best().mean == 63.1
    acc = state.accuracy_series()
    assert acc["synthetic"] == [(25.0, 58.4), (50.0, 63.1)] and acc["random-real"] == [(0.0, 26.0)]
    mem = state.memory_series()
    assert set(mem) == {"device alloc", "device peak", "host RSS"}
    assert state.memory_reference == pytest.approx(1400.0)
    assert state.preview.iteration == 25 and state.preview.per_class == 1
    assert [line.level for line in state.log] == ["info", "warning", "checkpoint"]


def test_state_eta_and_resume():
    state = RunState()
    state.apply(ev.RunStarted(job="distill", config={}, total=10, time=0.0))
    for i in (1, 2):
        state.apply(ev.Iteration(iteration=i, total=10, loss=1.0, lr=0.01, expert=0, start_epoch=0,
                                 seconds=2.0, time=2.0 * i))
    assert state.rate == pytest.approx(0.5) and state.eta == pytest.approx(16.0)
    assert state.fraction == pytest.approx(0.2) and state.elapsed == 4.0
    state.apply(ev.RunStarted(job="distill", config={}, total=10, time=100.0))  # resumed run
    assert state.done == 2 and state.log[-1].text.startswith("distill resumed")
    state.apply(ev.RunFinished(status="cancelled", time=101.0))
    assert state.status == "cancelled" and state.eta == 0.0


def test_state_folds_an_expert_run():
    state = RunState()
    state.apply_all(_events(EXPERTS))
    assert state.is_experts and state.unit == "epoch"
    assert (state.done, state.progress_total, state.status) == (6, 6, "completed")
    assert [p[0] for p in state.loss_series()["train loss"]] == [1, 2, 3, 4, 5, 6]
    second = state.second_series()
    assert set(second) == {"train acc", "test acc"} and second["test acc"][-1] == (6, 52.0)
    assert state.accuracy_series()["expert test"][0] == (1, 34.0)
    assert dict(state.header_labels()) == {"data": "cifar10", "model": "ConvNet", "experts": "2", "epochs": "3"}
    assert "device alloc" not in state.memory_series() and state.memory_reference == pytest.approx(900.0)


def test_state_tolerates_odd_input():
    state = RunState()
    assert state.done is None and state.rate is None and state.eta is None and state.fraction is None
    state.apply(ev.RunStarted(job="distill", config={"distill": "not a dict"}, total=None, time=1.0))
    state.apply(ev.Iteration(iteration=1, total=5, loss=math.nan, lr=0.01, expert=0, start_epoch=0, seconds=0.0))
    state.apply(ev.UnknownEvent(data={"type": "hologram"}))
    state.apply(ev.UnknownEvent(data={"type": "hologram"}))
    state.apply(ev.Progress(label="prepare", done=3, total=9))
    assert state.losses == [] and state.progress_total == 5 and state.rate is None
    assert sum("hologram" in line.text for line in state.log) == 1
    assert any("loss is nan" in line.text for line in state.log)
    assert state.header_labels() == []


def test_small_helpers():
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "-"
    pts = list(range(1000))
    thinned = thin(pts, 100)
    assert len(thinned) <= 101 and thinned[0] == 0 and thinned[-1] == 999
    assert thin(pts[:5], 100) == pts[:5]


def test_half_blocks_paint_two_pixels_per_cell():
    red, blue, green, white = [255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 255]
    pixels = [[red, green], [blue, white]]  # 2 rows x 2 cols -> one line of two cells
    text = half_blocks(pixels, width=10, height=10)
    assert text.plain == "▀▀"
    top_left = text.spans[0].style
    assert top_left.color.triplet == (255, 0, 0) and top_left.bgcolor.triplet == (0, 0, 255)
    assert fit_size(30, 72, 36, 100) == (15, 36)  # shrinks to the width, keeps the aspect
    assert fit_size(30, 72, 200, 5) == (10, 24)  # 5 rows of cells = 10 pixel rows
    big = [[[i % 256, 0, 0] for _ in range(64)] for i in range(64)]
    assert max(len(line) for line in half_blocks(big, 16, 4).plain.split("\n")) == 8


# -- the app on recorded and growing runs -----------------------------------------------------

def test_app_shows_a_recorded_run():
    async def run() -> None:
        app = TeslaApp(DISTILL)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            header = _header(app)
            assert "iteration 50/50" in header and "IPC 10" in header and "teacher-target" in header
            assert len(app.state.losses) == 50
            assert app.query_one(EvalTable).row_count == 3
            await pilot.press("5")
            await _wait_for(pilot, lambda: len(app.query_one(LogPanel).lines) >= 3)
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(run())


def test_app_follows_lines_appended_while_it_runs(tmp_path):
    lines = (DISTILL / "events.jsonl").read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if b'"iteration":30,' in line and b'"type":"iteration"' in line)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[: cut + 1]))

    async def run() -> None:
        app = TeslaApp(run_dir, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            assert "iteration 30/50" in _header(app) and len(app.state.losses) == 30
            with open(run_dir / "events.jsonl", "ab") as f:
                f.write(b"".join(lines[cut + 1:]))
                f.write(lines[cut + 1][:20])  # a line half-written: must wait for its end
            await _wait_for(pilot, lambda: "iteration 50/50" in _header(app))
            assert len(app.state.losses) == 50 and app.query_one(EvalTable).row_count == 3
            with open(run_dir / "events.jsonl", "ab") as f:
                f.write(b"\n")  # the torn line ends as garbage: skipped with a warning
            with JsonlSink(run_dir / "events.jsonl") as sink:
                sink.emit(ev.RunFinished(status="completed", time=2e9))
            await _wait_for(pilot, lambda: app.state.status == "completed")
            assert "completed" in _header(app)
            assert any("corrupt line" in line.text for line in app.state.log)

    asyncio.run(run())


def test_app_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    async def run() -> None:
        app = TeslaApp(tmp_path, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            assert "waiting for events" in _header(app)
            shutil.copy(EXPERTS / "events.jsonl", tmp_path / "events.jsonl")
            await _wait_for(pilot, lambda: app.state.status == "completed")
            assert "epoch 6/6" in _header(app)

    asyncio.run(run())


def test_app_starts_over_when_the_log_is_replaced(tmp_path):
    shutil.copy(DISTILL / "events.jsonl", tmp_path / "events.jsonl")

    async def run() -> None:
        app = TeslaApp(tmp_path, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            assert app.state.job == "distill"
            shutil.copy(EXPERTS / "events.jsonl", tmp_path / "events.jsonl")  # shorter: a new run
            await _wait_for(pilot, lambda: app.state.job == "experts" and app.state.status == "completed")
            assert app.query_one(EvalTable).row_count == 0 and "epoch 6/6" in _header(app)

    asyncio.run(run())


class FakeJob:
    """A job as the services run it: writes its own events.jsonl and stops on cancel."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.iterations = 0
        self.stopped_cleanly = threading.Event()

    def __call__(self, sink, cancel: threading.Event) -> str:
        with JsonlSink(self.run_dir / "events.jsonl") as log:
            log.emit(ev.RunStarted(job="distill", config={"distill": {"ipc": 1, "engine": "exact"}}, total=10**6))
            while not cancel.is_set():
                self.iterations += 1
                log.emit(ev.Iteration(iteration=self.iterations, total=10**6, loss=1.0 / self.iterations, lr=0.01,
                                      expert=0, start_epoch=0, seconds=0.01))
                sink.emit(ev.Warning(message="the app's sink accepts events too"))
                cancel.wait(0.01)
            log.emit(ev.Checkpoint(path="ckpt", iteration=self.iterations))
            log.emit(ev.RunFinished(status="cancelled"))
        self.stopped_cleanly.set()
        return "cancelled"


def test_job_mode_cancel_stops_the_job(tmp_path):
    job = FakeJob(tmp_path)

    async def run() -> None:
        app = TeslaApp(tmp_path, job=job, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, lambda: len(app.state.losses) >= 3)
            assert "engine exact" in _header(app) and "job running" in _header(app)
            await pilot.press("c")
            assert app.cancel_event.is_set()
            await _wait_for(pilot, lambda: app.job_status == "cancelled")
            assert job.stopped_cleanly.is_set()
            await _wait_for(pilot, lambda: app.state.status == "cancelled")
            assert any(line.level == "checkpoint" for line in app.state.log)
            assert app.state.done == job.iterations
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(run())


def test_job_mode_quit_cancels_then_exits(tmp_path):
    job = FakeJob(tmp_path)

    async def run() -> None:
        app = TeslaApp(tmp_path, job=job, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, lambda: job.iterations >= 2)
            await pilot.press("q")
            await _wait_for(pilot, lambda: not app.is_running)
        assert job.stopped_cleanly.is_set()

    asyncio.run(run())


def test_job_mode_reports_a_failing_job(tmp_path):
    def broken(sink, cancel):
        raise RuntimeError("out of memory on purpose")

    async def run() -> None:
        app = TeslaApp(tmp_path, job=broken, poll_interval=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, lambda: app.job_status == "failed")
            await _wait_for(pilot, lambda: any("out of memory on purpose" in line.text for line in app.state.log))
            assert "job failed" in _header(app)

    asyncio.run(run())


# -- tesla monitor ------------------------------------------------------------------------------

def test_monitor_without_events_exits_2(tmp_path):
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """tesla"""

    register(app)
    result = CliRunner().invoke(app, ["monitor", str(tmp_path)])
    assert result.exit_code == 2
    assert "events.jsonl does not exist" in result.output


# -- snapshots (deterministic: every figure comes from event timestamps) ------------------------

def test_snapshot_80x24(snap_compare):
    assert snap_compare(TeslaApp(DISTILL), terminal_size=(80, 24), run_before=_caught_up)


def test_snapshot_120x40(snap_compare):
    assert snap_compare(TeslaApp(DISTILL), terminal_size=(120, 40), run_before=_caught_up)


def test_snapshot_images_tab_80x24(snap_compare):
    assert snap_compare(TeslaApp(DISTILL), terminal_size=(80, 24), press=["4"], run_before=_caught_up)


def test_snapshot_expert_run_80x24(snap_compare):
    assert snap_compare(TeslaApp(EXPERTS), terminal_size=(80, 24), run_before=_caught_up)
