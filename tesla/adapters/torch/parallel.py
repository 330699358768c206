"""Several networks trained at once in one process: experts and evaluation networks.

Expert buffers and the evaluation protocol train many small, independent networks of
one architecture. On a GPU one ConvNet at batch 256 leaves most of the device idle, so
:func:`train_experts_parallel` and :func:`train_and_evaluate_parallel` stack the M
members' parameters (:func:`torch.func.stack_module_state`) and run them as one
network under :func:`torch.func.vmap` over :func:`torch.func.functional_call`: each
layer becomes one batched kernel over the M members (a grouped convolution), the M
losses are summed (their gradients do not interact) and one SGD optimizer steps the
stacked tensors, which is elementwise exactly what M separate optimizers do.

Same inputs, same results: every member draws its batch order and augmentation
exactly as the sequential loops in :mod:`tesla.adapters.torch.training` do for its
seed (``derive_seed(seed, "batches", epoch)``, ``derive_seed(seed, "augment")``), and the
augmentation is applied per member outside the vmap (DSA draws one op per call, which
cannot be batched). So member m equals ``train_expert(models[m], ..., seed=seeds[m])``
up to floating-point rounding of the batched kernels (tested on the CPU).

Models that vmap cannot run with the sequential semantics (BatchNorm, which writes
running statistics in its training forward; active dropout, which draws from the
global RNG) fall back to the sequential loops, member by member, with the same
signature and results.

``mode="auto"`` (the default) vmaps on CUDA only: on a 2-core CPU the vmapped path was
measured 1.6-3x *slower* than the sequential loops (the grouped convolutions vmap makes
are slower there than the separate ones), so there it runs the sequential loops.
``mode="vmap"`` forces the stacked path (the tests compare it on the CPU),
``mode="sequential"`` the loops.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from tesla.adapters.torch.batched import vmappable
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.training import (EVAL_BATCH, EpochFn, SnapshotFn, TrainingStopped, _generator,
                                           accuracy, derive_seed, eval_chunk, pieces, split_for, train_and_evaluate,
                                           train_expert)


MODES = ("auto", "vmap", "sequential")


def parallel_supported(model: nn.Module) -> bool:
    """Whether ``model``'s architecture runs vmapped with the sequential results."""
    return vmappable(model)


def _use_vmap(mode: str, models: Sequence[nn.Module], device) -> bool:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    if len(models) < 2 or not parallel_supported(models[0]) or mode == "sequential":
        return False
    return mode == "vmap" or torch.device(device).type == "cuda"


