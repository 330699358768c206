"""The TUI reads its log off the UI thread, in bounded chunks (toolong's pattern).

First the :class:`LogFollower` alone (no Textual): batches are bounded and contiguous,
every event arrives once and in order, back-pressure holds the reader, a replaced log is
read again, partial lines wait. Then the app: a read that blocks (a stalled cluster
filesystem) does not block the keys, and a 50 MB log is caught up in bounded batches
while key presses are handled.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tesla.adapters.events.jsonl import JsonlSink, encode_event, read_events
from tesla.app.tui.app import EventsRead, TeslaApp
from tesla.app.tui.follow import Batch, LogFollower
from tesla.domain import events as ev


def _iteration(i: int, total: int) -> bytes:
    return encode_event(ev.Iteration(iteration=i, total=total, loss=1.0 / i, lr=0.01, expert=i % 5,
                                     start_epoch=i % 7, seconds=0.5, grad_norm=0.1, time=1.7e9 + i))


def _write_log(path: Path, n: int) -> int:
    """A log of RunStarted and ``n`` iterations; returns the longest line's length."""
    lines = [encode_event(ev.RunStarted(job="distill", config={}, total=n, time=1.7e9))]
    lines += [_iteration(i, n) for i in range(1, n + 1)]
    path.write_bytes(b"".join(lines))
    return max(len(line) for line in lines)


class Collector:
    """A consumer as the app is one: keeps each batch and confirms it at once."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.follower: LogFollower | None = None
        self.changed = threading.Condition()

    def __call__(self, batch: Batch) -> None:
        with self.changed:
            self.batches.append(batch)
            self.changed.notify_all()
        self.follower.consumed()

    def wait(self, condition, timeout: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.batches), timeout), "condition not reached"


def _follow(path: Path, **kwargs) -> tuple[LogFollower, Collector, threading.Thread]:
    collector = Collector()
    follower = LogFollower(path, collector, poll=0.02, **kwargs)
    collector.follower = follower
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    return follower, collector, thread


def _events(batches: list[Batch]) -> list:
    return [e for b in batches for e in b.events]


def test_follower_reads_in_bounded_contiguous_batches(tmp_path):
    path = tmp_path / "events.jsonl"
    longest = _write_log(path, 3000)
    chunk = 16 * 2**10
    follower, got, thread = _follow(path, chunk=chunk)
    try:
        got.wait(lambda bs: bs and bs[-1].eof)
        batches = list(got.batches)
        assert len(batches) > 20  # ~450 KB in 16 KiB reads
        assert all(b.end - b.start <= chunk + longest for b in batches)
        assert [b.start for b in batches[1:]] == [b.end for b in batches[:-1]]  # no gap, no overlap
        assert all(not b.eof for b in batches[:-1])
        everything, end = read_events(path)
        assert _events(batches) == everything and batches[-1].end == end == path.stat().st_size

        # growing: a half-written line waits for its end, then arrives once
        whole = _iteration(3001, 3001)
        with open(path, "ab") as f:
            f.write(whole[:30])
        time.sleep(0.2)
        assert _events(got.batches) == everything
        with open(path, "ab") as f:
            f.write(whole[30:])
        got.wait(lambda bs: _events(bs)[-1:] and _events(bs)[-1].iteration == 3001)
        assert len(_events(got.batches)) == len(everything) + 1
    finally:
        follower.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_follower_waits_for_the_consumer(tmp_path):
    path = tmp_path / "events.jsonl"
    _write_log(path, 2000)
    delivered: list[Batch] = []
    follower = LogFollower(path, delivered.append, poll=0.02, chunk=4096, in_flight=2)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert len(delivered) == 2  # nothing consumed: the reader waits with two handed over
        follower.consumed()
        for _ in range(200):
            if len(delivered) == 3:
                break
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(delivered) == 3 and not delivered[-1].eof
    finally:
        follower.stop()
        thread.join(5)
    assert not thread.is_alive()  # stop() ends a reader that waits for the consumer too


def test_follower_rereads_a_replaced_log_and_waits_for_a_missing_one(tmp_path):
    path = tmp_path / "events.jsonl"
    follower, got, thread = _follow(path)
    try:
        got.wait(lambda bs: len(bs) == 1)
        assert got.batches[0].events == () and got.batches[0].eof  # no log yet: "caught up", nothing
        _write_log(path, 50)
        got.wait(lambda bs: len(_events(bs)) == 51)
        token = follower.wake()
        got.wait(lambda bs: bs[-1].wake >= token)  # a wake is answered even with nothing new
        replacement = tmp_path / "new.jsonl"
        _write_log(replacement, 5)
        replacement.replace(path)  # a new run in the same folder: another file
        got.wait(lambda bs: any(b.reset for b in bs))
        reset = next(i for i, b in enumerate(got.batches) if b.reset)
        got.wait(lambda bs: len(_events(bs[reset:])) == 6)
        assert got.batches[reset].start == 0
        assert [e.iteration for e in _events(got.batches[reset:])[1:]] == [1, 2, 3, 4, 5]
    finally:
        follower.stop()
        thread.join(5)


# -- the app ------------------------------------------------------------------------------------

async def _wait_for(pilot, condition, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    assert condition(), "condition not reached"


def _tab(app: TeslaApp) -> str:
    from textual.widgets import TabbedContent

    return app.query_one(TabbedContent).active


def test_a_stalled_read_does_not_block_the_keys(tmp_path):
    """The read hangs (a stuck network filesystem) until the test lets it go: the tab
    keys still work meanwhile, because no read happens on the UI thread."""
    _write_log(tmp_path / "events.jsonl", 40)
    entered, release = threading.Event(), threading.Event()

    def stuck_read(path, offset, max_bytes=None):
        entered.set()
        release.wait(30)
        return read_events(path, offset, max_bytes=max_bytes)

    async def run() -> None:
        app = TeslaApp(tmp_path, poll_interval=0.05, read=stuck_read)
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, entered.is_set)
            await pilot.press("5")
            assert _tab(app) == "tab-log" and not app.caught_up and app.state.job is None
            await pilot.press("3")
            assert _tab(app) == "tab-accuracy"
            release.set()
            await _wait_for(pilot, lambda: app.caught_up)
            assert app.state.iteration == 40
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(run())


class RecordingApp(TeslaApp):
    """Records the size of every batch the UI folds and ticks a UI-thread timer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []
        self.ticks = 0

    def on_mount(self) -> None:  # TeslaApp.on_mount runs too (see below)
        self.set_interval(0.05, self._tick)

    def _tick(self) -> None:
        self.ticks += 1

    def on_events_read(self, message: EventsRead) -> None:
        # Textual calls the handler of every class in the MRO: TeslaApp's runs after this
        self.sizes.append(message.batch.end - message.batch.start)


