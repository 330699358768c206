"""Batched second pass and precision options for the torch compute.

``first_order`` (the ``tesla`` engine) needs, after pass 1, one VJP per student step:
``d(v . g_i(w_i, X[b_i]))/dX`` with every ``w_i`` fixed. The N VJPs are independent,
so :class:`BatchedTorchCompute` computes ``k`` of them together (``vjp_many``): the k
weight vectors are stacked to (k, P), the k (augmented) batches to (k, B, C, H, W), and
the network runs once under :func:`torch.func.vmap` over both, which turns every layer
into one batched kernel (a convolution with k weight sets becomes one grouped
convolution). Summing the k per-step losses and differentiating with respect to the
stacked weights gives the k step gradients as rows (the rows do not interact), and one
more backward of ``sum_i g_i . v`` gives the k data gradients. Activation memory is k
times one step's: it depends on the chunk ``k`` (a config value), never on N. With
``micro_batch`` the k batches are cut into pieces at the same rows and each piece runs
this way in turn (size-weighted, as in :class:`TorchCompute`): k times one piece's.

Why vmap over the stacked weights rather than ``torch.func.grad`` nested in ``vmap``:
augmentation differs per step (DSA draws one op per call), so it cannot be vmapped; it
is replayed per step from the recorded parameters, outside the vmap, and ordinary
autograd carries the data gradient back through it. Steps whose batches differ in size
(the last cut of a permutation) are grouped by size. Models with buffers that a forward
mutates (BatchNorm's running statistics) or with dropout fall back to one VJP at a
time, which gives the same numbers; so does ``bf16``, since autocast does not reach
inside vmap.

Precision options (all off by default; the bench measures each and reports its error):

- ``precision="tf32"``: TensorFloat-32 matmuls/convolutions on CUDA (no effect on CPU);
  the global flags are set for the duration of each call and restored afterwards.
- ``precision="bf16"``: the network's forward runs under ``torch.autocast`` in bfloat16
  (the loss and everything after the logits stay in the images' dtype).
- ``channels_last=True``: the images enter the network in channels-last layout.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.microbatch import slice_params
from tesla.domain.ports import VJP, Step

PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("auto", "vmap", "loop")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    return precision


@contextlib.contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """Allow (or not) TF32 in CUDA matmuls and cuDNN convolutions inside the block only."""
    if not enabled:
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def vmappable(module: nn.Module) -> bool:
    """Whether a forward of ``module`` can run under vmap over stacked weights with the
    same result as one member at a time: no BatchNorm (its training forward writes running
    statistics into shared buffers) and no active dropout (global RNG draws)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return False
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return False
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            return False
    return True