class _Stack:
    """M same-architecture modules as stacked parameters and one vmapped forward."""

    def __init__(self, models: Sequence[nn.Module], device) -> None:
        layouts = [FlatView(m).layout for m in models]
        if any(lay != layouts[0] for lay in layouts[1:]):
            raise ValueError("parallel training needs networks of one architecture: build every member "
                             "from the same ModelConfig")
        self.models = [m.to(device) for m in models]
        for m in self.models:
            m.train()
        params, buffers = stack_module_state(self.models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        # the skeleton only routes the call; the stacked tensors carry every value
        self.base = copy.deepcopy(self.models[0]).to("meta")

        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(one)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (M, B, K) of the members on their batches ``x`` (M, B, C, H, W)."""
        return self._forward(self.params, self.buffers, x)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-member mean cross-entropy (M,), logits (M, B, K)); y is (M, B) ids or (M, B, K) probs."""
        logits = self(x)
        m, b = logits.shape[:2]
        target = y.reshape(m * b) if y.dim() == 2 else y.reshape(m * b, -1)
        per = F.cross_entropy(logits.reshape(m * b, -1), target, reduction="none").view(m, b)
        return per.mean(dim=1), logits

    def write_back(self, i: Optional[int] = None) -> None:
        """Copy the stacked values into the member modules (all, or member ``i``)."""
        members = range(len(self.models)) if i is None else [i]
        with torch.no_grad():
            for j in members:
                for name, p in self.models[j].named_parameters():
                    p.copy_(self.params[name][j])
                for name, b in self.models[j].named_buffers():
                    if name in self.buffers:
                        b.copy_(self.buffers[name][j])


def _each(callbacks, m: int):
    if callbacks is None:
        return [None] * m
    callbacks = list(callbacks)
    if len(callbacks) != m:
        raise ValueError(f"{len(callbacks)} callbacks for {m} networks: pass one per network (or None)")
    return callbacks


def train_experts_parallel(
    models: Sequence[nn.Module],
    data,
    cfg,
    *,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    augment=None,
    on_snapshot: Optional[Sequence[Optional[SnapshotFn]]] = None,
    on_epoch: Optional[Sequence[Optional[EpochFn]]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    mode: str = "auto",
) -> list[list[float]]:
    """:func:`~tesla.adapters.torch.training.train_expert` for M networks at once.

    Args:
        models: freshly initialised networks of one architecture (member m built with its
            seed); trained in place, moved to ``device``.
        data, cfg, device, augment, should_stop: as ``train_expert`` (shared).
        seeds: one seed per member (batch order and augmentation), as ``train_expert``'s seed.
        on_snapshot, on_epoch: one ``train_expert`` callback per member (or None); the
            ``seconds`` an epoch reports is the wall time of all members' epoch together.
        mode: ``auto`` (vmap on CUDA, sequential elsewhere), ``vmap`` or ``sequential``
            (module docstring).

    Returns:
        one ``train_expert`` history per member.

    Raises:
        TrainingStopped: ``should_stop()`` returned True between epochs (every member's
            snapshots so far stay valid).
        FloatingPointError: a member's loss became NaN or infinite.
    """
    m = len(models)
    if len(seeds) != m:
        raise ValueError(f"{len(seeds)} seeds for {m} networks: pass one seed per network")
    snaps, epochs_cb = _each(on_snapshot, m), _each(on_epoch, m)
    if not _use_vmap(mode, models, device):
        return [train_expert(models[i], data, cfg, seed=seeds[i], device=device, augment=augment,
                             on_snapshot=snaps[i], on_epoch=epochs_cb[i], should_stop=should_stop)
                for i in range(m)]
    stack = _Stack(models, device)
    optimizer = torch.optim.SGD(list(stack.params.values()), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    aug_gens = [_generator(derive_seed(s, "augment")) for s in seeds]
    histories: list[list[float]] = [[] for _ in range(m)]

    def evaluate_and_snapshot(epoch: int) -> list[Optional[float]]:
        stack.write_back()
        due = epoch == cfg.epochs or (cfg.eval_every > 0 and epoch % cfg.eval_every == 0)
        accs = []
        for i, model in enumerate(stack.models):
            acc = accuracy(model, data.test_batches(EVAL_BATCH), device) if due else None
            histories[i].append(math.nan if acc is None else acc)
            if snaps[i] is not None:
                snaps[i](epoch, FlatView(model).flatten().to(device="cpu", dtype=torch.float32), acc)
            accs.append(acc)
        return accs

    evaluate_and_snapshot(0)
    for epoch in range(1, cfg.epochs + 1):
        if should_stop is not None and should_stop():
            raise TrainingStopped(epoch - 1)
        started = time.perf_counter()
        loss_sum = torch.zeros(m, dtype=torch.float64)
        correct = torch.zeros(m, dtype=torch.long)
        seen = 0
        streams = [data.train_batches(cfg.batch_size, seed=derive_seed(s, "batches", epoch)) for s in seeds]
        for batches in zip(*streams):
            xs, ys = [], []
            for i, (x, y) in enumerate(batches):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                xs.append(augment(x, aug_gens[i]) if augment is not None else x)
                ys.append(y)
            y = torch.stack(ys)
            losses, logits = stack.losses(torch.stack(xs), y)
            if not torch.isfinite(losses).all():
                bad = int((~torch.isfinite(losses)).nonzero()[0])
                raise FloatingPointError(f"expert loss is {float(losses[bad])} at epoch {epoch} (member {bad}): "
                                         f"lower the expert lr (now {cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            n = int(y.shape[1])
            loss_sum += losses.detach().double().cpu() * n
            correct += (logits.detach().argmax(dim=2) == y).sum(dim=1).cpu()
            seen += n
        accs = evaluate_and_snapshot(epoch)
        seconds = time.perf_counter() - started
        for i in range(m):
            if epochs_cb[i] is not None:
                epochs_cb[i](epoch, cfg.epochs, float(loss_sum[i]) / max(seen, 1),
                             100.0 * int(correct[i]) / max(seen, 1), accs[i], seconds)
    return histories


def train_and_evaluate_parallel(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    data,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    augment=None,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    lr_decay_epoch: Optional[int] = None,
    mode: str = "auto",
    on_epoch: Optional[Callable[[int, int], None]] = None,
    micro_batch: Optional[int] = None,
) -> list[float]:
    """:func:`~tesla.adapters.torch.training.train_and_evaluate` for M networks at once
    (``micro_batch`` as there: each stacked batch in pieces of at most that many images).

    Every member trains on the same ``(images, labels)`` with its own seed (batch order
    and augmentation as ``train_and_evaluate(..., seed=seeds[m])``). ``mode`` as in
    :func:`train_experts_parallel`. ``on_epoch(member, epoch)`` follows each member's
    epochs (1-based), for progress.

    Returns:
        top-1 test accuracy (%) per member.
    """
    m = len(models)
    if len(seeds) != m:
        raise ValueError(f"{len(seeds)} seeds for {m} networks: pass one seed per network")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels: they must match")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {epochs})")
    if not _use_vmap(mode, models, device):
        return [train_and_evaluate(models[i], images, labels, data, epochs=epochs, lr=lr, momentum=momentum,
                                   weight_decay=weight_decay, batch_size=batch_size, augment=augment,
                                   seed=seeds[i], device=device, lr_decay_epoch=lr_decay_epoch,
                                   on_epoch=None if on_epoch is None else (lambda e, i=i: on_epoch(i, e)),
                                   micro_batch=micro_batch)
                for i in range(m)]
    split = split_for(models[0], micro_batch)
    stack = _Stack(models, device)
    x_all = images.detach().to(device, dtype=torch.float32).clone()
    y_all = labels.detach().to(device)
    y_all = y_all.long() if y_all.dim() == 1 else y_all.float()
    n = x_all.shape[0]
    decay_at = epochs // 2 if lr_decay_epoch is None else lr_decay_epoch
    optimizer = torch.optim.SGD(list(stack.params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    aug_gens = [_generator(derive_seed(s, "augment")) for s in seeds]
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        orders = [torch.randperm(n, generator=_generator(derive_seed(s, "batches", epoch))).to(device)
                  for s in seeds]
        for idxs in zip(*(torch.split(o, min(batch_size, n)) for o in orders)):
            xs = []
            for i, idx in enumerate(idxs):
                x = x_all[idx]
                xs.append(augment(x, aug_gens[i]) if augment is not None else x)
            x, y = torch.stack(xs), torch.stack([y_all[idx] for idx in idxs])
            optimizer.zero_grad(set_to_none=True)
            for xp, yp in pieces(x, y, split, dim=1):
                losses, _ = stack.losses(xp, yp)
                (losses.sum() * (xp.shape[1] / x.shape[1])).backward()
            optimizer.step()
        for i in range(m if on_epoch is not None else 0):
            on_epoch(i, epoch + 1)
    stack.write_back()
    return [accuracy(model, data.test_batches(eval_chunk(micro_batch)), device) for model in stack.models]
