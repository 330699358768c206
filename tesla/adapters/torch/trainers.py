"""The training ports on torch: experts, evaluation networks and relabel students.

:class:`TorchExpertTraining` implements :class:`~tesla.domain.ports.ExpertTraining`,
:class:`TorchEvaluationTraining` :class:`~tesla.domain.ports.EvaluationTraining` and
:class:`TorchRelabelTraining` :class:`~tesla.domain.ports.RelabelTraining` (the loop of
:mod:`tesla.adapters.torch.relabel`). They are thin: they build the networks from the
model config (:func:`~tesla.adapters.torch.models.build_model`, seeded), pick
DSA from the config, and run the loops of :mod:`tesla.adapters.torch.parallel` (several
networks at once where that is faster, i.e. on CUDA; one after another on a CPU, with
the same seeds and so the same results either way) and
:mod:`tesla.adapters.torch.training`. The device is fixed when the adapter is built
(:mod:`tesla.app.bootstrap` does), so the services never see it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.parallel import train_and_evaluate_parallel, train_experts_parallel
from tesla.adapters.torch.relabel import evaluate_relabel
from tesla.adapters.torch.training import train_expert
from tesla.domain.config import EvalConfig, ExpertConfig, ModelConfig
from tesla.domain.ports import EpochFn, ModelLayout, NetworkEpochFn, SnapshotFn
from tesla.domain.relabel import RelabelConfig


def model_layout(model: ModelConfig) -> ModelLayout:
    """The flat parameter layout of ``model``'s networks (built once, on the CPU)."""
    view = FlatView(build_model(model, seed=0))
    return ModelLayout(layout=view.layout, num_params=view.num_params)


class TorchExpertTraining:
    """Experts on ``device``: a group of seeds trains together (vmap on CUDA)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def layout(self, model: ModelConfig) -> ModelLayout:
        return model_layout(model)

    def train(self, model: ModelConfig, cfg: ExpertConfig, data: Any, seeds: Sequence[int], *,
              on_snapshot: Sequence[SnapshotFn], on_epoch: Sequence[EpochFn],
              should_stop: Optional[Callable[[], bool]] = None) -> list[list[Optional[float]]]:
        return train_experts_parallel([build_model(model, seed=s) for s in seeds], data, cfg, seeds=list(seeds),
                                      device=self.device, augment=DSA() if cfg.dsa else None,
                                      on_snapshot=list(on_snapshot), on_epoch=list(on_epoch),
                                      should_stop=should_stop)


def groups(seeds: Sequence[int], size: Optional[int]) -> list[list[int]]:
    """``seeds`` in consecutive groups of ``size`` (None: one group)."""
    seeds = list(seeds)
    size = size or max(1, len(seeds))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def _shifted(on_epoch: Optional[NetworkEpochFn], first: int) -> Optional[NetworkEpochFn]:
    """``on_epoch`` for a group whose network 0 is network ``first`` of the call."""
    return None if on_epoch is None else (lambda i, e: on_epoch(first + i, e))


class TorchEvaluationTraining:
    """Evaluation networks on ``device`` (the field's protocol), trained in groups of
    ``parallel`` seeds (all at once when None): a group is one vmapped network on CUDA,
    so the group size bounds the device memory (e.g. ResNet-18 at 64 px); with
    ``micro_batch`` each batch is computed in pieces of at most that many images (the
    same gradient to rounding; not for networks with batch norm) and tested in chunks
    of at most that many, so activation memory is bounded by it."""

    def __init__(self, device: torch.device | str = "cpu", parallel: Optional[int] = None,
                 micro_batch: Optional[int] = None) -> None:
        self.device = device
        self.parallel = parallel
        self.micro_batch = micro_batch

    def train_on(self, model: ModelConfig, images: torch.Tensor, labels: torch.Tensor, data: Any, *,
                 seeds: Sequence[int], epochs: int, lr: float, cfg: EvalConfig,
                 on_epoch: Optional[NetworkEpochFn] = None) -> list[float]:
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)  # stored arrays or tensors
        accs: list[float] = []
        for group in groups(seeds, self.parallel):
            accs += train_and_evaluate_parallel([build_model(model, seed=s) for s in group], images, labels, data,
                                                epochs=epochs, lr=lr, momentum=cfg.momentum,
                                                weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                                                augment=DSA() if cfg.dsa else None, seeds=group, device=self.device,
                                                on_epoch=_shifted(on_epoch, len(accs)), micro_batch=self.micro_batch)
        return accs

    def train_on_real(self, model: ModelConfig, data: Any, recipe: ExpertConfig, seed: int,
                      on_epoch: Optional[NetworkEpochFn] = None) -> float:
        net = build_model(model, seed=seed)
        history = train_expert(net, data, recipe, seed=seed, device=self.device,
                               augment=DSA() if recipe.dsa else None,
                               on_epoch=None if on_epoch is None else (lambda epoch, *_: on_epoch(0, epoch)))
        return history[-1]

    def random_real(self, data: Any, ipc: int, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.cat([data.sample_class(c, ipc, seed=seeds[c]) for c in range(data.num_classes)])
        labels = torch.arange(data.num_classes).repeat_interleave(ipc)
        return images, labels

    def count(self, images: Any) -> int:
        return int(images.shape[0])


class TorchRelabelTraining:
    """Students of the teacher-relabel protocol on ``device``, one after another (the
    teacher's forward on every augmented batch dominates; there is nothing to stack)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def train_relabel(self, model: ModelConfig, images: Any, teacher: Any, data: Any, *, seeds: Sequence[int],
                      cfg: RelabelConfig, on_epoch: Optional[NetworkEpochFn] = None) -> list[float]:
        return evaluate_relabel(lambda s: build_model(model, seed=s), torch.as_tensor(images), teacher, data, cfg,
                                seeds=list(seeds), device=self.device, on_epoch=on_epoch)
