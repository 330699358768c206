"""Seeded schedules follow docs/MATHS.md §1: permutation chunks, one per step, redrawn when used up."""

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


# --- sampling strategies: uniform (unchanged draws) and DATM's widening window ----------

from tesla.domain.config import ConfigError, DistillConfig  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("experts,max_start", [([0], 1), ([3, 5], 4), (list(range(10)), 20)])
def test_uniform_draws_exactly_what_sample_trajectory_point_drew(seed, experts, max_start):
    old, new = random.Random(seed), random.Random(seed)
    strategy = sampling.sampling_for(DistillConfig(max_start_epoch=max_start))
    assert strategy == sampling.Uniform(max_start_epoch=max_start)
    for it in range(300):
        assert strategy.draw(new, it, experts) == sampling.sample_trajectory_point(old, experts, max_start)
    assert new.getstate() == old.getstate()  # and leaves the generator where it always did


def test_uniform_with_a_lower_end():
    strategy = sampling.sampling_for(DistillConfig(max_start_epoch=6, min_start_epoch=2))
    rng = random.Random(0)
    starts = {strategy.draw(rng, it, [0])[1] for it in range(400)}
    assert starts == {2, 3, 4, 5}
    assert strategy.bounds(123) == (2, 6)


def _datm_upper(it, initial, maximum, length):
    """DATM's rule as its code writes it (float division, then int)."""
    return min(initial + int((maximum - initial) * it / length), maximum)


@pytest.mark.parametrize("initial,maximum,length", [(10, 20, 1000), (30, 50, 2000), (1, 4, 3), (5, 6, 7), (20, 20, 9)])
def test_window_upper_end_is_datms_rule(initial, maximum, length):
    w = sampling.Window(min_start_epoch=0, initial_max=initial, max_start_epoch=maximum, length=length)
    for it in range(0, 3 * length + 5):
        assert w.upper(it) == _datm_upper(it, initial, maximum, length), it


def test_window_by_hand():
    w = sampling.Window(min_start_epoch=0, initial_max=10, max_start_epoch=20, length=1000)
    assert [w.upper(i) for i in (0, 99, 100, 500, 999, 1000, 5000)] == [10, 10, 11, 15, 19, 20, 20]
    assert w.bounds(0) == (0, 10)


def test_window_draws_stay_in_the_window_and_fill_it():
    w = sampling.Window(min_start_epoch=1, initial_max=3, max_start_epoch=7, length=40)
    rng = random.Random(0)
    early = {w.draw(rng, 0, [4, 9])[1] for _ in range(200)}
    assert early == {1, 2}
    late = {w.draw(rng, 40, [4, 9])[1] for _ in range(400)}
    assert late == set(range(1, 7))
    for it in range(60):
        e, s = w.draw(rng, it, [4, 9])
        lo, hi = w.bounds(it)
        assert e in (4, 9) and lo <= s < hi <= 7
    with pytest.raises(ValueError, match="experts"):
        w.draw(rng, 0, [])


def test_window_from_config_with_its_defaults():
    cfg = DistillConfig(sampling="window", max_start_epoch=20, iterations=5000)
    assert sampling.sampling_for(cfg) == sampling.Window(min_start_epoch=0, initial_max=10, max_start_epoch=20,
                                                         length=500)
    cfg = DistillConfig(sampling="window", max_start_epoch=7, min_start_epoch=2, iterations=5)
    assert (cfg.window_initial_max, cfg.window_length) == (5, 1)
    cfg = DistillConfig(sampling="window", max_start_epoch=50, initial_max_start_epoch=30, window_iterations=2000)
    assert sampling.sampling_for(cfg) == sampling.Window(0, 30, 50, 2000)
    # the window never opens past max_start_epoch, so the last epoch read is the uniform one's
    w = sampling.sampling_for(cfg)
    assert max(w.upper(i) for i in range(0, 10_000, 37)) - 1 + cfg.expert_epochs == cfg.last_epoch_needed


@pytest.mark.parametrize("kwargs,field", [
    (dict(initial_max_start_epoch=5), "initial_max_start_epoch"),
    (dict(window_iterations=5), "window_iterations"),
    (dict(sampling="window", initial_max_start_epoch=30, max_start_epoch=20), "initial_max_start_epoch"),
    (dict(sampling="window", initial_max_start_epoch=2, min_start_epoch=2), "initial_max_start_epoch"),
    (dict(min_start_epoch=20, max_start_epoch=20), "min_start_epoch"),
    (dict(sampling="window", window_iterations=0), "window_iterations"),
    (dict(sampling="diagonal"), "sampling"),
])
def test_inconsistent_window_settings_are_refused_by_name(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**kwargs)


def test_bad_window_values_are_refused():
    with pytest.raises(ValueError):
        sampling.Window(min_start_epoch=0, initial_max=0, max_start_epoch=5, length=3)
    with pytest.raises(ValueError):
        sampling.Window(min_start_epoch=0, initial_max=2, max_start_epoch=5, length=0)
    with pytest.raises(ValueError):
        sampling.Uniform(max_start_epoch=3, min_start_epoch=3)
    with pytest.raises(ValueError):
        sampling.Window(0, 2, 5, 3).upper(-1)
