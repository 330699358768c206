"""Frozen, validated run configurations.

Every knob of a run lives in one of these attrs classes. They are frozen (change them
with ``attrs.evolve``), checked on construction, and serialise to plain JSON so a run
directory can record exactly what made it. A bad value raises :class:`ConfigError`
whose message names the field, the value and what is allowed, so the CLI can print it
as one line and exit 2 before any work starts.

The domain keeps no framework imports: these classes are plain data.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import attr
import attrs


from tesla.domain.errors import ConfigError  # noqa: E402  (re-exported: tesla.domain.config.ConfigError)
from tesla.domain.memory import SET_ON_CHOICES, parse_bytes

# --- small validators that name the field -------------------------------------------
# Required fields refuse None (attrs passes whatever the caller gave, and a None that
# slipped through would fail much later, far from its cause); ``optional=True`` admits it.


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _positive_check(optional: bool, infinite: bool = False):
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or not value > 0 or (value == math.inf and not infinite):
            bound = "a number > 0" + (" (inf allowed)" if infinite else ", finite")
            raise ConfigError(f"{attr.name} must be {bound} (got {value!r})")

    return check


_positive = _positive_check(optional=False)
_positive_or_none = _positive_check(optional=True)


def _int_at_least(lo: int, *, optional: bool = False):
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{attr.name} must be an integer >= {lo} (got {value!r})")

    return check


def _non_negative(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not _is_number(value) or not 0 <= value < math.inf:
        raise ConfigError(f"{attr.name} must be a finite number >= 0 (got {value!r})")


def _fraction(*, low_open: bool, optional: bool = False):
    """A number in (0, 1] (``low_open``) or [0, 1]; None where ``optional``."""

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or not (0 < value <= 1 if low_open else 0 <= value <= 1):
            raise ConfigError(f"{attr.name} must be a number in {'(0, 1]' if low_open else '[0, 1]'} (got {value!r})")

    return check


def _decay(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and (not _is_number(value) or not 0 <= value < 1):
        raise ConfigError(f"{attr.name} must be a number in [0, 1) or None (got {value!r})")


def _non_negative_or_none(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _non_negative(inst, attr, value)


def _flag(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attr.name} must be true or false (got {value!r})")


def _text_or_none(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{attr.name} must be text (got {value!r})")


def _one_of(*choices: Any):
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{attr.name} must be one of {allowed} (got {value!r})")

    return check


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ARCHS = ("convnet", "resnet18", "vit")
DATASETS = ("cifar10", "cifar100", "demo", "imagenet64", "imagefolder", "tiny-imagenet", "prepared")
ENGINES = ("tesla", "exact", "unrolled")
LABELS = ("hard", "teacher-target", "teacher-last", "teacher-epoch", "learned", "learned-teacher")
SAMPLINGS = ("uniform", "window")


def to_dict(cfg: Any) -> dict:
    """Plain-JSON form of a config (tuples become lists)."""
    return attr.asdict(cfg, retain_collection_types=False)


def from_dict(cls: type, data: dict) -> Any:
    """Build ``cls`` from :func:`to_dict` output, refusing unknown keys by name."""
    names = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    return cls(**data)


@attrs.frozen
class ModelConfig:
    """The network: a ConvNet of the DC/MTT/TESLA family or a cross-architecture model.

    Fields:
        arch: ``convnet`` | ``resnet18`` | ``vit``.
        depth: ConvNet blocks; 3 for 32 px (CIFAR), 4 for 64 px (``ConvNetD4``).
        width: filters per conv (128 in the paper).
        norm: ``instancenorm`` (GroupNorm(C, C)), ``batchnorm``, ``layernorm``,
            ``groupnorm`` or ``none``. ResNet-18 takes instance or batch norm.
        channels, image_size: input shape (C, S, S); any square size divisible by 2**depth.
        num_classes: classifier outputs.
    """

    arch: str = attrs.field(default="convnet", validator=_one_of(*ARCHS))
    depth: int = attrs.field(default=3, validator=_int_at_least(1))
    width: int = attrs.field(default=128, validator=_int_at_least(1))
    norm: str = attrs.field(default="instancenorm", validator=_one_of(*NORMS))
    channels: int = attrs.field(default=3, validator=_int_at_least(1))
    image_size: int = attrs.field(default=32, validator=_int_at_least(1))
    num_classes: int = attrs.field(default=10, validator=_int_at_least(2))

    def __attrs_post_init__(self) -> None:
        if self.arch == "convnet" and self.image_size % (2**self.depth) != 0:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2**depth = {2**self.depth}:"
                " use depth 3 for 32 px, 4 for 64 px"
            )
        if self.arch == "resnet18" and self.norm not in ("instancenorm", "batchnorm"):
            raise ConfigError(f"norm for resnet18 must be 'instancenorm' or 'batchnorm' (got {self.norm!r})")
        if self.arch == "vit" and self.image_size % 4 != 0:
            raise ConfigError(f"image_size {self.image_size} must be divisible by the ViT patch 4")

    @property
    def name(self) -> str:
        if self.arch == "convnet":
            return "ConvNet" if self.depth == 3 else f"ConvNetD{self.depth}"
        return {"resnet18": "ResNet18", "vit": "ViT"}[self.arch]


@attrs.frozen
class DataConfig:
    """Where the real images come from.

    Fields:
        name: ``cifar10``, ``cifar100``, ``demo`` (embedded, no download), ``imagenet64``,
            ``imagefolder``, ``tiny-imagenet`` or ``prepared`` (an array store made by
            ``tesla data prepare``).
        root: folder or URL of the data; not needed for ``demo``.
        zca: ZCA-whiten (kornia, eps 0.1) after scaling to [0, 1] instead of mean/std.
        image_size: side the images are used at (resized where the source differs).
    """

    name: str = attrs.field(default="cifar10", validator=_one_of(*DATASETS))
    root: Optional[str] = attrs.field(default=None, validator=_text_or_none)
    zca: bool = attrs.field(default=False, validator=_flag)
    image_size: Optional[int] = attrs.field(default=None, validator=_int_at_least(1, optional=True))

    def __attrs_post_init__(self) -> None:
        if self.name != "demo" and not self.root:
            raise ConfigError(f"root is required for dataset {self.name!r}: pass --data PATH")


@attrs.frozen
class ExpertConfig:
    """Expert (teacher) training: the published recipe of docs/MATHS.md §4 by default.

    Fields:
        num_experts: trajectories to train.
        epochs: epochs per expert; epochs + 1 snapshots are saved (after init and each epoch).
        lr, momentum, weight_decay, batch_size: SGD on the real training set.
        dsa: DSA augmentation on every batch.
        seed: expert ``i`` uses ``seed + i``; the run is deterministic for a seed on CPU.
        eval_every: test accuracy every k epochs (0: only at the end).
        parallel: experts trained together in one process (torch.func vmap where it is
            faster, i.e. on CUDA; the same trajectories as one after another).
    """

    num_experts: int = attrs.field(default=10, validator=_int_at_least(1))
    epochs: int = attrs.field(default=50, validator=_int_at_least(1))
    lr: float = attrs.field(default=0.01, validator=_positive)
    momentum: float = attrs.field(default=0.0, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    batch_size: int = attrs.field(default=256, validator=_int_at_least(1))
    dsa: bool = attrs.field(default=True, validator=_flag)
    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    eval_every: int = attrs.field(default=1, validator=_int_at_least(0))
    parallel: int = attrs.field(default=1, validator=_int_at_least(1))


@attrs.frozen
class DistillConfig:
    """One distillation run (docs/MATHS.md §1, §9).

    Fields:
        ipc: synthetic images per class.
        syn_steps: student steps N per iteration.
        expert_epochs: M; the target is the expert M epochs after the start.
        max_start_epoch: start epochs are drawn from [min_start_epoch, max_start_epoch)
            (uniformly; ``sampling='window'`` opens the upper end over the run).
        batch_syn: synthetic images per student step (None: all of them).
        iterations: distillation iterations.
        lr_img, lr_lr: SGD learning rates of the images and of the learned student lr.
        lr_label: SGD learning rate of the label logits (``learned``, ``learned-teacher``;
            DATM uses 2-10).
        lr_init: initial student lr alpha.
        momentum: SGD momentum of the images, the lr and the labels (0.5 in MTT/TESLA).
        engine: gradient engine, ``tesla`` (first order, constant memory), ``exact``
            (adjoint, constant activation memory) or ``unrolled`` (MTT, memory grows with N).
        labels: ``hard``, ``teacher-target`` (TESLA's SLA), ``teacher-last``,
            ``teacher-epoch`` (with ``label_epoch``), ``learned`` (logits from the class
            ids) or ``learned-teacher`` (DATM: logits from the experts' logits on real
            images the expert classifies correctly, then learned; needs ``init='real'``).
        label_epoch: the expert epoch of ``teacher-epoch`` labels (required there), and of
            the experts whose logits initialise ``learned-teacher`` labels (None: each
            expert's last snapshot, as DATM). Ignored by the other strategies.
        label_momentum: SGD momentum of the learned label logits; None: ``momentum``
            (DATM uses 0.9). Only for the learned strategies.
        sampling: how start epochs are drawn: ``uniform`` in [min_start_epoch,
            max_start_epoch) (the paper), or ``window`` (DATM): from [min_start_epoch,
            current_max) where current_max opens from ``initial_max_start_epoch`` to
            ``max_start_epoch`` over ``window_iterations`` iterations.
        min_start_epoch: lowest start epoch drawn (0: the paper's; DATM keeps it at 0 too).
        initial_max_start_epoch: ``window`` only: the window's upper end at iteration 0
            (DATM's ``current_max_start_epoch``); None: halfway from min_start_epoch to
            max_start_epoch (rounded up), DATM's CIFAR ratio.
        window_iterations: ``window`` only: iterations over which the upper end reaches
            max_start_epoch (DATM's ``expansion_end_epoch``, counted in iterations);
            None: a tenth of ``iterations`` (DATM: 1,000 of 10,000 on CIFAR-10).
        ema_decay: FTD's exponential moving average of the synthetic images,
            ``ema <- decay * ema + (1 - decay) * images`` after every image update, started
            at the initial images; the average is what is evaluated and stored. None or 0:
            off (FTD/DATM use 0.995-0.9995).
        match_fraction: PAD's parameter selection: match only about this fraction of the
            parameters, the deepest ones, cut at whole layers (1: all, the paper). Loss,
            distance and gradients are all over the selected slice; not with ``unrolled``.
        min_label_agreement: run health: the labels have collapsed when fewer than this
            fraction of the synthetic images have a label whose argmax is their own class
            for ``collapse_iterations`` iterations in a row; the run then stops keeping its
            last good checkpoint. None: twice chance (2 / classes, at most 0.75); 0: never.
        collapse_iterations: consecutive iterations below ``min_label_agreement`` that
            count as a collapse (teacher labels change every iteration: one bad teacher is
            not a collapse). The stored set is checked once more, with no patience.
        stall_iterations: run health: the run has stalled when the learned lr has sat at
            ``min_lr`` while the loss stayed above ``1 - stall_tolerance`` for this many
            iterations in a row (no matching progress); 0: never.
        stall_tolerance: how far below 1 a loss still counts as "near 1" for the stall.
        init: ``real`` (random real images of each class) or ``noise``.
        dsa: replayed DSA augmentation in the student steps.
        seed: seeds every random choice of the run.
        checkpoint_every: iterations between checkpoints (and one on stop).
        soft_label_chunk: images per teacher forward when making soft labels.
        min_lr: the learned lr is clamped to at least this (kept positive).
        max_grad_norm: None, or clip the image gradient to this norm.
        max_loss: stop the run (keeping its last checkpoint) when the matching loss goes
            above this: it is normalised to start near 1, so a loss in the thousands is a
            run that diverged without (yet) reaching NaN. ``inf`` never stops.
        second_pass_chunk: ``tesla`` engine: pass-2 steps computed together (batched,
            memory bounded by the chunk, not the steps); 1 = one at a time.
        precision: forward passes in ``fp32`` (default), ``tf32`` (CUDA matmuls) or ``bf16``
            (autocast); measured by ``tesla bench speed --precision``.
        channels_last: NHWC memory format for the convolutions.
        offload_weights: keep the N student weight vectors of pass 1 in host memory (CUDA),
            so device memory does not grow with ``syn_steps`` at all. Only the engines that
            store them use it: ``exact``, and ``tesla`` with a chunked or distributed pass 2
            (the plain ``tesla`` pass 2 remakes each w_i and stores none).
        remake_weights: ``exact`` engine: keep every ceil(sqrt(N))-th student weight vector
            of pass 1 and remake the others during the backward sweep: about 2 sqrt(N)
            vectors instead of N, for one more forward and backward per step; same numbers.
        micro_batch: compute every student step (pass 1, pass 2, exact's adjoint, unrolled)
            in pieces of at most this many images: activation memory is bounded by the
            micro-batch, not by ``batch_syn``, and the numbers are the same (to rounding).
            None: automatic, from ``memory_budget`` (or whole batches without one). Needs
            per-sample normalisation: a model with batch norm is refused when a step would
            be split. Memory only: a run may resume with another value.
        memory_budget: bytes a step's saved activations may take (an int, or text such as
            ``4GB`` = 4e9 or ``4GiB`` = 2**30): with ``micro_batch`` None it picks the
            largest micro-batch that fits, measured on the student network, and caps the
            soft-label chunk at it. None: no budget (whole batches).
        set_on: where the synthetic set, its gradient and its momentum live: ``device``
            (beside the network), ``host`` (host memory; each step gathers its rows to the
            device and scatters their gradient back, so device memory does not grow with
            the set) or ``auto``: ``host`` when they would take more than a quarter of the
            device's memory, else ``device``. On a CPU host and device are the same memory:
            ``auto`` is ``device`` there and ``host`` only changes the code path.
    """

    ipc: int = attrs.field(default=10, validator=_int_at_least(1))
    syn_steps: int = attrs.field(default=30, validator=_int_at_least(1))
    expert_epochs: int = attrs.field(default=2, validator=_int_at_least(1))
    max_start_epoch: int = attrs.field(default=20, validator=_int_at_least(1))
    batch_syn: Optional[int] = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    iterations: int = attrs.field(default=5000, validator=_int_at_least(1))
    lr_img: float = attrs.field(default=1000.0, validator=_positive)
    lr_lr: float = attrs.field(default=1e-5, validator=_non_negative)
    lr_label: float = attrs.field(default=10.0, validator=_non_negative)
    lr_init: float = attrs.field(default=0.01, validator=_positive)
    momentum: float = attrs.field(default=0.5, validator=_non_negative)
    engine: str = attrs.field(default="tesla", validator=_one_of(*ENGINES))
    labels: str = attrs.field(default="hard", validator=_one_of(*LABELS))
    label_epoch: Optional[int] = attrs.field(default=None, validator=_int_at_least(0, optional=True))
    label_momentum: Optional[float] = attrs.field(default=None, validator=_non_negative_or_none)
    sampling: str = attrs.field(default="uniform", validator=_one_of(*SAMPLINGS))
    min_start_epoch: int = attrs.field(default=0, validator=_int_at_least(0))
    initial_max_start_epoch: Optional[int] = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    window_iterations: Optional[int] = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    ema_decay: Optional[float] = attrs.field(default=None, validator=_decay)
    match_fraction: float = attrs.field(default=1.0, validator=_fraction(low_open=True))
    min_label_agreement: Optional[float] = attrs.field(default=None, validator=_fraction(low_open=False, optional=True))
    collapse_iterations: int = attrs.field(default=10, validator=_int_at_least(1))
    stall_iterations: int = attrs.field(default=100, validator=_int_at_least(0))
    stall_tolerance: float = attrs.field(default=0.05, validator=_non_negative)
    init: str = attrs.field(default="real", validator=_one_of("real", "noise"))
    dsa: bool = attrs.field(default=True, validator=_flag)
    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    checkpoint_every: int = attrs.field(default=100, validator=_int_at_least(1))
    soft_label_chunk: int = attrs.field(default=1000, validator=_int_at_least(1))
    min_lr: float = attrs.field(default=1e-6, validator=_positive)
    max_grad_norm: Optional[float] = attrs.field(default=None, validator=_positive_or_none)
    max_loss: float = attrs.field(default=1000.0, validator=_positive_check(optional=False, infinite=True))
    second_pass_chunk: int = attrs.field(default=1, validator=_int_at_least(1))
    precision: str = attrs.field(default="fp32", validator=_one_of("fp32", "tf32", "bf16"))
    channels_last: bool = attrs.field(default=False, validator=_flag)
    offload_weights: bool = attrs.field(default=False, validator=_flag)
    remake_weights: bool = attrs.field(default=False, validator=_flag)
    micro_batch: Optional[int] = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    memory_budget: Optional[int] = attrs.field(default=None, converter=parse_bytes)
    set_on: str = attrs.field(default="auto", validator=_one_of(*SET_ON_CHOICES))

    def __attrs_post_init__(self) -> None:
        if self.labels == "teacher-epoch" and self.label_epoch is None:
            raise ConfigError("label_epoch is required when labels is 'teacher-epoch': pass --label-epoch E")
        if self.min_lr >= self.lr_init:
            raise ConfigError(f"min_lr ({self.min_lr}) must be below lr_init ({self.lr_init})")
        if self.remake_weights and self.engine != "exact":
            raise ConfigError(f"remake_weights applies to engine 'exact' only (got {self.engine!r}); "
                              "drop --remake-weights or use --engine exact")
        self._check_recipe()

    def _check_recipe(self) -> None:
        """The cross-field rules of the recipe levers (labels, sampling, selection)."""
        learned = self.labels in ("learned", "learned-teacher")
        if self.label_momentum is not None and not learned:
            raise ConfigError(f"label_momentum applies to learned labels only (labels is {self.labels!r}): "
                              "drop --label-momentum or use --labels learned-teacher")
        if self.labels == "learned-teacher" and self.init != "real":
            raise ConfigError("labels 'learned-teacher' start from real images the expert classifies correctly: "
                              f"use init 'real' (got init {self.init!r})")
        if self.min_start_epoch >= self.max_start_epoch:
            raise ConfigError(f"min_start_epoch ({self.min_start_epoch}) must be below max_start_epoch "
                              f"({self.max_start_epoch})")
        if self.sampling != "window":
            for name in ("initial_max_start_epoch", "window_iterations"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies to sampling 'window' only (sampling is {self.sampling!r}): "
                                      f"drop --{name.replace('_', '-')} or use --sampling window")
        elif not self.min_start_epoch < self.window_initial_max <= self.max_start_epoch:
            raise ConfigError(f"initial_max_start_epoch ({self.window_initial_max}) must be above min_start_epoch "
                              f"({self.min_start_epoch}) and at most max_start_epoch ({self.max_start_epoch})")
        if self.match_fraction < 1.0 and self.engine == "unrolled":
            raise ConfigError(f"match_fraction {self.match_fraction:g} (parameter selection) needs engine 'exact' "
                              "or 'tesla', not 'unrolled': use --engine exact (the same gradient as unrolled)")

    @property
    def window_initial_max(self) -> int:
        """``initial_max_start_epoch``, or its default: halfway up from min_start_epoch (rounded up)."""
        if self.initial_max_start_epoch is not None:
            return self.initial_max_start_epoch
        return self.min_start_epoch + -(-(self.max_start_epoch - self.min_start_epoch) // 2)

    @property
    def window_length(self) -> int:
        """``window_iterations``, or its default: a tenth of the run (at least 1)."""
        return self.window_iterations if self.window_iterations is not None else max(1, self.iterations // 10)

    @property
    def label_sgd_momentum(self) -> float:
        """The momentum of the learned label logits (``label_momentum`` or ``momentum``)."""
        return self.momentum if self.label_momentum is None else self.label_momentum

    @property
    def last_epoch_needed(self) -> int:
        """Highest expert epoch an iteration can read (start + M); stores must hold it."""
        needed = self.max_start_epoch - 1 + self.expert_epochs  # the window never opens past max_start_epoch
        if self.labels in ("teacher-epoch", "learned-teacher") and self.label_epoch is not None:
            needed = max(needed, self.label_epoch)
        return needed


@attrs.frozen
class EvalConfig:
    """The field's evaluation protocol (docs/MATHS.md §8).

    Fields:
        models: architectures to train on the synthetic set (``convnet``, ``resnet18``, ``vit``).
        num_models: fresh networks per architecture; results are mean +- std over them.
        epochs: training epochs; the lr drops x0.1 at ``epochs // 2``.
        lr: student lr, or None to use the synthetic set's learned lr.
        momentum, weight_decay, batch_size: SGD settings.
        dsa: DSA augmentation on every batch.
        seed: network ``i`` of each model uses ``seed + i``.
    """

    models: tuple = attrs.field(default=("convnet",), converter=_as_tuple)
    num_models: int = attrs.field(default=5, validator=_int_at_least(1))
    epochs: int = attrs.field(default=1000, validator=_int_at_least(1))
    lr: Optional[float] = attrs.field(default=None, validator=_positive_or_none)
    momentum: float = attrs.field(default=0.9, validator=_non_negative)
    weight_decay: float = attrs.field(default=5e-4, validator=_non_negative)
    batch_size: int = attrs.field(default=256, validator=_int_at_least(1))
    dsa: bool = attrs.field(default=True, validator=_flag)
    seed: int = attrs.field(default=0, validator=_int_at_least(0))

    def __attrs_post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models must name at least one architecture")
        for m in self.models:
            if m not in ARCHS:
                raise ConfigError(f"models entry {m!r} is unknown: use one of {', '.join(ARCHS)}")
