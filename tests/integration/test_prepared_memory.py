"""Bounded memory: preparing and reading a store uses far less memory than the store holds.

How the bound is enforced: the work runs in a child process (``python -c``), so nothing
the test runner already allocated counts. The child first prepares and reads a tiny
store (imports, thread pools and codec buffers are created once, not per image). Then,
just before each measured phase, it resets the kernel's peak-RSS counter for itself
(writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back to the current ``VmRSS``)
and notes its RSS; after the phase it reads ``VmHWM``. Peak minus start is the most
memory the phase ever added, transient buffers included, as the kernel counts it.

glibc would otherwise keep freed buffers in per-thread arenas (zarr codes chunks on a
thread pool) and raise its mmap threshold after large frees, so RSS would measure the
allocator's cache instead of what the code holds; the child runs with
``MALLOC_ARENA_MAX=2`` and ``MALLOC_MMAP_THRESHOLD_=262144`` so buffers above 256 KiB are
returned on free.

The store holds 6,000 images of 3x64x64 = 74 MB; the test requires:

* ``prepare`` (sort blocks of 512 images, chunks of 64): peak growth under a third of it;
* sampling 20 images of every class, one training epoch (batch 32, pools of 4 chunks) and
  the test set: under a quarter of it.

Holding the set, a class-sorted copy, or even one class at a time would exceed these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tesla.adapters.data.imagenet64 import write_npz_batch

N_FILES, PER_FILE, CLASSES = 3, 2000, 10
ARRAY_BYTES = N_FILES * PER_FILE * 3 * 64 * 64  # 73,728,000

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy, torch, zarr
    from tesla.app.bootstrap import prepare
    from tesla.adapters.data.prepared import open_prepared

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    def reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        return status("VmRSS")

    src, dest, small = sys.argv[1], sys.argv[2], sys.argv[3]

    def reads(data):
        for c in range(data.num_classes):
            assert data.sample_class(c, 20, seed=c).shape == (20, 3, 64, 64)
        seen = sum(len(y) for _, y in data.train_batches(32, seed=0, shuffle_chunks=4))
        return seen, sum(len(y) for _, y in data.test_batches(64))

    prepare(small, small + ".zarr", chunk=64, block=512)  # warm-up: first use of every code path
    reads(open_prepared(small + ".zarr"))

    start = reset()
    summary = prepare(src, dest, chunk=64, block=512)
    prepare_growth = status("VmHWM") - start

    data = open_prepared(dest)
    start = reset()
    seen, tested = reads(data)
    read_growth = status("VmHWM") - start
    print(json.dumps({"prepare": prepare_growth, "read": read_growth, "seen": seen, "tested": tested,
                      "complete": summary.complete}))
    """
)


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_prepare_and_read_stay_well_under_the_array_size(tmp_path):
    rng = np.random.default_rng(0)
    for name, per_file in (("src", PER_FILE), ("small", 20)):
        src = tmp_path / name
        src.mkdir()
        for i in range(1, N_FILES + 1):
            x = rng.integers(0, 256, (per_file, 3 * 64 * 64), dtype=np.uint8)
            write_npz_batch(src / f"train_data_batch_{i}.npz", x, rng.integers(1, CLASSES + 1, per_file))
        n_val = per_file // 10
        write_npz_batch(src / "val_data.npz", rng.integers(0, 256, (n_val, 3 * 64 * 64), dtype=np.uint8),
                        rng.integers(1, CLASSES + 1, n_val))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="262144")
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "src"), str(tmp_path / "big.zarr"),
                          str(tmp_path / "small")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["complete"] and got["seen"] == N_FILES * PER_FILE and got["tested"] == PER_FILE // 10
    print(f"peak growth: prepare {got['prepare'] / 2**20:.1f} MiB, read {got['read'] / 2**20:.1f} MiB"
          f" (array {ARRAY_BYTES / 2**20:.1f} MiB)")
    assert got["prepare"] < ARRAY_BYTES / 3
    assert got["read"] < ARRAY_BYTES / 4
