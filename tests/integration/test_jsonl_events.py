"""The JSON-lines run log, the rich progress sink and the TensorBoard sink, on real files."""

from __future__ import annotations

import io
import json
import threading

import attrs
import pytest
from rich.console import Console

from tesla.adapters.events import tensorboard as tb
from tesla.adapters.events.jsonl import JsonlSink, follow, read_events
from tesla.adapters.events.progress import RichProgressSink, health_text
from tesla.domain import events as ev


def _iteration(i: int, total: int = 100) -> ev.Iteration:
    return ev.Iteration(iteration=i, total=total, loss=1.0 / i, lr=0.01, expert=i % 3,
                        start_epoch=i % 5, seconds=0.1, time=1000.0 + i)


def test_round_trip_every_event_type(tmp_path):
    path = tmp_path / "run" / "events.jsonl"
    sent = [
        ev.RunStarted(job="distill", config={"distill": {"ipc": 1}}, total=2, time=1.0),
        _iteration(1),
        ev.Epoch(expert=0, epoch=1, epochs=2, train_loss=1.5, train_acc=40.0, test_acc=None, seconds=1.0, time=2.0),
        ev.Memory(device_allocated=None, device_peak=None, host_rss=123, iteration=1, time=3.0),
        ev.Evaluation(model="ConvNet", subject="synthetic", mean=40.0, std=1.0, n=2, iteration=1,
                      accuracies=(39.0, 41.0), time=4.0),
        ev.Checkpoint(path="synthetic.zarr/checkpoints/1", iteration=1, time=5.0),
        ev.Preview(iteration=1, pixels=[[[0, 1, 2], [3, 4, 5]]], per_class=1, time=6.0),
        ev.Progress(label="prepare", done=1, total=None, time=7.0),
        ev.Warning(message="w", time=8.0),
        ev.Error(message="e", iteration=1, time=9.0),
        ev.RunFinished(status="completed", summary={"loss": 0.5}, time=10.0),
    ]
    with JsonlSink(path) as sink:
        for e in sent:
            sink.emit(e)
    got, offset = read_events(path)
    assert got == sent
    assert offset == path.stat().st_size
    assert read_events(path, offset) == ([], offset)


