"""Damaged stores read as one StoreError line or as what was written; never a traceback or wrong data.

Every store format (expert trajectories, synthetic sets, prepared images; each in HDF5 and
Zarr) meets seeded single-bit flips in every kind of array and metadata object, truncated
and deleted chunks, deleted checksums, metadata JSON that does not parse, edited shapes
and completion markers set on partial writes (:mod:`tests.faults.damage` builds and
judges the cases). Each case must be ``refused`` (one line naming the store) or
``correct`` (the damage hit bytes no reader uses); ``raw`` tracebacks, ``silent`` wrong
reads and ``hidden`` finished work (a damaged completion marker read as "unfinished") fail
the test. The counts are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.faults import damage
from tests.faults.common import CHILD_ENV, REPO, one_thread  # noqa: F401 - autouse fixture

FLIPS = 4  # seeded bit flips per kind of array chunk (half as many per kind of metadata object)


def _report(kind: str, counts) -> str:
    by_class: dict = {}
    for (damage_class, outcome), n in sorted(counts.items()):
        by_class.setdefault(damage_class, {})[outcome] = n
    tried = sum(counts.values())
    held = sum(n for (_, outcome), n in counts.items() if outcome in ("refused", "correct"))
    return f"{kind}: {held}/{tried} held " + json.dumps(by_class)


@pytest.mark.parametrize("kind", damage.KINDS)
def test_every_damage_is_refused_in_one_line_or_reads_correctly(tmp_path, kind):
    counts, failures = damage.run(kind, tmp_path, seed=20261201, flips=FLIPS)
    print(_report(kind, counts))
    assert not failures, "\n".join(failures)
    classes = {c for c, _ in counts}
    assert {"flip", "json", "checksum", "shape", "truncate", "marker"} <= classes  # every class was tried
    assert counts[("marker", "refused")] == 1  # a marker never vouches for a partial write
    refused = sum(n for (_, outcome), n in counts.items() if outcome == "refused")
    assert refused >= 0.6 * sum(counts.values())  # most damage hits what readers read


@pytest.mark.parametrize("kind", [k for k in damage.KINDS if k.endswith(".h5")])
def test_bit_flips_anywhere_in_an_hdf5_file(kind):
    """Flips in HDF5's own metadata too (B-trees, heaps, object headers), in a child process:
    the one place where a C library, not tesla, could take the process down."""
    res = subprocess.run([sys.executable, "-m", "tests.faults.damage", "h5-anywhere", kind, "40", "11"],
                         cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"the reader died ({res.returncode}): {res.stderr[-2000:]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    counts = {(c, o): n for c, o, n in out["counts"]}
    print(_report(f"{kind} (anywhere)", counts))
    assert not out["failures"], "\n".join(out["failures"])
    assert sum(counts.values()) == 40


@pytest.mark.parametrize("kind", damage.KINDS)
def test_version_1_stores_still_read(tmp_path, kind):
    """What the previous tesla wrote (no attribute digests, index checksums or HDF5 seal)
    reads back as written; the same store claiming version 2 is refused as damaged."""
    path, ref = damage.make(kind, tmp_path)
    v1 = tmp_path / f"v1-{kind}"
    damage.copy_store(path, v1)
    damage.as_version_1(v1)
    got = damage.READ[kind.split(".")[0]](str(v1))
    assert damage.same(damage.without_version(got), damage.without_version(ref))
    claims_2 = tmp_path / f"claims2-{kind}"
    damage.copy_store(v1, claims_2)
    if claims_2.is_dir():
        meta = claims_2 / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["attributes"]["format_version"] = 2
        damage._rewrite(meta, json.dumps(doc).encode())
    else:
        import h5py

        with h5py.File(claims_2, "a") as f:
            f.attrs["format_version"] = 2
    assert damage.judge(kind, claims_2, ref) == "refused"
