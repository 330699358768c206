"""Shared pieces of the reliability suite: tiny runs, child processes, kill -9, snapshots.

The fault tests start the real CLI (``python -m tesla ...``) as a child process, let it
get to a seeded random point of its work, and ``SIGKILL`` it: no handler runs, nothing
is flushed, exactly as in a pre-emption or an OOM kill. The same command (or
``--resume``) is then run in this process through typer's ``CliRunner`` (no second
interpreter start), and what is on disk is compared with an uninterrupted run.

Everything runs on one CPU thread (``OMP_NUM_THREADS=1`` in children,
``torch.set_num_threads(1)`` here) so a child and this process compute bit for bit the
same numbers, and so the suite leaves the second core to others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

# --- tiny configurations (the demo data, a ConvNet of depth 2 and width 8) ------------------
MODEL = ["--dataset", "demo", "--depth", "2", "--width", "8"]
EXPERTS = ["--num-experts", "2", "--epochs", "3", "--batch-size", "64", "--device", "cpu", "--quiet"]
DISTILL = ["--ipc", "1", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2", "--iterations", "12",
           "--checkpoint-every", "3", "--preview-every", "0", "--device", "cpu", "--quiet"]

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
             "PYTHONWARNINGS": "ignore"}
REPO = Path(__file__).resolve().parents[2]


def experts_args(out: str | Path, *extra: str) -> list[str]:
    return ["experts", "--out", str(out), *MODEL, *EXPERTS, *extra]


def distill_args(trajectories: str | Path, out: str | Path, *extra: str) -> list[str]:
    return ["distill", "-t", str(trajectories), "--out", str(out), *DISTILL, *extra]


def invoke(args: Sequence[str]):
    """Run the CLI in this process (typer's CliRunner); returns the Result."""
    from typer.testing import CliRunner

    from tesla.app.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen:
    """Start ``python -m tesla ARGS`` as a child (its output to ``log``)."""
    fh = open(log, "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "tesla", *map(str, args)], cwd=REPO, env=CHILD_ENV,
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        fh.close()


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, timeout: float = 300.0) -> bool:
    """Wait until ``ready()`` (or the child ends), then ``delay`` seconds, then SIGKILL it.

    Returns True when the child was killed while still running, False when it had
    already finished (a kill point past the end of the job).
    """
    end = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        if time.monotonic() > end:  # pragma: no cover - a hung child
            proc.kill()
            raise AssertionError("child never reached its kill point")
        time.sleep(0.02)
    if delay > 0 and proc.poll() is None:
        time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


def count_lines(path: Path, needle: str) -> int:
    """Lines of ``path`` that contain ``needle`` (0 when the file is not there yet)."""
    try:
        with open(path, "rb") as f:
            return sum(needle.encode() in line for line in f)
    except OSError:
        return 0


def tree_snapshot(root: Path) -> Optional[dict]:
    """{relative path: (size, mtime_ns)} of everything under ``root``; None when it is absent."""
    root = Path(root)
    if not root.exists():
        return None
    if root.is_file():
        st = root.stat()
        return {".": (st.st_size, st.st_mtime_ns)}
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else "dir"
    return out


def make_imagenet64(root: Path, *, files: int = 3, per_file: int = 200, classes: int = 6, side: int = 8,
                    val: int = 40, seed: int = 0) -> None:
    """A tiny Downsampled-ImageNet release (``train_data_batch_N.npz`` + ``val_data.npz``)."""
    from tesla.adapters.data.imagenet64 import write_npz_batch

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, files + 1):
        x = rng.integers(0, 256, (per_file, 3, side, side), dtype=np.uint8)
        write_npz_batch(root / f"train_data_batch_{i}.npz", x, rng.integers(1, classes + 1, per_file))
    vx = rng.integers(0, 256, (val, 3, side, side), dtype=np.uint8)
    write_npz_batch(root / "val_data.npz", vx, rng.integers(1, classes + 1, val))


def prepared_arrays(url: str) -> dict:
    """Every array and the attributes (less times) of a prepared store."""
    from tesla.adapters.stores.backends import open_backend

    b = open_backend(url, "r")
    try:
        out = {f"{s}/{a}": b.read(f"{s}/{a}") for s in ("train", "test") for a in b.arrays(s)}
        out["attrs"] = {k: v for k, v in b.attrs().items() if k not in ("created", "seconds")}
        return out
    finally:
        b.close()


def trajectories(url: str) -> dict:
    """{expert id: (epochs + 1, P) array} of the complete experts of a store."""
    from tesla.adapters.stores.trajectory import open_trajectory_store

    with open_trajectory_store(str(url), "r") as s:
        return {i: s.load_trajectory(i) for i in s.expert_ids()}


def fake_trajectory_store(url: str | Path, *, experts: int = 2, epochs: int = 3, seed: int = 0) -> str:
    """A trajectory store for the tiny demo ConvNet without training: a seeded init and
    small random steps (enough for distillation to run; fast to build)."""
    import torch

    from tesla.adapters.stores.trajectory import open_trajectory_store
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model
    from tesla.domain.config import DataConfig, ModelConfig, to_dict

    cfg = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
    view = FlatView(build_model(cfg, seed=0))
    with open_trajectory_store(str(url), "a") as store:
        store.initialize(model=to_dict(cfg), layout=view.layout, num_params=view.num_params,
                         dataset=to_dict(DataConfig(name="demo")))
        g = torch.Generator().manual_seed(seed)
        for i in range(experts):
            w = FlatView(build_model(cfg, seed=seed + i)).flatten()
            steps = [w]
            for _ in range(epochs):
                steps.append(steps[-1] + 0.01 * torch.randn(w.shape, generator=g))
            store.add_expert(torch.stack(steps), {"seed": seed + i, "lr": 0.01}, expert_id=i)
    return str(url)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the module (as the children use): identical numbers, and the
    second core stays free. Import it into a test module to apply it there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def results_on_a_small_tmpfs(mnt: Path, *child: str, size: str = "3m") -> dict:
    """Run ``python -m CHILD...`` in a private mount namespace with a tmpfs of ``size``
    mounted at ``mnt`` (made here); its last stdout line is a JSON object of results,
    returned (and printed). Skips where the machine cannot mount one (needs ``unshare``
    with user namespaces)."""
    import json
    import shutil

    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True) if shutil.which("unshare") and sys.platform.startswith("linux") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no tmpfs mount here (needs unshare with user namespaces); see the simulated tests")
    script = f"mount -t tmpfs -o size={size} tmpfs {mnt} && exec {sys.executable} -m {' '.join(map(str, child))}"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=CHILD_ENV, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    return results
