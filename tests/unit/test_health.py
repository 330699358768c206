"""Run health on hand-made cases: agreement, entropy, the stall detector and the guard."""

import math

import pytest

from tesla.domain.config import ConfigError, DistillConfig
from tesla.domain.health import (Guard, Health, Streaks, Verdict, default_min_agreement, dominant_class, entropy,
                                 guard_for, label_agreement, mean_entropy)

CLASSES = [0, 0, 1, 1, 2, 2, 3, 3]  # IPC 2, 4 classes


def test_agreement_on_a_hand_made_case():
    assert label_agreement(CLASSES, CLASSES) == 1.0
    # images 1, 3, 6 labelled otherwise: 5 of 8 agree
    assert label_agreement([0, 2, 1, 0, 2, 2, 1, 3], CLASSES) == 5 / 8
    # the collapse of issue 12: every label names class 2; only class 2's own images agree
    assert label_agreement([2] * 8, CLASSES) == 2 / 8
    with pytest.raises(ValueError):
        label_agreement([0], CLASSES)
    with pytest.raises(ValueError):
        label_agreement([], [])


def test_dominant_class():
    assert dominant_class([2] * 8) == (2, 1.0)
    assert dominant_class([0, 1, 1, 3, 3]) == (1, 0.4)  # ties: the smaller id
    with pytest.raises(ValueError):
        dominant_class([])


def test_entropy():
    assert entropy([1.0, 0.0, 0.0]) == 0.0
    assert entropy([0.25] * 4) == pytest.approx(math.log(4), rel=1e-15)
    assert entropy([0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-15)
    assert mean_entropy([[1.0, 0.0], [0.5, 0.5]]) == pytest.approx(math.log(2) / 2, rel=1e-15)
    assert mean_entropy([0.1, 0.3]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        entropy([-0.1, 1.1])
    with pytest.raises(ValueError):
        mean_entropy([])


def test_health_measures_everything_at_once():
    h = Health.measure([2] * 8, CLASSES, [[0.1, 0.1, 0.7, 0.1]] * 8)
    assert h.agreement == 0.25 and h.dominant == 2 and h.dominant_share == 1.0
    assert h.entropy == pytest.approx(entropy([0.1, 0.1, 0.7, 0.1]))


def test_default_threshold_is_twice_chance():
    assert default_min_agreement(10) == 0.2
    assert default_min_agreement(1000) == 0.002
    assert default_min_agreement(2) == 0.75
    assert guard_for(DistillConfig(), 10).min_agreement == 0.2
    assert guard_for(DistillConfig(min_label_agreement=0.5), 10).min_agreement == 0.5


def _guard(**kw):
    base = dict(min_agreement=0.2, collapse_iterations=3, stall_iterations=4, stall_tolerance=0.05, min_lr=1e-6)
    return Guard(**{**base, **kw})


def _run(guard, measures, health):
    """Feed (agreement, lr, loss) per iteration; return the first verdict and when."""
    streaks = Streaks()
    for it, (agreement, lr, loss) in enumerate(measures, start=1):
        streaks = guard.observe(streaks, agreement=agreement, lr=lr, loss=loss)
        verdict = guard.verdict(streaks, health, iteration=it)
        if verdict is not None:
            return verdict, it, streaks
    return None, None, streaks


COLLAPSED = Health(agreement=0.1, entropy=0.3, dominant=4, dominant_share=1.0)


def test_a_collapse_is_low_agreement_for_collapse_iterations_in_a_row():
    g = _guard()
    ok = (0.9, 0.01, 0.8)
    low = (0.1, 0.01, 0.8)
    # two low iterations, then recovery: the count starts again
    assert _run(g, [ok, low, low, ok, low, low, ok], COLLAPSED)[0] is None
    verdict, it, streaks = _run(g, [ok, low, low, low, ok], COLLAPSED)
    assert verdict.kind == "collapsed" and it == 4 and streaks.low_agreement == 3
    for option in ("--lr-img", "--labels learned-teacher", "--labels hard", "--engine exact", "class 4",
                   "min_label_agreement"):
        assert option in verdict.message, option
    assert "10.0%" in verdict.message and "iteration 4" in verdict.message
    # at exactly the threshold it is not low
    assert _run(g, [(0.2, 0.01, 0.8)] * 10, COLLAPSED)[0] is None
    # 0 turns the check off
    assert _run(_guard(min_agreement=0.0), [(0.0, 0.01, 0.8)] * 10, COLLAPSED)[0] is None


def test_a_stall_is_the_lr_at_its_floor_with_the_loss_near_one():
    g = _guard()
    stalled = (1.0, 1e-6, 0.99)
    assert _run(g, [stalled] * 3, COLLAPSED)[0] is None
    verdict, it, _ = _run(g, [stalled] * 6, COLLAPSED)
    assert verdict.kind == "stalled" and it == 4
    for option in ("--lr-lr", "--lr-img", "--engine exact", "--expert-epochs", "--stall-iterations 0"):
        assert option in verdict.message, option
    # the lr above its floor, or a loss that moved, is progress
    assert _run(g, [(1.0, 2e-6, 0.99)] * 10, COLLAPSED)[0] is None
    assert _run(g, [(1.0, 1e-6, 0.9)] * 10, COLLAPSED)[0] is None
    assert _run(g, [stalled, stalled, stalled, (1.0, 1e-6, 0.5), stalled, stalled, stalled], COLLAPSED)[0] is None
    # a loss above 1 with the lr at the floor is no progress either; float32 storage of the floor counts
    assert _run(g, [(1.0, 1e-6 * (1 + 1e-7), 1.3)] * 4, COLLAPSED)[0].kind == "stalled"
    assert _run(_guard(stall_iterations=0), [stalled] * 50, COLLAPSED)[0] is None


def test_the_stored_set_is_checked_with_no_patience():
    g = _guard()
    assert g.check_stored(Health(0.9, 0.1, 0, 0.1)) is None
    v = g.check_stored(COLLAPSED)
    assert v.kind == "collapsed" and "stored" in v.message
    assert _guard(min_agreement=0.0).check_stored(COLLAPSED) is None


def test_streaks_round_trip_for_checkpoints():
    s = Streaks(low_agreement=2, stalled=7)
    assert Streaks.from_dict(s.to_dict()) == s
    assert Streaks.from_dict(None) == Streaks() == Streaks.from_dict({})
    assert isinstance(Verdict("stalled", "x"), Verdict)


@pytest.mark.parametrize("kwargs,field", [
    (dict(min_label_agreement=1.5), "min_label_agreement"),
    (dict(min_label_agreement=-0.1), "min_label_agreement"),
    (dict(collapse_iterations=0), "collapse_iterations"),
    (dict(stall_iterations=-1), "stall_iterations"),
    (dict(stall_tolerance=-0.01), "stall_tolerance"),
])
def test_bad_thresholds_are_refused_by_name(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**kwargs)


def test_guard_from_config_carries_every_threshold():
    cfg = DistillConfig(min_label_agreement=0.3, collapse_iterations=5, stall_iterations=7, stall_tolerance=0.1,
                        min_lr=1e-4)
    assert guard_for(cfg, 10) == Guard(min_agreement=0.3, collapse_iterations=5, stall_iterations=7,
                                       stall_tolerance=0.1, min_lr=1e-4)
