"""Writers of stores: one at a time (named when refused), fresh files that survive a kill, full disks.

* Writer locks, between processes: a second writer of a synthetic set, an HDF5 trajectory
  file or a prepared destination is refused with one line naming the first one's pid
  (within a process a lock is shared by its handles); readers never wait;
  a lock dies with its process (``kill -9`` leaves none). Zarr trajectory stores take
  several writers of *different* experts (the ranks of a distributed run), and refuse a
  second writer of the same expert instead of deleting it as "unfinished". Two real
  ``tesla experts`` processes on one Zarr store lose no expert.
* A new HDF5 file killed in its first milliseconds can be resumed (it used to be a bare
  96-byte superblock that no longer opened).
* A full disk is one "no space left" line that keeps what was written: on a real tiny
  tmpfs in a private mount namespace where the machine allows it, and by a simulated
  ENOSPC everywhere.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tesla.adapters.stores import StoreError, open_synthetic_store, open_trajectory_store
from tesla.adapters.stores.lock import Lock, exclusive, lock_path
from tesla.domain.errors import RunDirError
from tests.faults.common import CHILD_ENV, REPO, experts_args, one_thread, results_on_a_small_tmpfs, spawn  # noqa: F401 - autouse fixture

P = 12


def _new_trajectories(url: str) -> None:
    with open_trajectory_store(url, "a") as s:
        s.initialize({"arch": "mlp"}, [["w", [P]]], P, {"name": "demo"})


def _child(code: str) -> subprocess.Popen:
    """A python child that runs ``code`` then prints "ready" and sleeps until killed."""
    src = f"import sys, time\n{code}\nprint('ready', flush=True)\ntime.sleep(600)\n"
    return subprocess.Popen([sys.executable, "-c", src], cwd=REPO, env=CHILD_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()


# --- the lock helper ------------------------------------------------------------------------

def test_exclusive_is_per_process_shared_within_and_freed_by_the_last_handle(tmp_path):
    run = str(tmp_path / "run")
    with exclusive(run, f"run directory {run}", RunDirError) as outer:
        with exclusive(run, f"run directory {run}", RunDirError):  # the same process: shared
            pass
        assert outer.held
        res = subprocess.run([sys.executable, "-c", f"from tesla.adapters.stores.lock import exclusive\n"
                              f"from tesla.domain.errors import RunDirError\n"
                              f"with exclusive({run!r}, 'run directory {run}', RunDirError): pass"],
                             cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "RunDirError" in res.stderr, res.stderr  # still held after the inner one
        assert f"run directory {run} is being written by process {os.getpid()} (lock " in res.stderr
    assert Path(lock_path(run)).name == ".run.lock"
    res = subprocess.run([sys.executable, "-c", f"from tesla.adapters.stores.lock import exclusive\n"
                          f"with exclusive({run!r}, 'x'): print('got it')"],
                         cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "got it", res.stderr  # released with the last handle


def test_a_lock_held_by_another_process_names_its_pid_and_dies_with_it(tmp_path):
    target = str(tmp_path / "out")
    child = _child(f"from tesla.adapters.stores.lock import Lock, lock_path\nl = Lock(lock_path({target!r}), 'x')")
    try:
        _wait_ready(child)
        with pytest.raises(StoreError, match=rf"being written by process {child.pid} \(lock "):
            Lock(lock_path(target), f"{target}: the store")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with exclusive(target, "now free"):  # kill -9 left no lock behind
            pass
    finally:
        child.kill()
        child.wait()


# --- store writers ------------------------------------------------------------------------

def _held_by_child(code: str, then) -> None:
    """Run ``code`` in a child that keeps its stores open; ``then(child)`` runs meanwhile."""
    child = _child("import numpy as np\nfrom tesla.adapters.stores import open_synthetic_store, "
                   "open_trajectory_store\n" + code)
    try:
        _wait_ready(child)
        then(child)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_second_writer_of_a_synthetic_store_is_refused_readers_are_not(tmp_path, suffix):
    url = str(tmp_path / f"synthetic{suffix}")

    def meanwhile(child):
        with pytest.raises(StoreError, match=f"{url}: the store is being written by process {child.pid}"):
            open_synthetic_store(url, "a")
        with open_synthetic_store(url, "r") as reader:  # readers never wait
            assert reader.checkpoints() == [1]

    _held_by_child(f"s = open_synthetic_store({url!r}, 'a')\n"
                   f"s.write_checkpoint(1, {{'images': np.zeros((2, 3, 4, 4), np.float32)}}, {{}})", meanwhile)
    with open_synthetic_store(url, "a") as second:  # the first is gone: a writer may open it
        second.write_checkpoint(2, {"images": np.ones((2, 3, 4, 4), np.float32)}, {})
        assert second.checkpoints()[-1] == 2


def test_a_second_writer_of_an_hdf5_trajectory_file_is_refused(tmp_path):
    url = str(tmp_path / "t.h5")
    _new_trajectories(url)

    def meanwhile(child):
        with pytest.raises(StoreError, match=f"{url}: the store is being written by process {child.pid}"):
            open_trajectory_store(url, "a")

    _held_by_child(f"s = open_trajectory_store({url!r}, 'a')\ns.add_expert(np.ones((2, {P}), np.float32), {{}})",
                   meanwhile)
    with open_trajectory_store(url, "a") as s:
        assert s.expert_ids() == [0]


def test_zarr_writers_share_a_store_but_not_an_expert(tmp_path):
    url = str(tmp_path / "t.zarr")
    _new_trajectories(url)

    def meanwhile(child):
        with open_trajectory_store(url, "a") as s:
            # the second writer must not delete expert 0 as "unfinished" while it is written
            with pytest.raises(StoreError, match=f"{url}: expert 0 is being written by process {child.pid}"):
                s.begin_expert(0, 1, {"seed": 0})
            s.add_expert(np.full((2, P), 2.0, np.float32), {"seed": 1}, expert_id=1)  # another expert: fine

    _held_by_child(f"s = open_trajectory_store({url!r}, 'a')\nw = s.begin_expert(0, 1, {{}})\n"
                   f"w.write(0, np.zeros({P}, np.float32))", meanwhile)
    with open_trajectory_store(url, "r") as s:
        assert s.expert_ids() == [1] and s.incomplete_ids() == [0] and s.load(1, 0)[0] == 2.0


def test_an_expert_abandoned_by_a_killed_writer_is_taken_over(tmp_path):
    url = str(tmp_path / "t.zarr")
    _new_trajectories(url)
    code = (f"from tesla.adapters.stores import open_trajectory_store\nimport numpy as np\n"
            f"s = open_trajectory_store({url!r}, 'a')\nw = s.begin_expert(0, 1, {{}})\n"
            f"w.write(0, np.zeros({P}, np.float32))")
    child = _child(code)
    try:
        _wait_ready(child)
        with open_trajectory_store(url, "a") as s:
            with pytest.raises(StoreError, match=f"being written by process {child.pid}"):
                s.begin_expert(0, 1, {})
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            s.add_expert(np.ones((2, P), np.float32), {"seed": 0}, expert_id=0)  # the dead writer's: redone
            assert s.expert_ids() == [0]
    finally:
        child.kill()
        child.wait()


# the first run pauses after its first snapshot until the test says "go": the second run is
# then sure to meet expert 0 half written, however slowly either process starts
_PAUSED_EXPERTS = """
import os, sys, time
from tesla.adapters.stores.trajectory import ExpertWriter
go, args = sys.argv[1], sys.argv[2:]
write = ExpertWriter.write
def paused(self, epoch, *a, **k):
    write(self, epoch, *a, **k)
    while not os.path.exists(go):
        time.sleep(0.02)
