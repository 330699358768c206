"""Which model a real dataset fits: the one data-vs-model check, and a model shaped to data.

Every job that trains on real data (experts, distillation, evaluation) must refuse data
whose classes or image shape the network cannot take before any work starts, with one
line naming the mismatch and the fix. :func:`check_data_fits` is that check, written
once; :func:`model_for_data` is the other direction: without a preset, the experts take
their classes and input shape from the data.

Pure: the data is described by plain numbers (``num_classes``, ``image_shape``), never
by the loader that read it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import attrs

from tesla.domain.config import DataConfig, ModelConfig
from tesla.domain.errors import DataMismatchError
from tesla.domain.urls import without_redacted_userinfo

# ConvNet depth whose features end at 4x4 for the usual image sides (16, 32, 64 px)
DEPTH_FOR_SIZE = {16: 2, 32: 3, 64: 4}

FIX = "pick the preset or dataset the data belongs to"


def check_data_fits(num_classes: int, image_shape: Sequence[int], model: ModelConfig, *, fix: str = FIX) -> None:
    """Refuse data whose classes or image shape ``model`` cannot take.

    Args:
        num_classes: classes of the real data.
        image_shape: one image of the real data, ``(C, H, W)``.
        model: the network that will train on it.
        fix: what the user should change (ends the message).

    Raises:
        DataMismatchError: the message names both sides and ``fix``.
    """
    if int(num_classes) != model.num_classes:
        raise DataMismatchError(f"the data has {num_classes} classes but the model outputs "
                                f"{model.num_classes}: {fix}")
    want = (model.channels, model.image_size, model.image_size)
    if tuple(int(v) for v in image_shape) != want:
        raise DataMismatchError(f"the data's images are {tuple(image_shape)} but the model expects {want}: {fix}")


def model_for_data(model: ModelConfig, num_classes: int, image_shape: Sequence[int],
                   depth: Optional[int] = None) -> ModelConfig:
    """``model`` with the data's classes and input shape ``(C, S, S)``.

    The depth is ``depth`` when given, else the one that ends at 4x4 features for the
    usual sides (2 for 16 px, 3 for 32 px, 4 for 64 px), else ``model``'s own.
    """
    channels, size = int(image_shape[0]), int(image_shape[1])
    return attrs.evolve(model, num_classes=int(num_classes), channels=channels, image_size=size,
                        depth=depth if depth is not None else DEPTH_FOR_SIZE.get(size, model.depth))


def recorded_data_config(recorded: Optional[Mapping[str, object]], dataset: Optional[str],
                         root: Optional[str]) -> DataConfig:
    """The data a store records (the experts' or the set's), unless overridden by
    ``dataset`` / ``root``; ``cifar10`` when nothing names it."""
    known = {k: v for k, v in (recorded or {}).items() if k in ("name", "root", "zca", "image_size")}
    if isinstance(known.get("root"), str):  # recorded without its credentials: give them as storage options
        known["root"] = without_redacted_userinfo(known["root"])
    if dataset:
        known["name"] = dataset
    if root:
        known["root"] = root
    if not known.get("name"):
        known["name"] = "cifar10"
    return DataConfig(**known)
