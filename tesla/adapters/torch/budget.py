"""A micro-batch from a memory budget: measure one step's activations, then divide.

A step's activation memory, what autograd saves for backward while one double-backward
step (exact's VJP, the largest the engines take) is alive, is a fixed part (the weight
vector and its views, the cotangent) plus a part proportional to the images in the
micro-batch. :func:`step_saved_bytes` measures it with
:class:`~tesla.adapters.torch.saved.SavedTensorsMeter` on one and on two images of the
real network, on its device and in its dtype, so the per-image bytes come from the
model itself rather than a formula per architecture; :func:`auto_micro_batch` then fits
as many images as the budget holds.

The budget covers bytes saved for backward, which is what grows with the batch; the
allocator's transient gradient buffers during a backward add about one layer's
activations on top, so leave some room when the budget is a device's whole memory.
Augmentation adds little (DSA's warps save a sampling grid per image) and is not counted.
Whether the model may be micro-batched at all (no batch norm) is
:func:`tesla.adapters.torch.microbatch.check_micro_batch`'s business, not this one's.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.microbatch import module_device
from tesla.adapters.torch.saved import SavedTensorsMeter
from tesla.domain.errors import ConfigError
from tesla.domain.memory import StepCost, micro_batch_for
from tesla.domain.ports import Step


def step_saved_bytes(view: FlatView, image_shape: Sequence[int], images: int, *, learned_labels: bool = False) -> int:
    """Peak bytes saved for backward by one exact VJP step on ``images`` images.

    Args:
        view: the student network, on the device and in the dtype it will run in.
        image_shape: (C, H, W) of one image.
        images: the batch of the measured step.
        learned_labels: measure with learned label logits (their softmax is in the graph).
    """
    module = view.module
    device = module_device(module, torch.device("cpu"))
    w = view.flatten()
    dtype = w.dtype if w.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((images, *image_shape), generator=gen, dtype=dtype).to(device)
    with torch.no_grad():
        classes = view(w, x[:1]).shape[1]
    if learned_labels:
        y = torch.zeros(images, classes, dtype=dtype, device=device)
    else:
        y = torch.zeros(images, dtype=torch.long, device=device)
    compute = TorchCompute(view, x, y, learned_labels=learned_labels)
    step = Step(index=0, batch=tuple(range(images)))
    with SavedTensorsMeter() as meter:
        compute.vjp(w, step, torch.ones_like(w), wrt_weights=True)
    return meter.peak


def auto_micro_batch(view: FlatView, image_shape: Sequence[int], budget_bytes: int, *,
                     learned_labels: bool = False) -> int:
    """The largest micro-batch whose step fits ``budget_bytes`` of saved activations (at least 1).

    ``per_image`` is the difference of :func:`step_saved_bytes` at two images and at one,
    ``fixed`` what one image's step holds beyond it; the answer is
    ``max(1, (budget_bytes - fixed) // per_image)``. Two small steps of the real network
    are run to measure (no gradient is kept).

    Example:
        >>> micro = auto_micro_batch(FlatView(model), (3, 64, 64), 4 * 2**30)
        >>> compute = TorchCompute(view, images, labels, micro_batch=min(micro, batch_syn))
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
        raise ConfigError(f"the memory budget must be a positive number of bytes (got {budget_bytes!r})")
    return micro_batch_for(budget_bytes, step_cost(view, image_shape, learned_labels=learned_labels))


def step_cost(view: FlatView, image_shape: Sequence[int], *, learned_labels: bool = False) -> StepCost:
    """The fixed and per-image bytes one step saves for backward, from two small measured steps.

    ``per_image`` is the difference of :func:`step_saved_bytes` at two images and at one,
    ``fixed`` what one image's step holds beyond it (no gradient is kept).
    """
    if len(tuple(image_shape)) != 3:
        raise ConfigError(f"image_shape must be (C, H, W) (got {tuple(image_shape)})")
    one = step_saved_bytes(view, image_shape, 1, learned_labels=learned_labels)
    two = step_saved_bytes(view, image_shape, 2, learned_labels=learned_labels)
    per_image = max(1, two - one)
    return StepCost(fixed=max(0, one - per_image), per_image=per_image)
