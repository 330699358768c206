"""Seeded schedules: which expert, which start epoch, which synthetic images per step.

All randomness of an iteration flows from one ``random.Random`` the service seeds and
checkpoints, so a resumed run draws exactly what an uninterrupted one would. Batches
follow NOTES §1: a random permutation of the synthetic indices is cut into chunks of
``batch_size`` taken one per step; when the chunks run out a new permutation is drawn.
Each step also gets a seed for its augmentation, so pass 2 can replay it exactly.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

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


def sample_trajectory_point(rng: random.Random, expert_ids: Sequence[int], max_start_epoch: int) -> tuple[int, int]:
    """(expert id, start epoch) uniformly, start in [0, max_start_epoch)."""
    if not expert_ids:
        raise ValueError("no complete expert in the trajectory store: train experts first (tesla experts)")
    expert = expert_ids[rng.randrange(len(expert_ids))]
    return expert, rng.randrange(max_start_epoch)