class BatchedTorchCompute(TorchCompute):
    """:class:`TorchCompute` with ``vjp_many`` (batched pass 2) and precision options.

    Args:
        view, images, labels, augment, learned_labels, offload, micro_batch, set_on, device:
            as :class:`TorchCompute` (``vjp_many`` takes its steps in micro-batches too).
        precision: ``fp32`` (default), ``tf32`` (CUDA) or ``bf16`` (autocast forward).
        channels_last: feed the network channels-last images.
        mode: how ``vjp_many`` computes: ``vmap`` (stacked weights, one batched forward),
            ``loop`` (one VJP after another) or ``auto`` (default): ``vmap`` on CUDA,
            ``loop`` on the CPU, where the grouped convolutions vmap produces were
            measured slower than the separate ones (``tesla bench speed``).

    Example:
        >>> compute = BatchedTorchCompute(view, images, labels, augment=DSA())
        >>> matching.first_order(compute, start, target, lr, steps, chunk=8)
    """

    def __init__(self, view: FlatView, images: torch.Tensor, labels: torch.Tensor, *, augment: Any = None,
                 learned_labels: bool = False, precision: str = "fp32", channels_last: bool = False,
                 mode: str = "auto", offload: bool = False, micro_batch: Optional[int] = None,
                 set_on: str = "device", device: Any = None) -> None:
        super().__init__(view, images, labels, augment=augment, learned_labels=learned_labels, offload=offload,
                         micro_batch=micro_batch, set_on=set_on, device=device)
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
        if mode == "auto":
            mode = "vmap" if self.device.type == "cuda" else "loop"
        self.mode = mode
        # autocast does not reach inside vmap (the stacked forward would silently run in
        # fp32), so bf16 computes the VJPs one at a time
        self.batched = mode == "vmap" and vmappable(view.module) and self.precision != "bf16"

    # -- precision -------------------------------------------------------------------
    def _forward(self, forward, *args) -> torch.Tensor:
        """Run the network forward with the configured layout and autocast; logits in the
        images' dtype so the loss and its derivatives are taken at full precision."""
        x = args[-1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            args = args[:-1] + (x,)
        if self.precision == "bf16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                out = forward(*args)
            return out.to(self.images.dtype)
        return forward(*args)

    def _loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, params: Any) -> torch.Tensor:
        logits = self._forward(self.view, w, self._augmented(x, params))
        return F.cross_entropy(logits, self._targets(y))

    def _scope(self):
        return tf32_enabled(self.precision == "tf32")

    def grad(self, w: torch.Tensor, step: Step) -> torch.Tensor:
        with self._scope():
            return super().grad(w, step)

    def vjp(self, w: torch.Tensor, step: Step, v: torch.Tensor, *, wrt_weights: bool) -> VJP:
        with self._scope():
            return super().vjp(w, step, v, wrt_weights=wrt_weights)

    def unrolled(self, start, target, alpha, steps):
        with self._scope():
            return super().unrolled(start, target, alpha, steps)

    # -- batched pass 2 ----------------------------------------------------------------
    def vjp_many(self, ws: Sequence[torch.Tensor], steps: Sequence[Step], v: torch.Tensor) -> list[VJP]:
        """First-order VJPs of several independent steps at once.

        Args:
            ws: the weights (P,) at which each step was taken.
            steps: the steps (batches and augmentation seeds), same length as ``ws``.
            v: the cotangent (P,) shared by all of them.

        Returns:
            one :class:`VJP` per step, in order, equal to ``vjp(w, step, v,
            wrt_weights=False)`` up to rounding (``hvp`` is None).
        """
        if len(ws) != len(steps):
            raise ValueError(f"vjp_many got {len(ws)} weight vectors for {len(steps)} steps: pass one per step")
        if not self.batched or len(steps) == 1:
            return [self.vjp(w, s, v, wrt_weights=False) for w, s in zip(ws, steps)]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, step in enumerate(steps):
            groups[len(step.batch)].append(i)
        out: list[Optional[VJP]] = [None] * len(steps)
        with self._scope():
            for members in groups.values():
                if len(members) == 1:
                    i = members[0]
                    out[i] = super().vjp(ws[i], steps[i], v, wrt_weights=False)
                    continue
                for i, res in zip(members, self._stacked([ws[i] for i in members], [steps[i] for i in members], v)):
                    out[i] = res
        return out  # type: ignore[return-value]

    def _stacked(self, ws: Sequence[torch.Tensor], steps: Sequence[Step], v: torch.Tensor) -> list[VJP]:
        """k steps with equal batch sizes B through one vmapped forward and double backward
        per micro-batch: piece j stacks rows j of every step's batch (k, m, C, H, W)."""
        view = self.view
        buffers = dict(view.module.named_buffers())

        def one(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(view.module, (view.unflatten(w), buffers), (x,))

        idxs = [self._index(s) for s in steps]
        k, n = len(steps), len(idxs[0])
        params = [self._step_params(s, n) for s in steps]
        v = v.detach().to(self.device)
        dxs: list[list[torch.Tensor]] = [[] for _ in steps]
        dys: list[list[torch.Tensor]] = [[] for _ in steps]
        dots = torch.zeros(k, dtype=v.dtype, device=v.device)
        with torch.enable_grad():
            W = torch.stack([self._on_device(w) for w in ws]).requires_grad_(True)  # (k, P)
            for a, b in self._pieces(n):
                xs = [self._gather(self.images, idx[a:b]).requires_grad_(True) for idx in idxs]
                ys = [self._gather(self.labels, idx[a:b]) for idx in idxs]
                if self.learned_labels:
                    ys = [y.requires_grad_(True) for y in ys]
                cut = [p if b - a == n else slice_params(p, a, b) for p in params]
                X = torch.stack([self._augmented(x, p) for x, p in zip(xs, cut)])  # (k, m, C, H, W)
                logits = self._forward(vmap(one), W, X)  # (k, m, K)
                m = logits.shape[1]
                Y = torch.stack([self._targets(y) for y in ys])
                # per-step mean cross-entropy, summed over steps: row i of dL/dW is g_i
                if Y.dim() == 2:
                    per = F.cross_entropy(logits.reshape(k * m, -1), Y.reshape(-1), reduction="none").view(k, m)
                else:
                    per = F.cross_entropy(logits.reshape(k * m, -1), Y.reshape(k * m, -1), reduction="none").view(k, m)
                loss = per.mean(dim=1).sum()
                if m != n:  # this piece's share of every step's mean
                    loss = loss * (m / n)
                (G,) = torch.autograd.grad(loss, W, create_graph=True)  # (k, P)
                d = G @ v  # (k,)
                inputs = xs + (ys if self.learned_labels else [])
                grads = torch.autograd.grad(d.sum(), inputs, allow_unused=True)
                dots += d.detach()
                for i in range(k):
                    dxs[i].append(grads[i])
                    if self.learned_labels:
                        dys[i].append(grads[k + i])
                del X, logits, per, loss, G, d, grads, xs, ys  # free this piece's graph before the next
        dots_list = dots.tolist()
        out = []
        for i, idx in enumerate(idxs):
            dx = torch.cat(dxs[i]) if len(dxs[i]) > 1 else dxs[i][0]
            dy = (torch.cat(dys[i]) if len(dys[i]) > 1 else dys[i][0]) if self.learned_labels else None
            out.append(VJP(data=(idx, dx, dy), hvp=None, dot=float(dots_list[i])))
        return out
