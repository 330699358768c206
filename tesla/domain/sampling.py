"""Seeded schedules: which expert, which start epoch, which synthetic images per step.

All randomness of an iteration flows from one ``random.Random`` the service seeds and
checkpoints, so a resumed run draws exactly what an uninterrupted one would. Batches
follow ``docs/MATHS.md``: a random permutation of the synthetic indices is cut into
chunks of ``batch_size`` taken one per step; when the chunks run out a new permutation
is drawn. Each step also gets a seed for its augmentation, so pass 2 can replay it exactly.

Trajectory points (expert, start epoch) come from a sampling strategy chosen once from
the config (:func:`sampling_for`), a value with one method ``draw(rng, iteration,
expert_ids)``:

- :class:`Uniform` (the paper): start epochs uniform in [min_start_epoch, max_start_epoch).
  With min_start_epoch 0 it draws exactly what :func:`sample_trajectory_point` always
  drew, so existing runs resume and reproduce bit for bit.
- :class:`Window` (DATM's "sequential generation"): start epochs uniform in
  [min_start_epoch, upper(it)), where the upper end opens linearly from
  ``initial_max`` to ``max_start_epoch`` over ``length`` iterations. DATM's rule, read
  from its code: ``upper = min(max, initial + int((max - initial) * it / length))``
  with ``it`` the 0-based iteration and the start drawn by ``randint(min, upper)``
  (upper exclusive); early iterations match the easy, early part of the trajectories
  and the harder, later part joins as the images mature. The integer form here,
  ``(max - initial) * it // length``, is the same number for every non-negative ``it``.
  It never opens past max_start_epoch, so ``DistillConfig.last_epoch_needed`` holds.
"""

from __future__ import annotations

import random
from typing import Optional, Protocol, Sequence

import attrs

from tesla.domain.errors import ConfigError
from tesla.domain.ports import Step


