"""Trajectory store: one schema in HDF5, local Zarr and fsspec (memory://) Zarr.

Real files in tmp_path; tiny vectors (P in the hundreds).
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid

import fsspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tesla.adapters.stores import StoreError, open_trajectory_store
from tesla.adapters.stores.backends import open_backend
from tesla.adapters.stores.trajectory import FORMAT_VERSION

LAYOUT = [("conv.weight", [4, 3, 3, 3]), ("conv.bias", [4]), ("fc.weight", [10, 16]), ("fc.bias", [10])]
P = 4 * 27 + 4 + 160 + 10  # 282
MODEL = {"arch": "convnet", "depth": 1, "width": 4, "num_classes": 10}
DATA = {"name": "demo", "zca": False}


def _memory_url() -> str:
    return f"memory://tesla-test-{uuid.uuid4().hex}"


@pytest.fixture(params=["h5", "zarr", "memory"])
def url(request, tmp_path):
    if request.param == "h5":
        yield str(tmp_path / "experts.h5")
    elif request.param == "zarr":
        yield str(tmp_path / "experts.zarr")
    else:
        u = _memory_url()
        yield u
        fs = fsspec.filesystem("memory")
        if fs.exists(u[len("memory://"):]):
            fs.rm(u[len("memory://"):], recursive=True)


def _trajectory(seed: int, epochs: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((epochs + 1, P)).astype(np.float32)


def _new_store(url: str):
    store = open_trajectory_store(url, "a")
    store.initialize(MODEL, LAYOUT, P, DATA)
    return store


def test_round_trip_same_schema(url):
    t0, t1 = _trajectory(0), _trajectory(1, epochs=2)
    with _new_store(url) as store:
        with store.begin_expert(None, 3, {"seed": 7, "lr": 0.01, "train": {"batch_size": 256}}) as w:
            for e in range(4):
                w.write(e, t0[e], test_accuracy=10.0 * e if e % 2 else None)
        assert w.expert_id == 0
        assert store.add_expert(t1, {"seed": 8, "test_accuracy": [None, None, 55.5]}) == 1

    with open_trajectory_store(url, "r") as store:
        meta = store.meta
        assert meta.model == MODEL and meta.dataset == DATA and meta.num_params == P
        assert meta.layout == [[n, s] for n, s in LAYOUT] and meta.format_version == FORMAT_VERSION
        assert store.expert_ids() == [0, 1] and store.incomplete_ids() == []
        assert store.num_snapshots(0) == 4 and store.num_snapshots(1) == 3
        for e in range(4):
            got = store.load(0, e)
            assert got.dtype == np.float32 and got.shape == (P,)
            np.testing.assert_array_equal(got, t0[e])
        np.testing.assert_array_equal(store.load_trajectory(1), t1)
        a0 = store.expert_attrs(0)
        assert a0["seed"] == 7 and a0["lr"] == 0.01 and a0["epochs"] == 3 and a0["train"] == {"batch_size": 256}
        assert a0["test_accuracy"] == [None, 10.0, None, 30.0] and a0["complete"] is True
        assert store.expert_attrs(1)["test_accuracy"] == [None, None, 55.5]
        assert store.size_bytes() > 0


def test_schema_is_identical_in_both_formats(tmp_path):
    """Same root and expert attribute keys, same array shape and chunking."""
    seen = []
    for name in ("a.h5", "a.zarr"):
        url = str(tmp_path / name)
        with _new_store(url) as store:
            store.add_expert(_trajectory(0), {"seed": 0})
        b = open_backend(url, "r")
        seen.append((sorted(b.attrs("")), sorted(b.attrs("experts/000000")), b.shape("experts/000000/params"),
                     b.chunks("experts/000000/params"), b.attrs("")["format"]))
        b.close()
    assert seen[0] == seen[1]
    assert seen[0][3] == (1, P) and seen[0][4] == "tesla-trajectories"


def test_torch_tensors_are_accepted(url):
    torch = pytest.importorskip("torch")
    with _new_store(url) as store:
        t = torch.randn(2, P, requires_grad=True)
        store.add_expert(t, {"seed": 1})
        np.testing.assert_allclose(store.load(0, 1), t[1].detach().numpy())


def test_appending_to_existing_store(url):
    with _new_store(url) as store:
        store.add_expert(_trajectory(0), {"seed": 0})
    with open_trajectory_store(url, "a") as store:
        store.initialize(MODEL, LAYOUT, P, DATA)  # same model: accepted
        assert store.next_id() == 1
        assert store.add_expert(_trajectory(1), {"seed": 1}) == 1
        assert store.add_expert(_trajectory(5), {"seed": 5}, expert_id=5) == 5
    with open_trajectory_store(url, "r") as store:
        assert store.expert_ids() == [0, 1, 5]
        np.testing.assert_array_equal(store.load(5, 3), _trajectory(5)[3])


def test_mismatched_layout_or_model_is_refused(url):
    with _new_store(url) as store:
        store.add_expert(_trajectory(0), {})
    with open_trajectory_store(url, "a") as store:
        other = LAYOUT[:-1] + [("fc.bias", [9])]
        with pytest.raises(StoreError, match="use a new store path") as info:
            store.initialize(MODEL, other, P - 1, DATA)
        assert url in str(info.value) and "282" in str(info.value)
        with pytest.raises(StoreError, match="use a new store path"):
            store.initialize({**MODEL, "width": 8}, LAYOUT, P, DATA)
        with pytest.raises(StoreError, match="dataset"):
            store.initialize(MODEL, LAYOUT, P, {"name": "cifar10"})
        with pytest.raises(StoreError, match="layout holds"):
            store.initialize(MODEL, LAYOUT, P + 1, DATA)
        store.check_compatible(MODEL, LAYOUT, P)  # read-side check passes for the right model


def test_incomplete_experts_are_invisible_and_overwritten(url):
    with _new_store(url) as store:
        store.add_expert(_trajectory(0), {"seed": 0})
        w = store.begin_expert(1, 3, {"seed": 1})
        w.write(0, _trajectory(1)[0])
        w.write(1, _trajectory(1)[1])  # the run is "killed" here: no finish()
        with pytest.raises(RuntimeError):
            with store.begin_expert(2, 3, {"seed": 2}) as w2:
                w2.write(0, _trajectory(2)[0])
                raise RuntimeError("killed")
    with open_trajectory_store(url, "r") as store:
        assert store.expert_ids() == [0]
        assert store.incomplete_ids() == [1, 2]
        with pytest.raises(StoreError, match="no complete expert 1"):
            store.load(1, 0)
    with open_trajectory_store(url, "a") as store:
        assert store.next_id() == 3
        store.add_expert(_trajectory(11), {"seed": 11}, expert_id=1)  # resume: overwrite
        with pytest.raises(StoreError, match="complete already"):
            store.begin_expert(0, 3, {})
        assert store.expert_ids() == [0, 1] and store.incomplete_ids() == [2]
        np.testing.assert_array_equal(store.load_trajectory(1), _trajectory(11))


def test_writer_validates_its_input(url):
    with _new_store(url) as store:
        w = store.begin_expert(None, 2, {})
        with pytest.raises(StoreError, match="282"):
            w.write(0, np.zeros(P + 1, np.float32))
        with pytest.raises(StoreError, match="out of range"):
            w.write(3, np.zeros(P, np.float32))
        w.write(0, np.zeros(P, np.float32))
        with pytest.raises(StoreError, match=r"snapshots \[1, 2\] were not written"):
            w.finish()
        with pytest.raises(StoreError, match="set by the store"):
            store.begin_expert(None, 2, {"complete": True})
        assert store.add_expert(_trajectory(0), {}, expert_id=9) == 9
        with pytest.raises(StoreError, match="epoch 4 is out of range 0..3"):
            store.load(9, 4)


def test_read_only_store_refuses_writes(url):
    with _new_store(url) as store:
        store.add_expert(_trajectory(0), {})
    with open_trajectory_store(url, "r") as store:
        with pytest.raises(StoreError, match="read-only"):
            store.begin_expert(None, 1, {})


def test_missing_or_foreign_store_is_refused(tmp_path):
    for url in (str(tmp_path / "none.h5"), str(tmp_path / "none.zarr")):
        with pytest.raises(StoreError, match="none"):
            open_trajectory_store(url, "r")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a Zarr store"):
        open_trajectory_store(str(tmp_path / "folder"), "a")
    with pytest.raises(StoreError, match="store is empty"):
        open_trajectory_store(str(tmp_path / "fresh.zarr"), "a").meta


def test_newer_format_version_is_refused(tmp_path):
    url = str(tmp_path / "future.zarr")
    _new_store(url).close()
    b = open_backend(url, "a")
    b.update_attrs("", {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(StoreError, match="newer tesla"):
        open_trajectory_store(url, "r")
    b.update_attrs("", {"format_version": 1, "format": "something-else"})
    with pytest.raises(StoreError, match="not expert trajectories"):
        open_trajectory_store(url, "r")


def test_concurrent_writers_of_different_experts(tmp_path):
    """Two ranks (threads, each with its own store object) write into one Zarr directory."""
    url = str(tmp_path / "shared.zarr")
    errors: list = []

    def rank(r: int) -> None:
        try:
            store = open_trajectory_store(url, "a")
            store.initialize(MODEL, LAYOUT, P, DATA)
            for i in range(r, 6, 2):  # rank r writes experts r, r+2, r+4, snapshot by snapshot
                t = _trajectory(100 + i)
                with store.begin_expert(i, 3, {"seed": i, "rank": r}) as w:
                    for e in range(4):
                        w.write(e, t[e])
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with open_trajectory_store(url, "r") as store:
        assert store.expert_ids() == list(range(6))
        for i in range(6):
            np.testing.assert_array_equal(store.load_trajectory(i), _trajectory(100 + i))
            assert store.expert_attrs(i)["rank"] == i % 2


RANK_SCRIPT = """
import sys
import numpy as np
from tesla.adapters.stores import open_trajectory_store
url, rank = sys.argv[1], int(sys.argv[2])
store = open_trajectory_store(url, "a")
store.initialize({"arch": "convnet"}, [("w", [50])], 50, {"name": "demo"})
for i in range(rank, 4, 2):
    t = np.random.default_rng(i).standard_normal((6, 50)).astype(np.float32)
    with store.begin_expert(i, 5, {"rank": rank}) as w:
        for e in range(6):
            w.write(e, t[e])
