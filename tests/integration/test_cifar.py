"""CIFAR loader on the real CIFAR-10 subset shipped with the project (5085 train, 1017 test)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tesla.adapters.data.base import DataError, ImageSet
from tesla.adapters.data.cifar import fit_or_load_zca, load_cifar, zca_cache_path
from tesla.adapters.torch.normalize import Normalizer
from tests.paths import CIFAR10_SUBSET

SUBSET = CIFAR10_SUBSET
pytestmark = pytest.mark.skipif(not (SUBSET / "cifar-10-batches-py").is_dir(), reason="CIFAR-10 subset not available")


@pytest.fixture(scope="module")
def cifar() -> ImageSet:
    return load_cifar(SUBSET)


def test_sizes_shapes_and_names(cifar: ImageSet) -> None:
    assert (cifar.num_train, cifar.num_test, cifar.num_classes) == (5085, 1017, 10)
    assert cifar.image_shape == (3, 32, 32)
    assert cifar.train_x.shape == (5085, 3, 32, 32) and cifar.test_x.shape == (1017, 3, 32, 32)
    assert cifar.train_x.dtype == torch.float32 and cifar.train_y.dtype == torch.int64
    assert cifar.train_x.device.type == "cpu"
    assert cifar.class_names[0] == "airplane" and cifar.class_names[9] == "truck"


def test_values_are_standard_normalised(cifar: ImageSet) -> None:
    # The field's CIFAR constants: the mean is the pixel mean, but the "std" (about 0.2) is
    # below the pixel std (about 0.25), so normalised pixels have std about 1.23, not 1.
    mean = cifar.train_x.mean(dim=(0, 2, 3))
    std = cifar.train_x.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.1 and bool(((std > 1.1) & (std < 1.4)).all())
    # Decoding gives back the stored uint8 pixels.
    raw = pickle.load(open(SUBSET / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    pixels = torch.from_numpy(raw["data"][:4].reshape(4, 3, 32, 32)).float()
    assert torch.allclose(cifar.normalizer.decode(cifar.train_x[:4]) * 255, pixels, atol=1e-3)
    lo, hi = (0 - 0.4914) / 0.2023, (1 - 0.4465) / 0.2010
    assert cifar.train_x.min() >= lo - 0.05 and cifar.train_x.max() <= hi + 0.05
    shown = cifar.normalizer.decode(cifar.test_x[:8])
    assert shown.min() >= 0 and shown.max() <= 1


def test_class_indices_balanced_and_cached(cifar: ImageSet) -> None:
    idx = cifar.class_indices()
    assert len(idx) == 10 and sum(len(i) for i in idx) == 5085
    assert all(450 <= len(i) <= 550 for i in idx)
    for c, i in enumerate(idx):
        assert bool((cifar.train_y[i] == c).all())
    assert cifar.class_indices() is idx


def _rows_in(x: torch.Tensor, pool: torch.Tensor) -> bool:
    flat = pool.flatten(1)
    return all(bool((flat == row.flatten()).all(dim=1).any()) for row in x)


def test_sample_class_returns_that_class(cifar: ImageSet) -> None:
    x = cifar.sample_class(3, 10, seed=0)
    assert x.shape == (10, 3, 32, 32)
    assert _rows_in(x, cifar.train_x[cifar.class_indices()[3]])
    assert not _rows_in(x[:1], cifar.train_x[cifar.class_indices()[4]])
    assert torch.equal(x, cifar.sample_class(3, 10, seed=0))
    assert not torch.equal(x, cifar.sample_class(3, 10, seed=1))
    # Without replacement: ten distinct images.
    assert torch.unique(x.flatten(1), dim=0).shape[0] == 10


def test_sample_more_than_class_holds_uses_every_image(cifar: ImageSet) -> None:
    size = len(cifar.class_indices()[0])
    x = cifar.sample_class(0, size + 5, seed=0)
    assert x.shape[0] == size + 5
    assert torch.unique(x.flatten(1), dim=0).shape[0] == size


def test_batches_cover_the_sets(cifar: ImageSet) -> None:
    ys = torch.cat([y for _, y in cifar.train_batches(1000, seed=0)])
    assert torch.equal(torch.sort(ys).values, torch.sort(cifar.train_y).values)
    first = next(cifar.train_batches(16, seed=5))[1]
    assert torch.equal(first, next(cifar.train_batches(16, seed=5))[1])
    xt = torch.cat([x for x, _ in cifar.test_batches(300)])
    assert torch.equal(xt, cifar.test_x)


def test_subset_per_class(cifar: ImageSet) -> None:
    sub = cifar.subset_per_class(7, seed=0)
    assert sub.num_train == 70 and torch.equal(torch.bincount(sub.train_y), torch.full((10,), 7))
    assert sub.num_test == cifar.num_test
    assert _rows_in(sub.train_x[:7], cifar.train_x[cifar.class_indices()[0]])


def test_inner_folder_and_limit(cifar: ImageSet) -> None:
    small = load_cifar(SUBSET / "cifar-10-batches-py", limit_per_class=5)
    assert small.num_train == 50 and small.num_test == 50
    assert torch.equal(torch.bincount(small.train_y), torch.full((10,), 5))
    # The first image of class 0 in file order is the same in both loads.
    assert torch.equal(small.train_x[small.class_indices()[0][0]], cifar.train_x[cifar.class_indices()[0][0]])


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*cifar-10-batches-py"):
        load_cifar(missing)


def test_missing_batch_file_names_it(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    shutil.copy(SUBSET / "cifar-10-batches-py" / "batches.meta", folder)
    shutil.copy(SUBSET / "cifar-10-batches-py" / "data_batch_1", folder)
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar(tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar(tmp_path, name="cifar100")


def test_zca_cache_reuses_the_fitted_transform(tmp_path: Path) -> None:
    # A tiny 3x4x4 "image set" makes the ZCA instant; the cache logic is size independent.
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(64, 3, 4, 4), dtype=np.uint8)
    first = fit_or_load_zca(train, tmp_path)
    path = zca_cache_path(tmp_path, train)
    assert path.is_file()
    x = torch.from_numpy(train[:4]).float() / 255
    # Tamper with the cached transform: a cache hit must return the tampered one.
    state = Normalizer.load(path).to_state()
    tampered = {k: (v * 1.5 if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in state.items()}
    Normalizer.from_state(tampered).save(path)
    second = fit_or_load_zca(train, tmp_path)
    assert not torch.allclose(first.encode(x), second.encode(x))
    # Different pixels get a different cache entry.
    assert zca_cache_path(tmp_path, train[:32]) != path


@pytest.mark.slow  # one 3072x3072 ZCA fit: about 20 s on a 2-core CPU
def test_load_cifar_with_zca_and_cache(tmp_path: Path) -> None:
    a = load_cifar(SUBSET, zca=True, cache_dir=tmp_path, limit_per_class=10)
    files = list(tmp_path.glob("zca-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = load_cifar(SUBSET, zca=True, cache_dir=tmp_path, limit_per_class=10)
    assert files[0].stat().st_mtime_ns == stamp and len(list(tmp_path.glob("*.npz"))) == 1
    assert torch.allclose(a.test_x, b.test_x)
    assert torch.isfinite(a.train_x).all()
    # The inverse ZCA brings images back to display space.
    raw = load_cifar(SUBSET, limit_per_class=10)
    back = a.normalizer.decode(a.test_x[:4])
    assert torch.allclose(back, raw.normalizer.decode(raw.test_x[:4]), atol=2e-2)
