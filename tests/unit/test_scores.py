"""DD-Ranking's scores equal their written formula and the ddranking package's numbers."""

import math

import pytest

from tesla.domain.errors import ConfigError
from tesla.domain.scores import (augmentation_robust_score, augmentation_robust_scores, exp_normalise,
                                 hard_label_recovery, improvement_over_random, label_robust_score,
                                 label_robust_scores)

E1 = math.exp(-1.0)


def by_formula(x):
    """(e^x - e^-1) / (e - e^-1), written out again so the test does not trust the module."""
    return (math.exp(x) - E1) / (math.e - E1)


def test_normalisation_maps_minus_one_zero_one():
    assert exp_normalise(-1.0) == pytest.approx(0.0, abs=1e-15)
    assert exp_normalise(1.0) == pytest.approx(1.0)
    # (1 - e^-1) / (e - e^-1) = (e - 1) / (e^2 - 1) = 1 / (1 + e)
    assert exp_normalise(0.0) == pytest.approx(1.0 / (1.0 + math.e))
    assert exp_normalise(0.0) == pytest.approx(0.2689414, abs=1e-7)


def test_components_are_differences_in_points():
    assert hard_label_recovery(84.5, 44.0) == pytest.approx(40.5)
    assert improvement_over_random(52.0, 47.5) == pytest.approx(4.5)


@pytest.mark.parametrize("hlr,ior,w,alpha", [
    (100.0, 100.0, 0.5, 0.0),     # 0.5 * 1 - 0.5 * 1
    (100.0, -100.0, 0.5, -1.0),   # the worst: nothing recovered, worse than random
    (0.0, 100.0, 1.0, 1.0),       # IOR only
    (40.0, 10.0, 0.5, -0.15),     # 0.5 * 0.10 - 0.5 * 0.40
    (40.0, 10.0, 0.2, -0.30),     # 0.2 * 0.10 - 0.8 * 0.40
])
def test_lrs_documented_convention(hlr, ior, w, alpha):
    assert label_robust_score(hlr, ior, weight=w) == pytest.approx(by_formula(alpha), abs=1e-12)


def test_lrs_hand_value():
    # alpha = -0.15: e^-0.15 = 0.8607080, minus e^-1 = 0.4928286, over e - e^-1 = 2.3504024
    assert label_robust_score(40.0, 10.0) == pytest.approx(0.2096785, abs=1e-6)


def test_lrs_package_convention_uses_points_in_the_exponent():
    # alpha = 0.5 * 1.0 - 0.5 * 0.5 = 0.25 with the differences in points as they are
    assert label_robust_score(0.5, 1.0, convention="ddranking-0.2.0") == pytest.approx(by_formula(0.25))
    # a usual gap (HLR 40, IOR 10 points) sits on the floor -e^-1 / (e - e^-1) that way
    assert label_robust_score(40.0, 10.0, convention="ddranking-0.2.0") == pytest.approx(-E1 / (math.e - E1), abs=1e-6)


@pytest.mark.parametrize("aug,naug,g,beta", [
    (10.0, 0.0, 0.5, 0.05),
    (30.0, 10.0, 0.8, 0.26),      # 0.8 * 0.30 + 0.2 * 0.10
    (-20.0, 40.0, 0.5, 0.10),
])
def test_ars_documented_convention(aug, naug, g, beta):
    assert augmentation_robust_score(aug, naug, weight=g) == pytest.approx(by_formula(beta), abs=1e-12)


def test_rounds_pair_by_index_then_mean_and_population_std():
    # round 1: HLR 40, IOR 10 -> alpha -0.15; round 2: HLR 30, IOR 20 -> alpha -0.05
    r = label_robust_scores([80.0, 80.0], [40.0, 50.0], [55.0, 60.0], [45.0, 40.0])
    assert r.hlr.values == (40.0, 30.0) and r.hlr.mean == 35.0 and r.hlr.std == 5.0
    assert r.ior.values == (10.0, 20.0) and r.ior.mean == 15.0 and r.ior.std == 5.0
    a, b = by_formula(-0.15), by_formula(-0.05)
    assert r.lrs.mean == pytest.approx((a + b) / 2)
    assert r.lrs.std == pytest.approx(abs(a - b) / 2)   # population std of two values
    # the mean score is not the score of the mean accuracies (the exponential bends)
    assert r.lrs.mean != pytest.approx(label_robust_score(35.0, 15.0), abs=1e-9)


def test_one_full_data_accuracy_serves_every_round():
    r = label_robust_scores([80.0], [40.0, 50.0], [55.0, 60.0], [45.0, 40.0])
    assert r.hlr.values == (40.0, 30.0)


