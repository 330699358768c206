"""The teacher-relabel evaluation protocol: a student trained on teacher outputs per batch.

SRe2L, RDED and DD-Ranking's soft-label mode ``M`` judge a set by training a fresh
student on its images while a fixed teacher *relabels every augmented batch*: the batch
is cropped, flipped and CutMixed, the teacher sees exactly that augmented batch, and the
student is trained to match the teacher's softmax at temperature ``T``::

    x_aug   = cutmix(flip(random_resized_crop(x)))                 (B, C, H, W)
    target  = softmax(teacher(x_aug) / T)                          (B, K), no gradient
    loss    = KL(target || softmax(student(x_aug) / T))  [* T**2]   batch mean

Stored labels are not used at all (the teacher replaces them), so the same routine
evaluates a distilled set and its random-real reference. The settings and their sources
are in :mod:`tesla.domain.relabel`.

Augmentation is kornia's (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomCutMixV2``). Kornia draws its parameters from torch's global RNG; here they are
drawn with :meth:`RelabelAugment.sample` inside ``torch.random.fork_rng`` seeded per step
(the global state is restored afterwards), on the CPU, and then applied with
:meth:`RelabelAugment.apply`, a deterministic function of ``(x, params)``: the same seed
gives the same augmented batch on any run, and a test can replay exactly what the
teacher saw.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import attrs
import torch
import torch.nn.functional as F
from kornia.augmentation import RandomCutMixV2, RandomHorizontalFlip, RandomResizedCrop
from torch import nn

from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.training import EVAL_BATCH, _generator, accuracy, derive_seed
from tesla.domain.relabel import RelabelConfig, lr_factor

StepFn = Callable[[int, int, float], None]


class Teacher(Protocol):
    """Anything mapping images (B, C, H, W) in model space to logits (B, K)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def snapshot_teacher(model: nn.Module, flat: torch.Tensor) -> Teacher:
    """A teacher from a trajectory snapshot: ``model``'s architecture with parameters ``flat`` (P,).

    The module runs through :class:`FlatView` in its current mode (instance norm has no
    running statistics; batch norm uses batch statistics, as the trajectory code does).
    """
    view = FlatView(model)
    weights = flat.detach()

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return view(weights.to(device=x.device, dtype=x.dtype), x)

    return teacher


def module_teacher(model: nn.Module) -> Teacher:
    """A teacher from a trained module (e.g. a network trained on the real data), in eval mode."""
    model.eval()

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return teacher


@attrs.frozen(eq=False)
class AugmentParams:
    """One step's augmentation choices: kornia's parameter dicts, or None where an op is off.

    ``cutmix["mix_pairs"]`` (1, B) is the partner of each image, ``cutmix["crop_src"]``
    (1, B, 4, 2) the pasted box's corners (x, y).
    """

    crop: Optional[dict]
    flip: Optional[dict]
    cutmix: Optional[dict]


