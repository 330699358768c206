"""The teacher-relabel evaluation protocol's settings (SRe2L / RDED / DD-Ranking style).

Since SRe2L (NeurIPS 2023) the ImageNet-scale distillation methods (SRe2L, RDED, EDC,
...) evaluate a set by training a fresh student on it while a pretrained *teacher*
relabels every augmented batch: each step crops, flips and CutMixes the batch, the
teacher's softmax at temperature ``T`` on exactly that augmented batch is the target,
and the loss is ``KL(softmax(teacher / T) || softmax(student / T))`` (batch mean). This
is knowledge distillation on the set's images, so a number under this protocol must be
read beside random real images under the same protocol (DD-Ranking's point).

The defaults are the published ones (read in the papers' code):

- optimiser AdamW, lr 0.001, betas (0.9, 0.999), weight decay 0.01 on conv/linear
  weights only (biases and norm parameters undecayed): SRe2L ``validate/train_KD.py``
  (``--adamw-lr 0.001 --adamw-weight-decay 0.01``), RDED ``argument.py`` (``adamw_lr``
  0.001 for ConvNets and ResNet-18) with the same ``get_parameters`` grouping;
- schedule stepped once per epoch: ``half-cosine`` ``0.5 * (1 + cos(pi * e / (2 E)))``
  (RDED ``validation/main.py``, and DD-Ranking's ``cosine``), or ``cosine``
  ``0.5 * (1 + cos(pi * e / E))`` (SRe2L ``train_KD.py --cos``);
- 300 epochs (SRe2L, RDED, DD-Ranking's soft-label configs);
- temperature 20 with CutMix (RDED sets 20 for CutMix, 4 for MixUp; SRe2L's ImageNet
  script ``-T 20``; DD-Ranking's demo uses 1.0 and its RDED configs 20);
- the loss is *not* multiplied by ``T**2`` (SRe2L's line is commented out, RDED and
  DD-Ranking's ``scale_loss=False``); ``scale_loss`` turns Hinton's factor on;
- CutMix with ``lambda ~ Beta(1, 1)`` (``--cutmix 1.0``), applied after
  RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3)) and a horizontal flip
  (SRe2L/FKD's crop; RDED uses scale (1/factor, 1), i.e. (1, 1) for its CIFAR runs);
- batch size: RDED uses 50 at 10 images per class for 10 classes (100 for IPC 50, 10 for
  IPC 1, doubled for 100+ classes), capped at the set size.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from tesla.domain.config import _flag, _int_at_least, _non_negative, _one_of, _positive
from tesla.domain.errors import ConfigError

SCHEDULES = ("half-cosine", "cosine", "constant")


def _crop_scale(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    ok = (isinstance(value, tuple) and len(value) == 2
          and all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in value)
          and 0.0 < value[0] <= value[1] <= 1.0)
    if not ok:
        raise ConfigError(f"{attr.name} must be two numbers 0 < low <= high <= 1 (got {value!r}); "
                          f"the published relabel crop is (0.08, 1.0)")


def _betas(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    ok = (isinstance(value, tuple) and len(value) == 2
          and all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v < 1.0 for v in value))
    if not ok:
        raise ConfigError(f"{attr.name} must be two numbers in [0, 1) (got {value!r}); AdamW's default is (0.9, 0.999)")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class RelabelConfig:
    """How a student is trained under the teacher-relabel protocol.

    Fields:
        epochs: training epochs (passes over the set).
        batch_size: images per step (capped at the set size).
        lr, betas, weight_decay: AdamW; the decay applies to conv/linear weights only.
        schedule: ``half-cosine`` (RDED, DD-Ranking), ``cosine`` (SRe2L) or ``constant``;
            the lr factor is updated once per epoch.
        temperature: ``T`` of both softmaxes in the KL loss.
        scale_loss: multiply the loss by ``T**2`` (Hinton); the relabel papers do not.
        crop: RandomResizedCrop every image to its own size with ``crop_scale``.
        crop_scale: area fraction range of the crop.
        flip: random horizontal flip (p = 0.5).
        cutmix: CutMix every batch (one box per image, partner from a permutation).
        cutmix_beta: ``lambda ~ Beta(cutmix_beta, cutmix_beta)``.
    """

    epochs: int = attrs.field(default=300, validator=_int_at_least(1))
    batch_size: int = attrs.field(default=50, validator=_int_at_least(1))
    lr: float = attrs.field(default=1e-3, validator=_positive)
    betas: tuple = attrs.field(default=(0.9, 0.999), converter=_tuple, validator=_betas)
    weight_decay: float = attrs.field(default=0.01, validator=_non_negative)
    schedule: str = attrs.field(default="half-cosine", validator=_one_of(*SCHEDULES))
    temperature: float = attrs.field(default=20.0, validator=_positive)
    scale_loss: bool = attrs.field(default=False, validator=_flag)
    crop: bool = attrs.field(default=True, validator=_flag)
    crop_scale: tuple = attrs.field(default=(0.08, 1.0), converter=_tuple, validator=_crop_scale)
    flip: bool = attrs.field(default=True, validator=_flag)
    cutmix: bool = attrs.field(default=True, validator=_flag)
    cutmix_beta: float = attrs.field(default=1.0, validator=_positive)

    @property
    def augments(self) -> bool:
        """Whether any augmentation is on (DD-Ranking's ARS compares with and without)."""
        return self.crop or self.flip or self.cutmix

    def without_augmentation(self) -> "RelabelConfig":
        """The same protocol with crop, flip and CutMix off (the teacher still relabels)."""
        return attrs.evolve(self, crop=False, flip=False, cutmix=False)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The lr multiplier for ``epoch`` (0-based) of ``epochs``.

    ``half-cosine``: ``0.5 * (1 + cos(pi * epoch / (2 * epochs)))`` (1 -> 0.5, RDED);
    ``cosine``: ``0.5 * (1 + cos(pi * epoch / epochs))`` (1 -> 0, SRe2L);
    ``constant``: 1.
    """
    if schedule == "half-cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2.0))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")


# --- where the teacher comes from --------------------------------------------------------

TEACHER_KINDS = ("real", "expert")
TEACHER_EPOCHS = 50  # a real-data teacher's epochs unless given (DC-bench's full-data recipe)


@attrs.frozen
class TeacherChoice:
    """The relabel protocol's teacher, as ``--teacher`` names it.

    ``real`` (or ``real:ARCH``): a network trained on the whole real training set (the
    set's model, or architecture ARCH at the same input size), cached on disk. ``expert:I``
    (or ``expert:I@E``): expert I of the trajectory store, after its last (or E-th) epoch.
    """

    kind: str = "real"
    arch: Any = None
    expert: Any = None
    epoch: Any = None

    @classmethod
    def parse(cls, text: str) -> "TeacherChoice":
        """``real``, ``real:resnet18``, ``expert:0``, ``expert:0@20``; ConfigError otherwise."""
        fix = "use real, real:ARCH (convnet, resnet18, vit), expert:I[@EPOCH] (an expert, at an epoch)"
        raw = str(text).strip()
        kind, _, rest = raw.partition(":")
        if kind == "real":
            if rest and rest not in ("convnet", "resnet18", "vit"):
                raise ConfigError(f"--teacher {raw!r}: unknown architecture {rest!r}; {fix}")
            return cls(kind="real", arch=rest or None)
        if kind == "expert" and rest:
            idx, at, epoch = rest.partition("@")
            if idx.isdigit() and (not at or epoch.isdigit()):
                return cls(kind="expert", expert=int(idx), epoch=int(epoch) if epoch else None)
        raise ConfigError(f"--teacher {raw!r} is not a teacher: {fix}")

    def __str__(self) -> str:
        if self.kind == "real":
            return "real" + (f":{self.arch}" if self.arch else "")
        return f"expert:{self.expert}" + (f"@{self.epoch}" if self.epoch is not None else "")
