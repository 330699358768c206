"""Synthetic-set store: checkpoints and the final set in HDF5, local Zarr and memory:// Zarr;
atomic checkpoints; published .pt and PNG exports."""

from __future__ import annotations

import glob
import os
import uuid

import fsspec
import numpy as np
import pytest
import torch

from tesla.adapters.stores import StoreError, describe_store, open_synthetic_store
from tesla.adapters.stores.backends import open_backend

N_CLS, IPC, C, S = 3, 2, 3, 8


@pytest.fixture(params=["h5", "zarr", "memory"])
def url(request, tmp_path):
    if request.param == "h5":
        yield str(tmp_path / "synthetic.h5")
    elif request.param == "zarr":
        yield str(tmp_path / "synthetic.zarr")
    else:
        u = f"memory://tesla-syn-{uuid.uuid4().hex}"
        yield u
        fs = fsspec.filesystem("memory")
        if fs.exists(u[len("memory://"):]):
            fs.rm(u[len("memory://"):], recursive=True)


def _set_arrays(seed: int = 0, soft: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(N_CLS), IPC).astype(np.int64)
    out = {"images": rng.standard_normal((N_CLS * IPC, C, S, S)).astype(np.float32), "labels": labels}
    if soft:
        logits = rng.standard_normal((N_CLS * IPC, N_CLS)).astype(np.float32)
        out["soft_labels"] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        out["label_logits"] = logits
    return out


