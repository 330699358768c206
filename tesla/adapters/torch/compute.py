"""The :class:`~tesla.domain.ports.Compute` port on PyTorch (CPU and CUDA).

``TorchCompute`` is bound, for one iteration, to a functional model (``FlatView``), the
synthetic images (N, C, H, W), their labels and an optional augmentation. The domain's
engines call it with flat parameter vectors (P,) and :class:`Step` records:

- ``grad`` builds a first-order graph only (no ``create_graph``): pass 1 of ``tesla``
  and ``exact`` keeps nothing alive between steps.
- ``vjp`` builds one double-backward graph for one step and frees it on return, so
  activation memory does not depend on the number of steps.
- augmentation parameters are drawn from the step's seed once and recorded; pass 2
  replays the recorded parameters on a fresh copy of the batch instead of keeping the
  augmented batch and its graph alive (the published TESLA code keeps them).
- ``unrolled`` is MTT's autograd-through-all-steps reference, kept for testing and
  benchmarking: its memory grows with the number of steps, by design.

Labels are class ids (N,), probabilities (N, K), or learned logits (N, K) softmaxed in
the loss (``learned_labels=True``), in which case the data gradient also covers them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from tesla.adapters.torch.functional import FlatView
from tesla.domain.ports import VJP, Step


class TorchCompute:
    """Compute port for one iteration.

    Args:
        view: functional view of the student network.
        images: synthetic images (N, C, H, W); never modified here.
        labels: (N,) int64 class ids, (N, K) probabilities, or (N, K) logits when
            ``learned_labels`` is set.
        augment: an object with ``sample(shape, generator, device)`` and
            ``apply(x, params)`` (``tesla.adapters.torch.augment.DSA``), or None.
        learned_labels: labels are logits to learn; ``data_grad`` returns their gradient.
        offload: keep the N pass-1 weight vectors in (pinned) host memory instead of on
            the device, so device memory does not grow with the number of steps.
    """

    def __init__(self, view: FlatView, images: torch.Tensor, labels: torch.Tensor, *, augment: Any = None,
                 learned_labels: bool = False, offload: bool = False) -> None:
        self.view = view
        self.images = images.detach()
        self.labels = labels.detach()
        self.augment = augment
        self.learned_labels = learned_labels
        if learned_labels and not (labels.dim() == 2 and labels.is_floating_point()):
            raise ValueError("learned labels must be (N, K) float logits")
        self.offload = offload
        self._aug_params: dict[tuple[int, int], Any] = {}
        self._images_grad = torch.zeros_like(self.images)
        self._labels_grad = torch.zeros_like(self.labels) if learned_labels else None

    # -- helpers -------------------------------------------------------------------
    def _index(self, step: Step) -> torch.Tensor:
        return torch.as_tensor(step.batch, dtype=torch.long, device=self.images.device)

    def _augmented(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        if self.augment is None or step.aug_seed is None:
            return x
        key = (step.index, step.aug_seed)
        params = self._aug_params.get(key)
        if params is None:  # draw once, record, replay from the record afterwards
            gen = torch.Generator().manual_seed(step.aug_seed)
            params = self.augment.sample(tuple(x.shape), gen, device=x.device)
            self._aug_params[key] = params
        return self.augment.apply(x, params)

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        return F.softmax(y, dim=1) if self.learned_labels else y

    def _loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, step: Step) -> torch.Tensor:
        logits = self.view(w, self._augmented(x, step))
        return F.cross_entropy(logits, self._targets(y))

    def keep(self, w: torch.Tensor) -> torch.Tensor:
        """Store a pass-1 weight vector: a host copy with ``offload`` (device memory flat in N)."""
        if not self.offload or w.device.type == "cpu":
            return w
        host = torch.empty(w.shape, dtype=w.dtype, pin_memory=torch.cuda.is_available())
        return host.copy_(w, non_blocking=True)

    def _on_device(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach().to(self.images.device, non_blocking=True)

    # -- the port ------------------------------------------------------------------
    def grad(self, w: torch.Tensor, step: Step) -> torch.Tensor:
        idx = self._index(step)
        with torch.enable_grad():
            w_ = self._on_device(w).requires_grad_(True)
            loss = self._loss(w_, self.images[idx], self.labels[idx], step)
            (g,) = torch.autograd.grad(loss, w_)
        return g

    def vjp(self, w: torch.Tensor, step: Step, v: torch.Tensor, *, wrt_weights: bool) -> VJP:
        idx = self._index(step)
        with torch.enable_grad():
            w_ = self._on_device(w).requires_grad_(True)
            x = self.images[idx].requires_grad_(True)
            y = self.labels[idx]
            if self.learned_labels:
                y = y.requires_grad_(True)
            loss = self._loss(w_, x, y, step)
            (g,) = torch.autograd.grad(loss, w_, create_graph=True)
            s = torch.dot(g, v.detach())
            inputs = [x] + ([y] if self.learned_labels else []) + ([w_] if wrt_weights else [])
            grads = torch.autograd.grad(s, inputs, allow_unused=True)
        dx = grads[0]
        dy = grads[1] if self.learned_labels else None
        hvp = grads[-1] if wrt_weights else None
        if hvp is None and wrt_weights:
            hvp = torch.zeros_like(w_)
        return VJP(data=(idx, dx, dy), hvp=hvp, dot=float(s.detach()), grad=g.detach())

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a.reshape(-1), b.reshape(-1)))

    def select(self, vec: torch.Tensor, start: int) -> torch.Tensor:
        """``vec`` (P,) with entries ``[:start]`` zeroed: PAD's parameter selection
        (:mod:`tesla.domain.selection`); a new tensor, ``vec`` is left as it is."""
        out = vec.clone()
        out[:start] = 0
        return out

    def accumulate(self, step: Step, data_grad: Any, scale: float) -> None:
        idx, dx, dy = data_grad
        if dx is not None:
            self._images_grad.index_add_(0, idx, dx, alpha=scale)
        if dy is not None and self._labels_grad is not None:
            self._labels_grad.index_add_(0, idx, dy, alpha=scale)

    def data_grad(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self._images_grad, self._labels_grad

    def unrolled(self, start: torch.Tensor, target: torch.Tensor, alpha: float, steps: Sequence[Step]) -> tuple[float, float]:
        with torch.enable_grad():
            X = self.images.clone().requires_grad_(True)
            Y = self.labels.clone().requires_grad_(True) if self.learned_labels else self.labels
            a = torch.tensor(float(alpha), dtype=start.dtype, device=start.device, requires_grad=True)
            w = start.detach().requires_grad_(True)
            for step in steps:
                idx = self._index(step)
                loss = self._loss(w, X[idx], Y[idx], step)
                (g,) = torch.autograd.grad(loss, w, create_graph=True)
                w = w - a * g
            distance = torch.sum((start - target) ** 2)
            L = torch.sum((w - target) ** 2) / distance
            inputs = [X, a] + ([Y] if self.learned_labels else [])
            grads = torch.autograd.grad(L, inputs)
        self._images_grad.add_(grads[0])
        if self.learned_labels:
            self._labels_grad.add_(grads[2])
        return float(L.detach()), float(grads[1])
