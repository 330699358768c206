"""Micro-batches and a host-resident synthetic set: the choices the torch compute checks.

A student step's loss is the mean cross-entropy over its B images. With per-sample
normalisation (instance, group, layer norm or none: the ConvNet family) each image's
term depends on that image alone, so for micro-batches of n_k images

    loss = sum_k (n_k / B) loss_k,      g = sum_k (n_k / B) g_k,

and so is every derivative the engines take of a step (the data VJP of ``v . g``, the
Hessian-vector product, the scalar ``v . g``): each is a size-weighted sum of the
micro-batches' own, and each micro-batch's graph can be built, differentiated and freed
before the next. Activation memory is then bounded by the micro-batch, not by B.

Batch norm normalises with the statistics of the whole batch, so one image's term
depends on every other image of its step: split into micro-batches it would be another
function (the statistics of each micro-batch), not the same one computed piecewise.
:func:`check_micro_batch` refuses that combination.

Where the set lives (``set_on``): ``device``, the images and labels sit beside the
network (today's behaviour); ``host``, they stay in host memory and each step gathers
its rows to the compute device and scatters their gradient back (see
:class:`~tesla.adapters.torch.compute.TorchCompute`), so device memory does not grow
with the size of the set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from tesla.domain.errors import ConfigError

SET_ON = ("device", "host")


def has_batch_norm(module: nn.Module) -> bool:
    """Whether any submodule normalises with batch statistics (couples a step's images)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def check_micro_batch(module: nn.Module, micro_batch: Optional[int]) -> Optional[int]:
    """``micro_batch`` if the model can take its steps in pieces of that many images.

    None means whole batches (always allowed). Raises :class:`ConfigError` for a value
    that is not a positive integer, or for a model with batch norm.
    """
    if micro_batch is None:
        return None
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ConfigError(f"micro_batch must be a positive number of images (got {micro_batch!r})")
    if has_batch_norm(module):
        raise ConfigError("micro-batching needs per-sample normalisation, but the model has batch norm, which "
                          "couples the images of a step: use norm instancenorm, layernorm, groupnorm or none, "
                          "or drop the micro-batch")
    return micro_batch


def check_set_on(set_on: str) -> str:
    """``set_on`` if it is one of :data:`SET_ON`, else a one-line ConfigError."""
    if set_on not in SET_ON:
        raise ConfigError(f"set_on must be one of {', '.join(SET_ON)} (got {set_on!r})")
    return set_on


def pieces(n: int, micro_batch: Optional[int]) -> list[tuple[int, int]]:
    """The (start, stop) rows of a batch of ``n`` cut into micro-batches; the last may be
    smaller. One piece ``(0, n)`` when ``micro_batch`` is None or at least ``n``."""
    m = max(1, n if micro_batch is None else min(micro_batch, n))
    return [(a, min(a + m, n)) for a in range(0, n, m)]


def slice_params(params: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an augmentation's recorded parameters.

    Objects with a ``rows(start, stop)`` method (:class:`~tesla.adapters.torch.augment.DSAParams`)
    cut themselves; a mapping of per-sample tensors is cut key by key (rows copied, so a
    micro-batch's graph holds only its own). Anything else cannot be split.
    """
    if params is None:
        return None
    rows = getattr(params, "rows", None)
    if callable(rows):
        return rows(start, stop)
    if isinstance(params, Mapping):
        return {k: v[start:stop].clone() for k, v in params.items()}
    raise ConfigError(f"the augmentation's parameters ({type(params).__name__}) cannot be cut into micro-batches: "
                      "give them a rows(start, stop) method or drop the micro-batch")


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in (pageable) host memory.

    Not page-locked: a step's rows are gathered out of the set, a copy anyway, and the
    compute gathers them straight into a pinned buffer for the copy to the device, so
    locking the whole set (gigabytes, with its momentum) would buy nothing.
    """
    return t.detach().to("cpu", copy=True)


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """Where ``module``'s parameters (else buffers) live; ``default`` for a stateless one."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return default
