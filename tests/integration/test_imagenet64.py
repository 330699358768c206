"""Downsampled-ImageNet readers on small files written in the release's real formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tesla.adapters.data.imagenet64 import (
    BatchFile,
    Imagenet64Error,
    Imagenet64Source,
    find_imagenet64,
    iter_batches,
    read_labels,
    write_npz_batch,
)


def make_release(root: Path, *, files: int = 3, per_file: int = 40, classes: int = 5, side: int = 64,
                 val: int = 20, seed: int = 0, sub: str = "", compressed=(False, True)) -> dict:
    """Write ``train_data_batch_1..files.npz`` and ``val_data.npz`` like the release.

    Returns the pixels (N, 3, S, S) uint8 and 0-based labels of each split, in file order.
    Members alternate stored / deflated so both read paths are exercised.
    """
    rng = np.random.default_rng(seed)
    (root / sub).mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, files + 1):
        x = rng.integers(0, 256, (per_file, 3, side, side), dtype=np.uint8)
        y = rng.integers(1, classes + 1, per_file)
        write_npz_batch(root / sub / f"train_data_batch_{i}.npz", x, y, compressed=compressed[i % len(compressed)])
        xs.append(x)
        ys.append(y - 1)
    out = {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys)}
    if val:
        vx = rng.integers(0, 256, (val, 3, side, side), dtype=np.uint8)
        vy = rng.integers(1, classes + 1, val)
        write_npz_batch(root / "val_data.npz", vx, vy)
        out.update(test_x=vx, test_y=vy - 1)
    return out


def test_batch_file_reads_pixels_in_chw_order_and_zero_based_labels(tmp_path):
    x = np.arange(2 * 3 * 64 * 64, dtype=np.int64).reshape(2, 3, 64, 64).astype(np.uint8)
    # the release stores each row as all red, then all green, then all blue
    write_npz_batch(tmp_path / "b.npz", x.reshape(2, -1), [1, 1000])
    with BatchFile(tmp_path / "b.npz") as f:
        assert f.image_size == 64 and len(f) == 2
        np.testing.assert_array_equal(f.read(0, 2), x)
        np.testing.assert_array_equal(f.labels, [0, 999])
        assert f.labels.dtype == np.int64


@pytest.mark.parametrize("compressed", [False, True])
def test_rows_are_read_without_loading_the_file(tmp_path, compressed):
    data = make_release(tmp_path, files=1, per_file=40, val=0, compressed=(compressed,))
    with BatchFile(tmp_path / "train_data_batch_1.npz") as f:
        # stored members are read directly from the file, deflated ones streamed
        assert f._rows.direct == (not compressed)
        np.testing.assert_array_equal(f.read(5, 17), data["train_x"][5:17])
        np.testing.assert_array_equal(f.read(30, 40), data["train_x"][30:40])
        np.testing.assert_array_equal(f.read(0, 3), data["train_x"][0:3])  # backwards seek


def test_source_spans_files_and_reads_val(tmp_path):
    data = make_release(tmp_path, sub="Imagenet64_train_npz")
    src = Imagenet64Source(tmp_path)
    assert src.image_size == 64 and src.name == "imagenet64"
    assert src.class_names == [f"class_{i}" for i in range(5)]
    np.testing.assert_array_equal(src.train.labels, data["train_y"])
    np.testing.assert_array_equal(src.train.read(25, 95), data["train_x"][25:95])  # crosses two file boundaries
    np.testing.assert_array_equal(src.test.read(0, 20), data["test_x"])
    np.testing.assert_array_equal(src.test.labels, data["test_y"])
    src.close()


def test_iter_batches_one_file_at_a_time(tmp_path):
    data = make_release(tmp_path, val=0)
    files = find_imagenet64(tmp_path).train
    assert [p.name for p in files] == [f"train_data_batch_{i}.npz" for i in (1, 2, 3)]
    parts = list(iter_batches(files, chunk=16))
    assert [len(y) for _, y in parts] == [16, 16, 8] * 3
    np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), data["train_x"])
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), data["train_y"])


def test_batches_sort_numerically_and_class_map_names_classes(tmp_path):
    for i in (1, 2, 10):
        write_npz_batch(tmp_path / f"train_data_batch_{i}.npz", np.zeros((1, 3, 8, 8), np.uint8), [i % 3 + 1])
    (tmp_path / "map_clsloc.txt").write_text("n01 1 tench\nn02 2 goldfish\nn03 3 shark\n")
    files = find_imagenet64(tmp_path)
    assert [p.name for p in files.train][-1] == "train_data_batch_10.npz"
    src = Imagenet64Source(tmp_path)
    assert src.class_names == ["tench", "goldfish", "shark"]
    assert src.image_size == 8 and src.name == "imagenet8" and src.test is None


def test_resizing_on_read(tmp_path):
    make_release(tmp_path, files=1, per_file=4, val=0)
    src = Imagenet64Source(tmp_path, image_size=32)
    x = src.train.read(0, 4)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8


def test_pickled_dict_of_arrays_is_read(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (6, 3 * 16 * 16), dtype=np.uint8)
    with open(tmp_path / "train_data_batch_1", "wb") as f:
        pickle.dump({"data": x, "labels": [1, 2, 3, 1, 2, 3], "mean": x.mean(0)}, f)
    with BatchFile(tmp_path / "train_data_batch_1") as b:
        np.testing.assert_array_equal(b.read(0, 6), x.reshape(6, 3, 16, 16))
        np.testing.assert_array_equal(b.labels, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(read_labels(tmp_path / "train_data_batch_1"), [0, 1, 2, 0, 1, 2])


class _Payload:
    """Unpickling this would call _touch: the reader must refuse instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> None:  # pragma: no cover - must never run
    Path(path).write_text("pwned")


def test_pickle_with_arbitrary_objects_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker"
    with open(tmp_path / "train_data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((1, 12), np.uint8), "labels": [_Payload(str(marker))]}, f)
    with pytest.raises(Imagenet64Error, match="refusing to unpickle global .*_touch"):
        BatchFile(tmp_path / "train_data_batch_1")
    assert not marker.exists()


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(Imagenet64Error, match="no train_data_batch_N"):
        find_imagenet64(tmp_path)
    write_npz_batch(tmp_path / "x.npz", np.zeros((2, 10), np.uint8), [1, 2])
    with pytest.raises(Imagenet64Error, match="not 3\\*S\\*S"):
        BatchFile(tmp_path / "x.npz")
    write_npz_batch(tmp_path / "z.npz", np.zeros((2, 12), np.uint8), [0, 1])
    with pytest.raises(Imagenet64Error, match="1-based"):
        BatchFile(tmp_path / "z.npz")
    (tmp_path / "junk").write_bytes(b"not a batch")
    with pytest.raises(Imagenet64Error, match="junk"):
        BatchFile(tmp_path / "junk")
