"""The evaluation service: the field's protocol and its two references.

A synthetic set is judged by training fresh, randomly initialised networks on it
(SGD momentum 0.9, weight decay 5e-4, lr = the learned lr unless given, x0.1 at half
time, DSA on every batch, cross-entropy with the stored soft or hard labels) and
measuring top-1 on the real test set: mean +- std over ``num_models`` networks, for
each architecture asked for. Every result can be shown beside its references, trained
with the same protocol: ``random-real`` (random real images at the same IPC, hard
labels) and ``full-real`` (the whole training set).

The networks are trained through the :class:`~tesla.domain.ports.EvaluationTraining`
port; this module decides what is trained (architectures, seeds, lr, epochs, the
references' images) and turns accuracies into scores and events.
"""

from __future__ import annotations

import statistics
from typing import Callable, Optional

import attrs

from tesla.domain import events
from tesla.domain.config import ConfigError, EvalConfig, ExpertConfig, ModelConfig, from_dict
from tesla.domain.data import recorded_data_config
from tesla.domain.ports import (Cancel, EvaluationTraining, EventSink, Images, Labels, LoadData, NullSink, ReadSet,
                                RealData, StoredSet)

REAL_LR = 0.01  # the references' student lr (DC-bench), when the config does not set one
RANDOM_REAL_SEED = 7919  # class c of the random-real reference is drawn with seed * 7919 + c


@attrs.frozen
class Score:
    model: str
    subject: str
    mean: float
    std: float
    accuracies: tuple

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"


def score(model: str, subject: str, accs: list[float]) -> Score:
    """Mean and sample standard deviation (0 for one network) of top-1 accuracies."""
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return Score(model=model, subject=subject, mean=statistics.fmean(accs), std=std, accuracies=tuple(accs))


def arch_config(base: ModelConfig, arch: str) -> ModelConfig:
    """The evaluation model ``arch`` at ``base``'s input shape and classes."""
    if arch == base.arch:
        return base
    return attrs.evolve(base, arch=arch, norm="instancenorm" if arch != "vit" else base.norm)


def student_lr(learned_lr: Optional[float], cfg: EvalConfig) -> float:
    """The lr the networks train with: ``cfg.lr`` when given, else the set's learned lr."""
    if cfg.lr is not None:
        return cfg.lr
    if learned_lr is None:
        raise ConfigError("no student lr: the set has no learned lr, pass --lr")
    return float(learned_lr)


def _emit(sink: EventSink, s: Score, iteration: Optional[int]) -> None:
    sink.emit(events.Evaluation(model=s.model, subject=s.subject, mean=s.mean, std=s.std, n=len(s.accuracies),
                                iteration=iteration, accuracies=s.accuracies))


def train_many(images: Images, labels: Labels, data: RealData, *, model_cfg: ModelConfig, cfg: EvalConfig,
               lr: float, subject: str, training: EvaluationTraining, epochs: Optional[int] = None,
               sink: Optional[EventSink] = None, iteration: Optional[int] = None) -> list[Score]:
    """Train ``cfg.num_models`` fresh networks (seeds ``cfg.seed + i``) per architecture
    on (images, labels); one score and one Evaluation event per architecture."""
    sink = sink or NullSink()
    seeds = [cfg.seed + i for i in range(cfg.num_models)]
    scores = []
    for arch in cfg.models:
        mcfg = arch_config(model_cfg, arch)
        accs = training.train_on(mcfg, images, labels, data, seeds=seeds, epochs=epochs or cfg.epochs, lr=lr,
                                 cfg=cfg)
        scores.append(score(mcfg.name, subject, list(accs)))
        _emit(sink, scores[-1], iteration)
    return scores


def evaluate_set(images: Images, labels: Labels, learned_lr: Optional[float], data: RealData, *,
                 model_cfg: ModelConfig, cfg: EvalConfig, training: EvaluationTraining, ipc: Optional[int] = None,
                 random_real: bool = True, full_real: bool = False, full_epochs: Optional[int] = None,
                 sink: Optional[EventSink] = None, iteration: Optional[int] = None) -> list[Score]:
    """Scores of a synthetic set and, optionally, of its references.

    Args:
        images, labels: the set; labels are ids (N,) or probabilities (N, K).
        learned_lr: the set's learned lr (used unless ``cfg.lr`` is set).
        ipc: images per class of the random-real reference (default: N / classes).
    """
    lr = student_lr(learned_lr, cfg)
    scores = train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=lr, subject="synthetic",
                        training=training, sink=sink, iteration=iteration)
    if random_real:
        ipc = ipc or training.count(images) // data.num_classes
        scores += random_real_scores(data, ipc, model_cfg=model_cfg, cfg=cfg, training=training, sink=sink,
                                     iteration=iteration)
    if full_real:
        scores += full_real_scores(data, model_cfg=model_cfg, cfg=cfg, training=training, epochs=full_epochs,
                                   sink=sink)
    return scores


