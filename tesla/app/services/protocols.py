"""How evaluation networks learn from a set: the protocols, each a small value chosen once.

A protocol trains N fresh networks on (images, labels) and returns their test
accuracies; the evaluation service (:mod:`tesla.app.services.evaluate`) never asks which
one it holds. :class:`MTTProtocol` is the MTT/TESLA protocol (SGD on the stored labels,
DSA, lr x0.1 at half time), :class:`RelabelProtocol` the teacher-relabel protocol of
SRe2L, RDED and DD-Ranking (:mod:`tesla.domain.relabel`), and :class:`FullRealProtocol`
the whole real training set with hard labels. Each can switch its augmentation off (or
on) for DD-Ranking's augmentation score, and says what it did as plain JSON.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import attrs

from tesla.domain.config import ConfigError, EvalConfig, ExpertConfig, ModelConfig, to_dict
from tesla.domain.ports import EvaluationTraining, Images, Labels, NetworkEpochFn, RealData, RelabelTraining
from tesla.domain.relabel import RelabelConfig

REAL_LR = 0.01  # the references' student lr (DC-bench), when the config does not set one


def student_lr(learned_lr: Optional[float], cfg: EvalConfig) -> float:
    """The lr the networks train with: ``cfg.lr`` when given, else the set's learned lr."""
    if cfg.lr is not None:
        return cfg.lr
    if learned_lr is None:
        raise ConfigError("no student lr: the set has no learned lr, pass --lr")
    return float(learned_lr)


# --- protocols: how N fresh networks learn from (images, labels) -------------------------------


class EvalProtocol(Protocol):
    """How networks are trained on a set; chosen once, asked nothing about itself."""

    name: str

    @property
    def epochs(self) -> int:
        """Epochs each network trains (what progress counts)."""

    @property
    def augments(self) -> bool:
        """Whether the batches are augmented."""

    def lr(self, learned_lr: Optional[float], *, real: bool) -> float:
        """The lr of the set's networks (``real``: of a reference's)."""

    def labels_used(self, stored: str) -> str:
        """What the networks learn from, given the stored label kind."""

    def train(self, model: ModelConfig, images: Images, labels: Labels, data: RealData, *, seeds: list[int],
              lr: float, on_epoch: NetworkEpochFn) -> list[float]:
        """One fresh network per seed; their test accuracies (%)."""

    def with_augmentation(self, on: bool) -> "EvalProtocol":
        """The same protocol with its augmentation on or off."""

    def settings(self) -> dict:
        """Plain JSON of what was done (for events, the store and ``--json``)."""


@attrs.frozen
class MTTProtocol:
    """SGD on the stored labels with DSA, lr x0.1 at half time (``cfg``)."""

    cfg: EvalConfig
    training: EvaluationTraining
    name: str = "mtt"

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def augments(self) -> bool:
        return self.cfg.dsa

    def lr(self, learned_lr: Optional[float], *, real: bool) -> float:
        return (self.cfg.lr or REAL_LR) if real else student_lr(learned_lr, self.cfg)

    def labels_used(self, stored: str) -> str:
        return stored

    def train(self, model: ModelConfig, images: Images, labels: Labels, data: RealData, *, seeds: list[int],
              lr: float, on_epoch: NetworkEpochFn) -> list[float]:
        return list(self.training.train_on(model, images, labels, data, seeds=seeds, epochs=self.cfg.epochs, lr=lr,
                                           cfg=self.cfg, on_epoch=on_epoch))

    def with_augmentation(self, on: bool) -> "MTTProtocol":
        return attrs.evolve(self, cfg=attrs.evolve(self.cfg, dsa=on))

    def settings(self) -> dict:
        return {"name": self.name, **to_dict(self.cfg)}


@attrs.frozen
class RelabelProtocol:
    """A fixed teacher relabels every augmented batch; AdamW on the KL (``cfg``)."""

    cfg: RelabelConfig
    teacher: Any
    training: RelabelTraining
    teacher_facts: dict = attrs.field(factory=dict)
    name: str = "relabel"

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def augments(self) -> bool:
        return self.cfg.augments

    def lr(self, learned_lr: Optional[float], *, real: bool) -> float:
        return self.cfg.lr  # AdamW's, for the set and its references alike; a learned SGD lr does not apply

    def labels_used(self, stored: str) -> str:
        return "teacher"

    def train(self, model: ModelConfig, images: Images, labels: Labels, data: RealData, *, seeds: list[int],
              lr: float, on_epoch: NetworkEpochFn) -> list[float]:
        return list(self.training.train_relabel(model, images, self.teacher, data, seeds=seeds, cfg=self.cfg,
                                                on_epoch=on_epoch))

    def with_augmentation(self, on: bool) -> "RelabelProtocol":
        if not on:
            return attrs.evolve(self, cfg=self.cfg.without_augmentation())
        if self.cfg.augments:
            return self
        return attrs.evolve(self, cfg=attrs.evolve(self.cfg, crop=True, flip=True, cutmix=True))

    def settings(self) -> dict:
        return {"name": self.name, **to_dict(self.cfg), "teacher": dict(self.teacher_facts)}


@attrs.frozen
class FullRealProtocol:
    """The whole real training set with hard labels (``recipe``: SGD, DSA, constant lr);
    the images and labels it is handed are ignored."""

    recipe: ExpertConfig
    training: EvaluationTraining
    name: str = "mtt"

    @property
    def epochs(self) -> int:
        return self.recipe.epochs

    @property
    def augments(self) -> bool:
        return self.recipe.dsa

    def lr(self, learned_lr: Optional[float], *, real: bool) -> float:
        return self.recipe.lr

    def labels_used(self, stored: str) -> str:
        return "hard"

    def train(self, model: ModelConfig, images: Images, labels: Labels, data: RealData, *, seeds: list[int],
              lr: float, on_epoch: NetworkEpochFn) -> list[float]:
        def one(i: int) -> NetworkEpochFn:
            return lambda _net, epoch: on_epoch(i, epoch)

        return [self.training.train_on_real(model, data, self.recipe, s, on_epoch=one(i)) for i, s in enumerate(seeds)]

    def with_augmentation(self, on: bool) -> "FullRealProtocol":
        return attrs.evolve(self, recipe=attrs.evolve(self.recipe, dsa=on))

    def settings(self) -> dict:
        return {"name": self.name, "full_real": to_dict(self.recipe)}


def full_real_recipe(cfg: EvalConfig, epochs: Optional[int] = None) -> ExpertConfig:
    """The full-real reference's training: ``epochs`` (default cfg.epochs // 10, at least
    1), SGD with the protocol's momentum and weight decay, DSA, a constant lr."""
    return ExpertConfig(epochs=epochs or max(1, cfg.epochs // 10), lr=cfg.lr or REAL_LR, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, dsa=cfg.dsa, seed=cfg.seed,
                        eval_every=0)


def real_teacher_recipe(epochs: int, seed: int) -> ExpertConfig:
    """A real-data teacher's training: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch
    256, DSA (DC-bench's full-data recipe), ``epochs`` epochs."""
    return ExpertConfig(epochs=epochs, lr=REAL_LR, momentum=0.9, weight_decay=5e-4, batch_size=256, dsa=True,
                        seed=seed, eval_every=0)
