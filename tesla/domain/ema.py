"""FTD's exponential moving average of the synthetic images, as a pure value.

FTD (Du et al., CVPR 2023) keeps, beside the synthetic images ``x`` that the matching
updates, a moving average

    ema_0 = x_0                                  (the initial images: a copy, not zeros)
    ema_t = decay * ema_{t-1} + (1 - decay) * x_t   after every image update t >= 1

and evaluates and stores the average instead of the last iterate: the images' SGD
with a large ``lr_img`` jitters from one trajectory segment to the next, and the
average keeps what the segments agree on. Read from its code (``ModelEmaV2`` over
``[image_syn]``, ``update`` after each ``optimizer_img.step()``): the average starts as a
copy of the initial images, there is no bias correction (the start at ``x_0`` instead of
0 is what makes one unnecessary), and the decay is constant (0.995-0.9995 in FTD's and
DATM's configs). The images' own trajectory is unchanged: the matching keeps updating
``x``; only what is evaluated and stored is the average.

The update is written exactly as FTD writes it, ``decay * ema + (1 - decay) * x``, over
opaque vectors (anything with ``+`` and scalar ``*``: tensors in the adapters, small
tuples in the unit tests). The service owns the state: it checkpoints ``ema`` with the
images so that a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

Vec = Any  # opaque: images as the adapter holds them


def _check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{attr.name} must be in (0, 1) (got {value!r})")


@attrs.frozen
class ImageEMA:
    """The moving average of the synthetic images with a constant ``decay`` in (0, 1)."""

    decay: float = attrs.field(validator=_check)

    def start(self, images: Vec) -> Vec:
        """ema_0: a new value equal to the initial images (``images * 1.0``: exact, and a
        mutable tensor is not aliased, so later in-place updates of the images leave it)."""
        return images * 1.0

    def update(self, ema: Vec, images: Vec) -> Vec:
        """ema_t = decay * ema_{t-1} + (1 - decay) * images_t (FTD's order of operations)."""
        return self.decay * ema + (1.0 - self.decay) * images


def ema_for(cfg) -> Optional[ImageEMA]:
    """The average a :class:`~tesla.domain.config.DistillConfig` asks for; None when
    ``ema_decay`` is None or 0 (an average with decay 0 is the images themselves)."""
    decay = cfg.ema_decay
    if decay is None or decay == 0:
        return None
    return ImageEMA(float(decay))
