"""Memory choices of a run, as pure functions: a budget's micro-batch and where the set lives.

Two levers keep a distillation's memory independent of the batch and of the set
(:mod:`tesla.adapters.torch.microbatch` has the maths): a step computed in micro-batches
of ``k`` images holds the activations of ``k`` images, not of ``batch_syn``; a
host-resident set keeps the images, their gradient and their momentum in host memory, so
the device holds only a step's rows. The torch adapters measure; the choices made from
the measurements live here, framework-free, so they can be tested on numbers.

- :func:`parse_bytes` reads a budget as the user writes it (``4GB``, ``512MiB``, ``2e9``).
- :func:`micro_batch_for` fits a step's activations into a budget from two measured
  figures: the fixed part and the bytes per image (a :class:`StepCost`).
- :func:`resolve_micro_batch` is the whole rule: an explicit micro-batch, else the
  budget's, else the whole batch; None whenever the answer would not split the batch.
- :func:`set_bytes` and :func:`choose_set_on` decide ``set_on='auto'``.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional, Union

import attrs

from tesla.domain.errors import ConfigError

SET_ON_CHOICES = ("auto", "host", "device")

# the share of the device's memory the set (images, gradient, momentum) may take before
# ``set_on='auto'`` keeps it in host memory: the rest is for the network, the pass-1
# weight vectors, a step's activations and the allocator's slack
DEVICE_SHARE = 0.25

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Union[str, int, float, None]) -> Optional[int]:
    """A byte count from ``4GB`` (10**9), ``4GiB`` (2**30), ``512MB``, ``1e9`` or an int; None stays None.

    Raises :class:`ConfigError` naming the value and the accepted forms.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"memory_budget must be a size such as 4GB or 512MiB (got {value!r})")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _BYTES.match(str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"memory_budget must be a size such as 4GB, 512MiB or 2000000000 (got {value!r})")
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"memory_budget must be a positive size such as 4GB (got {value!r})")
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ConfigError(f"memory_budget must be at least one byte (got {value!r})")
    return size


def format_bytes(n: Optional[int]) -> str:
    """``n`` bytes in binary units, e.g. ``3.7 GiB`` (``-`` for None)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@attrs.frozen
class StepCost:
    """What one student step saves for backward: ``fixed + per_image * images`` bytes.

    Attributes:
        fixed: bytes that do not depend on the images (weight views, the cotangent).
        per_image: bytes each image of the step adds (its activations).
    """

    fixed: int
    per_image: int

    def bytes_for(self, images: int) -> int:
        return self.fixed + self.per_image * images


def micro_batch_for(budget: int, cost: StepCost) -> int:
    """The largest number of images whose step fits ``budget`` bytes (at least 1).

    Example:
        >>> micro_batch_for(1000, StepCost(fixed=100, per_image=30))
        30
    """
    return max(1, (int(budget) - max(0, cost.fixed)) // max(1, cost.per_image))


def resolve_micro_batch(micro_batch: Optional[int], budget: Optional[int], batch: int,
                        measure: Callable[[], StepCost]) -> Optional[int]:
    """The micro-batch a run computes its steps in; None: whole batches.

    An explicit ``micro_batch`` wins; else a ``budget`` picks the largest that fits (the
    step's cost is asked of ``measure`` only then); else the whole batch. A micro-batch
    of at least ``batch`` images does not split anything and is None too, so a model
    that cannot be micro-batched (batch norm) is refused only when a split would happen.
    """
    if micro_batch is None and budget is None:
        return None
    chosen = micro_batch if micro_batch is not None else micro_batch_for(budget, measure())  # type: ignore[arg-type]
    return chosen if chosen < batch else None


def soft_label_chunk(chunk: int, micro_batch: Optional[int], budget: Optional[int]) -> int:
    """Images per teacher forward when making soft labels.

    Under a budget the chunk is at most the budget's micro-batch: a forward without a
    graph holds less per image than a step saves for backward, so what fits a step fits
    the chunk. Without a budget, ``chunk`` as configured.
    """
    if budget is None or micro_batch is None:
        return chunk
    return max(1, min(chunk, micro_batch))


def set_bytes(images: int, image_elements: int, *, itemsize: int = 4, label_elements: int = 0) -> int:
    """Bytes of a learnable set: images (and learned label logits), their gradient and
    their SGD momentum, three copies of each."""
    return 3 * itemsize * (images * image_elements + images * label_elements)


def choose_set_on(requested: str, *, on_cpu: bool, needed: int, device_total: Optional[int],
                  share: float = DEVICE_SHARE) -> str:
    """Where the set lives: ``host`` or ``device``.

    ``requested`` other than ``auto`` is kept. ``auto`` on a CPU is ``device``: host and
    device are the same memory there, and gathering rows would only copy. On an
    accelerator it is ``host`` when the set (``needed`` bytes, see :func:`set_bytes`)
    would take more than ``share`` of the device's ``device_total`` bytes.
    """
    if requested not in SET_ON_CHOICES:
        raise ConfigError(f"set_on must be one of {', '.join(SET_ON_CHOICES)} (got {requested!r})")
    if requested != "auto":
        return requested
    if on_cpu or device_total is None:
        return "device"
    return "host" if needed > share * device_total else "device"
