"""Damaged and mismatched stores: one clear error naming the path and what is wrong.

Truncated HDF5 files, a Zarr chunk that went missing, flipped bytes in a checkpoint, an
unreadable ``zarr.json``, a store from a newer tesla, and stores whose metadata does not
fit the model or the data. Each is refused with a :class:`StoreError` (or, through the
CLI, one red line and exit code 2) that names the path; none is read as if it were
whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tesla.adapters.stores.errors import StoreError
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tests.faults.common import one_thread, distill_args, fake_trajectory_store, invoke  # noqa: F401 - autouse fixture


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    text = " ".join(line.strip() for line in lines)
    assert text.startswith("error:"), res.output
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    return text


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


# --- trajectory stores ------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.97])
def test_truncated_hdf5_trajectory_store_is_refused_naming_the_path(tmp_path, keep):
    url = Path(fake_trajectory_store(tmp_path / "t.h5"))
    _truncate(url, keep)
    with pytest.raises(StoreError) as e:
        with open_trajectory_store(str(url), "r") as s:
            for i in s.expert_ids():
                s.load_trajectory(i)
    assert str(url) in str(e.value) and "\n" not in str(e.value)


def test_truncated_hdf5_trajectory_store_through_the_cli(tmp_path):
    url = Path(fake_trajectory_store(tmp_path / "t.h5"))
    _truncate(url, 0.5)
    out = tmp_path / "run"
    _one_line_error(invoke(distill_args(url, out)), str(url))
    assert not out.exists()


def test_missing_zarr_chunk_of_a_snapshot_is_caught_by_its_checksum(tmp_path):
    url = Path(fake_trajectory_store(tmp_path / "t.zarr"))
    chunks = _chunk_files(url / "experts" / "000001" / "params")
    assert len(chunks) == 4  # one chunk per snapshot
    chunks[2].unlink()
    with open_trajectory_store(str(url), "r") as s:
        s.load(1, 1)  # the other snapshots still read
        with pytest.raises(StoreError, match="expert 1 snapshot 2 is missing or damaged") as e:
            s.load(1, 2)
    assert str(url) in str(e.value)


def test_corrupted_zarr_metadata_is_refused(tmp_path):
    url = Path(fake_trajectory_store(tmp_path / "t.zarr"))
    (url / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError) as e:
        open_trajectory_store(str(url), "r")
    assert str(url) in str(e.value)


def test_store_from_a_newer_tesla_is_refused(tmp_path):
    url = Path(fake_trajectory_store(tmp_path / "t.zarr"))
    meta = json.loads((url / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (url / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="newer tesla"):
        open_trajectory_store(str(url), "r")


def test_a_store_whose_model_does_not_fit_its_parameters_is_refused_before_work(tmp_path):
    """The recorded model (width 16) does not match the stored layout (width 8)."""
    url = Path(fake_trajectory_store(tmp_path / "t.zarr"))
    meta = json.loads((url / "zarr.json").read_text())
    meta["attributes"]["model"]["width"] = 16
    (url / "zarr.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    _one_line_error(invoke(distill_args(url, out)), "parameter")
    assert not out.exists()


def test_experts_into_a_store_of_another_model_are_refused(tmp_path):
    url = Path(fake_trajectory_store(tmp_path / "t.zarr"))
    before = sorted(p.name for p in url.rglob("*"))
    res = invoke(["experts", "--out", str(url), "--dataset", "demo", "--depth", "2", "--width", "16",
                  "--num-experts", "1", "--epochs", "1", "--device", "cpu", "--quiet"])
    _one_line_error(res, str(url), "width=8")
    assert sorted(p.name for p in url.rglob("*")) == before


def test_data_whose_image_shape_does_not_fit_the_model_is_refused(tmp_path):
    shared = Path(os.environ.get("TESLA_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    cifar = shared / "data" / "cifar10-subset"
    if not cifar.exists():
        pytest.skip("no CIFAR-10 subset beside the checkout")
    url = fake_trajectory_store(tmp_path / "t.zarr")  # a 16 px model
    out = tmp_path / "run"
    _one_line_error(invoke(distill_args(url, out, "--dataset", "cifar10", "--data", str(cifar))), "(3, 32, 32)")
    assert not out.exists()


# --- synthetic sets and checkpoints -----------------------------------------------------------

def _checkpointed(url: Path) -> Path:
    with open_synthetic_store(str(url), "a") as s:
        for it in (3, 6):
            images = np.full((10, 3, 4, 4), float(it), np.float32)
            s.write_checkpoint(it, {"images": images, "lr": np.asarray([0.01])}, {"seed": 0})
        s.write_set({"images": np.ones((10, 3, 4, 4), np.float32), "labels": np.arange(10)}, {"lr": 0.01})
    return url


def test_missing_chunk_in_a_zarr_checkpoint_is_refused_not_resumed_from(tmp_path):
    url = _checkpointed(tmp_path / "s.zarr")
    for f in _chunk_files(url / "checkpoints" / "00000006" / "images"):
        f.unlink()  # Zarr would hand back fill values
    with open_synthetic_store(str(url), "r") as s:
        with pytest.raises(StoreError, match="'images' is damaged or has missing chunks") as e:
            s.latest_checkpoint()
    assert f"{url}#checkpoints/00000006" in str(e.value)


def test_flipped_bytes_in_an_hdf5_checkpoint_are_refused(tmp_path):
    import h5py

    url = _checkpointed(tmp_path / "s.h5")
    with h5py.File(url, "r") as f:
        offset = f["checkpoints/00000006/images"].id.get_offset()
    assert offset is not None  # contiguous: flip a byte of the pixel data itself
    with open(url, "r+b") as fh:
        fh.seek(offset + 5)
        b = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([b[0] ^ 0xFF]))
    with open_synthetic_store(str(url), "r") as s:
        with pytest.raises(StoreError, match="checksum mismatch"):
            s.latest_checkpoint()
        s.read_set()  # the set is untouched and still reads


def test_damaged_final_set_is_refused(tmp_path):
    url = _checkpointed(tmp_path / "s.zarr")
    sets = url / "sets"
    (seq,) = [p for p in sets.iterdir() if p.is_dir()]
    for f in _chunk_files(seq / "images"):
        f.unlink()
    with open_synthetic_store(str(url), "r") as s:
        with pytest.raises(StoreError, match="distil the set again"):
            s.read_set()


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_hdf5_synthetic_store_is_refused(tmp_path, keep):
    url = _checkpointed(tmp_path / "s.h5")
    _truncate(url, keep)
    with pytest.raises(StoreError) as e:
        with open_synthetic_store(str(url), "r") as s:
            s.latest_checkpoint()
            s.read_set()
    assert str(url) in str(e.value)


def test_a_group_half_deleted_by_a_kill_never_reads_as_complete(tmp_path):
    """A kill while an old checkpoint is deleted: the group was marked incomplete first."""
    from tesla.adapters.stores import synthetic

    url = _checkpointed(tmp_path / "s.zarr")
    with open_synthetic_store(str(url), "a") as s:
        b = s._commits.backend
        calls = []
        real_delete = b.delete
        b.delete = lambda path: calls.append(path)  # the kill: the delete never happens
        synthetic._retire(b, "checkpoints/00000006")
        b.delete = real_delete
        assert calls == ["checkpoints/00000006"]
        assert s.checkpoints() == [3]
        assert s.latest_checkpoint()[0] == 3


def test_resume_from_a_damaged_checkpoint_is_one_line_and_exit_2(tmp_path):
    traj = fake_trajectory_store(tmp_path / "t.zarr")
    out = tmp_path / "run"
    res = invoke(distill_args(traj, out, "--iterations", "6"))
    assert res.exit_code == 0, res.output
    ckpt_root = out / "synthetic.zarr" / "checkpoints"
    newest = sorted(p for p in ckpt_root.iterdir() if p.is_dir())[-1]
    for f in _chunk_files(newest / "images"):
        f.unlink()
    _one_line_error(invoke(distill_args(traj, out, "--iterations", "6", "--resume")), str(newest.name), "images")
    shutil.rmtree(newest)  # the fix the message gives: drop it and resume from the one before
    res = invoke(distill_args(traj, out, "--iterations", "6", "--resume"))
    assert res.exit_code == 0, res.output


# --- round trips (hypothesis): what is written reads back exactly ------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                     shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                     elements={"allow_nan": False, "allow_infinity": False})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), _arrays, min_size=1, max_size=3),
       it=st.integers(0, 10**6), suffix=st.sampled_from([".zarr", ".h5"]),
       attrs=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True).filter(lambda k: k != "iteration"),
                             st.one_of(st.integers(-5, 5), st.text(max_size=4), st.booleans(),
                                       st.lists(st.integers(0, 3), max_size=3)), max_size=3))
def test_checkpoint_round_trip(tmp_path_factory, arrays, it, suffix, attrs):
    url = tmp_path_factory.mktemp("rt") / f"s{suffix}"
    with open_synthetic_store(str(url), "a") as s:
        s.write_checkpoint(it, arrays, attrs)
    with open_synthetic_store(str(url), "r") as s:
        got_it, got, got_attrs = s.latest_checkpoint()
    assert got_it == it and got_attrs == attrs and sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snapshots=st.integers(1, 4), p=st.integers(1, 50), seed=st.integers(0, 2**16),
       suffix=st.sampled_from([".zarr", ".h5"]))
def test_trajectory_round_trip(tmp_path_factory, snapshots, p, seed, suffix):
    url = tmp_path_factory.mktemp("rt") / f"t{suffix}"
    traj = np.random.default_rng(seed).standard_normal((snapshots, p)).astype(np.float32)
    with open_trajectory_store(str(url), "a") as s:
        s.initialize(model={}, layout=[["w", [p]]], num_params=p, dataset={"name": "demo"})
        eid = s.add_expert(traj, {"seed": seed})
    with open_trajectory_store(str(url), "r") as s:
        assert s.expert_ids() == [eid] and np.array_equal(s.load_trajectory(eid), traj)
        assert all(np.array_equal(s.load(eid, e), traj[e]) for e in range(snapshots))
