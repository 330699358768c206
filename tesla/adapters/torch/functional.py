"""A flat-vector view of a module: one parameter layout for trajectories and students.

Expert trajectories store every snapshot as one flat float32 vector in
``model.parameters()`` order (the published MTT/TESLA layout). ``FlatView`` converts
between that vector and the module's named parameters and runs the module as a pure
function of the vector with :func:`torch.func.functional_call`, so a student step is
``w - lr * grad_w loss(view(w, x))`` with no module state touched. Buffers (batch-norm
running statistics) are not part of the vector: they are passed through untouched and
``train()`` mode uses batch statistics, as the published code does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call


class FlatView:
    """Functional view of ``module`` over flat parameter vectors.

    Args:
        module: any ``nn.Module`` whose forward is a pure function of its parameters
            (and buffers).

    Example:
        >>> view = FlatView(model)
        >>> w = view.flatten()            # (P,)
        >>> logits = view(w, x)            # same as model(x) when w is the model's own
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.names: list[str] = [n for n, _ in named]
        self.shapes: list[torch.Size] = [p.shape for _, p in named]
        self.numels: list[int] = [p.numel() for _, p in named]
        self.num_params: int = sum(self.numels)

    @property
    def layout(self) -> list[tuple[str, list[int]]]:
        """``[(name, shape), ...]`` in ``parameters()`` order; stores record it."""
        return [(n, list(s)) for n, s in zip(self.names, self.shapes)]

    def flatten(self, tensors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Concatenate the module's parameters (or ``tensors`` in the same order) to (P,)."""
        if tensors is None:
            tensors = [p for p in self.module.parameters()]
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``w`` (P,) shaped like the parameters, keyed by name; keeps autograd."""
        if w.dim() != 1 or w.numel() != self.num_params:
            raise ValueError(f"flat vector has {w.numel()} values, the model has {self.num_params} parameters")
        out: dict[str, torch.Tensor] = {}
        for name, chunk, shape in zip(self.names, torch.split(w, self.numels), self.shapes):
            out[name] = chunk.view(shape)
        return out

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Forward of the module at parameters ``w`` (P,) on inputs ``x`` (B, C, H, W)."""
        params = self.unflatten(w)
        buffers = dict(self.module.named_buffers())
        return functional_call(self.module, (params, buffers), (x,))