def random_real_scores(data: RealData, ipc: int, *, model_cfg: ModelConfig, cfg: EvalConfig,
                       training: EvaluationTraining, sink: Optional[EventSink] = None,
                       iteration: Optional[int] = None) -> list[Score]:
    """Random real images at the same IPC, hard labels, the same protocol (lr ``cfg.lr``
    or :data:`REAL_LR`)."""
    seeds = [cfg.seed * RANDOM_REAL_SEED + c for c in range(data.num_classes)]
    images, labels = training.random_real(data, ipc, seeds)
    return train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=cfg.lr or REAL_LR,
                      subject="random-real", training=training, sink=sink, iteration=iteration)


def full_real_recipe(cfg: EvalConfig, epochs: Optional[int] = None) -> ExpertConfig:
    """The full-real reference's training: ``epochs`` (default cfg.epochs // 10, at least
    1), SGD with the protocol's momentum and weight decay, DSA, a constant lr."""
    return ExpertConfig(epochs=epochs or max(1, cfg.epochs // 10), lr=cfg.lr or REAL_LR, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, dsa=cfg.dsa, seed=cfg.seed,
                        eval_every=0)


def full_real_scores(data: RealData, *, model_cfg: ModelConfig, cfg: EvalConfig, training: EvaluationTraining,
                     epochs: Optional[int] = None, sink: Optional[EventSink] = None) -> list[Score]:
    """The whole real training set (see :func:`full_real_recipe`); the training port
    streams its batches, so an on-disk prepared set (ImageNet) works as well as an
    in-memory one."""
    sink = sink or NullSink()
    recipe = full_real_recipe(cfg, epochs)
    scores = []
    for arch in cfg.models:
        mcfg = arch_config(model_cfg, arch)
        accs = [training.train_on_real(mcfg, data, recipe, cfg.seed + i) for i in range(cfg.num_models)]
        scores.append(score(mcfg.name, "full-real", accs))
        _emit(sink, scores[-1], None)
    return scores


# --- a stored set: request -> prepared job -------------------------------------------------


@attrs.frozen
class EvaluateRequest:
    """``tesla evaluate``: a stored set, the protocol, which references, data overrides."""

    synthetic: str
    cfg: EvalConfig
    hard: bool = False
    random_real: bool = True
    full_real: bool = False
    full_epochs: Optional[int] = None
    dataset: Optional[str] = None
    data: Optional[str] = None


@attrs.frozen
class EvaluatePorts:
    read_set: ReadSet
    load_data: LoadData
    training: EvaluationTraining


@attrs.frozen
class PreparedEvaluation:
    job: Callable[[EventSink, Cancel], list[Score]]
    set: StoredSet


def prepare_evaluation(req: EvaluateRequest, ports: EvaluatePorts) -> PreparedEvaluation:
    """Read the set and open its data (every refusal before any training)."""
    if req.full_epochs is not None and (isinstance(req.full_epochs, bool) or not isinstance(req.full_epochs, int)
                                        or req.full_epochs < 1):
        raise ConfigError(f"--full-epochs must be an integer >= 1 (got {req.full_epochs!r})")
    syn = ports.read_set(req.synthetic)
    if "model" not in syn.attrs:
        raise ConfigError(f"{req.synthetic} records no model: it was not written by `tesla distill`")
    model_cfg = from_dict(ModelConfig, syn.attrs["model"])
    data = ports.load_data(recorded_data_config(syn.attrs.get("dataset", {}), req.dataset, req.data))
    images = syn.images
    labels = syn.labels if req.hard or syn.soft_labels is None else syn.soft_labels

    def job(sink: EventSink, cancel: Cancel) -> list[Score]:
        return evaluate_set(images, labels, syn.lr, data, model_cfg=model_cfg, cfg=req.cfg, training=ports.training,
                            ipc=syn.ipc, random_real=req.random_real, full_real=req.full_real,
                            full_epochs=req.full_epochs, sink=sink)

    return PreparedEvaluation(job=job, set=syn)