def test_arrays_are_written_as_lists(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "events.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(ev.Preview(iteration=np.int64(3), pixels=np.zeros((2, 2, 3), np.uint8), per_class=1))
    (got,), _ = read_events(path)
    assert got.iteration == 3 and got.pixels == [[[0, 0, 0]] * 2] * 2


def test_concurrent_writer_and_reader_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    n_threads, per_thread = 3, 300
    sink = JsonlSink(path)
    done = threading.Event()

    def write(t: int) -> None:
        for i in range(per_thread):
            # a long field makes lines big enough that a torn write would show
            sink.emit(ev.Warning(message=f"{t}:{i}:" + "x" * (i % 97) * 20, iteration=t * per_thread + i))

    writers = [threading.Thread(target=write, args=(t,)) for t in range(n_threads)]
    for w in writers:
        w.start()
    seen, offset = [], 0
    while not done.is_set():
        if not any(w.is_alive() for w in writers):
            done.set()  # one more read after the last write
        batch, offset = read_events(path, offset, max_bytes=4096)
        seen.extend(batch)
    while True:  # drain what max_bytes left
        batch, offset = read_events(path, offset, max_bytes=4096)
        if not batch:
            break
        seen.extend(batch)
    sink.close()
    assert all(isinstance(e, ev.Warning) for e in seen)
    ids = sorted(e.iteration for e in seen)
    assert ids == list(range(n_threads * per_thread))
    for e in seen:  # each line intact: the payload matches its id
        t, i = divmod(e.iteration, per_thread)
        assert e.message == f"{t}:{i}:" + "x" * (i % 97) * 20


def test_partial_last_line_is_not_consumed(tmp_path):
    path = tmp_path / "events.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(_iteration(1))
    whole = path.read_bytes()
    second = json.dumps(ev.to_json(_iteration(2))).encode() + b"\n"
    path.write_bytes(whole + second[:25])  # a writer is half-way through line 2
    got, offset = read_events(path)
    assert [e.iteration for e in got] == [1] and offset == len(whole)
    with open(path, "ab") as f:
        f.write(second[25:])
    got, offset2 = read_events(path, offset)
    assert [e.iteration for e in got] == [2] and offset2 == len(whole) + len(second)


def test_corrupt_line_becomes_a_warning_and_reading_goes_on(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps(ev.to_json(_iteration(1)))
    path.write_text(good + "\n{not json\n[1, 2]\n" + '{"type": "iteration", "loss": 1}\n' + good + "\n")
    got, _ = read_events(path)
    assert [type(e).__name__ for e in got] == ["Iteration", "Warning", "Warning", "Warning", "Iteration"]
    assert "corrupt line" in got[1].message and "byte" in got[1].message


def test_unknown_type_and_unknown_fields(tmp_path):
    path = tmp_path / "events.jsonl"
    newer = {"type": "gradient_histogram", "time": 1.0, "bins": [1, 2]}
    extra = dict(ev.to_json(_iteration(1)), new_field="later version")
    path.write_text(json.dumps(newer) + "\n" + json.dumps(extra) + "\n")
    got, _ = read_events(path)
    assert isinstance(got[0], ev.UnknownEvent) and got[0].data["bins"] == [1, 2]
    assert got[1] == _iteration(1)


def test_missing_file_reads_empty(tmp_path):
    assert read_events(tmp_path / "nope.jsonl", 7) == ([], 7)


def test_emit_after_close_names_the_fix(tmp_path):
    sink = JsonlSink(tmp_path / "e.jsonl")
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.emit(_iteration(1))


def test_follow_yields_appended_events_until_stopped(tmp_path):
    path = tmp_path / "events.jsonl"
    stop = threading.Event()
    got: list = []

    def reader() -> None:
        for e in follow(path, stop, poll=0.01):
            got.append(e)

    thread = threading.Thread(target=reader)
    thread.start()  # before the file exists
    with JsonlSink(path) as sink:
        for i in range(1, 21):
            sink.emit(_iteration(i))
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [e.iteration for e in got] == list(range(1, 21))


# -- rich progress ------------------------------------------------------------------------

def _run_events() -> list:
    return [
        ev.RunStarted(job="distill", config={}, total=3, run_dir="runs/x"),
        _iteration(1, 3),
        ev.Memory(device_allocated=None, device_peak=None, host_rss=2**20),
        ev.Warning(message="lr hit min_lr"),
        _iteration(2, 3),
        ev.Evaluation(model="ConvNet", subject="synthetic", mean=45.5, std=0.5, n=2, iteration=2),
        ev.Checkpoint(path="ckpt/2", iteration=2),
        ev.Error(message="disk almost full"),
        _iteration(3, 3),
        ev.RunFinished(status="completed"),
    ]


def _console(buf: io.StringIO) -> Console:
    return Console(file=buf, width=120, force_terminal=False, color_system=None)


def test_progress_prints_lines_and_summary():
    buf = io.StringIO()
    with RichProgressSink(console=_console(buf)) as sink:
        for e in _run_events():
            sink.emit(e)
    sink.print_summary()
    out = buf.getvalue()
    for text in ("warning: lr hit min_lr", "error: disk almost full", "ConvNet synthetic: 45.50 ± 0.50",
                 "checkpoint @ it 2", "distill completed", "3/3"):
        assert text in out
    s = sink.summary()
    assert (s["status"], s["done"], s["total"], s["warnings"], s["errors"]) == ("completed", 3, 3, 1, 1)
    assert s["peak_host_bytes"] == 2**20 and s["evaluations"]["ConvNet synthetic"] == (45.5, 0.5, 2)


def test_progress_quiet_prints_only_errors():
    buf = io.StringIO()
    with RichProgressSink(console=_console(buf), quiet=True) as sink:
        for e in _run_events():
            sink.emit(e)
    sink.print_summary()
    assert buf.getvalue().strip().splitlines() == ["error: disk almost full"]


def test_progress_json_mode_prints_one_json_line_per_event(capsys):
    sink = RichProgressSink(json_mode=True)
    with sink:
        for e in _run_events():
            sink.emit(e)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["type"] for line in lines] == [e.type for e in _run_events()]


def test_progress_counts_expert_epochs():
    buf = io.StringIO()
    sink = RichProgressSink(console=_console(buf))
    sink.emit(ev.RunStarted(job="experts", config={}, total=4))
    for expert in range(2):
        for epoch in (1, 2):
            sink.emit(ev.Epoch(expert=expert, epoch=epoch, epochs=2, train_loss=1.0, train_acc=50.0,
                               test_acc=40.0, seconds=0.1))
    sink.emit(ev.Progress(label="soft labels", done=5, total=10))
    assert sink.summary()["done"] == 4


# -- tensorboard --------------------------------------------------------------------------

def test_tensorboard_missing_raises_a_clear_error(tmp_path):
    if tb.available():
        pytest.skip("tensorboard is installed")
    with pytest.raises(tb.TensorBoardUnavailable, match="pip install tensorboard"):
        tb.TensorBoardSink(tmp_path / "tb")


def test_tensorboard_writes_event_files(tmp_path):
    if not tb.available():
        pytest.skip("tensorboard is not installed")
    with tb.TensorBoardSink(tmp_path / "tb") as sink:
        for e in _run_events():
            sink.emit(e)
        sink.emit(ev.Preview(iteration=1, pixels=[[[0, 0, 0], [255, 255, 255]]], per_class=1))
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_the_progress_line_shows_run_health():
    healthy = ev.Iteration(iteration=1, total=4, loss=0.9, lr=0.01, expert=0, start_epoch=0, seconds=0.1,
                           agreement=0.8, label_entropy=1.234)
    failing = attrs.evolve(healthy, iteration=2, agreement=0.1, low_agreement=3, stalled=2)
    assert health_text(healthy) == "  agree 80%  H 1.23"
    assert health_text(failing) == "  agree 10%  H 1.23  low x3  stalled x2"
    assert health_text(_iteration(1)) == ""  # hard labels (or an older log): nothing to show
    buf = io.StringIO()
    sink = RichProgressSink(console=_console(buf))
    sink.emit(ev.RunStarted(job="distill", config={}, total=4))
    sink.emit(failing)
    task = sink._progress.tasks[0]
    assert task.fields["info"] == "loss 0.9  lr 0.01  agree 10%  H 1.23  low x3  stalled x2"
