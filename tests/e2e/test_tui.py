"""The terminal UI: the pure RunState fold (results per model and subject, log lines),
the header's packing, the run-health line, integer ticks, the half-block preview and its re-tiling, the app
driven by Textual's pilot on recorded runs (following a growing log, job mode with cancel
and the order of its log lines, the Log tab, a lone accuracy point), the ``monitor``
command's error path, and SVG snapshots at 80x24 and 120x40.

Recorded runs live in ``tui_fixtures/`` (written by ``tui_fixtures/make_fixtures.py``).
The app reads its log in a thread (``test_tui_follow.py``), so every test waits for
``app.caught_up`` before it looks. Snapshots: ``pytest tests/e2e/test_tui.py -k NAME
--snapshot-update`` rewrites the named ones in ``__snapshots__``; look at them before
committing.
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
from rich.text import Text

from tesla.app.tui.preview import choose_layout, fit_size, grid_geometry, half_blocks, tile_preview
from tesla.app.tui.state import HealthLimits, HealthRow, RunState, format_duration, integer_ticks, thin
from tesla.app.tui.widgets import (AccuracyPlot, Canvas, EvalTable, LogPanel, ResultsTable, RunHeader, header_text,
                                   health_parts, pack, sparkline)
from tesla.domain import events as ev

FIXTURES = Path(__file__).parent / "tui_fixtures"
DISTILL = FIXTURES / "distill_run"
EXPERTS = FIXTURES / "experts_run"
SINGLE = FIXTURES / "single_eval_run"
EVALUATE = FIXTURES / "evaluate_run"


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
    assert state.preview.iteration == 25 and state.preview.per_class == 3
    # evaluation results are log lines too, in the order they came
    assert [line.level for line in state.log] == ["info", "result", "warning", "result", "checkpoint", "result"]
    results = [line for line in state.log if line.level == "result"]
    assert [(r.iteration, r.text) for r in results] == [
        (0, "ConvNet random-real: 26.00 ± 0.70 % over 3 networks"),
        (25, "ConvNet synthetic: 58.40 ± 0.60 % over 3 networks"),
        (50, "ConvNet synthetic: 63.10 ± 0.40 % over 3 networks")]


def test_state_folds_run_health_and_the_panel_says_how_close_the_guard_is():
    state = RunState()
    state.apply_all(_events(DISTILL))
    assert state.records_health and len(state.agreements) == 50
    assert state.health == HealthRow(iteration=50, agreement=0.15, entropy=pytest.approx(1.8), low_agreement=6,
                                     stalled=0)
    assert state.health_limits() == HealthLimits(min_agreement=0.2, collapse_iterations=10, stall_iterations=100)
    text = " ".join(p.plain for p in health_parts(state))
    assert text == "health agreement 15% ▅▅▅▅▅▅▂▂▂▂▂▂ min 20% entropy 1.80 nats below min 6/10 stalled 0/100"
    assert sparkline([0.0, 0.5, 0.99, 1.0], 3) == "▅██"


def test_hard_labels_and_older_logs_in_the_health_panel():
    config = {"distill": {"labels": "hard", "stall_iterations": 50, "min_label_agreement": 0.3},
              "model": {"num_classes": 4}}
    state = RunState()
    state.apply(ev.RunStarted(job="distill", config=config, total=5))
    assert " ".join(p.plain for p in health_parts(state)) == "health no iteration yet"
    state.apply(ev.Iteration(iteration=1, total=5, loss=0.9, lr=0.01, expert=0, start_epoch=0, seconds=1.0,
                             stalled=2))
    assert " ".join(p.plain for p in health_parts(state)) == ("health labels: class ids (agreement not measured) "
                                                              "stalled 2/50")
    # a log written before run health: Iteration records without the fields, no thresholds in the config
    old = ev.from_json({"type": "iteration", "iteration": 3, "total": 5, "loss": 0.5, "lr": 0.01, "expert": 0,
                        "start_epoch": 1, "seconds": 0.2, "grad_norm": None, "time": 1.0, "schema": 1})
    assert (old.agreement, old.label_entropy, old.low_agreement, old.stalled) == (None, None, 0, 0)
    before = RunState()
    before.apply_all([ev.RunStarted(job="distill", config={"distill": {"labels": "hard"}}, total=5), old])
    assert not before.records_health and before.health.agreement is None


def test_state_results_per_model_and_subject():
    state = RunState()
    state.apply_all(_events(DISTILL))
    rows = state.results()
    assert [(r.model, r.subject, r.latest.mean, r.best.mean, r.count) for r in rows] == [
        ("ConvNet", "synthetic", 63.1, 63.1, 2), ("ConvNet", "random-real", 26.0, 26.0, 1)]
    state = RunState()
    state.apply_all(_events(EVALUATE))  # what ``tesla evaluate`` writes: no iterations
    assert [(r.model, r.subject) for r in state.results()] == [
        (m, s) for m in ("ConvNet", "ResNet18") for s in ("synthetic", "random-real", "full-real")]
    assert state.results()[5].latest.mean == 92.1 and state.best().mean == 64.8
    assert state.unit == "networks" and not state.has_steps
    assert (state.done, state.progress_total, state.status) == (12, 12, "completed")
    state.apply(ev.Evaluation(model="ConvNet", subject="synthetic", mean=60.0, std=0.1, n=2))  # worse, later
    row = state.results()[0]
    assert (row.latest.mean, row.best.mean, row.count) == (60.0, 64.8, 2)


def test_integer_ticks():
    assert integer_ticks(1, 50, 6) == [10, 20, 30, 40, 50]
    assert integer_ticks(0, 50, 11) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert integer_ticks(1, 6, 10) == [1, 2, 3, 4, 5, 6] and integer_ticks(1, 6, 4) == [2, 4, 6]
    assert integer_ticks(30, 30, 5) == [30] and integer_ticks(0.2, 0.8, 5) == []
    assert integer_ticks(1, 10**6, 8) == [200_000, 400_000, 600_000, 800_000, 1_000_000]
    for lo, hi, n in ((1, 50, 6), (3, 997, 7), (0, 7, 3), (12, 13, 2), (1, 10**5, 4)):
        ticks = integer_ticks(lo, hi, n)
        assert 1 <= len(ticks) <= max(n, 2) and all(isinstance(t, int) and lo <= t <= hi for t in ticks)


@pytest.mark.parametrize("run", [DISTILL, SINGLE, EVALUATE, EXPERTS], ids=lambda p: p.name)
def test_header_is_whole_at_80_columns(run):
    state = RunState()
    state.apply_all(_events(run))
    lines = header_text(state, width=78).plain.split("\n")  # 80 columns less the padding
    assert len(lines) == 3 and all(len(line) <= 78 and "…" not in line for line in lines)
    assert lines[1].startswith(state.status) and format_duration(state.elapsed) in lines[2]


def test_header_moves_parts_that_do_not_fit_to_a_new_line():
    state = RunState()
    state.apply_all(_events(DISTILL))
    lines = header_text(state, job_status="running", width=40).plain.split("\n")
    assert len(lines) > 3 and all(len(line) <= 40 and "…" not in line for line in lines)
    words = " ".join(lines)
    for part in ("teacher-target", "iteration 50/50", "ETA 0:00:00", "best 63.10%", "host 2105 MiB",
                 "dev 702/1400 MiB"):
        assert part in words  # whole, never cut across lines
    parts = [Text("a" * 10), Text("b" * 10), Text("c" * 50)]
    assert [t.plain for t in pack([parts], 25)] == ["a" * 10 + "  " + "b" * 10, "c" * 24 + "…"]


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
    assert [line.text for line in state.log if line.level == "checkpoint"] == [
        "expert 0 saved to experts.h5/expert_0", "expert 1 saved to experts.h5/expert_1"]


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
    # growing: by whole factors only (nearest neighbour stays sharp), and only when asked
    assert fit_size(8, 10, 35, 20) == (8, 10) and fit_size(8, 10, 35, 20, upscale=True) == (24, 30)
    grown = half_blocks(pixels, width=4, height=2, upscale=True)  # 2x2 pixels -> x2 = 4x4
    assert grown.plain == "▀▀▀▀\n▀▀▀▀"
    colours = [(s.style.color.triplet, s.style.bgcolor.triplet) for s in grown.spans]
    assert colours[:4] == [((255, 0, 0), (255, 0, 0))] * 2 + [((0, 255, 0), (0, 255, 0))] * 2
    assert colours[4:] == [((0, 0, 255), (0, 0, 255))] * 2 + [((255, 255, 255), (255, 255, 255))] * 2


def _grid(classes: int, per_class: int, side: int, pad: int = 1) -> list:
    """A make_grid-like picture whose every image is one colour: (class, index, 7)."""
    rows, cols = per_class * (side + pad) + pad, classes * (side + pad) + pad
    grid = [[[0, 0, 0] for _ in range(cols)] for _ in range(rows)]
    for c in range(classes):
        for k in range(per_class):
            for r in range(side):
                for j in range(side):
                    grid[pad + k * (side + pad) + r][pad + c * (side + pad) + j] = [c, k, 7]
    return grid


def test_preview_is_retiled_to_use_the_cells():
    grid = _grid(10, 3, 16)  # the distill service's preview: 171 x 52 px
    assert grid_geometry(len(grid), len(grid[0]), 3) == (16, 1, 10)
    assert grid_geometry(30, 72, 1) is None  # not a grid of square images: drawn whole
    # 80x24: 78 x 16 cells once the caption is shown. As it comes the strip would shrink
    # to 78/171 (7 px images); one image per class in two bands of five is ~14 px.
    lay = choose_layout(10, 3, 16, 1, 78, 16)
    assert (lay.shown, lay.across) == (1, 5) and lay.scale * 16 >= 13
    tiled = tile_preview(grid, 3, 78, 16)
    assert (tiled.classes, tiled.shown, tiled.size) == (10, 1, 16)
    assert tiled.describe() == "10 classes, 1 of 3 per class, 14 px each"
    # class c sits in band c // 5, column c % 5, its first image only
    for c in range(10):
        top, left = 1 + (c // 5) * (16 + 1 + 1), 1 + (c % 5) * 17
        block = {tuple(p) for row in tiled.pixels[top:top + 16] for p in row[left:left + 16]}
        assert block == {(c, 0, 7)}
    # 120x40 (118 x 32 cells): two of each class at native size
    assert tile_preview(grid, 3, 118, 32).shown == 2
    # a big terminal: all of them, grown by a whole factor
    big = tile_preview(grid, 3, 400, 120)
    assert (big.shown, big.scale) == (3, 2) and big.describe().endswith("32 px each")
    drawn = half_blocks(big.pixels, 400, 120, upscale=True).plain.split("\n")
    assert len(drawn[0]) == 2 * len(big.pixels[0]) and len(drawn) == len(big.pixels)


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
            log.emit(ev.Evaluation(model="ConvNet", subject="synthetic", mean=41.5, std=0.5, n=2,
                                   iteration=self.iterations))
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
            await pilot.press("5")  # the Log tab
            await _wait_for(pilot, lambda: any("job stopped after cancel" in t for t in _log_texts(app)))
            assert app.state.done == job.iterations
            # the Log tab tells it in the order it happened: the job's last lines (its
            # evaluation, checkpoint and finish), then the job's end
            texts = _log_texts(app)
            order = [next(i for i, t in enumerate(texts) if needle in t) for needle in
                     ("distill started", "cancel requested", "ConvNet synthetic: 41.50 ± 0.50",
                      f"checkpoint [{job.iterations}] saved to ckpt", "distill cancelled", "job stopped after cancel")]
            assert order == sorted(order) and order[-1] == len(texts) - 1
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(run())


LEVELS = ("info", "result", "warning", "error", "checkpoint")


def _log_texts(app: TeslaApp) -> list[str]:
    """The entries the Log tab shows, as text: a line that does not start with a level
    continues the entry above (the panel wraps long lines)."""
    entries: list[str] = []
    for strip in app.query_one(LogPanel).lines:
        text = strip.text.rstrip()
        if entries and not text.startswith(LEVELS):
            entries[-1] += " " + text
        else:
            entries.append(text)
    return entries


def test_job_mode_logs_the_end_after_the_jobs_last_lines(tmp_path):
    """The job writes its last lines and returns at once: the app must not log "job
    finished" before the reader has read them (it used to, before the checkpoint)."""
    def job(sink, cancel):
        with JsonlSink(tmp_path / "events.jsonl") as log:
            log.emit(ev.RunStarted(job="distill", config={}, total=3))
            for i in range(1, 4):
                log.emit(ev.Iteration(iteration=i, total=3, loss=1.0, lr=0.01, expert=0, start_epoch=0, seconds=0.1))
            log.emit(ev.Checkpoint(path="ckpt", iteration=3))
            log.emit(ev.RunFinished(status="completed"))

    async def run() -> None:
        app = TeslaApp(tmp_path, job=job, poll_interval=5.0)  # a slow poll: only the wake can be in time
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, lambda: any(line.text == "job finished" for line in app.state.log))
            texts = [line.text for line in app.state.log]
            assert texts[-3:] == ["saved to ckpt", "distill completed", "job finished"]
            assert app.job_status == "finished" and app.state.status == "completed"

    asyncio.run(run())


