"""The embedded demo set: shipped in the package, loadable without pickle, regenerable."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from tesla.adapters.data.demo import load_demo
from tests.paths import CIFAR10_SUBSET

REPO = Path(__file__).resolve().parents[2]
SUBSET = CIFAR10_SUBSET


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_shapes_and_classes(demo) -> None:
    assert demo.name == "demo" and demo.num_classes == 10 and demo.image_shape == (3, 16, 16)
    assert demo.train_x.shape == (3000, 3, 16, 16) and demo.test_x.shape == (800, 3, 16, 16)
    assert torch.equal(torch.bincount(demo.train_y), torch.full((10,), 300))
    assert torch.equal(torch.bincount(demo.test_y), torch.full((10,), 80))
    assert demo.class_names[:3] == ["airplane", "automobile", "bird"]
    assert demo.train_y.dtype == torch.int64 and demo.train_x.dtype == torch.float32


def test_normalised_with_its_own_statistics(demo) -> None:
    assert demo.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (demo.train_x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    shown = demo.normalizer.decode(demo.train_x[:8])
    assert shown.min() >= 0 and shown.max() <= 1


def test_zca_variant_round_trips(demo) -> None:
    z = load_demo(zca=True)
    assert z.train_x.shape == demo.train_x.shape and torch.isfinite(z.train_x).all()
    assert torch.allclose(z.normalizer.decode(z.test_x[:8]), demo.normalizer.decode(demo.test_x[:8]), atol=2e-2)


def test_file_is_small_and_pickle_free() -> None:
    ref = resources.files("tesla.adapters.data").joinpath("embedded", "demo16.npz")
    data = ref.read_bytes()
    assert len(data) < 3_000_000
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        assert z["train_x"].dtype == np.uint8 and z["test_x"].dtype == np.uint8


@pytest.mark.skipif(not SUBSET.is_dir(), reason="CIFAR-10 subset not available")
def test_regeneration_is_deterministic() -> None:
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.build(SUBSET)
    with np.load(REPO / "tesla" / "adapters" / "data" / "embedded" / "demo16.npz", allow_pickle=False) as z:
        for key, value in rebuilt.items():
            assert np.array_equal(z[key], value), key
