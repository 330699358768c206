"""Several networks trained at once (torch.func vmap) equal the sequential loops.

Each member of :func:`train_experts_parallel` / :func:`train_and_evaluate_parallel`
must give what ``train_expert`` / ``train_and_evaluate`` give for its seed: the same
trajectory to float rounding, the same callbacks, the same accuracies. BatchNorm models
take the sequential fallback and are then identical bit for bit.
"""

import math

import pytest
import torch

from tesla.adapters.data.base import ImageSet
from tesla.adapters.data.demo import load_demo
from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.parallel import (parallel_supported, train_and_evaluate_parallel,
                                           train_experts_parallel)
from tesla.adapters.torch.training import train_and_evaluate, train_expert
from tesla.domain.config import ExpertConfig, ModelConfig

TINY = ModelConfig(width=8, image_size=16, depth=2, num_classes=10)
SEEDS = (3, 4, 5)


@pytest.fixture(scope="module")
def tiny_data():
    demo = load_demo()
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(demo.num_train, generator=g)[:120]
    te = torch.arange(100)
    return ImageSet(name="demo-tiny", num_classes=demo.num_classes, class_names=demo.class_names,
                    image_shape=demo.image_shape, normalizer=demo.normalizer, train_x=demo.train_x[tr],
                    train_y=demo.train_y[tr], test_x=demo.test_x[te], test_y=demo.test_y[te])


class Recorder:
    def __init__(self):
        self.snapshots, self.epochs = [], []

    def on_snapshot(self, epoch, flat, acc):
        self.snapshots.append((epoch, flat.clone(), acc))

    def on_epoch(self, epoch, epochs, loss, acc, test_acc, seconds):
        self.epochs.append((epoch, epochs, loss, acc, test_acc))


def _close_acc(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1.0  # one test image in 100 may flip


@pytest.mark.parametrize("cfg", [ExpertConfig(epochs=2, lr=0.05, batch_size=32, eval_every=1),
                                 ExpertConfig(epochs=2, lr=0.02, momentum=0.9, weight_decay=5e-4, batch_size=50,
                                              eval_every=2)], ids=["sgd", "momentum"])
def test_parallel_experts_equal_sequential(tiny_data, cfg):
    seq = [Recorder() for _ in SEEDS]
    seq_hist = [train_expert(build_model(TINY, seed=s), tiny_data, cfg, seed=s, augment=DSA(),
                             on_snapshot=r.on_snapshot, on_epoch=r.on_epoch) for s, r in zip(SEEDS, seq)]
    par = [Recorder() for _ in SEEDS]
    models = [build_model(TINY, seed=s) for s in SEEDS]
    par_hist = train_experts_parallel(models, tiny_data, cfg, seeds=SEEDS, augment=DSA(),
                                      on_snapshot=[r.on_snapshot for r in par], on_epoch=[r.on_epoch for r in par],
                                      mode="vmap")
    for a, b, ha, hb in zip(seq, par, seq_hist, par_hist):
        assert [e for e, _, _ in a.snapshots] == [e for e, _, _ in b.snapshots] == [0, 1, 2]
        for (_, fa, _), (_, fb, _) in zip(a.snapshots, b.snapshots):
            torch.testing.assert_close(fb, fa, rtol=1e-4, atol=1e-5)
        assert len(a.epochs) == len(b.epochs) == cfg.epochs
        for ea, eb in zip(a.epochs, b.epochs):
            assert ea[:2] == eb[:2]
            assert eb[2] == pytest.approx(ea[2], rel=1e-4)
            assert (ea[4] is None) == (eb[4] is None)
        assert all(_close_acc(x, y) for x, y in zip(ha, hb))
    # the members really are different networks, and the modules hold the trained weights
    assert not torch.allclose(par[0].snapshots[-1][1], par[1].snapshots[-1][1])
    last = torch.cat([p.detach().reshape(-1) for p in models[2].parameters()])
    torch.testing.assert_close(last, par[2].snapshots[-1][1])


def test_parallel_evaluation_equals_sequential(tiny_data):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(20, 3, 16, 16, generator=g)
    soft = torch.softmax(torch.randn(20, 10, generator=g), dim=1)
    kw = dict(epochs=3, lr=0.01, batch_size=8, augment=DSA())
    seq_models = [build_model(TINY, seed=s) for s in SEEDS]
    seq = [train_and_evaluate(m, images, soft, tiny_data, seed=s, **kw) for m, s in zip(seq_models, SEEDS)]
    par_models = [build_model(TINY, seed=s) for s in SEEDS]
    par = train_and_evaluate_parallel(par_models, images, soft, tiny_data, seeds=SEEDS, mode="vmap", **kw)
    assert all(_close_acc(a, b) for a, b in zip(seq, par))
    for a, b in zip(seq_models, par_models):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5)


def test_batchnorm_falls_back_to_sequential(tiny_data):
    bn = ModelConfig(width=8, image_size=16, depth=2, num_classes=10, norm="batchnorm")
    assert not parallel_supported(build_model(bn, seed=0))
    assert parallel_supported(build_model(TINY, seed=0))
    labels = torch.arange(10)
    images = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    seq = [build_model(bn, seed=s) for s in SEEDS[:2]]
    accs = [train_and_evaluate(m, images, labels, tiny_data, epochs=2, lr=0.01, seed=s) for m, s in zip(seq, SEEDS)]
    par = [build_model(bn, seed=s) for s in SEEDS[:2]]
    assert train_and_evaluate_parallel(par, images, labels, tiny_data, epochs=2, lr=0.01, seeds=SEEDS[:2],
                                       mode="vmap") == accs
    for a, b in zip(seq, par):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_parallel_rejects_mismatched_inputs(tiny_data):
    cfg = ExpertConfig(epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="seed"):
        train_experts_parallel([build_model(TINY, seed=0)], tiny_data, cfg, seeds=[0, 1])
    other = ModelConfig(width=4, image_size=16, depth=2, num_classes=10)
    with pytest.raises(ValueError, match="one architecture"):
        train_experts_parallel([build_model(TINY, seed=0), build_model(other, seed=1)], tiny_data, cfg, seeds=[0, 1],
                               mode="vmap")
    with pytest.raises(ValueError, match="mode"):
        train_experts_parallel([build_model(TINY, seed=0)] * 2, tiny_data, cfg, seeds=[0, 1], mode="fast")


def test_auto_mode_runs_the_sequential_loops_on_cpu(tiny_data):
    # on the CPU the vmapped path was measured slower: auto takes the loops, bit for bit
    cfg = ExpertConfig(epochs=1, lr=0.05, batch_size=64, eval_every=0)
    seq = [build_model(TINY, seed=s) for s in SEEDS[:2]]
    for m, s in zip(seq, SEEDS):
        train_expert(m, tiny_data, cfg, seed=s, augment=DSA())
    par = [build_model(TINY, seed=s) for s in SEEDS[:2]]
    train_experts_parallel(par, tiny_data, cfg, seeds=SEEDS[:2], augment=DSA())
    for a, b in zip(seq, par):
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
