"""Normaliser: mean/std and kornia ZCA round trips, whitening, plain state and npz cache."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tesla.adapters.torch.normalize import Normalizer
from tests.paths import CIFAR10_SUBSET

SUBSET = CIFAR10_SUBSET / "cifar-10-batches-py"
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]


def smooth_images(n: int = 600, side: int = 4, seed: int = 0) -> torch.Tensor:
    """Correlated [0, 1] images (upsampled noise), like natural images in miniature."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, side // 2, side // 2, generator=g)
    x = F.interpolate(low, size=(side, side), mode="bilinear", align_corners=True)
    return (0.7 * x + 0.3 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def zca() -> Normalizer:
    return Normalizer.fit_zca(smooth_images())


def cov(x: torch.Tensor) -> torch.Tensor:
    return torch.cov(x.flatten(1).double().T)


# --- mean / std ----------------------------------------------------------------------------

def test_mean_std_encode_decode_round_trip():
    norm = Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD)
    assert norm.kind == "meanstd"
    x = torch.rand(4, 3, 8, 8)
    y = norm.encode(x)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.4822) / 0.1994)
    torch.testing.assert_close(norm.decode(y), x, rtol=0, atol=1e-6)


def test_identity_and_decode_clamps():
    norm = Normalizer()
    assert norm.kind == "identity"
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(norm.encode(x), x)
    wild = torch.randn(2, 3, 4, 4) * 5
    for n in (norm, Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD)):
        out = n.decode(wild)
        assert out.min() >= 0 and out.max() <= 1


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="both mean and std"):
        Normalizer(mean=CIFAR_MEAN)
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalizer(mean=[0.5], std=[0.0])
    with pytest.raises(ValueError, match="3 channels"):
        Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD).encode(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="divide by 255"):
        Normalizer.fit_zca(torch.zeros(4, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]"):
        Normalizer.fit_zca(torch.rand(4, 3, 4, 4) * 255)
    with pytest.raises(ValueError, match="unknown normaliser kind"):
        Normalizer.from_state({"kind": "pca"})


# --- ZCA -------------------------------------------------------------------------------------

def test_zca_uses_kornia_settings_and_rejects_mixing(zca):
    assert zca.kind == "zca" and zca.zca.eps == 0.1 and zca.zca.compute_inv
    with pytest.raises(ValueError, match="not both"):
        Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD, zca=zca.zca)
    with pytest.raises(ValueError, match="fitted on images of 48 values"):
        zca.encode(torch.rand(2, 3, 8, 8))


def test_zca_encode_decode_round_trip(zca):
    x = smooth_images(50, seed=1)
    y = zca.encode(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    torch.testing.assert_close(zca.decode(y), x, rtol=0, atol=1e-4)


def test_zca_whitens_the_fit_data():
    x = smooth_images()
    before = cov(x)
    # With a tiny eps the whitened covariance is the identity.
    white = cov(Normalizer.fit_zca(x, eps=1e-6).encode(x))
    assert (white - torch.eye(48, dtype=torch.float64)).abs().max() < 1e-2
    # With eps = 0.1 each eigenvalue S becomes S / (S + eps): decorrelated, shrunk, never above 1.
    white = cov(Normalizer.fit_zca(x).encode(x))
    s = torch.linalg.eigvalsh(before)
    torch.testing.assert_close(torch.linalg.eigvalsh(white), (s / (s + 0.1)).sort().values, rtol=0, atol=1e-4)
    off = lambda c: (c - torch.diag(torch.diag(c))).abs().max() / torch.diag(c).mean()  # noqa: E731
    assert off(white) < off(before)


@pytest.mark.skipif(not SUBSET.is_dir(), reason="CIFAR-10 subset not available")
def test_zca_on_real_cifar_patches():
    with open(SUBSET / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # the official (trusted) CIFAR format
    x = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    x = F.avg_pool2d(x.float() / 255.0, 4)  # (N, 3, 8, 8): 192 values, strongly correlated
    before = cov(x)
    eye = torch.eye(192, dtype=torch.float64)

    def mean_abs_correlation(c: torch.Tensor) -> float:
        d = torch.diag(c).sqrt()
        return float((c / torch.outer(d, d) - eye).abs().mean())

    # The paper's eps = 0.1: eigenvalues S -> S / (S + eps) exactly, correlations mostly gone.
    norm = Normalizer.fit_zca(x)
    white = cov(norm.encode(x))
    s = torch.linalg.eigvalsh(before)
    torch.testing.assert_close(torch.linalg.eigvalsh(white), s / (s + 0.1), rtol=0, atol=1e-5)
    assert mean_abs_correlation(before) > 0.2  # real pixels are strongly correlated
    assert mean_abs_correlation(white) < mean_abs_correlation(before) / 3
    torch.testing.assert_close(norm.decode(norm.encode(x[:20])), x[:20], rtol=0, atol=1e-4)
    # A tiny eps whitens fully, even the faint directions of real images.
    assert (cov(Normalizer.fit_zca(x, eps=1e-5).encode(x)) - eye).abs().max() < 0.1


# --- state and cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["identity", "meanstd", "zca"])
def test_state_round_trip_gives_identical_encoding(which, zca):
    norm = {"identity": Normalizer(), "meanstd": Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD), "zca": zca}[which]
    state = norm.to_state()
    assert state["kind"] == which
    for v in state.values():
        assert isinstance(v, (str, list, np.ndarray))
    again = Normalizer.from_state(state)
    x = smooth_images(8, seed=3)
    assert torch.equal(again.encode(x), norm.encode(x))
    assert torch.equal(again.decode(norm.encode(x)), norm.decode(norm.encode(x)))


@pytest.mark.parametrize("name", ["zca.npz", "zca-cache.tmp.npz", "no_suffix"])
def test_npz_cache_round_trip(tmp_path, zca, name):
    path = tmp_path / name
    zca.save(path)
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]  # exactly that path
    with np.load(path, allow_pickle=False) as z:
        assert str(z["kind"]) == "zca" and z["zca_matrix"].shape == (48, 48)
    loaded = Normalizer.load(path)
    x = smooth_images(8, seed=4)
    assert torch.equal(loaded.encode(x), zca.encode(x))
    assert torch.equal(loaded.decode(zca.encode(x)), zca.decode(zca.encode(x)))
    assert loaded.zca.eps == pytest.approx(0.1)


def test_npz_mean_std_round_trip_and_bad_files(tmp_path):
    norm = Normalizer(mean=CIFAR_MEAN, std=CIFAR_STD)
    norm.save(tmp_path / "n.npz")
    loaded = Normalizer.load(tmp_path / "n.npz")
    assert loaded.mean == pytest.approx(tuple(CIFAR_MEAN)) and loaded.std == pytest.approx(tuple(CIFAR_STD))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="delete it to refit"):
        Normalizer.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        Normalizer.load(tmp_path / "missing.npz")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_zca_on_cuda_matches_cpu(zca):
    x = smooth_images(8, seed=5)
    torch.testing.assert_close(zca.encode(x.cuda()).cpu(), zca.encode(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zca.decode(zca.encode(x.cuda())).cpu(), x, rtol=0, atol=1e-4)
