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

Micro-batches (``micro_batch``): a step's loss is a mean over its images, so with
per-sample normalisation every quantity above is the size-weighted sum of the same
quantity over pieces of the batch (:mod:`tesla.adapters.torch.microbatch`). Each piece's
graph is built, differentiated and freed before the next, so activation memory is that
of ``micro_batch`` images, not of the batch. The augmentation is still drawn once per
step for the whole batch and cut per piece, so the numbers do not depend on the piece
size (to rounding). ``unrolled`` takes its steps in pieces too (same numbers), but it
keeps every piece's graph for its final backward, so its memory does not shrink.

Where the set lives (``set_on``): ``device`` (default) computes where the images are;
``host`` leaves the images, labels and the gradient accumulator in host memory and
computes on ``device`` (default: the network's): each piece gathers its rows to the
device (through a page-locked buffer on CUDA), and ``accumulate`` scatters their
gradient back into the host accumulator. Device memory then holds the network, the
weight vectors and one piece's rows and activations, whatever the size of the set.

Labels are class ids (N,), probabilities (N, K), or learned logits (N, K) softmaxed in
the loss (``learned_labels=True``), in which case the data gradient also covers them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.microbatch import check_micro_batch, check_set_on, module_device, pieces, slice_params
from tesla.domain.errors import ConfigError
from tesla.domain.ports import VJP, Step


class TorchCompute:
    """Compute port for one iteration.

    Args:
        view: functional view of the student network.
        images: synthetic images (N, C, H, W); never modified here.
        labels: (N,) int64 class ids, (N, K) probabilities, or (N, K) logits when
            ``learned_labels`` is set.
        augment: an object with ``sample(shape, generator, device)`` and
            ``apply(x, params)`` (``tesla.adapters.torch.augment.DSA``), or None. With
            ``micro_batch`` its parameters must be cuttable by rows (``DSAParams.rows``
            or a mapping of per-sample tensors).
        learned_labels: labels are logits to learn; ``data_grad`` returns their gradient.
        offload: keep the N pass-1 weight vectors in (pinned) host memory instead of on
            the device, so device memory does not grow with the number of steps.
        micro_batch: compute each step in pieces of at most this many images (None: the
            whole batch at once). Refused (ConfigError) for a model with batch norm.
        set_on: ``device`` (the images are where the steps compute) or ``host`` (they stay
            where they are, normally host memory, and each step gathers its rows).
        device: where the steps compute with ``set_on='host'`` (default: where the
            network's parameters are). With ``set_on='device'`` it may only name the
            images' device type.

    Example:
        >>> compute = TorchCompute(view, state.images, labels, augment=DSA(), micro_batch=50,
        ...                        set_on="host", device="cuda")
        >>> matching.exact(compute, start, target, lr, steps)
        >>> images_grad, labels_grad = compute.data_grad()   # in host memory, like the set
    """

    def __init__(self, view: FlatView, images: torch.Tensor, labels: torch.Tensor, *, augment: Any = None,
                 learned_labels: bool = False, offload: bool = False, micro_batch: Optional[int] = None,
                 set_on: str = "device", device: Any = None) -> None:
        self.view = view
        self.images = images.detach()
        self.labels = labels.detach()
        self.augment = augment
        self.learned_labels = learned_labels
        if learned_labels and not (labels.dim() == 2 and labels.is_floating_point()):
            raise ValueError("learned labels must be (N, K) float logits")
        self.offload = offload
        self.micro_batch = check_micro_batch(view.module, micro_batch)
        self.set_on = check_set_on(set_on)
        self.device = self._compute_device(device)
        self._aug_params: dict[tuple[int, int], Any] = {}
        # the accumulators live with the set (host memory for set_on='host'); scatter adds into them
        self._images_grad = torch.zeros_like(self.images)
        self._labels_grad = torch.zeros_like(self.labels) if learned_labels else None

    def _compute_device(self, device: Any) -> torch.device:
        if self.set_on == "host":
            return torch.device(device) if device is not None else module_device(self.view.module, self.images.device)
        if device is not None and torch.device(device).type != self.images.device.type:
            raise ConfigError(f"the synthetic images are on {self.images.device} but the compute was asked to run on "
                              f"{device}: move the set there or use set_on='host'")
        return self.images.device

    # -- helpers -------------------------------------------------------------------
    def _index(self, step: Step) -> torch.Tensor:
        """The step's rows (B,), on the set's device (they gather and scatter there)."""
        return torch.as_tensor(step.batch, dtype=torch.long, device=self.images.device)

    def _pieces(self, n: int) -> list[tuple[int, int]]:
        return pieces(n, self.micro_batch)

    def _gather(self, source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of ``source`` (the set, or a differentiable copy of it) on the compute device.

        From host memory to CUDA the rows are gathered straight into page-locked memory and
        copied asynchronously: gathering copies them anyway, so the set itself need not be
        pinned (the caching host allocator keeps the buffer until the copy is done).
        """
        idx = idx.to(source.device)
        if source.device.type == "cpu" and self.device.type == "cuda" and not source.requires_grad:
            rows = torch.empty((len(idx), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
            torch.index_select(source, 0, idx, out=rows)
            return rows.to(self.device, non_blocking=True)
        return source[idx].to(self.device)

    def _step_params(self, step: Step, n: int) -> Any:
        """The step's augmentation parameters for its whole batch of ``n``: drawn from the
        step's seed once, recorded, replayed from the record afterwards; None without."""
        if self.augment is None or step.aug_seed is None:
            return None
        key = (step.index, step.aug_seed)
        params = self._aug_params.get(key)
        if params is None:
            gen = torch.Generator().manual_seed(step.aug_seed)
            params = self.augment.sample((n, *self.images.shape[1:]), gen, device=self.device)
            self._aug_params[key] = params
        return params

    def _augmented(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return x if params is None else self.augment.apply(x, params)

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        return F.softmax(y, dim=1) if self.learned_labels else y

    def _loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, params: Any) -> torch.Tensor:
        logits = self.view(w, self._augmented(x, params))
        return F.cross_entropy(logits, self._targets(y))

    def _piece_loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, params: Any,
                    piece: tuple[int, int], n: int) -> torch.Tensor:
        """Rows ``piece`` of a step of ``n`` images: their mean loss weighted by their share,
        so the pieces' losses (and all their derivatives) sum to the whole step's."""
        a, b = piece
        if b - a == n:  # the whole batch: exactly the unsplit computation
            return self._loss(w, x, y, params)
        return self._loss(w, x, y, slice_params(params, a, b)) * ((b - a) / n)

    def keep(self, w: torch.Tensor) -> torch.Tensor:
        """Store a pass-1 weight vector: a host copy with ``offload`` (device memory flat in N)."""
        if not self.offload or w.device.type == "cpu":
            return w
        host = torch.empty(w.shape, dtype=w.dtype, pin_memory=torch.cuda.is_available())
        return host.copy_(w, non_blocking=True)

    def _on_device(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach().to(self.device, non_blocking=True)

    # -- the port ------------------------------------------------------------------
    def grad(self, w: torch.Tensor, step: Step) -> torch.Tensor:
        idx = self._index(step)
        n = len(idx)
        params = self._step_params(step, n)
        g = None
        with torch.enable_grad():
            w_ = self._on_device(w).requires_grad_(True)
            for a, b in self._pieces(n):
                x, y = self._gather(self.images, idx[a:b]), self._gather(self.labels, idx[a:b])
                loss = self._piece_loss(w_, x, y, params, (a, b), n)
                (gk,) = torch.autograd.grad(loss, w_)
                g = gk if g is None else g.add_(gk)
                del loss, gk  # this piece's graph is gone before the next is built
        return g

    def vjp(self, w: torch.Tensor, step: Step, v: torch.Tensor, *, wrt_weights: bool) -> VJP:
        idx = self._index(step)
        n = len(idx)
        params = self._step_params(step, n)
        v = v.detach().to(self.device)
        dxs, dys = [], []
        hvp = grad = dot = None
        with torch.enable_grad():
            w_ = self._on_device(w).requires_grad_(True)
            for a, b in self._pieces(n):
                # v . g = sum_k v . g_k, and g_k depends on this piece's rows only: each
                # piece's double backward is independent of the others'
                x = self._gather(self.images, idx[a:b]).requires_grad_(True)
                y = self._gather(self.labels, idx[a:b])
                if self.learned_labels:
                    y = y.requires_grad_(True)
                loss = self._piece_loss(w_, x, y, params, (a, b), n)
                (gk,) = torch.autograd.grad(loss, w_, create_graph=True)
                s = torch.dot(gk, v)
                inputs = [x] + ([y] if self.learned_labels else []) + ([w_] if wrt_weights else [])
                grads = torch.autograd.grad(s, inputs, allow_unused=True)
                dxs.append(grads[0])
                if self.learned_labels:
                    dys.append(grads[1])
                if wrt_weights and grads[-1] is not None:
                    hvp = grads[-1] if hvp is None else hvp.add_(grads[-1])
                grad = gk.detach() if grad is None else grad.add_(gk.detach())
                dot = s.detach() if dot is None else dot + s.detach()
                del loss, gk, s, grads, x, y  # free this piece's graph before the next
        if hvp is None and wrt_weights:
            hvp = torch.zeros_like(w_)
        dx = dxs[0] if len(dxs) == 1 else torch.cat(dxs)
        dy = (dys[0] if len(dys) == 1 else torch.cat(dys)) if self.learned_labels else None
        return VJP(data=(idx, dx, dy), hvp=hvp, dot=float(dot), grad=grad)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a.reshape(-1), b.reshape(-1)))

    def select(self, vec: torch.Tensor, start: int) -> torch.Tensor:
        """``vec`` (P,) with entries ``[:start]`` zeroed: PAD's parameter selection
        (:mod:`tesla.domain.selection`); a new tensor, ``vec`` is left as it is."""
        out = vec.clone()
        out[:start] = 0
        return out

    def accumulate(self, step: Step, data_grad: Any, scale: float) -> None:
        """Scatter a step's data gradient (rows on the compute device) into the accumulator
        (with the set: host memory for ``set_on='host'``)."""
        idx, dx, dy = data_grad
        if dx is not None:
            self._images_grad.index_add_(0, idx, dx.to(self._images_grad.device), alpha=scale)
        if dy is not None and self._labels_grad is not None:
            self._labels_grad.index_add_(0, idx.to(self._labels_grad.device), dy.to(self._labels_grad.device),
                                         alpha=scale)

    def data_grad(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self._images_grad, self._labels_grad

    def unrolled(self, start: torch.Tensor, target: torch.Tensor, alpha: float, steps: Sequence[Step]) -> tuple[float, float]:
        start, target = self._on_device(start), self._on_device(target)
        with torch.enable_grad():
            X = self.images.clone().requires_grad_(True)
            Y = self.labels.clone().requires_grad_(True) if self.learned_labels else self.labels
            a = torch.tensor(float(alpha), dtype=start.dtype, device=start.device, requires_grad=True)
            w = start.detach().requires_grad_(True)
            for step in steps:
                idx = self._index(step)
                n = len(idx)
                params = self._step_params(step, n)
                g = None
                for lo, hi in self._pieces(n):
                    loss = self._piece_loss(w, self._gather(X, idx[lo:hi]), self._gather(Y, idx[lo:hi]), params,
                                            (lo, hi), n)
                    (gk,) = torch.autograd.grad(loss, w, create_graph=True)
                    g = gk if g is None else g + gk
                w = w - a * g
            distance = torch.sum((start - target) ** 2)
            L = torch.sum((w - target) ** 2) / distance
            inputs = [X, a] + ([Y] if self.learned_labels else [])
            grads = torch.autograd.grad(L, inputs)
        self._images_grad.add_(grads[0])
        if self.learned_labels:
            self._labels_grad.add_(grads[2])
        return float(L.detach()), float(grads[1])