"""


def test_concurrent_writer_processes(tmp_path):
    """Two processes (ranks) write different experts of one Zarr directory at the same time."""
    import subprocess
    import sys

    url = str(tmp_path / "ranks.zarr")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, url, str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with open_trajectory_store(url, "r") as store:
        assert store.expert_ids() == [0, 1, 2, 3] and store.incomplete_ids() == []
        for i in range(4):
            want = np.random.default_rng(i).standard_normal((6, 50)).astype(np.float32)
            np.testing.assert_array_equal(store.load_trajectory(i), want)
            assert store.expert_attrs(i)["rank"] == i % 2


def test_truncated_hdf5_file_is_reported_damaged(tmp_path):
    url = str(tmp_path / "experts.h5")
    with _new_store(url) as store:
        for i in range(3):
            store.add_expert(_trajectory(i), {})
    size = os.path.getsize(url)
    with open(url, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StoreError, match="damaged") as info:
        store = open_trajectory_store(url, "r")
        for i in store.expert_ids():
            store.load_trajectory(i)
    assert url in str(info.value)
    with open(url, "wb") as f:
        f.write(b"not an hdf5 file at all" * 10)
    with pytest.raises(StoreError, match="damaged"):
        open_trajectory_store(url, "r")


def test_deleted_zarr_chunk_is_detected(tmp_path):
    url = str(tmp_path / "experts.zarr")
    with _new_store(url) as store:
        store.add_expert(_trajectory(0), {})
        store.add_expert(_trajectory(1), {})
    chunk = tmp_path / "experts.zarr" / "experts" / "000001" / "params" / "c" / "2" / "0"
    assert chunk.exists()
    chunk.unlink()
    with open_trajectory_store(url, "r") as store:
        np.testing.assert_array_equal(store.load(1, 1), _trajectory(1)[1])  # other snapshots still read
        with pytest.raises(StoreError, match="expert 1 snapshot 2 is missing or damaged") as info:
            store.load(1, 2)
        assert url in str(info.value)
        with pytest.raises(StoreError, match="expert 1 snapshot 2"):
            store.load_trajectory(1)


@settings(max_examples=8, deadline=None)
@given(
    epochs=st.integers(min_value=0, max_value=3),
    shapes=st.lists(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=3), min_size=1, max_size=3),
    seed=st.integers(min_value=0, max_value=2**16),
    fmt=st.sampled_from(["h5", "zarr", "memory"]),
)
def test_round_trip_property(epochs, shapes, seed, fmt):
    layout = [(f"t{i}", s) for i, s in enumerate(shapes)]
    p = sum(int(np.prod(s)) for s in shapes)
    traj = np.random.default_rng(seed).standard_normal((epochs + 1, p)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        url = {"h5": os.path.join(tmp, "s.h5"), "zarr": os.path.join(tmp, "s.zarr"), "memory": _memory_url()}[fmt]
        with open_trajectory_store(url, "a") as store:
            store.initialize({"arch": "convnet"}, layout, p, {})
            eid = store.add_expert(traj, {"seed": seed})
        with open_trajectory_store(url, "r") as store:
            assert store.meta.layout == [[n, list(s)] for n, s in layout]
            assert store.num_snapshots(eid) == epochs + 1
            np.testing.assert_array_equal(store.load_trajectory(eid), traj)
            np.testing.assert_array_equal(store.load(eid, epochs), traj[epochs])
        if fmt == "memory":
            fsspec.filesystem("memory").rm(url[len("memory://"):], recursive=True)
