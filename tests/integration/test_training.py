"""Expert training and the evaluation protocol on real (embedded demo) images, on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tesla.adapters.data.demo import load_demo
from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.training import TrainingStopped, accuracy, train_and_evaluate, train_expert
from tesla.domain.config import ExpertConfig, ModelConfig

SMALL = ModelConfig(width=16, image_size=16, depth=3, num_classes=10)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def tiny(demo):
    # 20 images per class keeps the determinism/bookkeeping tests to a fraction of a second.
    return demo.subset_per_class(20, seed=0)


class Recorder:
    """Collects what the callbacks receive."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[int, torch.Tensor, float | None]] = []
        self.epochs: list[tuple] = []

    def on_snapshot(self, epoch, flat, acc) -> None:
        self.snapshots.append((epoch, flat, acc))

    def on_epoch(self, *fields) -> None:
        self.epochs.append(fields)


def test_expert_learns_on_real_images(demo) -> None:
    cfg = ExpertConfig(epochs=4, lr=0.05, momentum=0.9, batch_size=128, eval_every=1)
    rec = Recorder()
    accs = train_expert(build_model(SMALL, seed=0), demo, cfg, seed=0, device="cpu", augment=DSA(),
                        on_snapshot=rec.on_snapshot, on_epoch=rec.on_epoch)
    assert len(accs) == 5 and all(not math.isnan(a) for a in accs)
    assert accs[-1] > accs[0] and accs[-1] > 20.0  # chance is 10%
    assert rec.epochs[-1][2] < rec.epochs[0][2]  # training loss falls


def test_snapshots_and_epoch_fields(tiny) -> None:
    model = build_model(SMALL, seed=1)
    num_params = FlatView(model).num_params
    cfg = ExpertConfig(epochs=3, lr=0.01, batch_size=64, eval_every=2)
    rec = Recorder()
    accs = train_expert(model, tiny, cfg, seed=1, device="cpu", on_snapshot=rec.on_snapshot, on_epoch=rec.on_epoch)
    assert [e for e, _, _ in rec.snapshots] == [0, 1, 2, 3]
    for _, flat, _ in rec.snapshots:
        assert flat.shape == (num_params,) and flat.dtype == torch.float32 and flat.device.type == "cpu"
    assert [a is None for _, _, a in rec.snapshots] == [False, True, False, False]
    assert math.isnan(accs[1]) and accs[3] == rec.snapshots[3][2]
    assert [f[:2] for f in rec.epochs] == [(1, 3), (2, 3), (3, 3)]
    epoch, epochs, loss, train_acc, test_acc, seconds = rec.epochs[-1]
    assert loss > 0 and 0 <= train_acc <= 100 and test_acc == accs[3] and seconds >= 0
    # The last snapshot is the trained model itself.
    assert torch.equal(rec.snapshots[-1][1], FlatView(model).flatten())


def _trajectory(data, seed: int) -> list[torch.Tensor]:
    rec = Recorder()
    cfg = ExpertConfig(epochs=2, lr=0.01, batch_size=50, eval_every=0)
    train_expert(build_model(SMALL, seed=seed), data, cfg, seed=seed, device="cpu", augment=DSA(),
                 on_snapshot=rec.on_snapshot)
    return [flat for _, flat, _ in rec.snapshots]


def test_expert_is_deterministic_for_a_seed(tiny) -> None:
    a, b = _trajectory(tiny, 3), _trajectory(tiny, 3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    c = _trajectory(tiny, 4)
    assert not torch.equal(a[-1], c[-1])


def test_should_stop_raises_between_epochs(tiny) -> None:
    rec = Recorder()
    calls = iter([False, True])
    cfg = ExpertConfig(epochs=5, lr=0.01, batch_size=64, eval_every=0)
    with pytest.raises(TrainingStopped) as info:
        train_expert(build_model(SMALL, seed=0), tiny, cfg, seed=0, device="cpu",
                     on_snapshot=rec.on_snapshot, should_stop=lambda: next(calls))
    assert info.value.epoch == 1 and [e for e, _, _ in rec.snapshots] == [0, 1]


class AlwaysClass(nn.Module):
    """A fake classifier that predicts one class for every image."""

    def __init__(self, c: int, k: int = 10) -> None:
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((x.shape[0],), self.c), self.k).float()


def test_accuracy_counts_correct_predictions(demo) -> None:
    model = AlwaysClass(2)
    model.train()
    acc = accuracy(model, demo.test_batches(100), "cpu")
    assert acc == pytest.approx(100.0 * float((demo.test_y == 2).float().mean()))
    assert model.training  # mode restored


def test_train_and_evaluate_with_soft_labels(demo) -> None:
    sub = demo.subset_per_class(20, seed=0)
    probs = torch.full((sub.num_train, 10), 0.02)
    probs[torch.arange(sub.num_train), sub.train_y] = 0.82
    acc = train_and_evaluate(build_model(SMALL, seed=0), sub.train_x, probs, demo, epochs=30, lr=0.05,
                             batch_size=100, augment=DSA(), seed=0)
    assert 15.0 < acc <= 100.0  # chance is 10%; this reaches about 24%
    hard = train_and_evaluate(build_model(SMALL, seed=0), sub.train_x, sub.train_y, demo, epochs=2, lr=0.01, seed=0)
    assert 0.0 <= hard <= 100.0


def test_train_and_evaluate_rejects_mismatched_labels(demo) -> None:
    with pytest.raises(ValueError, match="labels"):
        train_and_evaluate(build_model(SMALL, seed=0), demo.train_x[:10], demo.train_y[:9], demo, epochs=1, lr=0.01)
