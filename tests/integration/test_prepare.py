"""``prepare``: class-sorted stores in Zarr and HDF5, resume after a stop or a crash, reading back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from tesla.adapters.data.prepared import open_prepared, work_url
from tesla.adapters.stores.backends import open_backend
from tesla.adapters.stores.errors import StoreError
from tesla.app.cli.data import register
from tesla.app.bootstrap import prepare
from tesla.app.services.prepare import PrepareError
from tesla.domain.ports import ListSink

from .test_imagefolder import make_imagefolder, make_tiny_imagenet
from .test_imagenet64 import make_release

# Small settings so the 120 training images make several blocks and chunks.
SMALL = dict(chunk=16, block=48)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("imagenet64")
    return root, make_release(root)


def _arrays(url: str) -> dict:
    b = open_backend(url, "r")
    out = {f"{s}/{a}": b.read(f"{s}/{a}") for s in ("train", "test") for a in ("images", "labels", "class_offsets")}
    out["attrs"] = b.attrs()
    b.close()
    return out


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _expected(data: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(data[f"{split}_y"], kind="stable")  # a stable sort: source order within a class
    return data[f"{split}_x"][order], data[f"{split}_y"][order]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_prepare_writes_a_class_sorted_store(release, tmp_path, suffix):
    src, data = release
    dest = str(tmp_path / f"out{suffix}")
    sink = ListSink()
    summary = prepare(src, dest, sink=sink, **SMALL)
    assert summary.complete and not summary.resumed and summary.format == "imagenet64"
    assert (summary.num_classes, summary.num_train, summary.num_test) == (5, 120, 20)
    got = _arrays(dest)
    for split in ("train", "test"):
        x, y = _expected(data, split)
        np.testing.assert_array_equal(got[f"{split}/images"], x)
        np.testing.assert_array_equal(got[f"{split}/labels"], y)
        np.testing.assert_array_equal(got[f"{split}/class_offsets"], np.r_[0, np.cumsum(np.bincount(y, minlength=5))])
    a = got["attrs"]
    assert a["format"] == "tesla-prepared" and a["complete"] is True and a["image_size"] == 64
    assert a["num_classes"] == 5 and a["class_names"] == [f"class_{i}" for i in range(5)]
    x01 = data["train_x"].astype(np.float64) / 255
    np.testing.assert_allclose(a["mean"], x01.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(a["std"], x01.std(axis=(0, 2, 3)), rtol=1e-9)
    assert open_backend(dest, "r").chunks("train/images")[0] == 16
    assert not Path(work_url(dest)).exists()  # the runs are gone
    # events: started, progress up to the total, finished
    types = [e.type for e in sink.events]
    assert types[0] == "run_started" and types[-1] == "run_finished" and sink.events[-1].status == "completed"
    done = [e.done for e in sink.of("progress")]
    assert done == sorted(done) and done[-1] == summary.tasks_total == sink.events[0].total


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_stopped_then_resumed_equals_uninterrupted(release, tmp_path, suffix):
    src, _ = release
    straight = str(tmp_path / f"straight{suffix}")
    prepare(src, straight, **SMALL)

    resumed = str(tmp_path / f"resumed{suffix}")
    calls = iter(range(10**6))
    sink = ListSink()
    first = prepare(src, resumed, should_stop=lambda: next(calls) >= 1, sink=sink, **SMALL)  # one task, then stop
    assert not first.complete and first.tasks_done == 1
    assert sink.events[-1].status == "cancelled"
    with pytest.raises(StoreError, match="incomplete.*re-run the same prepare command"):
        open_prepared(resumed)
    second = prepare(src, resumed, **SMALL)
    assert second.complete and second.resumed
    a, b = _arrays(straight), _arrays(resumed)
    for key in a:
        if key != "attrs":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["attrs"] == b["attrs"]
    if suffix == ".zarr":  # same bytes, file for file
        assert _files(Path(straight)) == _files(Path(resumed))


def test_crash_midway_then_resume_equals_uninterrupted(release, tmp_path):
    src, _ = release
    straight = str(tmp_path / "straight.zarr")
    prepare(src, straight, **SMALL)

    crashed = str(tmp_path / "crashed.zarr")
    calls = iter(range(10**6))

    def crash_at_task_7() -> bool:
        if next(calls) == 7:  # inside the merge phase of the training split
            raise RuntimeError("power cut")
        return False

    sink = ListSink()
    with pytest.raises(RuntimeError, match="power cut"):
        prepare(src, crashed, should_stop=crash_at_task_7, sink=sink, **SMALL)
    assert sink.events[-1].status == "failed" and sink.of("error")
    sink = ListSink()
    again = prepare(src, crashed, sink=sink, **SMALL)
    assert again.resumed and again.complete
    assert sink.of("progress")[0].done == 7  # starts where it stopped
    assert _files(Path(straight)) == _files(Path(crashed))


def test_rerun_and_conflicts(release, tmp_path, tmp_path_factory):
    src, _ = release
    dest = str(tmp_path / "out.zarr")
    prepare(src, dest, **SMALL)
    again = prepare(src, dest, **SMALL)
    assert again.already_complete and again.complete
    with pytest.raises(StoreError, match="already holds a complete prepared set"):
        prepare(src, dest, chunk=8)
    half = str(tmp_path / "half.zarr")
    prepare(src, half, should_stop=lambda: True, **SMALL)
    with pytest.raises(StoreError, match="unfinished prepare from other data or settings"):
        prepare(src, half, chunk=8)
    fresh = str(tmp_path / "fresh.zarr")
    open_backend(work_url(fresh), "a").create_group("train")  # a start cut off before its plan was written
    assert prepare(src, fresh, **SMALL).complete
    with pytest.raises(PrepareError, match="chunk must be"):
        prepare(src, str(tmp_path / "x.zarr"), chunk=0)
    with pytest.raises(StoreError, match="not a prepared image store"):
        open_prepared(str(tmp_path / "half.zarr.work"))


def test_prepared_images_data_source(release, tmp_path):
    src, data = release
    dest = str(tmp_path / "out.zarr")
    prepare(src, dest, **SMALL)
    d = open_prepared(dest)
    assert (d.num_classes, d.num_train, d.num_test, d.image_shape) == (5, 120, 20, (3, 64, 64))
    assert d.normalizer.kind == "meanstd"
    sorted_x, sorted_y = _expected(data, "train")
    idx = d.class_indices()
    assert [len(i) for i in idx] == np.bincount(data["train_y"], minlength=5).tolist()
    assert all((sorted_y[i.numpy()] == k).all() for k, i in enumerate(idx))

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return (d.normalizer.decode(x) * 255).round().to(torch.uint8).numpy()

    c = 3
    x = d.sample_class(c, 5, seed=1)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    pool = {im.tobytes() for im in data["train_x"][data["train_y"] == c]}
    assert all(im.tobytes() in pool for im in to_uint8(x))
    assert len({im.tobytes() for im in to_uint8(x)}) == 5  # without replacement
    assert torch.equal(x, d.sample_class(c, 5, seed=1)) and not torch.equal(x, d.sample_class(c, 5, seed=2))
    many = d.sample_class(c, len(pool) + 4, seed=0)  # more than the class holds: all, then repeats
    assert {im.tobytes() for im in to_uint8(many)} == pool

    batches = list(d.train_batches(32, seed=0, shuffle_chunks=2))
    assert [len(y) for _, y in batches] == [32, 32, 32, 24]
    seen = np.concatenate([to_uint8(x) for x, _ in batches])
    labels = torch.cat([y for _, y in batches]).numpy()
    order = np.argsort([im.tobytes() for im in seen])
    ref = np.argsort([im.tobytes() for im in data["train_x"]])
    np.testing.assert_array_equal(seen[order], data["train_x"][ref])  # every image once
    np.testing.assert_array_equal(labels[order], data["train_y"][ref])  # with its own label
    again = torch.cat([y for _, y in d.train_batches(32, seed=0, shuffle_chunks=2)])
    other = torch.cat([y for _, y in d.train_batches(32, seed=1, shuffle_chunks=2)])
    assert torch.equal(again, torch.from_numpy(labels)) and not torch.equal(other, again)

    test = list(d.test_batches(7))
    assert [len(y) for _, y in test] == [7, 7, 6]
    tx, ty = _expected(data, "test")
    np.testing.assert_array_equal(np.concatenate([to_uint8(x) for x, _ in test]), tx)
    np.testing.assert_array_equal(torch.cat([y for _, y in test]).numpy(), ty)
    d.close()


@pytest.mark.parametrize("maker,fmt", [(make_imagefolder, "imagefolder"), (make_tiny_imagenet, "tiny-imagenet")])
def test_prepare_image_trees(tmp_path, maker, fmt):
    maker(tmp_path / "src")
    summary = prepare(tmp_path / "src", str(tmp_path / "out.h5"), image_size=32, chunk=4)
    assert summary.format == fmt and summary.complete and summary.image_size == 32
    d = open_prepared(str(tmp_path / "out.h5"))
    assert d.image_shape == (3, 32, 32) and d.num_train == summary.num_train
    x, y = next(iter(d.train_batches(4, seed=0)))
    assert x.shape == (4, 3, 32, 32)
    d.close()


def test_fsspec_url(release):
    src, data = release
    url = "memory://tesla-test/prepared.zarr"
    summary = prepare(src, url, **SMALL)
    assert summary.complete
    d = open_prepared(url)
    assert d.num_train == 120 and d.sample_class(0, 2, seed=0).shape == (2, 3, 64, 64)


def test_cli_prepare(release, tmp_path):
    src, _ = release
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, as in tesla's main app
        pass

    register(app)
    runner = CliRunner()
    dest = tmp_path / "cli.zarr"
    r = runner.invoke(app, ["data", "prepare", str(src), str(dest), "--chunk", "32", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "prepared" in r.output and "120 train, 20 test at 64 px" in r.output
    assert open_prepared(str(dest)).num_test == 20
    r = runner.invoke(app, ["data", "prepare", str(tmp_path / "missing"), str(tmp_path / "x.zarr")])
    assert r.exit_code == 2 and "no such folder" in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1
    r = runner.invoke(app, ["data", "prepare", str(src), str(tmp_path / "y.zarr"), "--format", "tiny-imagenet"])
    assert r.exit_code == 2 and "Tiny-ImageNet" in r.output


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_an_altered_chunk_fails_its_checksum(release, tmp_path, suffix):
    src, _ = release
    dest = str(tmp_path / f"out{suffix}")
    prepare(src, dest, **SMALL)
    with open_prepared(dest) as p:
        before = [x.clone() for x, _ in p.train_batches(16, seed=0)]
    b = open_backend(dest, "a")  # alter chunk 1's pixels behind the store's back (bit rot, a bad copy)
    rows = b.read("train/images", slice(16, 32))
    b.write("train/images", slice(16, 32), 255 - rows)
    b.close()
    with open_prepared(dest) as p:
        with pytest.raises(StoreError, match=r"train/images chunk 1 \(rows 16\.\.31\) fails its CRC-32"):
            list(p.train_batches(16, seed=0))
        with pytest.raises(StoreError, match="prepare it again"):
            p.sample_class(int(p._labels("train", 16, 17)[0]), 40, seed=0)
        last = p.num_classes - 1  # its rows lie in the last chunks, which are intact and still read
        assert p.sample_class(last, 3, seed=0).shape == (3, 3, 64, 64)
    # deleting the chunk checksums of a current store does not turn checking off
    b = open_backend(dest, "a")
    b.write("train/images", slice(16, 32), rows)
    b.delete("train/chunk_crc32")
    b.delete("test/chunk_crc32")
    b.close()
    with pytest.raises(StoreError, match="chunk_crc32 is missing"):
        open_prepared(dest)
    # a store prepared before checksums existed (format version 1, no chunk_crc32, no
    # attribute checksums) reads unchecked, as before
    b = open_backend(dest, "a")
    root = b.attrs()
    b.close()
    if suffix == ".zarr":  # rewrite the root's zarr.json without the version-2 keys
        import json

        meta_path = Path(dest) / "zarr.json"
        meta = json.loads(meta_path.read_text())
        for key in ("crc32", "attrs_crc32"):
            meta["attributes"].pop(key)
        meta["attributes"]["format_version"] = 1
        meta_path.write_text(json.dumps(meta))
    else:
        import h5py

        with h5py.File(dest, "a") as f:
            del f.attrs["crc32"], f.attrs["attrs_crc32"]
            f.attrs["format_version"] = 1
    assert root["format_version"] == 2
    with open_prepared(dest) as p:
        after = [x for x, _ in p.train_batches(16, seed=0)]
    assert all(torch.equal(a, c) for a, c in zip(before, after)) and len(before) == len(after)


def test_a_lost_zarr_chunk_is_an_error_not_zeros(release, tmp_path):
    src, _ = release
    dest = tmp_path / "out.zarr"
    prepare(src, str(dest), **SMALL)
    chunk_files = sorted(p for p in (dest / "train" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) >= 2
    chunk_files[-1].unlink()  # a Zarr store reads a missing chunk as its fill value
    with open_prepared(str(dest)) as p:
        with pytest.raises(StoreError, match="fails its CRC-32 check"):
            list(p.test_batches(8)) + list(p.train_batches(8, seed=1))
