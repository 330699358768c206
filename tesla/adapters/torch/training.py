"""Plain supervised training loops: expert trajectories and the evaluation protocol.

Two loops share one shape (SGD over shuffled batches, DSA on every batch, cross-entropy)
but answer different questions:

- :func:`train_expert` makes a teacher trajectory for trajectory matching with the
  published buffer recipe: it hands the flat parameter vector to a callback
  after init and after every epoch, so a store can write snapshots as they come and a
  crash loses at most one epoch.
- :func:`train_and_evaluate` is the field's evaluation protocol: a fresh
  network trained on a (synthetic or random-real) set with momentum, weight decay and a
  x0.1 lr drop half-way, then top-1 accuracy on the real test set. Labels may be class
  ids or probabilities (soft labels from SLA); ``F.cross_entropy`` takes both.

Every random choice comes from a seed: batch order from a generator seeded per epoch,
augmentation from a generator seeded once per run. On the CPU the same seed gives
bitwise-identical snapshots. Nothing reseeds the global RNG.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tesla.adapters.torch.functional import FlatView
from tesla.domain.errors import TrainingStopped  # raised here, caught by the experts service

EVAL_BATCH = 512

SnapshotFn = Callable[[int, torch.Tensor, Optional[float]], None]
EpochFn = Callable[[int, int, float, float, Optional[float], float], None]


def derive_seed(seed: int, *keys: object) -> int:
    """An independent 63-bit seed for (seed, keys): e.g. the batch order of one epoch.

    Hashing keeps streams for different epochs/purposes unrelated, where ``seed + epoch``
    would make expert 0's epoch 1 reuse expert 1's epoch 0.
    """
    digest = hashlib.blake2b(repr((int(seed),) + keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str) -> float:
    """Top-1 accuracy in percent of ``model`` over (x (B, C, H, W), y (B,)) batches.

    Runs in eval mode without gradients and restores the model's previous mode.
    """
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    try:
        for x, y in batches:
            logits = model(x.to(device, non_blocking=True))
            correct += int((logits.argmax(dim=1).cpu() == y).sum())
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy over an empty set of batches: the test set has no images")
    return 100.0 * correct / total


def _snapshot(view: FlatView) -> torch.Tensor:
    return view.flatten().to(device="cpu", dtype=torch.float32)


def train_expert(
    model: nn.Module,
    data,
    cfg,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    augment=None,
    on_snapshot: Optional[SnapshotFn] = None,
    on_epoch: Optional[EpochFn] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> list[float]:
    """Train one expert on real data and hand out its trajectory.

    SGD(cfg.lr, cfg.momentum, cfg.weight_decay) for ``cfg.epochs`` epochs of
    ``data.train_batches(cfg.batch_size, seed=derive_seed(seed, "batches", epoch))``,
    with ``augment`` (a DSA) applied to every batch from a generator seeded by ``seed``,
    and cross-entropy loss. The model's own initialisation is the caller's (build it
    with a seed).

    Args:
        model: a freshly initialised network; moved to ``device``.
        data: a DataSource (``train_batches``, ``test_batches``).
        cfg: an :class:`~tesla.domain.config.ExpertConfig` (epochs, lr, momentum,
            weight_decay, batch_size, eval_every).
        seed: this expert's seed (batch order and augmentation).
        device: where to train.
        augment: None, or a DSA called as ``augment(x, generator)``.
        on_snapshot: ``on_snapshot(epoch, flat, test_acc)`` after init (epoch 0) and after
            every epoch; ``flat`` is (P,) float32 on the CPU in ``parameters()`` order;
            ``test_acc`` is None for epochs that were not evaluated.
        on_epoch: ``on_epoch(epoch, epochs, train_loss, train_acc, test_acc, seconds)``
            after every epoch (the fields of :class:`tesla.domain.events.Epoch`); losses and
            accuracies are over the augmented training batches, ``seconds`` is the epoch's
            wall time including its evaluation.
        should_stop: checked between epochs; when it returns True the loop raises
            :class:`TrainingStopped` (the snapshots handed out so far stay valid, the
            trajectory is incomplete).

    Returns:
        Test accuracy (%) after each epoch 0..epochs, ``nan`` where not evaluated (the test
        set is evaluated at epoch 0 and every ``cfg.eval_every`` epochs when eval_every > 0,
        and always after the last epoch).

    Raises:
        TrainingStopped: ``should_stop()`` returned True.
        FloatingPointError: the training loss became NaN or infinite.
    """
    model.to(device)
    view = FlatView(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    aug_gen = _generator(derive_seed(seed, "augment"))

    def evaluate(epoch: int) -> Optional[float]:
        due = epoch == cfg.epochs or (cfg.eval_every > 0 and epoch % cfg.eval_every == 0)
        return accuracy(model, data.test_batches(EVAL_BATCH), device) if due else None

    history: list[float] = []
    acc0 = evaluate(0)
    history.append(math.nan if acc0 is None else acc0)
    if on_snapshot is not None:
        on_snapshot(0, _snapshot(view), acc0)

    for epoch in range(1, cfg.epochs + 1):
        if should_stop is not None and should_stop():
            raise TrainingStopped(epoch - 1)
        started = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in data.train_batches(cfg.batch_size, seed=derive_seed(seed, "batches", epoch)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, aug_gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"expert loss is {loss.item()} at epoch {epoch}: lower the expert lr (now {cfg.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int(y.shape[0])
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            seen += n
        test_acc = evaluate(epoch)
        history.append(math.nan if test_acc is None else test_acc)
        if on_snapshot is not None:
            on_snapshot(epoch, _snapshot(view), test_acc)
        if on_epoch is not None:
            on_epoch(epoch, cfg.epochs, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), test_acc,
                     time.perf_counter() - started)
    return history


def train_and_evaluate(
    model: nn.Module,
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
    seed: int = 0,
    device: torch.device | str = "cpu",
    lr_decay_epoch: Optional[int] = None,
    on_epoch: Optional[Callable[[int], None]] = None,
    micro_batch: Optional[int] = None,
) -> float:
    """Train a fresh network on ``(images, labels)`` and return its test accuracy.

    Args:
        model: a freshly initialised network; moved to ``device``.
        images: (N, C, H, W) training images in model space (detached, copied).
        labels: (N,) class ids, or (N, K) class probabilities (soft labels).
        data: supplies ``test_batches`` (the real test set).
        epochs: training epochs; the lr is multiplied by 0.1 once ``epochs // 2`` epochs
            are done (or ``lr_decay_epoch``).
        lr, momentum, weight_decay, batch_size: SGD settings (batch capped at N).
        augment: None, or a DSA applied to every batch as ``augment(x, generator)``.
        seed: batch order and augmentation.
        device: where to train.
        on_epoch: ``on_epoch(epoch)`` after each epoch (1-based), for progress.
        micro_batch: compute each batch's gradient in pieces of at most this many images
            (activation memory bounded by it; the same gradient to rounding, since the
            batch's loss is the size-weighted sum of the pieces' means) and test in
            chunks of at most this many; None: whole batches. A network with batch norm
            always trains on whole batches (a split would change its statistics).

    Returns:
        Top-1 accuracy (%) on ``data.test_batches``.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels: they must match")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {epochs})")
    model.to(device)
    split = split_for(model, micro_batch)
    x_all = images.detach().to(device, dtype=torch.float32).clone()
    # Class ids for hard labels, float probabilities for soft ones: cross_entropy takes both.
    y_all = labels.detach().to(device)
    y_all = y_all.long() if y_all.dim() == 1 else y_all.float()
    n = x_all.shape[0]
    decay_at = epochs // 2 if lr_decay_epoch is None else lr_decay_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    aug_gen = _generator(derive_seed(seed, "augment"))
    model.train()
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(n, generator=_generator(derive_seed(seed, "batches", epoch))).to(device)
        for idx in torch.split(order, min(batch_size, n)):
            x, y = x_all[idx], y_all[idx]
            if augment is not None:
                x = augment(x, aug_gen)  # the whole batch's augmentation, then its pieces
            optimizer.zero_grad(set_to_none=True)
            for xp, yp in pieces(x, y, split):
                (F.cross_entropy(model(xp), yp) * (xp.shape[0] / x.shape[0])).backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return accuracy(model, data.test_batches(eval_chunk(micro_batch)), device)


def eval_chunk(micro_batch: Optional[int]) -> int:
    """Test images per forward: :data:`EVAL_BATCH`, or fewer under a micro-batch."""
    return EVAL_BATCH if micro_batch is None else max(1, min(EVAL_BATCH, micro_batch))


def split_for(model: nn.Module, micro_batch: Optional[int]) -> Optional[int]:
    """The piece size a batch is trained in: None (whole) without a micro-batch or for a
    network with batch norm."""
    from tesla.adapters.torch.microbatch import has_batch_norm

    if micro_batch is None or has_batch_norm(model):
        return None
    return max(1, int(micro_batch))


def pieces(x: torch.Tensor, y: torch.Tensor, split: Optional[int], dim: int = 0):
    """``(x, y)`` whole, or cut along ``dim`` into pieces of at most ``split``."""
    if split is None or x.shape[dim] <= split:
        return [(x, y)]
    return list(zip(x.split(split, dim=dim), y.split(split, dim=dim)))
