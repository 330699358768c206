"""Child entry point: fill a small real filesystem with every store kind; report what held.

    unshare -rm sh -c 'mount -t tmpfs -o size=3m tmpfs DIR && python -m tests.faults.full_disk DIR'

Run inside a private mount namespace (``unshare -rm``: no root needed where user
namespaces are allowed) so the tiny tmpfs exists for this process only and vanishes with
it. Each scenario writes until the disk is full, then checks that the write was refused
with one ``StoreError`` line saying "no space left", that everything finished before
reads back exactly, and (for ``prepare``) that freeing space and running again resumes.
The last line printed is a JSON object {scenario: result}; the test reads it. A scenario
that kills the process (HDF5 used to abort on a full disk) shows as a missing line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tesla.adapters.stores.errors import StoreError

P = 20_000  # 80 kB a snapshot


def _clear(root: Path) -> None:
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _fill(root: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the filesystem with a filler file."""
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    with open(root / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def trajectories(root: Path, suffix: str) -> dict:
    from tesla.adapters.stores.trajectory import open_trajectory_store

    url = str(root / f"t{suffix}")
    rng = np.random.default_rng(0)
    written, message = [], None
    with open_trajectory_store(url, "a") as s:
        s.initialize({"arch": "mlp"}, [["w", [P]]], P, {"name": "demo"})
        for i in range(100):
            traj = rng.standard_normal((3, P)).astype(np.float32)
            try:
                s.add_expert(traj, {"seed": i})
            except StoreError as e:
                message = str(e)
                break
            written.append(traj)
    with open_trajectory_store(url, "r") as s:
        ids = s.expert_ids()
        intact = ids == list(range(len(written))) and all(np.array_equal(s.load_trajectory(i), t)
                                                          for i, t in enumerate(written))
    return {"written": len(written), "message": message, "intact": intact}


def synthetic(root: Path, suffix: str) -> dict:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    url = str(root / f"s{suffix}")
    rng = np.random.default_rng(1)
    last, message, n = None, None, 0
    with open_synthetic_store(url, "a") as s:
        for it in range(1, 20):
            images = rng.standard_normal((10, 3, 32, 32)).astype(np.float32)  # 123 kB
            try:
                s.write_checkpoint(it, {"images": images}, {"seed": 0})
            except StoreError as e:
                message = str(e)
                break
            last, n = (it, images), n + 1
            if it == 2:  # two checkpoints written: now the disk is (almost) full
                _fill(root, leave=60_000 + ((1 << 20) if suffix == ".h5" else 0))  # HDF5 keeps a margin
    with open_synthetic_store(url, "r") as s:
        got = s.latest_checkpoint()
    intact = last is not None and got is not None and got[0] == last[0] and np.array_equal(got[1]["images"], last[1])
    return {"written": n, "message": message, "intact": intact}


def prepared(root: Path, suffix: str) -> dict:
    from tesla.adapters.data.prepared import open_prepared
    from tests.faults.damage import _Source

    class Big(_Source):
        image_size = 32

        def __init__(self) -> None:
            from tests.faults.damage import _Split

            rng = np.random.default_rng(3)
            self.train = _Split(rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, 200))
            self.test = _Split(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, 20))

    from tesla.adapters.data.prepared import PreparedWriter

    def attempt() -> str | None:
        writer = PreparedWriter(str(root / f"p{suffix}"), Big(), chunk=16, block=64)
        try:
            for task in writer.tasks():
                if not writer.is_done(task):
                    writer.run(task)
            writer.finalize()
        except StoreError as e:
            return str(e)
        finally:
            writer.close()
        return None

    _fill(root, leave=(1 << 20) + 400_000)  # 0.4 MB above the margin: 1.3 MB of pixels and runs will not fit
    message = attempt()
    (root / "filler").unlink()  # free space, run the same prepare again: it resumes
    again = attempt()
    with open_prepared(str(root / f"p{suffix}")) as p:
        intact = p.num_train == 200 and len(list(p.train_batches(64, seed=0))) == 4
    return {"message": message, "resumed_message": again, "intact": intact}


def cli_experts(root: Path) -> dict:
    """``tesla experts`` onto a disk that is full after the first expert: one line, exit 2."""
    args = ["experts", "--dataset", "demo", "--depth", "1", "--width", "4", "--epochs", "1", "--batch-size", "64",
            "--device", "cpu", "--quiet"]
    url = root / "e.h5"
    first = subprocess.run([sys.executable, "-m", "tesla", *args, "--out", str(url), "--num-experts", "1"],
                           capture_output=True, text=True)
    _fill(root, leave=(1 << 20) + 2000)
    second = subprocess.run([sys.executable, "-m", "tesla", *args, "--out", str(url), "--num-experts", "3"],
                            capture_output=True, text=True)
    from tesla.adapters.stores.trajectory import open_trajectory_store

    with open_trajectory_store(str(url), "r") as s:
        ids = s.expert_ids()
        s.load_trajectory(0)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    return {"first_rc": first.returncode, "rc": second.returncode, "stderr": lines, "ids": ids}


SCENARIOS = {
    "trajectories.h5": lambda r: trajectories(r, ".h5"),
    "trajectories.zarr": lambda r: trajectories(r, ".zarr"),
    "synthetic.h5": lambda r: synthetic(r, ".h5"),
    "synthetic.zarr": lambda r: synthetic(r, ".zarr"),
    "prepared.h5": lambda r: prepared(r, ".h5"),
    "prepared.zarr": lambda r: prepared(r, ".zarr"),
    "cli experts": cli_experts,
}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    results = {}
    for name, scenario in SCENARIOS.items():
        _clear(root)
        try:
            results[name] = scenario(root)
        except Exception as e:  # noqa: BLE001 - reported, and failed, by the test
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results))
