"""The DD-Ranking export writes the tensors its evaluators load and reads back equal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tesla.adapters.stores.export_ddranking import (CIFAR_STATS, export_ddranking, read_ddranking_export)
from tesla.adapters.stores.synthetic import SyntheticSet, open_synthetic_store
from tesla.domain.errors import StoreError

CIFAR10_NORM = {"kind": "meanstd", "mean": list(CIFAR_STATS[0]), "std": list(CIFAR_STATS[1])}
TESLA_CIFAR100_NORM = {"kind": "meanstd", "mean": [0.5071, 0.4866, 0.4409], "std": [0.2673, 0.2564, 0.2762]}


def shuffled_set(k=10, ipc=3, side=8, seed=0, **fields):
    """A set in store order (classes interleaved), as distillation may leave it."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(k), ipc))
    images = rng.normal(size=(k * ipc, 3, side, side)).astype(np.float32) * 2.0   # also outside [0, 1] pixels
    fields.setdefault("normalizer_state", CIFAR10_NORM)
    return SyntheticSet(images=images, labels=labels.astype(np.int64), **fields)


def test_hard_set_round_trips_bit_for_bit(tmp_path):
    syn = shuffled_set(k=10, lr=0.0123, attrs={"dataset": {"name": "cifar10"}})
    out = tmp_path / "dd"
    written = export_ddranking(syn, str(out))
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(out)) == sorted(
        ["images.pt", "labels.pt", "lr.pt", "meta.json", "README.md"])

    # what DD-Ranking's demo does: torch.load each file
    images = torch.load(out / "images.pt", map_location="cpu", weights_only=True)
    labels = torch.load(out / "labels.pt", map_location="cpu", weights_only=True)
    lr = torch.load(out / "lr.pt", map_location="cpu", weights_only=True)
    assert images.dtype == torch.float32 and images.shape == (30, 3, 8, 8)
    assert labels.dtype == torch.int64 and labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert lr.dim() == 0 and float(lr) == pytest.approx(0.0123)

    back = read_ddranking_export(str(out))
    order = np.argsort(syn.labels, kind="stable")
    assert np.array_equal(back.images, syn.images[order])          # CIFAR-10 stats already DD-Ranking's
    assert np.array_equal(back.labels, syn.labels[order])
    assert back.soft_logits is None and back.lr == pytest.approx(0.0123, rel=1e-7)
    assert back.meta["ddranking_dataset"] == "CIFAR10" and back.meta["use_zca"] is False
    assert back.meta["converted"] is None
    # the recorded order maps every exported image back to its place in the store
    assert np.array_equal(back.images, syn.images[np.asarray(back.meta["store_order"])])


