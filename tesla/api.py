"""The public, scriptable entry point: one matching iteration on any module.

``match_gradients`` wires a :class:`~tesla.adapters.torch.compute.TorchCompute` to the
domain's engines (:func:`tesla.domain.engines.engine_for`, the one name -> engine
mapping) for callers who bring their own model, images and expert snapshots,
and hands back the loss and the gradients the distillation service would apply.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

import attrs
import torch
from torch import nn

from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.domain import matching, sampling
from tesla.domain.engines import engine_for


@attrs.frozen
class MatchOutput:
    """Result of :func:`match_gradients`.

    Attributes:
        loss: ||w_N - target||^2 / ||start - target||^2 (float).
        images_grad: dL/dimages, shape of ``images``.
        lr_grad: dL/dlr (float).
        labels_grad: dL/dlogits when ``learned_labels`` was set, else None.
    """

    loss: float
    images_grad: torch.Tensor
    lr_grad: float
    labels_grad: Optional[torch.Tensor] = None


def match_gradients(model: nn.Module, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor, lr: float, *, steps: int, batches: Optional[Sequence[torch.Tensor]] = None,
                    batch_size: Optional[int] = None, engine: str = "tesla", augment: Any = None,
                    generator: Optional[torch.Generator] = None, learned_labels: bool = False,
                    segment: Optional[int] = None) -> MatchOutput:
    """Loss and gradients of one trajectory-matching iteration.

    Args:
        model: any module whose forward is a pure function of its parameters.
        start, target: flat parameter vectors (P,) in ``model.parameters()`` order
            (expert snapshots at epochs s and s + M).
        images: synthetic images (N, C, H, W).
        labels: class ids (N,) or probabilities (N, K); logits (N, K) with ``learned_labels``.
        lr: the student learning rate alpha (> 0).
        steps: number of student steps N.
        batches: optional list of ``steps`` index tensors, one per step (overrides sampling).
        batch_size: images per step when sampling (None: all images).
        engine: ``tesla`` (first order, constant memory), ``exact`` (adjoint, equals
            ``unrolled``, constant activation memory) or ``unrolled`` (MTT reference).
        augment: a DSA-like object (``sample``/``apply``) replayed exactly in pass 2, or None.
        generator: seeds the batch order and augmentation (default: torch's global RNG).
        segment: ``exact`` only: keep every ``segment``-th student weight vector and remake
            the others in the backward sweep (``matching.sqrt_segment(steps)`` keeps the
            fewest: about 2 sqrt(N)); None keeps all N. Same numbers, one more backward
            per step.

    Returns:
        :class:`MatchOutput` with ``loss``, ``images_grad`` and ``lr_grad``.
    """
    if engine not in matching.ENGINES:
        raise ValueError(f"engine must be one of {', '.join(matching.ENGINES)} (got {engine!r})")
    if segment is not None and engine != "exact":
        raise ValueError(f"segment applies to the exact engine only (got engine {engine!r})")
    view = FlatView(model)
    for name, vec in (("start", start), ("target", target)):
        if vec.dim() != 1 or vec.numel() != view.num_params:
            raise ValueError(f"{name} must be a flat vector of {view.num_params} values (got shape {tuple(vec.shape)})")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but images has {images.shape[0]}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = random.Random(seed)
    if batches is not None:
        if len(batches) != steps:
            raise ValueError(f"batches has {len(batches)} entries but steps is {steps}")
        plan = sampling.steps_from_batches([b.tolist() if hasattr(b, "tolist") else b for b in batches], rng,
                                           augment=augment is not None)
    else:
        plan = sampling.make_steps(images.shape[0], steps, batch_size, rng, augment=augment is not None)
    run = engine_for(engine, segment=segment)
    compute = TorchCompute(view, images, labels, augment=augment, learned_labels=learned_labels)
    out = run(compute, start.detach(), target.detach(), float(lr), plan)
    images_grad, labels_grad = compute.data_grad()
    return MatchOutput(loss=out.loss, images_grad=images_grad, lr_grad=out.lr_grad, labels_grad=labels_grad)