def test_ars_rounds():
    r = augmentation_robust_scores([60.0, 62.0], [50.0, 50.0], [40.0, 41.0], [40.0, 45.0], weight=0.5)
    assert r.aug_gain.values == (10.0, 12.0)
    assert r.naug_gain.values == (0.0, -4.0)
    assert r.ars.values == pytest.approx((by_formula(0.05), by_formula(0.04)))


# Reference values from ddranking 0.2.0 (pip `ddranking==0.2.0`, the code at
# NUS-HPC-AI-Lab/DD-Ranking b8b0966): its own LabelRobustScoreSoft / LabelRobustScoreHard /
# AugmentationRobustScore.compute_metrics were driven with these per-round accuracies in
# place of trained networks (the training helpers replaced, the score code untouched).
DDRANKING_020 = {
    "lrs_soft_a": dict(full=[50.0, 50.5], syn_hard=[49.5, 49.0], syn_any=[30.0, 30.4], rdm_any=[29.0, 29.6], w=0.5,
                       hlr=(1.0, 0.5), ior=(0.8999999999999986, 0.10000000000000142),
                       lrs=(0.2665404508692438, 0.1232421584709145)),
    "lrs_soft_c": dict(full=[84.8, 84.6, 85.0], syn_hard=[44.9, 45.3, 44.1], syn_any=[50.0, 51.2, 49.5],
                       rdm_any=[49.1, 49.9, 50.3], w=0.5, hlr=(40.03333333333333, 0.6599663291074449),
                       ior=(0.46666666666666856, 0.910433352249844), lrs=(-0.15651764134819893, 8.20747812175214e-10)),
    # LabelRobustScoreHard: the "any" setting is the hard-label one
    "lrs_hard_a": dict(full=[50.0, 50.5], syn_hard=[49.5, 49.0], syn_any=[49.5, 49.0], rdm_any=[48.75, 48.0], w=0.5,
                       hlr=(1.0, 0.5), ior=(0.875, 0.125), lrs=(0.25021042357617046, 0.07538021402461721)),
}


@pytest.mark.parametrize("case", sorted(DDRANKING_020))
def test_lrs_equals_ddranking_020(case):
    c = DDRANKING_020[case]
    r = label_robust_scores(c["full"], c["syn_hard"], c["syn_any"], c["rdm_any"], weight=c["w"],
                            convention="ddranking-0.2.0")
    for name in ("hlr", "ior", "lrs"):
        stat = getattr(r, name)
        assert (stat.mean, stat.std) == pytest.approx(c[name], rel=1e-9, abs=1e-9), name


def test_ars_equals_ddranking_020():
    r = augmentation_robust_scores([30.0, 30.4], [29.0, 29.6], [20.0, 20.2], [20.5, 19.4], weight=0.5,
                                   convention="ddranking-0.2.0")
    assert (r.aug_gain.mean, r.aug_gain.std) == pytest.approx((0.8999999999999986, 0.10000000000000142))
    assert (r.naug_gain.mean, r.naug_gain.std) == pytest.approx((0.15000000000000036, 0.6500000000000004))
    assert (r.ars.mean, r.ars.std) == pytest.approx((0.5900707635934489, 0.2002881542532906), rel=1e-12)


def test_documented_convention_is_the_package_applied_to_fractions():
    # ddranking 0.2.0 given accuracies as fractions (1.0, 0.2, 0.7, 0.5; lrs_lambda 0.3)
    # reported LRS 0.1015363240915518; ARS with (0.4, 0.1, 0.3, 0.2; ars_lambda 0.8): 0.3952730181517842
    r = label_robust_scores([100.0], [20.0], [70.0], [50.0], weight=0.3)
    assert r.lrs.mean == pytest.approx(0.1015363240915518, rel=1e-12)
    a = augmentation_robust_scores([40.0], [10.0], [30.0], [20.0], weight=0.8)
    assert a.ars.mean == pytest.approx(0.3952730181517842, rel=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight=1.5), "weight"),
    (dict(weight=-0.1), "weight"),
    (dict(convention="percent"), "convention"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        label_robust_score(10.0, 5.0, **kwargs)


def test_rounds_must_pair():
    with pytest.raises(ConfigError, match="rounds"):
        label_robust_scores([80.0], [40.0, 50.0], [55.0], [45.0, 40.0])
    with pytest.raises(ConfigError, match="at least one"):
        augmentation_robust_scores([], [1.0], [1.0], [1.0])


def test_nan_accuracy_is_refused():
    with pytest.raises(ConfigError, match="finite"):
        label_robust_scores([80.0], [float("nan")], [55.0], [45.0])
