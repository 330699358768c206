"""Sizing a whole run (:mod:`tesla.domain.sizing`): settings that fit each other, the data,
the IPC and the time budget, each with its reason."""

from __future__ import annotations

import pytest

from tesla.domain.errors import ConfigError
from tesla.domain.sizing import (MATCH_COST, MAX_ITERATIONS, MIN_ITERATIONS, DataFacts, Wishes, plan_from_dict,
                                 plan_markdown, plan_run, plan_to_dict, wishes_differ)

CIFAR = DataFacts(name="cifar", num_classes=10, num_train=50000, num_test=10000, image_shape=(3, 32, 32),
                  dataset="cifar10")
SUBSET = DataFacts(name="subset", num_classes=10, num_train=5085, num_test=1000, image_shape=(3, 32, 32),
                   dataset="cifar10")
TINY = DataFacts(name="tree", num_classes=3, num_train=36, num_test=12, image_shape=(3, 16, 16))
FAST, SLOW = 1e-5, 2e-3  # seconds per training image


def _plan(facts=SUBSET, t=SLOW, gpu=False, **wishes):
    return plan_run(facts, Wishes(**{"ipc": 10, "minutes": 30, **wishes}), gpu=gpu, seconds_per_image=t)


def test_experts_are_long_enough_for_every_start_epoch_the_distillation_draws():
    for facts in (CIFAR, SUBSET, TINY):
        for ipc in (1, 10, 50):
            for t in (FAST, SLOW):
                p = _plan(facts, t, ipc=ipc)
                assert p.experts.epochs >= p.distill.last_epoch_needed + 1 > p.distill.max_start_epoch
                assert p.distill.max_start_epoch + p.distill.expert_epochs == p.experts.epochs


def test_start_epochs_follow_the_papers_table_when_the_budget_allows():
    assert [_plan(CIFAR, FAST, gpu=True, ipc=ipc).distill.max_start_epoch for ipc in (1, 10, 50)] == [3, 20, 40]


def test_a_small_budget_shortens_the_experts_and_says_so():
    tight = _plan(CIFAR, SLOW, ipc=10, minutes=10)
    roomy = _plan(CIFAR, FAST, ipc=10, minutes=10)
    assert tight.distill.max_start_epoch < roomy.distill.max_start_epoch
    why = {c.setting: c.why for c in tight.choices}["max start epoch"]
    assert "lowered to fit" in why


def test_steps_follow_the_experts_sgd_steps_within_the_papers_range():
    assert _plan(CIFAR, FAST, gpu=True).distill.syn_steps == 49  # 2 x 196 batches / 8
    assert _plan(TINY, FAST).distill.syn_steps == 10  # the floor
    tiny_budget = _plan(CIFAR, SLOW, minutes=1)
    assert tiny_budget.distill.syn_steps < 10 and tiny_budget.distill.iterations >= MIN_ITERATIONS


def test_iterations_fill_the_budget_and_more_minutes_buy_more():
    short, long = _plan(minutes=10), _plan(minutes=40)
    assert short.distill.iterations < long.distill.iterations <= MAX_ITERATIONS
    d = long.distill
    per_iteration = d.syn_steps * (d.batch_syn or d.ipc * 10) * SLOW * MATCH_COST
    assert d.iterations * per_iteration <= 40 * 60 * 0.45 * 1.001
    assert _plan(CIFAR, 1e-9, gpu=True).distill.iterations == MAX_ITERATIONS


def test_the_whole_set_per_step_up_to_256_images():
    assert _plan(ipc=10).distill.batch_syn is None
    assert _plan(ipc=50).distill.batch_syn == 256
    with pytest.raises(ConfigError, match="--batch-syn 500 is larger than the synthetic set"):
        _plan(ipc=10, batch_syn=500)