def test_log_tab_shows_evaluations_in_order():
    async def run() -> None:
        app = TeslaApp(DISTILL)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            await pilot.press("5")
            await _wait_for(pilot, lambda: len(_log_texts(app)) >= 6)
            assert _log_texts(app) == [
                "info       distill started (total 50)",
                "result     [0] ConvNet random-real: 26.00 ± 0.70 % over 3 networks",
                "warning    [20] learned lr clamped to min_lr once",
                "result     [25] ConvNet synthetic: 58.40 ± 0.60 % over 3 networks",
                "checkpoint [25] saved to runs/cifar10-ipc10/synthetic.zarr/checkpoints/000025",
                "result     [50] ConvNet synthetic: 63.10 ± 0.40 % over 3 networks"]

    asyncio.run(run())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_a_single_accuracy_point_is_drawn_and_the_header_is_whole(size):
    async def run() -> None:
        app = TeslaApp(SINGLE)
        async with app.run_test(size=size) as pilot:
            await _caught_up(pilot)
            await pilot.press("3")
            await pilot.pause()
            header = _header(app).split("\n")
            assert len(header) == 3 and "…" not in _header(app) and "0:00:14" in header[2]
            plot = app.query_one("#accuracy-plot", AccuracyPlot)
            assert plot.region.height >= 10  # not squeezed under the table
            drawn = app.query_one("#accuracy-plot Canvas", Canvas).render().plain
            assert drawn.count("●") == 1  # the one synthetic evaluation, inside the frame
            dot_row = next(line for line in drawn.split("\n") if "●" in line)
            assert dot_row.index("●") > len(dot_row) * 0.8  # at iteration 30 of 30: the right end
            legend = str(plot.query_one(".legend").render())
            assert "synthetic 46.70" in legend and "random-real 14.90" in legend and "full-real 84.60" in legend
            table = app.query_one(ResultsTable)
            assert table.row_count == 3 and table.display
            ticks = drawn.rstrip().split("\n")[-1].split()
            assert ticks and all(t.isdigit() for t in ticks)  # integer iteration ticks

    asyncio.run(run())


def test_footer_shows_the_tab_keys():
    async def run() -> None:
        app = TeslaApp(DISTILL)
        async with app.run_test(size=(80, 24)) as pilot:
            await _caught_up(pilot)
            shown = {key for key, active in app.active_bindings.items() if active.binding.show}
            assert {"1", "2", "3", "4", "5", "q"} <= shown

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


def test_snapshot_single_accuracy_point_80x24(snap_compare):
    assert snap_compare(TeslaApp(SINGLE), terminal_size=(80, 24), press=["3"], run_before=_caught_up)


def test_snapshot_single_accuracy_point_120x40(snap_compare):
    assert snap_compare(TeslaApp(SINGLE), terminal_size=(120, 40), press=["3"], run_before=_caught_up)


def test_snapshot_evaluate_results_80x24(snap_compare):
    assert snap_compare(TeslaApp(EVALUATE), terminal_size=(80, 24), press=["3"], run_before=_caught_up)
