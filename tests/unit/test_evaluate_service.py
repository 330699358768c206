"""The evaluation service on a fake training port: which networks are trained on what,
with which seeds and lr, and the scores and events that come back (no torch)."""

from __future__ import annotations

import statistics

import attrs
import pytest

from tesla.app.services.evaluate import (REAL_LR, EvaluatePorts, EvaluateRequest, arch_config, evaluate_set,
                                         full_real_recipe, prepare_evaluation)
from tesla.domain.config import ConfigError, DataConfig, EvalConfig, ModelConfig, to_dict
from tesla.domain.ports import ListSink
from tests.unit.service_fakes import FakeData, FakeEvaluationTraining, FakeLoadData, accuracy_of

MODEL = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
IMAGES = tuple(("syn", i) for i in range(20))  # a set of 2 images per class
LABELS = tuple(i // 2 for i in range(20))


def _evaluate(cfg, learned_lr=0.02, **kw):
    training, sink = FakeEvaluationTraining(), ListSink()
    scores = evaluate_set(IMAGES, LABELS, learned_lr, FakeData(), model_cfg=MODEL, cfg=cfg, training=training,
                          sink=sink, **kw)
    return scores, training, sink


def test_scores_are_mean_and_std_over_the_networks_with_one_event_each():
    cfg = EvalConfig(num_models=3, epochs=40, seed=4)
    scores, training, sink = _evaluate(cfg, random_real=False, iteration=7)
    (s,) = scores
    want = [accuracy_of("ConvNetD2", seed, 0.02) for seed in (4, 5, 6)]  # seeds cfg.seed + i
    assert (s.model, s.subject, s.accuracies) == ("ConvNetD2", "synthetic", tuple(want))
    assert s.mean == pytest.approx(statistics.fmean(want)) and s.std == pytest.approx(statistics.stdev(want))
    assert str(s) == f"{s.mean:.2f} +- {s.std:.2f}"
    assert training.calls == [("train_on", "ConvNetD2", IMAGES, LABELS, (4, 5, 6), 40, 0.02)]
    (e,) = sink.of("evaluation")
    assert (e.model, e.subject, e.n, e.iteration, e.mean, e.std) == ("ConvNetD2", "synthetic", 3, 7, s.mean, s.std)


def test_one_network_has_no_spread():
    scores, _, _ = _evaluate(EvalConfig(num_models=1), random_real=False)
    assert scores[0].std == 0.0 and len(scores[0].accuracies) == 1


def test_the_learned_lr_is_used_unless_an_lr_is_given():
    scores, training, _ = _evaluate(EvalConfig(num_models=1), learned_lr=0.03, random_real=False)
    assert training.calls[0][-1] == 0.03
    scores, training, _ = _evaluate(EvalConfig(num_models=1, lr=0.005), learned_lr=0.03, random_real=False)
    assert training.calls[0][-1] == 0.005
    with pytest.raises(ConfigError, match="no student lr"):
        _evaluate(EvalConfig(num_models=1), learned_lr=None)


def test_random_real_reference_at_the_sets_ipc_with_its_own_seeds_and_lr():
    cfg = EvalConfig(num_models=2, seed=3)
    scores, training, sink = _evaluate(cfg)
    assert [s.subject for s in scores] == ["synthetic", "random-real"]
    # ipc = 20 images / 10 classes; class c drawn with seed * 7919 + c
    assert training.calls[1] == ("random_real", 2, tuple(3 * 7919 + c for c in range(10)))
    name, model, images, labels, seeds, epochs, lr = training.calls[2]
    assert images[0] == ("real", 0, 3 * 7919, 0) and labels == tuple(c for c in range(10) for _ in range(2))
    assert seeds == (3, 4) and lr == REAL_LR  # the same networks, the references' lr
    assert scores[1].accuracies == tuple(accuracy_of("ConvNetD2", s, REAL_LR) for s in (3, 4))
    _, training, _ = _evaluate(attrs.evolve(cfg, lr=0.05), ipc=5)
    assert training.calls[1][1] == 5 and training.calls[2][-1] == 0.05  # an explicit ipc and lr win
    assert [e.subject for e in sink.of("evaluation")] == ["synthetic", "random-real"]


def test_full_real_reference_trains_each_network_on_the_whole_set():
    cfg = EvalConfig(num_models=2, epochs=300, seed=1, models=("convnet", "resnet18"))
    scores, training, sink = _evaluate(cfg, random_real=False, full_real=True)
    assert [(s.model, s.subject) for s in scores] == [("ConvNetD2", "synthetic"), ("ResNet18", "synthetic"),
                                                      ("ConvNetD2", "full-real"), ("ResNet18", "full-real")]
    real = [c for c in training.calls if c[0] == "train_on_real"]
    assert [(c[1], c[3]) for c in real] == [("ConvNetD2", 1), ("ConvNetD2", 2), ("ResNet18", 1), ("ResNet18", 2)]
    recipe = real[0][2]
    assert recipe == full_real_recipe(cfg) and recipe.epochs == 30 and recipe.lr == REAL_LR
    assert recipe.momentum == cfg.momentum and recipe.weight_decay == cfg.weight_decay and recipe.dsa
    assert scores[2].mean == pytest.approx(statistics.fmean(accuracy_of("ConvNetD2", s, REAL_LR) + 50 for s in (1, 2)))
    assert full_real_recipe(cfg, epochs=3).epochs == 3 and full_real_recipe(EvalConfig(epochs=5)).epochs == 1
    assert all(e.iteration is None for e in sink.of("evaluation") if e.subject == "full-real")


def test_other_architectures_keep_the_input_shape_and_use_instance_norm():
    res = arch_config(attrs.evolve(MODEL, norm="batchnorm"), "resnet18")
    assert (res.arch, res.norm, res.image_size, res.num_classes) == ("resnet18", "instancenorm", 16, 10)
    assert arch_config(MODEL, "convnet") is MODEL


@attrs.frozen
class StoredSetFake:
    images: tuple = IMAGES
    labels: tuple = LABELS
    soft_labels: object = ("soft",) * 20
    lr: float = 0.02
    ipc: int = 2
    labels_kind: str = "soft"
    attrs: dict = attrs.Factory(lambda: {"model": to_dict(MODEL), "dataset": {"name": "demo"}})


def _prepare(syn, **kw):
    loader = FakeLoadData(FakeData())
    training = FakeEvaluationTraining()
    ports = EvaluatePorts(read_set=lambda url: syn, load_data=loader, training=training)
    prepared = prepare_evaluation(EvaluateRequest(synthetic="run/synthetic.zarr", cfg=EvalConfig(num_models=1), **kw),
                                  ports)
    return prepared, loader, training


def test_a_stored_set_trains_on_its_soft_labels_unless_hard_is_asked():
    prepared, loader, training = _prepare(StoredSetFake(), random_real=False)
    assert loader.loaded == [DataConfig(name="demo")] and training.calls == []  # nothing trained before the job
    prepared.job(ListSink(), None)
    assert training.calls[0][3] == ("soft",) * 20
    prepared, _, training = _prepare(StoredSetFake(), random_real=False, hard=True, dataset="cifar10", data="/d")
    prepared.job(ListSink(), None)
    assert training.calls[0][3] == LABELS


def test_a_set_without_a_model_is_refused_before_the_data_is_loaded():
    with pytest.raises(ConfigError, match="records no model"):
        _prepare(StoredSetFake(attrs={}))