PROVENANCE = {
    "config": {"distill": {"ipc": IPC, "engine": "tesla"}, "model": {"arch": "convnet"}},
    "trajectory_store": "/data/experts.zarr",
    "label_expert": 4,
    "label_epoch": 12,
    "iteration": 500,
    "seed": 0,
    "class_names": ["cat", "dog", "ship"],
}
NORM = {"kind": "meanstd", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


def _checkpoint_arrays(it: int) -> dict:
    rng = np.random.default_rng(it)
    return {
        "images": rng.standard_normal((N_CLS * IPC, C, S, S)).astype(np.float32),
        "labels": np.repeat(np.arange(N_CLS), IPC),
        "momentum_images": rng.standard_normal((N_CLS * IPC, C, S, S)).astype(np.float32),
        "rng_state": rng.integers(0, 255, size=40, dtype=np.uint8),
        "lr": np.float32(0.01 + it),
    }


def test_round_trip(url):
    store = open_synthetic_store(url, "a")
    assert store.latest_checkpoint() is None and not store.has_set() and store.checkpoints() == []
    where = store.write_checkpoint(100, _checkpoint_arrays(100), {"lr": 0.02, "rng": {"torch": 3}})
    assert where.endswith("checkpoints/00000100")
    arrays = _set_arrays()
    zca_state = {"kind": "zca", "zca_mean": np.arange(4, dtype=np.float32),
                 "zca_matrix": np.eye(4, dtype=np.float32), "zca_eps": [0.1]}
    store.write_set({**arrays, "extra": np.arange(3)}, {"lr": 0.015, **PROVENANCE}, normalizer_state=zca_state)
    store.close()

    r = open_synthetic_store(url, "r")
    it, ck, attrs = r.latest_checkpoint()
    assert it == 100 and attrs == {"lr": 0.02, "rng": {"torch": 3}}
    for k, v in _checkpoint_arrays(100).items():
        np.testing.assert_array_equal(ck[k], v)
        assert ck[k].dtype == np.asarray(v).dtype
    syn = r.read_set()
    np.testing.assert_array_equal(syn.images, arrays["images"])
    np.testing.assert_array_equal(syn.labels, arrays["labels"])
    np.testing.assert_array_equal(syn.soft_labels, arrays["soft_labels"])
    np.testing.assert_array_equal(syn.label_logits, arrays["label_logits"])
    np.testing.assert_array_equal(syn.arrays["extra"], np.arange(3))
    assert syn.labels.dtype == np.int64 and syn.images.dtype == np.float32
    assert syn.lr == pytest.approx(0.015) and syn.attrs == PROVENANCE
    assert syn.ipc == IPC and syn.num_classes == N_CLS and syn.labels_kind == "learned"
    assert syn.normalizer_state["kind"] == "zca" and syn.normalizer_state["zca_eps"] == [0.1]
    np.testing.assert_array_equal(syn.normalizer_state["zca_matrix"], np.eye(4))
    summary = r.summary()
    assert summary["set"]["images"] == [N_CLS * IPC, C, S, S] and summary["set"]["ipc"] == IPC
    assert summary["set"]["labels"] == "learned" and summary["checkpoints"] == [100]


def test_images_are_chunked_per_class(tmp_path):
    for name in ("s.h5", "s.zarr"):
        url = str(tmp_path / name)
        open_synthetic_store(url, "a").write_set(_set_arrays(soft=False), {"lr": 0.01})
        b = open_backend(url, "r")
        (set_name,) = b.groups("sets")
        assert b.chunks(f"sets/{set_name}/images") == (IPC, C, S, S)
        b.close()


def test_hard_labels_and_lr_as_array(url):
    store = open_synthetic_store(url, "a")
    arrays = _set_arrays(soft=False)
    store.write_set({**arrays, "lr": np.array([0.03], np.float32)}, {}, normalizer_state=NORM)
    syn = open_synthetic_store(url, "r").read_set()
    assert syn.soft_labels is None and syn.label_logits is None and syn.labels_kind == "hard"
    assert syn.lr == pytest.approx(0.03) and syn.normalizer_state == NORM


def test_checkpoints_keep_the_newest_and_the_set(url):
    store = open_synthetic_store(url, "a")
    store.write_set(_set_arrays(seed=1), {"lr": 0.01, "iteration": 0})
    for it in (10, 20, 30):
        store.write_checkpoint(it, _checkpoint_arrays(it), {"it": it})
    it, arrays, attrs = store.latest_checkpoint()
    assert it == 30 and attrs == {"it": 30}
    np.testing.assert_array_equal(arrays["images"], _checkpoint_arrays(30)["images"])
    kept = store.checkpoints()
    assert kept == ([30] if url.endswith(".h5") else [20, 30])  # HDF5: the latest; Zarr: the 2 newest
    np.testing.assert_array_equal(store.read_set().images, _set_arrays(seed=1)["images"])  # survived
    store.write_set(_set_arrays(seed=2), {"lr": 0.02, "iteration": 30})
    assert store.latest_checkpoint()[0] == 30  # the set write kept the checkpoint
    syn = open_synthetic_store(url, "r").read_set()
    assert syn.attrs["iteration"] == 30 and syn.lr == pytest.approx(0.02)
    np.testing.assert_array_equal(syn.images, _set_arrays(seed=2)["images"])


def test_hdf5_temp_file_of_killed_writer_does_not_break_reads(tmp_path):
    url = str(tmp_path / "run" / "synthetic.h5")
    store = open_synthetic_store(url, "a")
    store.write_checkpoint(10, _checkpoint_arrays(10), {})
    store.write_set(_set_arrays(), {"lr": 0.01})
    # a writer killed mid-write leaves a half-written temporary next to the store
    leftover = tmp_path / "run" / ".synthetic.h5.tmp-99999-deadbeef"
    leftover.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    reader = open_synthetic_store(url, "r")
    assert reader.latest_checkpoint()[0] == 10 and reader.has_set()
    assert leftover.exists()  # readers never touch it
    # a failure in the middle of a write leaves the old file intact and no new temporary
    bad = {"images": np.zeros((2, 1, 2, 2), np.float32), "junk": np.array([object(), object()], dtype=object)}
    with pytest.raises(Exception):
        store.write_checkpoint(20, bad, {})
    assert reader.latest_checkpoint()[0] == 10
    assert glob.glob(str(tmp_path / "run" / ".synthetic.h5.tmp-*")) == [str(leftover)]
    # the next writer sweeps leftovers and writes on
    writer = open_synthetic_store(url, "a")
    assert not leftover.exists()
    writer.write_checkpoint(30, _checkpoint_arrays(30), {})
    assert reader.latest_checkpoint()[0] == 30 and reader.has_set()


def test_zarr_incomplete_checkpoint_is_ignored_then_swept(tmp_path):
    url = str(tmp_path / "synthetic.zarr")
    store = open_synthetic_store(url, "a")
    store.write_checkpoint(10, _checkpoint_arrays(10), {})
    store.write_checkpoint(20, _checkpoint_arrays(20), {})
    # a writer killed while writing checkpoint 30: group there, data partial, no marker
    b = open_backend(url, "a")
    b.create_group("checkpoints/00000030")
    b.update_attrs("checkpoints/00000030", {"complete": False})
    b.create_array("checkpoints/00000030/images", (6, C, S, S), np.float32)
    assert open_synthetic_store(url, "r").latest_checkpoint()[0] == 20
    store.write_checkpoint(25, _checkpoint_arrays(25), {})
    assert store.checkpoints() == [20, 25]
    assert b.groups("checkpoints") == ["00000020", "00000025"]  # the leftover and the oldest are gone


def test_errors(url, tmp_path):
    store = open_synthetic_store(url, "a")
    with pytest.raises(StoreError, match="no finished synthetic set"):
        store.read_set()
    with pytest.raises(StoreError, match="array name"):
        store.write_checkpoint(1, {"bad/name": np.zeros(2)}, {})
    with pytest.raises(StoreError, match="needs an array 'labels'"):
        store.write_set({"images": np.zeros((2, 1, 2, 2), np.float32)}, {})
    with pytest.raises(StoreError, match="integer class ids"):
        store.write_set({"images": np.zeros((2, 1, 2, 2), np.float32), "labels": np.zeros(2, np.float32)}, {})
    with pytest.raises(StoreError, match="cannot hold"):
        store.write_checkpoint(1, {}, {"x": object()})
    store.write_checkpoint(1, {"a": np.zeros(2)}, {})
    with pytest.raises(StoreError, match="read-only"):
        open_synthetic_store(url, "r").write_checkpoint(2, {}, {})
    with pytest.raises(StoreError):
        open_synthetic_store(str(tmp_path / "missing.h5"), "r")
    with pytest.raises(StoreError):
        open_synthetic_store(str(tmp_path / "missing.zarr"), "r")


def test_stores_refuse_each_other(tmp_path):
    from tesla.adapters.stores import open_trajectory_store

    t = str(tmp_path / "t.zarr")
    with open_trajectory_store(t, "a") as ts:
        ts.initialize({}, [("w", [2])], 2, {})
    with pytest.raises(StoreError, match="not a synthetic set"):
        open_synthetic_store(t, "a")
    s = str(tmp_path / "s.h5")
    open_synthetic_store(s, "a").write_checkpoint(0, {"a": np.zeros(1)}, {})
    with pytest.raises(StoreError, match="not expert trajectories"):
        open_trajectory_store(s, "r")
    assert describe_store(s)["kind"] == "synthetic" and describe_store(t)["kind"] == "trajectories"


def test_export_published_loads_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    from tesla.adapters.stores.export import export_published

    for soft in (True, False):
        url = str(tmp_path / f"s{soft}.zarr")
        open_synthetic_store(url, "a").write_set(_set_arrays(soft=soft), {"lr": 0.0125})
        syn = open_synthetic_store(url, "r").read_set()
        out = tmp_path / f"export{soft}"
        paths = export_published(syn, str(out))
        assert sorted(os.path.basename(p) for p in paths) == ["images_best.pt", "labels_best.pt", "lr_best.pt"]
        images = torch.load(out / "images_best.pt", weights_only=True)
        labels = torch.load(out / "labels_best.pt", weights_only=True)
        lr = torch.load(out / "lr_best.pt", weights_only=True)
        assert images.shape == (N_CLS * IPC, C, S, S) and images.dtype == torch.float32
        assert labels.shape == ((N_CLS * IPC, N_CLS) if soft else (N_CLS * IPC,))
        assert labels.dtype == (torch.float32 if soft else torch.int64)
        assert lr.shape == () and float(lr) == pytest.approx(0.0125)


def test_export_png_grid(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from tesla.adapters.stores.export import CLASS_SIDE, OVERVIEW_SIDE, export_png_grid, scale_for

    url = str(tmp_path / "s.h5")
    store = open_synthetic_store(url, "a")
    store.write_set(_set_arrays(soft=False), {"lr": 0.01, "class_names": ["cat", "dog", "emu"]})
    # no normaliser stored: per-image min-max scaling
    paths = export_png_grid(store.read_set(), str(tmp_path / "png"), per_row=2)
    assert [os.path.basename(p) for p in paths] == ["class_000.png", "class_001.png", "class_002.png", "overview.png"]
    cell, small = S * scale_for(S, CLASS_SIDE), S * scale_for(S, OVERVIEW_SIDE)
    assert cell >= CLASS_SIDE and small >= OVERVIEW_SIDE  # upscaled to a readable size
    with Image.open(paths[0]) as im:  # a header line, then 2 images a row (padding 2) after the class's name
        assert im.size[1] == 22 + 2 + cell + 2 and im.size[0] > 2 * cell + 3 * 2
    with Image.open(paths[-1]) as overview:  # a row per class, IPC images a row
        assert overview.size[1] == 22 + 2 + N_CLS * (small + 2)
        alone = overview.size[0]
    # real images beside the distilled ones widen every picture by the same number of images
    real_calls = []

    def real(c, n):
        real_calls.append((c, n))
        return torch.zeros(n, C, S, S)

    paths = export_png_grid(store.read_set(), str(tmp_path / "real"), per_row=2, real=real)
    assert real_calls == [(0, IPC), (1, IPC), (2, IPC)]  # once per class, the overview reuses them
    with Image.open(paths[-1]) as overview:
        assert overview.size[0] >= alone + IPC * (small + 2)
    # a stored normaliser decodes (through helper A's Normalizer when it is there)
    store.write_set(_set_arrays(soft=False), {"lr": 0.01}, normalizer_state=NORM)
    paths = export_png_grid(store.read_set(), str(tmp_path / "png2"))
    assert len(paths) == N_CLS + 1 and all(os.path.getsize(p) > 0 for p in paths)
    # an explicit decode wins: each class's images, for its picture and for the overview
    calls = []

    def decode(x):
        calls.append(x.shape)
        return x.sigmoid()

    export_png_grid(store.read_set(), str(tmp_path / "png3"), decode=decode)
    assert calls == [(IPC, C, S, S)] * (2 * N_CLS)


def test_a_labelled_sheet_puts_each_image_upscaled_where_its_layout_says():
    pytest.importorskip("PIL")
    import numpy as np

    from tesla.adapters.stores.export import labelled_sheet

    rng = np.random.default_rng(0)
    rows = [torch.from_numpy(rng.random((k, 3, 4, 4)).astype(np.float32)) for k in (3, 2)]
    real = [torch.from_numpy(rng.random((k, 3, 4, 4)).astype(np.float32)) for k in (3, 2)]
    picture, sheet = labelled_sheet(rows, real, scale=5, row_labels=["0 cat", "1 dog"])
    assert picture.size == sheet.size and sheet.cell == 20 and sheet.left > 0 and sheet.real_columns == 3
    pixels = np.asarray(picture)
    for r in range(2):
        for block, is_real in ((rows[r], False), (real[r], True)):
            for c in range(block.shape[0]):
                x, y = sheet.position(r, c, real=is_real)
                want = (block[c] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                want = want.repeat(5, axis=0).repeat(5, axis=1)  # nearest: each pixel a 5x5 block
                assert np.array_equal(pixels[y:y + 20, x:x + 20], want), (r, c, is_real)
    # the real block starts after the distilled one, past its header however narrow the block
    assert sheet.position(0, 0, real=True)[0] >= sheet.position(0, 2)[0] + 20 + sheet.gap