def test_a_50_mb_log_is_caught_up_in_bounded_batches_while_keys_work(tmp_path):
    block = b"".join(_iteration(i, 10**6) for i in range(1, 1001))
    path = tmp_path / "events.jsonl"
    with open(path, "wb") as f:
        f.write(encode_event(ev.RunStarted(job="distill", config={}, total=10**6, time=1.7e9)))
        while f.tell() < 50 * 2**20:
            f.write(block)
    chunk = 256 * 2**10
    longest = max(len(line) for line in block.splitlines(keepends=True))

    async def run() -> None:
        app = RecordingApp(tmp_path, poll_interval=0.05, read_chunk=chunk)
        async with app.run_test(size=(80, 24)) as pilot:
            await _wait_for(pilot, lambda: app.batches >= 2)
            await pilot.press("5")
            assert _tab(app) == "tab-log" and not app.caught_up
            seen, ticks = app.batches, app.ticks
            await _wait_for(pilot, lambda: app.batches >= seen + 20)  # ~5 MB further on
            await pilot.press("3")
            assert _tab(app) == "tab-accuracy" and not app.caught_up
            assert app.ticks > ticks  # the UI's own timer kept running between batches
            assert app.state.job == "distill" and app.state.iteration == 1000
            assert all(size <= chunk + longest for size in app.sizes)
            await pilot.press("q")  # quits mid-log: the reader stops with the app
        assert app.return_code == 0

    asyncio.run(run())