ExpertWriter.write = paused
from tesla.app.cli.main import app
app(args, prog_name="tesla")
"""


def test_two_experts_processes_on_one_zarr_store_lose_no_expert(tmp_path):
    """A second real ``tesla experts`` on a Zarr store while the first writes expert 0: the
    second is refused in one line naming the first's pid (it used to delete expert 0 as
    "unfinished" and write its own over it); the first then finishes every expert."""
    url, go = tmp_path / "experts.zarr", tmp_path / "go"
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen([sys.executable, "-c", _PAUSED_EXPERTS, str(go), *experts_args(url)], cwd=REPO,
                                 env=CHILD_ENV, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (url / "experts" / "000000" / "params" / "zarr.json").exists():  # expert 0 under way
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.02)
        second = spawn(experts_args(url), tmp_path / "second.log")
        assert second.wait(timeout=300) == 2
        lines = [line for line in (tmp_path / "second.log").read_text().splitlines() if line.strip()]
        assert len(lines) == 1 and f"expert 0 is being written by process {first.pid}" in lines[0], lines
        go.touch()
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    finally:
        first.kill()
        first.wait()
    with open_trajectory_store(str(url), "r") as s:
        assert s.expert_ids() == [0, 1] and s.incomplete_ids() == []
        for i in (0, 1):
            s.load_trajectory(i)


def test_a_second_prepare_into_one_destination_is_refused(tmp_path):
    from tesla.adapters.data.prepared import PreparedWriter
    from tests.faults.damage import _Source

    dest = str(tmp_path / "p.zarr")
    child = _child(f"from tesla.adapters.data.prepared import PreparedWriter\nfrom tests.faults.damage import _Source\n"
                   f"w = PreparedWriter({dest!r}, _Source(), chunk=4, block=8)")
    try:
        _wait_ready(child)
        with pytest.raises(StoreError, match=f"{dest}: the store is being written by process {child.pid}"):
            PreparedWriter(dest, _Source(), chunk=4, block=8)
    finally:
        child.kill()
        child.wait()
    PreparedWriter(dest, _Source(), chunk=4, block=8).close()


# --- a fresh HDF5 file ---------------------------------------------------------------------

def test_an_hdf5_file_cut_off_at_creation_is_made_anew(tmp_path):
    """The 96-byte superblock an older tesla left when killed right after creating a file."""
    import h5py

    url = tmp_path / "t.h5"
    h5py.File(url, "w").close()
    url.write_bytes(url.read_bytes()[:96])
    with pytest.raises(StoreError, match="damaged"):  # a reader is told, and nothing is changed
        open_trajectory_store(str(url), "r")
    assert url.stat().st_size == 96
    _new_trajectories(str(url))
    with open_trajectory_store(str(url), "a") as s:
        s.add_expert(np.ones((2, P), np.float32), {"seed": 0})
    with open_trajectory_store(str(url), "r") as s:
        assert s.expert_ids() == [0]


def test_an_hdf5_store_killed_within_milliseconds_of_creation_resumes(tmp_path):
    """A child creates a store and is SIGKILLed 0-5 ms in; the next writer always carries on."""
    for k, delay in enumerate((0.0, 0.0005, 0.001, 0.002, 0.005)):
        url = str(tmp_path / f"t{k}.h5")
        code = (f"import os, signal, threading, numpy as np\n"
                f"from tesla.adapters.stores import open_trajectory_store\n"
                f"threading.Timer({delay}, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n"
                f"with open_trajectory_store({url!r}, 'a') as s:\n"
                f"    s.initialize({{}}, [['w', [{P}]]], {P}, {{'name': 'demo'}})\n"
                f"    s.add_expert(np.ones((2, {P}), np.float32), {{}})\n"
                f"os.kill(os.getpid(), signal.SIGKILL)\n")
        rc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=CHILD_ENV, timeout=120).returncode
        assert rc == -signal.SIGKILL
        with open_trajectory_store(url, "a") as s:  # resume: what is there opens, or is made anew
            s.initialize({}, [["w", [P]]], P, {"name": "demo"})
            done = s.expert_ids()
            if not done:
                s.add_expert(np.ones((2, P), np.float32), {})
        with open_trajectory_store(url, "r") as s:
            assert s.expert_ids() == [0]


# --- full disks ------------------------------------------------------------------------------

def test_a_real_full_disk_is_one_line_and_keeps_what_was_written(tmp_path):
    """Every store kind and ``tesla experts`` on a 3 MB tmpfs (a private mount namespace)."""
    mnt = tmp_path / "mnt"
    results = results_on_a_small_tmpfs(mnt, "tests.faults.full_disk", mnt)
    no_space = f"no space left on {mnt}/"
    for kind in ("trajectories.h5", "trajectories.zarr", "synthetic.h5", "synthetic.zarr"):
        r = results[kind]
        assert r["intact"] and r["written"] >= 1 and r["message"].startswith(no_space), (kind, r)
        assert "free space or choose another location" in r["message"]
    for kind in ("prepared.h5", "prepared.zarr"):
        r = results[kind]
        assert r["message"].startswith(no_space) and r["resumed_message"] is None and r["intact"], (kind, r)
    r = results["cli experts"]
    assert r["first_rc"] == 0 and r["rc"] == 2 and r["ids"] == [0], r
    assert len(r["stderr"]) == 1 and r["stderr"][0].startswith(f"error: no space left on {mnt}/e.h5"), r


def test_a_simulated_full_disk_under_zarr_is_one_line_and_keeps_what_was_written(tmp_path, monkeypatch):
    from zarr.storage import _local

    url = str(tmp_path / "t.zarr")
    _new_trajectories(url)
    with open_trajectory_store(url, "a") as s:
        s.add_expert(np.ones((2, P), np.float32), {"seed": 0})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_local, "_put", full)
    with open_trajectory_store(url, "a") as s:
        with pytest.raises(StoreError, match=rf"^no space left on {url}: free space or choose another location"):
            s.add_expert(np.ones((2, P), np.float32), {"seed": 1})
    monkeypatch.undo()
    with open_trajectory_store(url, "r") as s:
        assert s.expert_ids() == [0] and np.array_equal(s.load_trajectory(0), np.ones((2, P), np.float32))


@pytest.mark.parametrize("kind", ["trajectories", "synthetic"])
def test_a_simulated_full_disk_under_hdf5_is_refused_before_hdf5_meets_it(tmp_path, monkeypatch, kind):
    """HDF5 cannot recover from a failed metadata write, so writes check for room first."""
    url = str(tmp_path / f"{kind}.h5")
    if kind == "trajectories":
        _new_trajectories(url)
        with open_trajectory_store(url, "a") as s:
            s.add_expert(np.ones((2, P), np.float32), {"seed": 0})
    else:
        with open_synthetic_store(url, "a") as s:
            s.write_checkpoint(1, {"images": np.ones((2, 3, 4, 4), np.float32)}, {})
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 10  # ten blocks left

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(StoreError, match=rf"^no space left on {url}"):
        if kind == "trajectories":
            with open_trajectory_store(url, "a") as s:
                s.add_expert(np.ones((2, P), np.float32), {"seed": 1})
        else:
            with open_synthetic_store(url, "a") as s:
                s.write_checkpoint(2, {"images": np.zeros((2, 3, 4, 4), np.float32)}, {})
    monkeypatch.undo()
    if kind == "trajectories":
        with open_trajectory_store(url, "r") as s:
            assert s.expert_ids() == [0]
    else:
        with open_synthetic_store(url, "r") as s:
            assert s.checkpoints() == [1] and s.latest_checkpoint()[0] == 1
        assert not list(tmp_path.glob(".synthetic.h5.tmp-*"))  # the half-built file is gone


def test_hdf5s_own_no_space_error_is_the_full_disk_line_not_damage(tmp_path):
    """h5py reports ENOSPC only in its message text ("errno = 28")."""
    from tesla.adapters.stores.backends import open_backend

    b = open_backend(str(tmp_path / "x.h5"), "a")
    try:
        with pytest.raises(StoreError, match="^no space left on .*x.h5: free space"):
            with b.guard("params", writing=True):
                raise RuntimeError("Can't write data (file write failed: time = x, filename = 'x.h5', "
                                   "file descriptor = 3, errno = 28, error message = 'No space left on device')")
    finally:
        b.close()