def test_soft_set_from_a_real_store_round_trips(tmp_path):
    k, ipc = 100, 2
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(k), size=k * ipc).astype(np.float32)
    probs[0, :50] = 0.0                                                 # exact zeros survive as ~0
    probs[0] /= probs[0].sum()
    syn0 = shuffled_set(k=k, ipc=ipc, side=4, soft_labels=probs)
    url = str(tmp_path / "synthetic.zarr")
    with open_synthetic_store(url, "a") as store:
        store.write_set({"images": syn0.images, "labels": syn0.labels, "soft_labels": probs, "lr": np.float32(0.02)},
                        {"dataset": {"name": "cifar100"}}, normalizer_state=TESLA_CIFAR100_NORM)
    syn = open_synthetic_store(url).read_set()

    export_ddranking(syn, str(tmp_path / "dd"))
    back = read_ddranking_export(str(tmp_path / "dd"))
    order = np.asarray(back.meta["store_order"])
    assert np.array_equal(order, np.argsort(syn0.labels, kind="stable"))
    assert back.meta["ddranking_dataset"] == "CIFAR100" and back.meta["labels"] == "soft-logits"

    # soft labels: softmax of the logits is the stored distribution, at T = 1 and tempered
    soft = torch.softmax(torch.from_numpy(back.soft_logits), dim=1).numpy()
    assert np.allclose(soft, probs[order], atol=1e-6)
    tempered = torch.softmax(torch.from_numpy(back.soft_logits) / 2.0, dim=1).numpy()
    want = np.sqrt(probs[order]) / np.sqrt(probs[order]).sum(axis=1, keepdims=True)
    assert np.allclose(tempered, want, atol=1e-6)

    # images: DD-Ranking normalises CIFAR-100 with CIFAR-10's statistics; undo both to compare
    dd_mean, dd_std = (np.asarray(s, dtype=np.float64).reshape(1, 3, 1, 1) for s in CIFAR_STATS)
    t_mean, t_std = (np.asarray(TESLA_CIFAR100_NORM[k], dtype=np.float64).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    pixels_back = back.images.astype(np.float64) * dd_std + dd_mean
    pixels = syn0.images[order].astype(np.float64) * t_std + t_mean
    assert np.allclose(pixels_back, pixels, atol=1e-5)
    assert not np.allclose(back.images, syn0.images[order], atol=1e-3)   # it was converted
    assert back.meta["converted"]["to_mean"] == list(CIFAR_STATS[0])
    assert back.lr == pytest.approx(0.02)


def test_learned_logits_are_written_as_they_are(tmp_path):
    syn = shuffled_set(label_logits=np.random.default_rng(2).normal(size=(30, 10)).astype(np.float32),
                       soft_labels=np.full((30, 10), 0.1, np.float32))
    export_ddranking(syn, str(tmp_path / "dd"), dataset="CIFAR10")
    back = read_ddranking_export(str(tmp_path / "dd"))
    order = np.asarray(back.meta["store_order"])
    assert np.array_equal(back.soft_logits, syn.label_logits[order])


def test_zca_set_is_written_as_stored_for_use_zca(tmp_path):
    syn = shuffled_set(normalizer_state={"kind": "zca", "zca_mean": np.zeros(3 * 64, np.float32)}, lr=0.01)
    export_ddranking(syn, str(tmp_path / "dd"), dataset="cifar10")
    back = read_ddranking_export(str(tmp_path / "dd"))
    assert np.array_equal(back.images, syn.images[np.argsort(syn.labels, kind="stable")])
    assert back.meta["use_zca"] is True
    assert "use_zca=True" in (tmp_path / "dd" / "README.md").read_text()


def test_readme_names_the_evaluator_and_the_settings(tmp_path):
    export_ddranking(shuffled_set(k=10, lr=0.01, soft_labels=np.full((30, 10), 0.1, np.float32)),
                     str(tmp_path / "soft"), dataset="CIFAR10")
    text = (tmp_path / "soft" / "README.md").read_text()
    assert "LabelRobustScoreSoft" in text and 'dataset="CIFAR10"' in text and "ipc=3" in text
    assert "soft_labels=labels, syn_lr=lr" in text and "teacher_model" in text
    assert '"cutout": 0.5' in text          # the DSA keys ddranking 0.2.0 reads
    compile(text.split("```python")[1].split("```")[0], "README.md", "exec")   # the snippet is Python
    export_ddranking(shuffled_set(k=10), str(tmp_path / "hard"), dataset="CIFAR10")
    text = (tmp_path / "hard" / "README.md").read_text()
    assert "LabelRobustScoreHard" in text and "lr = None" in text
    compile(text.split("```python")[1].split("```")[0], "README.md", "exec")


def test_set_without_a_ddranking_dataset_still_exports(tmp_path):
    syn = shuffled_set(attrs={"dataset": {"name": "demo"}}, lr=0.01)
    export_ddranking(syn, str(tmp_path / "dd"))
    back = read_ddranking_export(str(tmp_path / "dd"))
    assert back.meta["ddranking_dataset"] is None
    assert "no dataset matching" in (tmp_path / "dd" / "README.md").read_text()


def test_a_stale_lr_is_removed(tmp_path):
    out = str(tmp_path / "dd")
    export_ddranking(shuffled_set(lr=0.5), out, dataset="CIFAR10")
    export_ddranking(shuffled_set(lr=None), out, dataset="CIFAR10")
    assert not os.path.exists(os.path.join(out, "lr.pt"))
    assert read_ddranking_export(out).lr is None


@pytest.mark.parametrize("make,kwargs,match", [
    (lambda: SyntheticSet(images=np.zeros((5, 3, 4, 4), np.float32), labels=np.array([0, 0, 1, 1, 1])), {},
     "same number of images"),
    (lambda: shuffled_set(), {"dataset": "mnist"}, "no DD-Ranking counterpart"),
    (lambda: shuffled_set(k=4), {"dataset": "CIFAR10"}, "10"),
])
def test_refusals_write_nothing(tmp_path, make, kwargs, match):
    out = tmp_path / "dd"
    with pytest.raises(StoreError, match=match):
        export_ddranking(make(), str(out), **kwargs)
    assert not out.exists()


def test_read_back_refuses_damaged_folders(tmp_path):
    out = tmp_path / "dd"
    export_ddranking(shuffled_set(lr=0.1), str(out), dataset="CIFAR10")
    meta = json.loads((out / "meta.json").read_text())
    torch.save(torch.zeros(30, dtype=torch.int64), out / "labels.pt")
    with pytest.raises(StoreError, match="class-sorted"):
        read_ddranking_export(str(out))
    (out / "images.pt").write_bytes(b"not a tensor")
    with pytest.raises(StoreError, match="not a tensor file"):
        read_ddranking_export(str(out))
    (out / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(StoreError, match="not a tesla DD-Ranking export"):
        read_ddranking_export(str(out))