class RelabelAugment:
    """Crop, flip and CutMix of the relabel protocol, with explicit, replayable parameters.

    Args:
        cfg: which ops are on and their ranges.
        size: (H, W) of the images (crops are resized back to it).
    """

    def __init__(self, cfg: RelabelConfig, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.crop = (RandomResizedCrop(self.size, scale=cfg.crop_scale, ratio=(3.0 / 4.0, 4.0 / 3.0))
                     if cfg.crop else None)
        self.flip = RandomHorizontalFlip(p=0.5) if cfg.flip else None
        self.cutmix = (RandomCutMixV2(beta=cfg.cutmix_beta, use_correct_lambda=True, data_keys=["input"])
                       if cfg.cutmix else None)

    def sample(self, shape: tuple[int, ...], seed: int) -> AugmentParams:
        """Draw every op's parameters for a batch of ``shape`` (B, C, H, W) from ``seed``.

        Drawn on the CPU inside ``fork_rng``: the global RNG is untouched afterwards.
        """
        shape = torch.Size(shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            crop = self.crop.forward_parameters(shape) if self.crop is not None else None
            flip = self.flip.forward_parameters(shape) if self.flip is not None else None
            cutmix = self.cutmix.forward_parameters(shape) if self.cutmix is not None else None
        return AugmentParams(crop=crop, flip=flip, cutmix=cutmix)

    @staticmethod
    def _on(params: dict, device: torch.device) -> dict:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in params.items()}

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """The augmented batch: a deterministic function of ``x`` (B, C, H, W) and ``params``."""
        if params.crop is not None:
            x = self.crop(x, params=self._on(params.crop, x.device))
        if params.flip is not None:
            x = self.flip(x, params=self._on(params.flip, x.device))
        if params.cutmix is not None:
            x = self.cutmix(x, params=self._on(params.cutmix, x.device))
        return x

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return self.apply(x, self.sample(tuple(x.shape), seed))


def relabel_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 scale_loss: bool = False) -> torch.Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` averaged over the batch, ``* T**2`` if asked.

    Shape:
        - student_logits, teacher_logits: :math:`(B, K)`; the teacher's carry no gradient.
        - output: scalar.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    loss = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return loss * (temperature ** 2) if scale_loss else loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Conv/linear weights (dim > 1) decayed, everything else (biases, norms) not: the
    grouping of SRe2L's and RDED's ``get_parameters``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if name.endswith("weight") and p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_relabel(
    model: nn.Module,
    images: torch.Tensor,
    teacher: Teacher,
    data: Any,
    cfg: RelabelConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Optional[StepFn] = None,
    on_epoch: Optional[Callable[[int], None]] = None,
) -> float:
    """Train a fresh ``model`` on ``images`` relabelled by ``teacher``; return its test accuracy.

    Every step draws a batch (order seeded per epoch), augments it (parameters seeded per
    step), asks the teacher for logits on the *augmented* batch without gradient, and takes
    an AdamW step on :func:`relabel_loss`; the lr follows ``cfg.schedule`` per epoch.

    Args:
        model: a freshly initialised student; moved to ``device`` and left in train mode
            while training.
        images: (N, C, H, W) in model space (detached, copied); labels are not needed.
        teacher: (B, C, H, W) -> (B, K) logits on ``device``.
        data: supplies ``test_batches`` (the real test set).
        cfg: the protocol's settings.
        seed: batch order and augmentation.
        device: where to train.
        on_step: ``on_step(epoch, step, loss)`` after every optimiser step.
        on_epoch: ``on_epoch(epoch)`` after every epoch (1-based), for progress.

    Returns:
        Top-1 accuracy (%) on ``data.test_batches`` after the last epoch.

    Raises:
        ValueError: ``images`` is not (N, C, H, W) or is empty.
        FloatingPointError: the loss became NaN or infinite.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch (got {tuple(images.shape)})")
    model.to(device)
    x_all = images.detach().to(device, dtype=torch.float32).clone()
    n = x_all.shape[0]
    augment = RelabelAugment(cfg, size=tuple(x_all.shape[-2:]))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg.schedule, e, cfg.epochs))
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=_generator(derive_seed(seed, "batches", epoch))).to(device)
        for step, idx in enumerate(torch.split(order, min(cfg.batch_size, n))):
            x = augment(x_all[idx], derive_seed(seed, "augment", epoch, step))
            with torch.no_grad():
                target = teacher(x)
            loss = relabel_loss(model(x), target, cfg.temperature, cfg.scale_loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"relabel loss is {loss.item()} at epoch {epoch + 1}: lower the lr "
                                         f"(now {cfg.lr}) or check the teacher's outputs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(epoch, step, float(loss.detach()))
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return accuracy(model, data.test_batches(EVAL_BATCH), device)


def evaluate_relabel(
    build: Callable[[int], nn.Module],
    images: torch.Tensor,
    teacher: Teacher,
    data: Any,
    cfg: RelabelConfig,
    *,
    seeds: list[int],
    device: torch.device | str = "cpu",
    on_epoch: Optional[Callable[[int, int], None]] = None,
) -> list[float]:
    """Accuracy of one fresh student per seed: ``build(seed)`` makes each network;
    ``on_epoch(i, epoch)`` follows student i's epochs (1-based)."""
    return [train_relabel(build(s), images, teacher, data, cfg, seed=s, device=device,
                          on_epoch=None if on_epoch is None else (lambda e, i=i: on_epoch(i, e)))
            for i, s in enumerate(seeds)]
