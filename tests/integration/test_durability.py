"""Completion markers are written between two fsyncs (power-loss safety, not only kill -9).

A marker (``complete=True``) vouches for the data of its group, so the data must be on
disk before it, and the marker itself after. These tests record every ``os.fsync`` (the
path behind the descriptor) and every marker write, in order, while a real expert and a
real synthetic-set checkpoint are written to HDF5 and local Zarr stores in tmp dirs.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tesla.adapters.stores import open_trajectory_store
from tesla.adapters.stores.synthetic import open_synthetic_store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")

LAYOUT = [("fc.weight", [10, 16]), ("fc.bias", [10])]
P = 170


@pytest.fixture
def journal(monkeypatch):
    """A list of ("fsync", real path) and ("marker", group path) in the order they happened."""
    from tesla.adapters.stores import backend as backend_mod
    from tesla.adapters.stores import hdf5, zarr_store  # noqa: F401 - the subclasses to watch

    log: list = []
    real_fsync = os.fsync

    def fsync(fd):
        log.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for cls in backend_mod.Backend.__subclasses__():
        real_update = cls.update_attrs

        def update(self, path, values, _real=real_update):
            if values.get("complete") is True:
                log.append(("marker", path))
            return _real(self, path, values)

        monkeypatch.setattr(cls, "update_attrs", update)
    return log


def _synced_before_and_after(log, group, data_paths, marker_file):
    markers = [i for i, (kind, p) in enumerate(log) if kind == "marker" and p.strip("/").endswith(group)]
    assert markers, f"no complete marker written for {group}: {log}"
    at = markers[-1]
    before = {p for kind, p in log[:at] if kind == "fsync"}
    after = {p for kind, p in log[at + 1:] if kind == "fsync"}
    missing = [p for p in data_paths if os.path.realpath(p) not in before]
    assert not missing, f"not synced before the marker: {missing}"
    assert os.path.realpath(marker_file) in after, "the marker itself was not synced"


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_an_expert_is_on_disk_before_its_complete_marker(tmp_path, journal, fmt):
    url = tmp_path / f"experts.{fmt}"
    with open_trajectory_store(str(url), "a") as store:
        store.initialize({"arch": "convnet"}, LAYOUT, P, {"name": "demo"})
        store.add_expert(np.ones((3, P), np.float32), {"seed": 0})
    if fmt == "h5":
        _synced_before_and_after(journal, "experts/000000", [url], url)
    else:
        chunks = [os.path.join(d, f) for d, _, fs in os.walk(url / "experts" / "000000" / "params") for f in fs]
        assert chunks
        _synced_before_and_after(journal, "experts/000000", chunks, url / "experts" / "000000" / "zarr.json")


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_a_checkpoint_is_on_disk_before_its_complete_marker(tmp_path, journal, fmt):
    url = tmp_path / f"synthetic.{fmt}"
    arrays = {"images": np.ones((4, 3, 8, 8), np.float32), "labels": np.arange(4) % 2,
              "lr": np.asarray(0.01, np.float32)}
    with open_synthetic_store(str(url), "a") as s:
        s.write_checkpoint(3, arrays, {"note": "t"})
    path = "checkpoints/00000003"
    if fmt == "h5":
        # an HDF5 synthetic store is rebuilt under a temporary name and renamed over the old
        # file: the new file is synced after its marker and before the rename, then the folder
        at = [i for i, (kind, p) in enumerate(journal) if kind == "marker" and p.strip("/").endswith(path)][-1]
        after = [p for kind, p in journal[at + 1:] if kind == "fsync"]
        assert any(os.path.basename(p).startswith(".synthetic.h5.tmp-") for p in after), after
        assert after[-1] == os.path.realpath(tmp_path), after
    else:
        group = url.joinpath(*path.split("/"))
        files = [os.path.join(d, f) for d, _, fs in os.walk(group / "images") for f in fs]
        assert files
        _synced_before_and_after(journal, path, files, group / "zarr.json")
