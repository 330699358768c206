"""Label strategies as values: the config -> strategy mapping, each iteration's plan, and
DATM's learned-teacher initialisation (images the expert gets right, averaged logits)."""

import pytest

from tesla.domain.config import LABELS, ConfigError, DistillConfig
from tesla.domain.labels import (CANDIDATES_PER_IMAGE, LabelInit, LabelPlan, choose_correct, consensus_weights,
                                 labels_for, plan_labels)


def _plan(cfg, expert=3, start_epoch=4, expert_epochs=2, num_snapshots=11):
    return labels_for(cfg).plan(expert=expert, start_epoch=start_epoch, expert_epochs=expert_epochs,
                                num_snapshots=num_snapshots)


def test_every_config_name_maps_to_a_strategy_and_the_old_plans_are_unchanged():
    assert "learned-teacher" in LABELS
    for name in LABELS:
        cfg = DistillConfig(labels=name, label_epoch=5 if name == "teacher-epoch" else None)
        s = labels_for(cfg)
        assert s.name == name
        assert _plan(cfg) == plan_labels(name, expert=3, start_epoch=4, expert_epochs=2, num_snapshots=11,
                                         fixed_epoch=cfg.label_epoch)
    assert _plan(DistillConfig(labels="teacher-target")) == LabelPlan("teacher", expert=3, epoch=6)
    assert _plan(DistillConfig(labels="teacher-last")) == LabelPlan("teacher", expert=3, epoch=10)
    assert _plan(DistillConfig(labels="teacher-epoch", label_epoch=5)) == LabelPlan("teacher", expert=3, epoch=5)
    assert _plan(DistillConfig(labels="hard")) == LabelPlan("hard")


def test_learned_teacher_is_learned_logits_initialised_by_the_experts():
    s = labels_for(DistillConfig(labels="learned-teacher"))
    assert s.learned and s.init == "experts" and s.chooses_images and s.fixed_epoch is None
    assert _plan(DistillConfig(labels="learned-teacher")) == LabelPlan("learned")
    plain = labels_for(DistillConfig(labels="learned"))
    assert plain.learned and plain.init == "class" and not plain.chooses_images
    for name in ("hard", "teacher-target", "teacher-last"):
        s = labels_for(DistillConfig(labels=name))
        assert not s.learned and s.init is None and s.init_plan([0, 1]) is None
    assert plain.init_plan([0]) == LabelInit("class")


def test_init_plan_chooser_voters_and_epoch():
    s = labels_for(DistillConfig(labels="learned-teacher"))
    init = s.init_plan([7, 2, 5])
    assert init == LabelInit("experts", chooser=2, experts=(2, 5, 7), epoch=None)
    assert init.epoch_of(num_snapshots=11) == 10  # DATM's default: the last snapshot
    fixed = labels_for(DistillConfig(labels="learned-teacher", label_epoch=4)).init_plan([0])
    assert fixed.epoch_of(11) == 4
    with pytest.raises(ValueError, match="label-epoch"):
        fixed.epoch_of(4)  # snapshots 0..3
    with pytest.raises(ValueError, match="experts"):
        s.init_plan([])
    prov = init.provenance(epoch=10, correct=9, images=10)
    assert prov == {"source": "experts", "chooser": 2, "experts": [2, 5, 7], "epoch": 10, "correct": 9, "images": 10}
    assert LabelInit("class").provenance() == {"source": "class"}


def test_candidates_per_class():
    assert labels_for(DistillConfig(labels="learned-teacher")).candidates(10) == 10 * CANDIDATES_PER_IMAGE
    assert labels_for(DistillConfig(labels="hard")).candidates(10) == 10


def test_choose_correct_takes_the_first_correct_in_draw_order():
    #             0  1  2  3  4  5  6
    predictions = [1, 3, 3, 0, 3, 3, 2]
    assert choose_correct(predictions, 3, 2) == ([1, 2], 2)
    assert choose_correct(predictions, 3, 4) == ([1, 2, 4, 5], 4)
    # too few correct: fill with the first wrong ones, in draw order, and say how many were right
    assert choose_correct(predictions, 2, 3) == ([6, 0, 1], 1)
    assert choose_correct(predictions, 9, 2) == ([0, 1], 0)
    with pytest.raises(ValueError, match="candidate"):
        choose_correct([1, 1], 1, 3)


def test_consensus_weights_average_the_correct_experts_only():
    classes = [0, 1, 2]
    predictions = [[0, 1, 1],   # expert 0: right on images 0 and 1
                   [0, 2, 1],   # expert 1: right on image 0
                   [2, 1, 0]]   # expert 2: right on image 1; nobody gets image 2 right
    w = consensus_weights(predictions, classes)
    assert [w[e][0] for e in range(3)] == [0.5, 0.5, 0.0]
    assert [w[e][1] for e in range(3)] == [0.5, 0.0, 0.5]
    assert [w[e][2] for e in range(3)] == pytest.approx([1 / 3] * 3)  # nobody right: the plain mean
    for i in range(3):
        assert sum(w[e][i] for e in range(3)) == pytest.approx(1.0)


def test_averaged_correct_logits_name_the_class():
    """DATM's point: the mean of logits that each peak on class c peaks on c too."""
    classes = [0, 1]
    logits = [[[5.0, 1.0, 0.0], [0.0, 3.0, 2.9]],   # expert 0: right on both
              [[1.0, 4.0, 0.0], [0.0, 2.0, 1.0]],   # expert 1: wrong on image 0
              [[2.0, 1.9, 0.0], [9.0, 0.0, 8.0]]]   # expert 2: wrong on image 1
    preds = [[max(range(3), key=row.__getitem__) for row in e] for e in logits]
    w = consensus_weights(preds, classes)
    for i, c in enumerate(classes):
        mean = [sum(w[e][i] * logits[e][i][k] for e in range(3)) for k in range(3)]
        assert max(range(3), key=mean.__getitem__) == c
    # the plain mean of all three would not name class 1 for image 1
    plain = [sum(logits[e][1][k] for e in range(3)) / 3 for k in range(3)]
    assert max(range(3), key=plain.__getitem__) != 1


def test_consensus_weights_refuse_bad_shapes():
    with pytest.raises(ValueError):
        consensus_weights([], [0])
    with pytest.raises(ValueError):
        consensus_weights([[0, 1], [0]], [0, 1])


def test_learned_teacher_config_rules():
    with pytest.raises(ConfigError, match="init"):
        DistillConfig(labels="learned-teacher", init="noise")
    with pytest.raises(ConfigError, match="label_momentum"):
        DistillConfig(labels="teacher-target", label_momentum=0.9)
    assert DistillConfig(labels="learned-teacher", label_momentum=0.9).label_sgd_momentum == 0.9
    assert DistillConfig(labels="learned").label_sgd_momentum == 0.5  # the shared momentum, as before
    assert DistillConfig(labels="learned-teacher", label_epoch=30, max_start_epoch=3).last_epoch_needed == 30
    assert DistillConfig(labels="learned-teacher", max_start_epoch=3, expert_epochs=2).last_epoch_needed == 4
