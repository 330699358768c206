"""Seeded schedules follow NOTES §1: permutation chunks, one per step, redrawn when used up."""

import random

import pytest

from tesla.domain import sampling


def test_chunks_cover_a_permutation_then_redraw():
    rng = random.Random(0)
    batches = sampling.batch_schedule(10, 7, 4, rng)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4]
    assert sorted(batches[0] + batches[1] + batches[2]) == list(range(10))
    assert sorted(batches[3] + batches[4] + batches[5]) == list(range(10))


def test_full_batch_by_default_and_deterministic():
    a = sampling.batch_schedule(5, 3, None, random.Random(1))
    b = sampling.batch_schedule(5, 3, None, random.Random(1))
    assert a == b and all(sorted(x) == list(range(5)) for x in a)
    assert len({tuple(x) for x in a}) > 1  # a fresh order each step


def test_steps_carry_augmentation_seeds_only_when_augmenting():
    on = sampling.make_steps(6, 3, 2, random.Random(0), augment=True)
    off = sampling.make_steps(6, 3, 2, random.Random(0), augment=False)
    assert all(s.aug_seed is not None for s in on) and all(s.aug_seed is None for s in off)
    assert [s.index for s in on] == [0, 1, 2]


def test_trajectory_point_in_range():
    rng = random.Random(0)
    for _ in range(50):
        e, s = sampling.sample_trajectory_point(rng, [3, 5], 4)
        assert e in (3, 5) and 0 <= s < 4
    with pytest.raises(ValueError, match="experts"):
        sampling.sample_trajectory_point(rng, [], 4)


@pytest.mark.parametrize("n,steps,bs", [(0, 1, 1), (3, 0, 1)])
def test_bad_schedule_arguments(n, steps, bs):
    with pytest.raises(ValueError):
        sampling.batch_schedule(n, steps, bs, random.Random(0))
