"""kill -9 at seeded random points of experts, distill and data prepare; then resume.

Each job runs as a real child process (``python -m tesla ...``) and is SIGKILLed at a
point chosen by a seeded RNG: after the k-th event of its log (or once its work store
exists) plus a random delay. No handler runs, nothing is flushed. What is on disk must
then hold every finished unit (expert, checkpoint, task) and nothing half-written that
reads as whole; running the same command again (``--resume`` for distill) must finish
with exactly what an uninterrupted run of the same seed gives: trajectories bit for bit,
the final images and learned lr bit for bit, the prepared arrays byte for byte.

Uninterrupted references are computed once per module, in this process (one CPU thread,
as the children use).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults.common import (one_thread,  # noqa: F401 - autouse fixture
                                 count_lines, distill_args, experts_args, invoke, kill_when, make_imagenet64,
                                 prepared_arrays, spawn, trajectories)

EXPERT_POINTS = [0, 1, 2, 3]  # 3 Zarr stores, 1 HDF5 file
DISTILL_POINTS = [0, 1, 2, 3]  # 3 Zarr sets, 1 HDF5 set
PREPARE_POINTS = [0, 1, 2, 3]  # 3 Zarr stores, 1 HDF5 file
PREPARE = ["--image-size", "8", "--chunk", "8", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def expert_ref(work) -> tuple[Path, dict]:
    """An uninterrupted expert store and its trajectories."""
    url = work / "ref-experts.zarr"
    res = invoke(experts_args(url))
    assert res.exit_code == 0, res.output
    return url, trajectories(str(url))


def _announced(log: Path, kind: str) -> list[dict]:
    out = []
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # the line being written when the child died
        if ev.get("type") == kind:
            out.append(ev)
    return out


@pytest.mark.parametrize("point", EXPERT_POINTS)
def test_experts_survive_kill9_and_rerun_gives_the_same_trajectories(point, work, expert_ref):
    ref_url, ref = expert_ref
    rng = random.Random(1000 + point)
    suffix = ".h5" if point == 3 else ".zarr"
    url = work / f"experts-{point}{suffix}"
    run_dir = work / f"experts-{point}-run"
    events = run_dir / "events.jsonl"
    epochs_before = rng.randrange(0, 6)  # 2 experts x 3 epochs
    delay = rng.uniform(0.0, 0.8)
    child = spawn(experts_args(url, "--run-dir", str(run_dir)), work / f"experts-{point}.log")
    killed = kill_when(child, lambda: count_lines(events, '"type":"epoch"') >= epochs_before, delay)

    # nothing finished is lost, nothing unfinished is visible
    finished = {int(e["path"].rsplit("-", 1)[1]) for e in _announced(events, "checkpoint")}
    if url.exists():
        got = trajectories(str(url)) if finished or _is_store(url) else {}
        assert finished <= set(got), f"announced experts {finished} but the store holds {sorted(got)}"
        for i, traj in got.items():
            np.testing.assert_array_equal(traj, ref[i])
    else:
        assert not finished

    res = invoke(experts_args(url, "--run-dir", str(run_dir)))
    assert res.exit_code == 0, res.output
    got = trajectories(str(url))
    assert sorted(got) == sorted(ref)
    for i in ref:
        assert np.array_equal(got[i], ref[i]), f"expert {i} differs after kill ({'mid-run' if killed else 'late'})"


def _is_store(url: Path) -> bool:
    from tesla.adapters.stores.errors import StoreError

    try:
        trajectories(str(url))
        return True
    except StoreError:
        return False


@pytest.fixture(scope="module")
def distill_ref(work, expert_ref) -> dict:
    traj_url, _ = expert_ref
    out = work / "ref-distill"
    res = invoke(distill_args(traj_url, out))
    assert res.exit_code == 0, res.output
    return {"traj": traj_url, "set": _final_set(out / "synthetic.zarr")}


def _final_set(url: Path) -> dict:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    with open_synthetic_store(str(url), "r") as s:
        syn = s.read_set()
    return {"images": syn.images, "labels": syn.labels, "lr": syn.lr, "iteration": syn.attrs["iteration"]}


@pytest.mark.parametrize("point", DISTILL_POINTS)
def test_distill_survives_kill9_and_resume_equals_uninterrupted(point, work, distill_ref):
    from tesla.adapters.stores.synthetic import open_synthetic_store

    rng = random.Random(2000 + point)
    h5 = point == 3
    out = work / f"distill-{point}"
    set_url = out / ("synthetic.h5" if h5 else "synthetic.zarr")
    fmt = ["--format", "h5"] if h5 else []
    events = out / "events.jsonl"
    iterations_before = rng.randrange(0, 12)
    delay = rng.uniform(0.0, 0.3)
    child = spawn(distill_args(distill_ref["traj"], out, *fmt), work / f"distill-{point}.log")
    kill_when(child, lambda: count_lines(events, '"type":"iteration"') >= iterations_before, delay)

    announced = [e["iteration"] for e in _announced(events, "checkpoint")]
    if set_url.exists():
        with open_synthetic_store(str(set_url), "r") as s:
            latest = s.latest_checkpoint()
        if announced:
            assert latest is not None and latest[0] >= max(announced), "an announced checkpoint was lost"
        if latest is not None:
            it, arrays, attrs = latest
            assert it in (3, 6, 9, 12) and attrs["distill"]["seed"] == 0
            assert np.isfinite(arrays["images"]).all() and arrays["images"].shape == (10, 3, 16, 16)
    else:
        assert not announced

    res = invoke(distill_args(distill_ref["traj"], out, *fmt, "--resume"))
    assert res.exit_code == 0, res.output
    got, ref = _final_set(set_url), distill_ref["set"]
    assert got["iteration"] == ref["iteration"] == 12
    assert np.array_equal(got["images"], ref["images"]), "resumed images differ from the uninterrupted run"
    assert got["lr"] == ref["lr"]
    assert np.array_equal(got["labels"], ref["labels"])


@pytest.fixture(scope="module")
def prepare_ref(work) -> dict:
    src = work / "imagenet64-src"
    make_imagenet64(src)
    dest = work / "ref-prepared.zarr"
    t0 = time.monotonic()
    res = invoke(["data", "prepare", str(src), str(dest), *PREPARE])
    assert res.exit_code == 0, res.output
    return {"src": src, "arrays": prepared_arrays(str(dest)), "seconds": time.monotonic() - t0}


@pytest.mark.parametrize("point", PREPARE_POINTS)
def test_prepare_survives_kill9_and_rerun_gives_identical_arrays(point, work, prepare_ref):
    from tesla.adapters.data.prepared import open_prepared, work_url
    from tesla.adapters.stores.errors import StoreError

    rng = random.Random(3000 + point)
    dest = work / (f"prepared-{point}.h5" if point == 3 else f"prepared-{point}.zarr")
    delay = rng.uniform(0.0, 1.2) * prepare_ref["seconds"]
    child = spawn(["data", "prepare", str(prepare_ref["src"]), str(dest), *PREPARE], work / f"prepare-{point}.log")
    kill_when(child, lambda: Path(work_url(str(dest))).exists() or dest.exists() and dest.is_file(), delay)

    # an unfinished store is refused by readers with the fix in the message, never read as whole
    if dest.exists():
        try:
            open_prepared(str(dest)).close()
        except StoreError as e:
            assert str(dest) in str(e)
    res = invoke(["data", "prepare", str(prepare_ref["src"]), str(dest), *PREPARE])
    assert res.exit_code == 0, res.output
    got, ref = prepared_arrays(str(dest)), prepare_ref["arrays"]
    assert sorted(got) == sorted(ref)
    for key in ref:
        if key == "attrs":
            a = {k: v for k, v in got[key].items() if k != "plan"}
            b = {k: v for k, v in ref[key].items() if k != "plan"}
            assert a == b
        else:
            assert np.array_equal(got[key], ref[key]), f"{key} differs after a kill and a re-run"
    assert not Path(work_url(str(dest))).exists()


# --- deterministic kill points: just after a write returns (buffers most at risk) ---------

def _die_at(point: str, k: int, args: list, log: Path) -> int:
    import subprocess
    import sys

    from tests.faults.common import CHILD_ENV, REPO

    with open(log, "wb") as fh:
        return subprocess.run([sys.executable, str(REPO / "tests" / "faults" / "die_at.py"), point, str(k),
                               *map(str, args)], cwd=REPO, env=CHILD_ENV, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=300).returncode


@pytest.mark.parametrize("k", [3, 17])
def test_prepare_hdf5_killed_right_after_a_task_loses_nothing(k, work, prepare_ref):
    """Regression: an HDF5 DEST's chunk was marked done before h5py flushed it; a kill
    there left zeros that the re-run skipped."""
    dest = work / f"prepared-die-{k}.h5"
    rc = _die_at("prepare-task", k, ["data", "prepare", str(prepare_ref["src"]), str(dest), *PREPARE],
                 work / f"prepare-die-{k}.log")
    assert rc == -9
    res = invoke(["data", "prepare", str(prepare_ref["src"]), str(dest), *PREPARE])
    assert res.exit_code == 0, res.output
    got, ref = prepared_arrays(str(dest)), prepare_ref["arrays"]
    for key in ("train/images", "train/labels", "test/images", "test/labels"):
        assert np.array_equal(got[key], ref[key]), f"{key} lost data after a kill after task {k}"


@pytest.mark.parametrize("point,k", [("expert-snapshot", 6), ("expert-finish", 1)])
def test_experts_hdf5_killed_right_after_a_write_loses_nothing(point, k, work, expert_ref):
    _, ref = expert_ref
    url = work / f"experts-die-{point}.h5"
    assert _die_at(point, k, experts_args(url), work / f"experts-die-{point}.log") == -9
    if point == "expert-finish":  # expert 0 was marked complete just before the kill
        np.testing.assert_array_equal(trajectories(str(url))[0], ref[0])
    res = invoke(experts_args(url))
    assert res.exit_code == 0, res.output
    got = trajectories(str(url))
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[i], ref[i]) for i in ref)


def test_distill_killed_right_after_a_checkpoint_resumes_to_the_same_set(work, distill_ref):
    out = work / "distill-die"
    assert _die_at("checkpoint", 2, distill_args(distill_ref["traj"], out, "--format", "h5"),
                   work / "distill-die.log") == -9
    from tesla.adapters.stores.synthetic import open_synthetic_store

    with open_synthetic_store(str(out / "synthetic.h5"), "r") as s:
        assert s.latest_checkpoint()[0] == 6
    res = invoke(distill_args(distill_ref["traj"], out, "--format", "h5", "--resume"))
    assert res.exit_code == 0, res.output
    got, ref = _final_set(out / "synthetic.h5"), distill_ref["set"]
    assert np.array_equal(got["images"], ref["images"]) and got["lr"] == ref["lr"]
