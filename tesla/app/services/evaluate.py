"""The evaluation service: the field's protocol (NOTES §8) and its two references.

A synthetic set is judged by training fresh, randomly initialised networks on it
(SGD momentum 0.9, weight decay 5e-4, lr = the learned lr unless given, x0.1 at half
time, DSA on every batch, cross-entropy with the stored soft or hard labels) and
measuring top-1 on the real test set: mean +- std over ``num_models`` networks, for
each architecture asked for. Every result can be shown beside its references, trained
with the same protocol: ``random-real`` (random real images at the same IPC, hard
labels) and ``full-real`` (the whole training set).
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

import attrs
import torch

from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.parallel import train_and_evaluate_parallel
from tesla.domain import events
from tesla.domain.config import EvalConfig, ModelConfig
from tesla.domain.ports import EventSink, NullSink

REAL_LR = 0.01  # the references' student lr (DC-bench), when the config does not set one


@attrs.frozen
class Score:
    model: str
    subject: str
    mean: float
    std: float
    accuracies: tuple

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"


def _score(model: str, subject: str, accs: list[float]) -> Score:
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return Score(model=model, subject=subject, mean=statistics.fmean(accs), std=std, accuracies=tuple(accs))


def arch_config(base: ModelConfig, arch: str) -> ModelConfig:
    """The evaluation model ``arch`` at ``base``'s input shape and classes."""
    if arch == base.arch:
        return base
    return attrs.evolve(base, arch=arch, norm="instancenorm" if arch != "vit" else base.norm)


def train_many(images: torch.Tensor, labels: torch.Tensor, data: Any, *, model_cfg: ModelConfig, cfg: EvalConfig,
               lr: float, subject: str, epochs: Optional[int] = None, device: Any = "cpu",
               sink: EventSink | None = None, iteration: Optional[int] = None) -> list[Score]:
    """Train ``cfg.num_models`` fresh networks per architecture on (images, labels)."""
    sink = sink or NullSink()
    from tesla.adapters.torch.augment import DSA

    augment = DSA() if cfg.dsa else None
    scores = []
    for arch in cfg.models:
        mcfg = arch_config(model_cfg, arch)
        seeds = [cfg.seed + i for i in range(cfg.num_models)]
        # several networks at once (vmap) where that is faster (CUDA); one after another on
        # a CPU, with the same seeds and so the same results either way
        accs = train_and_evaluate_parallel([build_model(mcfg, seed=s) for s in seeds], images, labels, data,
                                           epochs=epochs or cfg.epochs, lr=lr, momentum=cfg.momentum,
                                           weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                                           augment=augment, seeds=seeds, device=device)
        score = _score(mcfg.name, subject, accs)
        sink.emit(events.Evaluation(model=score.model, subject=subject, mean=score.mean, std=score.std,
                                    n=len(accs), iteration=iteration, accuracies=score.accuracies))
        scores.append(score)
    return scores


def evaluate_set(images: torch.Tensor, labels: torch.Tensor, learned_lr: Optional[float], data: Any, *,
                 model_cfg: ModelConfig, cfg: EvalConfig, ipc: Optional[int] = None, random_real: bool = True,
                 full_real: bool = False, full_epochs: Optional[int] = None, device: Any = "cpu",
                 sink: EventSink | None = None, iteration: Optional[int] = None) -> list[Score]:
    """Scores of a synthetic set and, optionally, of its references.

    Args:
        images, labels: the set; labels are ids (N,) or probabilities (N, K).
        learned_lr: the set's learned lr (used unless ``cfg.lr`` is set).
        ipc: images per class of the random-real reference (default: N / classes).
    """
    if learned_lr is None and cfg.lr is None:
        raise ValueError("no student lr: the set has no learned lr, pass --lr")
    lr = cfg.lr if cfg.lr is not None else float(learned_lr)
    scores = train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=lr, subject="synthetic",
                        device=device, sink=sink, iteration=iteration)
    if random_real:
        scores += random_real_scores(data, ipc or images.shape[0] // data.num_classes, model_cfg=model_cfg, cfg=cfg,
                                     device=device, sink=sink, iteration=iteration)
    if full_real:
        scores += full_real_scores(data, model_cfg=model_cfg, cfg=cfg, epochs=full_epochs, device=device, sink=sink)
    return scores


def random_real_scores(data: Any, ipc: int, *, model_cfg: ModelConfig, cfg: EvalConfig, device: Any = "cpu",
                       sink: EventSink | None = None, iteration: Optional[int] = None) -> list[Score]:
    """Random real images at the same IPC, hard labels, the same protocol."""
    parts = [data.sample_class(c, ipc, seed=cfg.seed * 7919 + c) for c in range(data.num_classes)]
    images = torch.cat(parts)
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=cfg.lr or REAL_LR,
                      subject="random-real", device=device, sink=sink, iteration=iteration)


def full_real_scores(data: Any, *, model_cfg: ModelConfig, cfg: EvalConfig, epochs: Optional[int] = None,
                     device: Any = "cpu", sink: EventSink | None = None) -> list[Score]:
    """The whole real training set (``epochs`` default: cfg.epochs // 10), SGD momentum 0.9,
    weight decay 5e-4, DSA. It streams ``data.train_batches``, so an on-disk prepared set
    (ImageNet) works as well as an in-memory one; the lr is constant (no decay)."""
    from tesla.adapters.torch.training import train_expert
    from tesla.domain.config import ExpertConfig

    sink = sink or NullSink()
    from tesla.adapters.torch.augment import DSA

    train_cfg = ExpertConfig(epochs=epochs or max(1, cfg.epochs // 10), lr=cfg.lr or REAL_LR,
                             momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                             dsa=cfg.dsa, seed=cfg.seed, eval_every=0)
    scores = []
    for arch in cfg.models:
        mcfg = arch_config(model_cfg, arch)
        accs = []
        for i in range(cfg.num_models):
            net = build_model(mcfg, seed=cfg.seed + i)
            history = train_expert(net, data, train_cfg, seed=cfg.seed + i, device=device,
                                   augment=DSA() if cfg.dsa else None)
            accs.append(history[-1])
        score = _score(mcfg.name, "full-real", accs)
        sink.emit(events.Evaluation(model=score.model, subject="full-real", mean=score.mean, std=score.std,
                                    n=len(accs), accuracies=score.accuracies))
        scores.append(score)
    return scores
