"""Run directories under concurrent commands, real signals and a full disk.

* Two real ``tesla distill --resume`` processes on one run directory: the second is
  refused in one line naming the first's pid and touches nothing (it used to open the
  same store and log and break the first); the first, stopped by ``SIGTERM`` or killed
  by ``SIGKILL``, is then resumed and ends bit for bit where an uninterrupted run ends.
* A full disk under a run (a real tiny tmpfs in a private mount namespace, where the
  machine allows ``unshare``): the event log stops with one warning and keeps its earlier
  lines whole, the run goes on until its next checkpoint meets the full disk and stops
  there with one ``no space left`` line, exit 2, the checkpoint before intact; a
  ``config.json`` that cannot be written is one line too.
* The event sink alone: a write that fails half way (simulated ENOSPC) is cut back to
  whole lines, reported once, and never raised into the job.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults.common import (CHILD_ENV, REPO, count_lines, distill_args, fake_trajectory_store, invoke,
                                 one_thread, results_on_a_small_tmpfs, spawn, tree_snapshot)  # noqa: F401 - one_thread: autouse fixture

# the first run pauses after each checkpoint until the test says "go": the second run is
# then sure to meet it alive, however slowly either process starts
_PAUSED_DISTILL = """
import os, sys, time
from tesla.adapters.stores.set_store import SyntheticSetStore
go, args = sys.argv[1], sys.argv[2:]
save = SyntheticSetStore.save_checkpoint
def paused(self, checkpoint):
    where = save(self, checkpoint)
    print(f"checkpoint {checkpoint.iteration}", flush=True)
    while not os.path.exists(go):
        time.sleep(0.02)
    return where
SyntheticSetStore.save_checkpoint = paused
from tesla.app.cli.main import app
app(args, prog_name="tesla")
"""


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> str:
    return fake_trajectory_store(tmp_path_factory.mktemp("runs") / "t.zarr")


@pytest.fixture(scope="module")
def reference(traj, tmp_path_factory) -> dict:
    """The set of an uninterrupted run (the tiny settings of DISTILL: 12 iterations)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert invoke(distill_args(traj, out)).exit_code == 0
    return _final(out)


def _final(run_dir: Path) -> dict:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    with open_synthetic_store(str(run_dir / "synthetic.zarr"), "r") as s:
        syn = s.read_set()
    return {"images": np.asarray(syn.images), "lr": float(syn.lr), "labels": np.asarray(syn.labels)}


