"""How fast this machine trains a network: the figure ``tesla run`` sizes a run by.

:func:`seconds_per_image` times the forward and backward pass of a network (with DSA, as
expert and evaluation training do) over one batch of random images, after a warm-up,
and returns the median seconds per image. A distillation step costs a fixed multiple of
it (the sizing policy's ``MATCH_COST``, :mod:`tesla.domain.sizing`). A second or two on
a CPU; the figure is an estimate for planning, never a result.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.models import build_model
from tesla.domain.config import ModelConfig


def seconds_per_image(model_cfg: ModelConfig, device: Any, *, batch: int = 64, repeats: int = 3) -> float:
    """Median seconds of one image's forward + backward pass (DSA, cross-entropy) of
    ``model_cfg`` on ``device`` over ``repeats`` batches of ``batch`` images."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    model = build_model(model_cfg, seed=0).to(device)
    x = torch.rand(batch, model_cfg.channels, model_cfg.image_size, model_cfg.image_size, generator=gen).to(device)
    y = torch.randint(0, model_cfg.num_classes, (batch,), generator=gen).to(device)
    dsa = DSA()
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(dsa(x, gen)), y)
        loss.backward()
        _sync(device)
        if i:  # the first pass allocates and warms the kernels
            times.append((time.perf_counter() - t0) / batch)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchSpeed:
    """The :class:`~tesla.domain.ports.MachineSpeed` port on torch and ``device``."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def seconds_per_image(self, model_cfg: ModelConfig) -> float:
        return seconds_per_image(model_cfg, self.device)


__all__ = ["TorchSpeed", "seconds_per_image"]