def test_what_was_asked_for_is_kept_and_said():
    p = _plan(num_experts=3, max_start_epoch=4, syn_steps=7, iterations=11, batch_syn=20, eval_models=2,
              eval_epochs=9, width=16, zca=False)
    assert (p.experts.num_experts, p.experts.epochs, p.distill.syn_steps, p.distill.iterations, p.distill.batch_syn,
            p.evaluate.num_models, p.evaluate.epochs, p.model.width, p.zca) == (3, 6, 7, 11, 20, 2, 9, 16, False)
    whys = {c.setting: c.why for c in p.choices}
    assert whys["iterations"] == whys["student steps N"] == whys["max start epoch"] == "asked for"


def test_the_model_fits_the_data_and_the_machine():
    assert (_plan(TINY).model.depth, _plan(TINY).model.image_size, _plan(TINY).model.num_classes) == (2, 16, 3)
    assert _plan(CIFAR).model.width == 32 and _plan(CIFAR, gpu=True).model.width == 128
    big = DataFacts(name="in", num_classes=1000, num_train=10**6, num_test=5 * 10**4, image_shape=(3, 64, 64))
    assert _plan(big, FAST, gpu=True).model.depth == 4


def test_zca_follows_the_papers_cifar_rows_and_only_cifar_can_have_it():
    assert _plan(CIFAR, ipc=10).zca and not _plan(CIFAR, ipc=50).zca and not _plan(TINY).zca
    assert _plan(CIFAR, ipc=10).distill.lr_img == 500 and _plan(TINY).distill.lr_img == 100
    with pytest.raises(ConfigError, match="--zca applies to CIFAR folders only"):
        _plan(TINY, zca=True)


def test_the_estimate_is_said_and_an_overrun_is_flagged():
    p = _plan(TINY, FAST, minutes=5)
    est = {c.setting: c for c in p.choices}["estimated time"]
    assert est.value == f"{p.minutes:.1f} min" and "over budget" not in est.why
    over = _plan(CIFAR, SLOW, minutes=1, num_experts=10, eval_epochs=1000)
    assert "over budget" in {c.setting: c.why for c in over.choices}["estimated time"]


def test_bad_wishes_are_refused_naming_the_option():
    with pytest.raises(ConfigError, match="--ipc must be an integer >= 1"):
        Wishes(ipc=0, minutes=1)
    with pytest.raises(ConfigError, match="--minutes must be a number > 0"):
        Wishes(ipc=1, minutes=0)
    with pytest.raises(ConfigError, match="--syn-steps must be an integer >= 1"):
        Wishes(ipc=1, minutes=1, syn_steps=0)


def test_a_plan_round_trips_through_json_and_its_table_names_every_choice():
    p = _plan()
    assert plan_from_dict(plan_to_dict(p)) == p
    table = plan_markdown(p, SUBSET)
    assert "5,085" not in table and "5085 train / 1000 test" in table
    assert all(f"| {c.setting} | {c.value} |" in table for c in p.choices)
    with pytest.raises(ConfigError, match="not one tesla run wrote"):
        plan_from_dict({"model": {}})


def test_a_rerun_must_agree_with_the_recorded_wishes_it_typed():
    recorded = {"wishes": {"ipc": 1, "minutes": 5.0, "syn_steps": None}}
    assert wishes_differ(recorded, Wishes(ipc=1, minutes=5), {"ipc", "minutes"}) is None
    assert wishes_differ(recorded, Wishes(ipc=2, minutes=9), set()) is None  # not typed: the record's
    assert wishes_differ(recorded, Wishes(ipc=2, minutes=5), {"ipc"}) == "--ipc 2 (the run was planned with 1)"


def test_a_tight_budget_trains_fewer_experts_before_shorter_ones():
    p = _plan(SUBSET, SLOW, ipc=10, minutes=15)
    roomy = _plan(SUBSET, FAST, ipc=10, minutes=15)
    assert roomy.experts.num_experts == 5 and roomy.distill.max_start_epoch == 20
    assert p.experts.num_experts == 2 and 2 <= p.distill.max_start_epoch < 20
    assert "fewer experts before shorter ones" in {c.setting: c.why for c in p.choices}["experts"]
    assert _plan(SUBSET, SLOW, ipc=10, minutes=15, num_experts=4).experts.num_experts == 4  # asked for: kept