def batch_schedule(num_images: int, steps: int, batch_size: Optional[int], rng: random.Random) -> list[tuple[int, ...]]:
    """Index tuples for ``steps`` student steps over ``num_images`` synthetic images.

    Args:
        num_images: size of the synthetic set (N).
        steps: number of student steps.
        batch_size: images per step; None or >= N means every image at every step
            (in a fresh random order each step, as the published code does).
        rng: the run's seeded generator.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1 (got {num_images})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    size = num_images if batch_size is None else min(batch_size, num_images)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    out: list[tuple[int, ...]] = []
    chunks: list[tuple[int, ...]] = []
    while len(out) < steps:
        if not chunks:
            perm = list(range(num_images))
            rng.shuffle(perm)
            chunks = [tuple(perm[i:i + size]) for i in range(0, num_images, size)]
            chunks.reverse()  # pop() from the end takes them in order
        out.append(chunks.pop())
    return out


def make_steps(num_images: int, steps: int, batch_size: Optional[int], rng: random.Random, *, augment: bool) -> list[Step]:
    """The :class:`Step` records of one iteration: batches and augmentation seeds."""
    batches = batch_schedule(num_images, steps, batch_size, rng)
    return [
        Step(index=i, batch=b, aug_seed=rng.getrandbits(62) if augment else None)
        for i, b in enumerate(batches)
    ]


def steps_from_batches(batches: Sequence[Sequence[int]], rng: random.Random, *, augment: bool) -> list[Step]:
    """Steps for caller-given batches (the public API's ``batches=`` override)."""
    return [
        Step(index=i, batch=tuple(int(j) for j in b), aug_seed=rng.getrandbits(62) if augment else None)
        for i, b in enumerate(batches)
    ]


def _expert(rng: random.Random, expert_ids: Sequence[int]):
    if not expert_ids:
        raise ValueError("no complete expert in the trajectory store: train experts first (tesla experts)")
    return expert_ids[rng.randrange(len(expert_ids))]


def sample_trajectory_point(rng: random.Random, expert_ids: Sequence[int], max_start_epoch: int) -> tuple[int, int]:
    """(expert id, start epoch) uniformly, start in [0, max_start_epoch)."""
    expert = _expert(rng, expert_ids)
    return expert, rng.randrange(max_start_epoch)


class Sampling(Protocol):
    """Draws one iteration's trajectory point."""

    name: str

    def bounds(self, iteration: int) -> tuple[int, int]:
        """[low, high): the start epochs iteration ``iteration`` may draw."""

    def draw(self, rng: random.Random, iteration: int, expert_ids: Sequence[int]) -> tuple[int, int]:
        """(expert id, start epoch) for the 0-based ``iteration``."""


def _check_bounds(low: int, high: int) -> None:
    if not 0 <= low < high:
        raise ValueError(f"start epochs need 0 <= min_start_epoch < max_start_epoch (got {low}, {high})")


@attrs.frozen
class Uniform:
    """Start epochs uniform in [min_start_epoch, max_start_epoch), the same every iteration."""

    max_start_epoch: int
    min_start_epoch: int = 0
    name: str = attrs.field(default="uniform", init=False)

    def __attrs_post_init__(self) -> None:
        _check_bounds(self.min_start_epoch, self.max_start_epoch)

    def bounds(self, iteration: int) -> tuple[int, int]:
        return self.min_start_epoch, self.max_start_epoch

    def draw(self, rng: random.Random, iteration: int, expert_ids: Sequence[int]) -> tuple[int, int]:
        expert = _expert(rng, expert_ids)
        # randrange(0, n) consumes the generator exactly as randrange(n): old runs are unchanged
        return expert, rng.randrange(self.min_start_epoch, self.max_start_epoch)


@attrs.frozen
class Window:
    """DATM's widening window (module docstring).

    Attributes:
        min_start_epoch: the window's fixed lower end.
        initial_max: its upper end (exclusive) at iteration 0.
        max_start_epoch: the upper end it opens to.
        length: iterations until it is fully open.
    """

    min_start_epoch: int
    initial_max: int
    max_start_epoch: int
    length: int
    name: str = attrs.field(default="window", init=False)

    def __attrs_post_init__(self) -> None:
        _check_bounds(self.min_start_epoch, self.max_start_epoch)
        if not self.min_start_epoch < self.initial_max <= self.max_start_epoch:
            raise ValueError(f"the window's initial upper end {self.initial_max} must be in "
                             f"({self.min_start_epoch}, {self.max_start_epoch}]")
        if self.length < 1:
            raise ValueError(f"the window needs length >= 1 iteration (got {self.length})")

    def upper(self, iteration: int) -> int:
        """The exclusive upper end of the start epochs at the 0-based ``iteration``."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0 (got {iteration})")
        grown = (self.max_start_epoch - self.initial_max) * iteration // self.length
        return min(self.initial_max + grown, self.max_start_epoch)

    def bounds(self, iteration: int) -> tuple[int, int]:
        return self.min_start_epoch, self.upper(iteration)

    def draw(self, rng: random.Random, iteration: int, expert_ids: Sequence[int]) -> tuple[int, int]:
        expert = _expert(rng, expert_ids)
        return expert, rng.randrange(self.min_start_epoch, self.upper(iteration))


def sampling_for(cfg) -> Sampling:
    """The strategy a :class:`~tesla.domain.config.DistillConfig` asks for (the one mapping)."""
    if cfg.sampling == "window":
        return Window(min_start_epoch=cfg.min_start_epoch, initial_max=cfg.window_initial_max,
                      max_start_epoch=cfg.max_start_epoch, length=cfg.window_length)
    if cfg.sampling != "uniform":
        raise ConfigError(f"sampling must be 'uniform' or 'window' (got {cfg.sampling!r})")
    return Uniform(max_start_epoch=cfg.max_start_epoch, min_start_epoch=cfg.min_start_epoch)