def _paused(args: list, go: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-c", _PAUSED_DISTILL, str(go), *map(str, args)], cwd=REPO,
                                env=CHILD_ENV, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_for(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def _refused_second(traj: str, out: Path, first: subprocess.Popen, tmp_path: Path) -> None:
    """A second ``--resume`` on the live run: exit 2, one line naming the first's pid, and
    the run directory exactly as the (paused) first left it."""
    before = tree_snapshot(out)
    second = spawn(distill_args(traj, out, "--resume"), tmp_path / "second.log")
    assert second.wait(timeout=300) == 2
    lines = [line for line in (tmp_path / "second.log").read_text().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the run directory") and f"process {first.pid}" in lines[0], lines
    assert tree_snapshot(out) == before


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_second_resume_on_a_live_run_is_refused_and_the_first_loses_nothing(traj, reference, tmp_path, stop):
    out, go, log = tmp_path / "run", tmp_path / "go", tmp_path / "first.log"
    first = _paused(distill_args(traj, out), go, log)
    try:
        _wait_for(first, log, "checkpoint 3")
        _refused_second(traj, out, first, tmp_path)
        if stop == "SIGTERM":  # the pre-emption path: checkpoint after this iteration, exit 1 (cancelled)
            first.send_signal(signal.SIGTERM)
            go.touch()
            assert first.wait(timeout=300) == 1, log.read_text()
        else:  # no handler runs: the kernel drops the lock with the process
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        first.kill()
        first.wait()
    events = (out / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in events)
    assert count_lines(out / "events.jsonl", '"run_started"') == 1  # the refused run wrote no line
    res = invoke(distill_args(traj, out, "--resume"))
    assert res.exit_code == 0, res.output
    got = _final(out)
    np.testing.assert_array_equal(got["images"], reference["images"])
    assert got["lr"] == reference["lr"]
    np.testing.assert_array_equal(got["labels"], reference["labels"])


def test_the_run_lock_is_released_when_a_job_ends_or_is_refused(traj, tmp_path):
    """In one process (the TUI, scripts): a finished job, and a refusal after the lock was
    taken, leave the directory free for the next command."""
    from tesla.adapters.stores.lock import _HELD, lock_path

    out = tmp_path / "run"
    assert invoke(distill_args(traj, out, "--iterations", "3")).exit_code == 0
    key = os.path.realpath(lock_path(str(out)))
    assert key not in _HELD
    res = invoke(distill_args(traj, out, "--resume", "--syn-steps", "4"))  # refused after the lock: other settings
    assert res.exit_code == 2 and "syn_steps" in res.output
    assert key not in _HELD
    assert invoke(distill_args(traj, out, "--resume", "--iterations", "6")).exit_code == 0


# --- full disks ------------------------------------------------------------------------------

def test_a_real_full_disk_under_a_run_is_one_line_and_keeps_what_was_written(traj, tmp_path):
    """``tests/faults/full_run.py`` on a 3 MB tmpfs: a run resumed on a full disk, and a
    config.json that cannot be written."""
    mnt = tmp_path / "mnt"
    results = results_on_a_small_tmpfs(mnt, "tests.faults.full_run", mnt, traj)
    r = results["resume on a full disk"]
    assert r["first_rc"] == 0 and r["rc"] == 2, r
    assert r["longer_rc"] == 2 and r["config_unchanged"] and len(r["longer_errors"]) == 1, r
    assert r["longer_errors"][0].startswith(f"error: cannot write {mnt}/run/config.json (no space left on device)"), r
    assert len(r["warnings"]) == 1 and "cannot write the event log" in r["warnings"][0], r
    assert "no space left on device" in r["warnings"][0] and "the run goes on without it" in r["warnings"][0]
    assert len(r["errors"]) == 1 and r["errors"][0].startswith(f"error: no space left on {mnt}/run/synthetic.zarr"), r
    assert r["log_kept"] and r["log_whole"], r
    assert r["checkpoints"] == [3] and r["checkpoint_intact"], r
    c = results["config on a full disk"]
    assert c["rc"] == 2 and len(c["errors"]) == 1, c
    assert c["errors"][0].startswith(f"error: cannot write {mnt}/run2/config.json (no space left on device): "
                                     "free space"), c
    assert not c["config_exists"], c


def test_an_event_log_that_cannot_be_written_stops_with_one_warning_and_whole_lines(tmp_path, monkeypatch):
    from tesla.adapters.events import jsonl
    from tesla.adapters.events.jsonl import JsonlSink, read_events
    from tesla.domain import events as ev

    told: list = []
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, on_error=told.append)
    sink.emit(ev.Warning(message="before"))
    before = path.read_bytes()
    real = os.write

    def half_then_full(fd, data):  # the disk takes half the line, then is full
        if fd == sink._fd:
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(jsonl.os, "write", half_then_full)
    sink.emit(ev.Warning(message="lost " * 20))
    sink.emit(ev.Warning(message="also lost"))
    monkeypatch.undo()
    sink.close()
    assert path.read_bytes() == before  # the half line was cut off again
    assert [e.message for e in read_events(path)[0]] == ["before"]
    assert len(told) == 1 and "no space left on device" in told[0] and str(path) in told[0]
    # a log that cannot even be opened (a full disk, no inode) is the same one warning
    told.clear()

    def no_open(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl.os, "open", no_open)
    sink = JsonlSink(tmp_path / "other.jsonl", on_error=told.append)
    sink.emit(ev.Warning(message="nowhere"))
    sink.close()
    assert len(told) == 1
