"""The distillation loop on hand-written fakes: the real service, pure-Python numbers.

What a run publishes and stores, the checkpoint cadence, resume equal to an
uninterrupted run (and refused when the settings changed), the NaN/divergence guard
(which state is kept, the message, the exit code), and where labels come from. The
ports are the fakes of ``tests/unit/fakes.py``; no torch, no files, milliseconds.
"""

from __future__ import annotations

import math

import pytest

from tesla.app.services.distill import RESUMABLE_CHANGES, Cadence, DistillRun, checkpoint_due, distill
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.engines import from_config
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.ports import ListSink
from tests.unit.fakes import (FakeData, FakeSetStore, FakeStudent, FakeTrajectories, Poisoned, StopAfter, fake_logits,
                              softmax)

MODEL = ModelConfig(depth=1, width=2, channels=1, image_size=2, num_classes=2)


def _cfg(**kw) -> DistillConfig:
    base = dict(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=2, iterations=6, checkpoint_every=2, lr_img=0.1,
                lr_lr=1e-3, lr_init=0.05, seed=1)
    base.update(kw)
    return DistillConfig(**base)


def _run(cfg: DistillConfig, *, store=None, student=None, traj=None, data=None, engine=None, **kw) -> DistillRun:
    return DistillRun(cfg=cfg, model=MODEL, data=data or FakeData(), trajectories=traj or FakeTrajectories.random(),
                      store=FakeSetStore() if store is None else store, student=student or FakeStudent(cfg),
                      engine=engine or from_config(cfg), **kw)


# --- a whole run ------------------------------------------------------------------------


def test_a_run_tells_its_story_and_stores_the_set():
    cfg, store, sink = _cfg(), FakeSetStore(), ListSink()
    result = distill(_run(cfg, store=store), sink)
    types = [e.type for e in sink.events]
    assert types[0] == "run_started" and types[-1] == "run_finished" and sink.events[-1].status == "completed"
    assert [e.iteration for e in sink.of("iteration")] == [1, 2, 3, 4, 5, 6]
    assert all(e.total == 6 and math.isfinite(e.loss) and e.expert in (0, 1) and 0 <= e.start_epoch < 2
               for e in sink.of("iteration"))
    assert [e.iteration for e in sink.of("checkpoint")] == [2, 4, 6] == [c.iteration for c in store.checkpoints]
    assert sink.of("checkpoint")[0].path == "memory#checkpoints/2"
    (final,) = store.sets
    assert final.attrs["iteration"] == 6 and final.attrs["distill"] == to_dict(cfg)
    assert final.attrs["label_source"] == {"kind": "hard", "expert": None, "epoch": None}
    assert final.arrays["lr"] == result.lr and result.status == "completed" and result.iterations == 6
    assert result.loss == sink.of("iteration")[-1].loss
    assert final.arrays["images"] != store.checkpoints[0].arrays["images"]  # the images did move


def test_checkpoints_follow_the_cadence_and_the_stop():
    cfg = _cfg(iterations=7, checkpoint_every=3)
    assert [d for d in range(1, 8) if checkpoint_due(cfg, d)] == [3, 6]  # 7: written as the run ends
    store = FakeSetStore()
    distill(_run(cfg, store=store))
    assert [c.iteration for c in store.checkpoints] == [3, 6, 7]
    stopped = FakeSetStore()
    result = distill(_run(cfg, store=stopped), cancel=StopAfter(4))
    assert result.status == "cancelled" and result.iterations == 4
    assert [c.iteration for c in stopped.checkpoints] == [3, 4] and stopped.sets == []


def test_cadence_of_previews_memory_and_evaluation():
    c = Cadence(preview_every=3, memory_every=4, eval_every=2)
    assert [d for d in range(1, 10) if c.preview_due(d, first=0)] == [1, 3, 6, 9]
    assert [d for d in range(6, 10) if c.memory_due(d, first=5)] == [6, 8]
    assert [d for d in range(1, 7) if c.eval_due(d)] == [2, 4, 6]
    off = Cadence(preview_every=0, memory_every=0, eval_every=0)
    assert not any(off.preview_due(d, 0) or off.memory_due(d, 0) or off.eval_due(d) for d in range(1, 5))


def test_the_evaluator_sees_the_set_at_its_cadence():
    seen = []
    distill(_run(_cfg(), evaluator=lambda state, it: seen.append((it, state.lr)), cadence=Cadence(eval_every=3)))
    assert [it for it, _ in seen] == [3, 6] and all(lr > 0 for _, lr in seen)


# --- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [0, 3, 5])
def test_stopped_then_resumed_equals_uninterrupted(stop_after):
    cfg = _cfg()
    whole_store = FakeSetStore()
    whole = distill(_run(cfg, store=whole_store))
    store = FakeSetStore()
    part = distill(_run(cfg, store=store), cancel=StopAfter(stop_after))
    assert part.status == "cancelled" and store.checkpoints[-1].iteration == stop_after
    sink = ListSink()
    rest = distill(_run(cfg, store=store, resume=True), sink)  # a new student: all state from the checkpoint
    assert rest.status == "completed" and rest.iterations == 6
    assert store.sets[-1].arrays == whole_store.sets[-1].arrays  # images, lr, labels: bit for bit
    assert rest.loss == whole.loss and rest.lr == whole.lr
    assert sink.of("warning")[0].message == f"resumed from the checkpoint at iteration {stop_after}"
    assert [e.iteration for e in sink.of("iteration")] == list(range(stop_after + 1, 7))


def test_resume_without_a_checkpoint_starts_the_run():
    cfg, store = _cfg(), FakeSetStore()
    result = distill(_run(cfg, store=store, resume=True))
    assert result.iterations == 6 and store.sets


def test_resume_refuses_other_settings_and_accepts_the_usual_fixes():
    cfg, store = _cfg(), FakeSetStore()
    distill(_run(cfg, store=store), cancel=StopAfter(2))
    written = list(store.checkpoints)
    with pytest.raises(DistillError, match=r"different ipc, seed: resume with the same settings"):
        distill(_run(_cfg(ipc=3, seed=4), store=store, resume=True))
    assert store.checkpoints == written and store.sets == []  # refused before any work
    fixed = _cfg(lr_img=0.05, lr_lr=2e-3, max_loss=50.0, iterations=8, checkpoint_every=4)
    assert {"lr_img", "lr_lr", "max_loss", "iterations", "checkpoint_every"} <= RESUMABLE_CHANGES
    done = distill(_run(fixed, store=store, resume=True))
    assert done.status == "completed" and done.iterations == 8


# --- the guard ----------------------------------------------------------------------------


def _fails(run: DistillRun) -> tuple[str, ListSink]:
    sink = ListSink()
    with pytest.raises(NumericalError) as err:
        distill(run, sink)
    assert sink.of("error")[0].message == str(err.value)
    assert sink.events[-1].type == "run_finished" and sink.events[-1].status == "failed"
    assert sink.events[-1].summary["error"] == str(err.value)
    return str(err.value), sink


def test_a_nan_loss_stops_the_run_and_checkpoints_the_state_before_it():
    cfg = _cfg(checkpoint_every=100)
    store = FakeSetStore()
    msg, sink = _fails(_run(cfg, store=store, engine=Poisoned(from_config(cfg), at=3, loss=math.nan)))
    assert msg == ("the loss became NaN/inf at iteration 3 (loss nan); the last good state (after iteration 2) is "
                   "kept in the checkpoint: lower --lr-img or --lr-lr (or set --max-grad-norm) and continue with "
                   "--resume")
    assert [c.iteration for c in store.checkpoints] == [2] and store.sets == []
    clean = FakeSetStore()
    distill(_run(cfg, store=clean), cancel=StopAfter(2))  # the state an unpoisoned run had after 2 iterations
    assert store.checkpoints[0].arrays == clean.checkpoints[0].arrays
    assert sink.of("error")[0].iteration == 2


@pytest.mark.parametrize("poison,what", [(dict(image_grad=True), "the image gradient"),
                                         (dict(lr_grad=math.inf), "the lr gradient")])
def test_the_guard_names_what_became_nan(poison, what):
    cfg = _cfg()
    msg, _ = _fails(_run(cfg, engine=Poisoned(from_config(cfg), at=1, **poison)))
    assert msg.startswith(f"{what} became NaN/inf at iteration 1 (loss ") and "(after iteration 0)" in msg


def test_nan_data_stops_at_iteration_1_and_checkpoints_nothing():
    store = FakeSetStore()
    msg, _ = _fails(_run(_cfg(), store=store, data=FakeData(nan=True)))
    assert msg.startswith("the images (before any update of this run) became NaN/inf at iteration 1")
    assert "(after iteration 0)" in msg and store.checkpoints == []


def test_divergence_keeps_the_last_checkpoint_not_the_diverged_state():
    cfg = _cfg(max_loss=1000.0)
    store = FakeSetStore()
    msg, _ = _fails(_run(cfg, store=store, engine=Poisoned(from_config(cfg), at=4, loss=5000.0)))
    assert msg == ("the matching loss 5000 at iteration 4 is above max_loss 1000 (the run diverged); the last good "
                   "state (after iteration 2) is kept in the checkpoint: lower --lr-img or --lr-lr (or set "
                   "--max-grad-norm, or raise --max-loss) and continue with --resume")
    assert [c.iteration for c in store.checkpoints] == [2]


def test_an_overflowing_update_keeps_the_last_checkpoint():
    cfg = _cfg()
    store = FakeSetStore()
    msg, _ = _fails(_run(cfg, store=store, student=FakeStudent(cfg, overflow_at=3)))
    assert msg.startswith("the images after the update became NaN/inf at iteration 3")
    assert "(after iteration 2)" in msg and [c.iteration for c in store.checkpoints] == [2]


def test_an_infinite_max_loss_never_stops_a_finite_run():
    cfg = _cfg(max_loss=math.inf)
    result = distill(_run(cfg, engine=Poisoned(from_config(cfg), at=2, loss=1e300)))
    assert result.status == "completed"


def test_the_cli_exits_3_on_a_numerical_stop_and_2_on_bad_input(capsys):
    import typer

    from tesla.app.cli.common import errors

    with pytest.raises(typer.Exit) as stop:
        with errors():
            distill(_run(_cfg(), data=FakeData(nan=True)))
    assert stop.value.exit_code == 3
    assert "NaN" not in capsys.readouterr().err  # the run's Error event said it; not printed twice
    with pytest.raises(typer.Exit) as bad:
        with errors():
            distill(_run(_cfg(batch_syn=50)))
    assert bad.value.exit_code == 2 and "batch_syn 50 is larger" in " ".join(capsys.readouterr().err.split())


# --- labels -------------------------------------------------------------------------------


def test_hard_labels_are_the_class_ids():
    cfg = _cfg(labels="hard")
    student, store = FakeStudent(cfg), FakeSetStore()
    distill(_run(cfg, student=student, store=store))
    assert {(plan.kind, teacher) for plan, teacher in student.label_calls} == {("hard", None)}
    assert "soft_labels" not in store.sets[0].arrays and "label_logits" not in store.sets[0].arrays


def test_learned_labels_are_the_logits_and_are_stored():
    cfg = _cfg(labels="learned")
    student, store = FakeStudent(cfg), FakeSetStore()
    result = distill(_run(cfg, student=student, store=store))
    assert {plan.kind for plan, _ in student.label_calls} == {"learned"}
    assert len(store.sets[0].arrays["label_logits"]) == 4 and result.label_source["kind"] == "learned"


@pytest.mark.parametrize("labels,epoch_of", [("teacher-target", lambda start: start + 1),
                                             ("teacher-last", lambda start: 4)])
def test_teacher_labels_come_from_the_drawn_expert(labels, epoch_of):
    cfg = _cfg(labels=labels)
    traj, student, store, sink = FakeTrajectories.random(), FakeStudent(cfg), FakeSetStore(), ListSink()
    result = distill(_run(cfg, traj=traj, student=student, store=store), sink)
    draws = [(e.expert, e.start_epoch) for e in sink.of("iteration")]
    plans = [plan for plan, _ in student.label_calls]
    assert len(plans) == 7  # one per iteration, and the final labels
    for (expert, start), (plan, teacher) in zip(draws, student.label_calls):
        assert plan.kind == "teacher" and (plan.expert, plan.epoch) == (expert, epoch_of(start))
        assert teacher == traj.trajectories[expert][plan.epoch]
    last = plans[5]
    assert plans[6] == last and result.label_source == last.provenance() == store.sets[0].attrs["label_source"]
    final_images = store.sets[0].arrays["images"]
    teacher = traj.trajectories[last.expert][last.epoch]
    assert store.sets[0].arrays["soft_labels"] == tuple(softmax(fake_logits(teacher, x, 2)) for x in final_images)


def test_a_teacher_run_resumed_after_its_last_checkpoint_stores_the_same_labels():
    cfg = _cfg(labels="teacher-target", iterations=4)
    whole = FakeSetStore()
    distill(_run(cfg, store=whole))

    class Dies(FakeSetStore):
        def save_set(self, final):
            raise KeyboardInterrupt  # killed right where the set would be written

    dying = Dies()
    with pytest.raises(KeyboardInterrupt):
        distill(_run(cfg, store=dying))
    again = FakeSetStore(dying.checkpoints)
    distill(_run(cfg, store=again, resume=True))
    assert again.checkpoints[-1].attrs["label_source"]["kind"] == "teacher"
    assert again.sets[0].arrays == whole.sets[0].arrays and again.sets[0].attrs == whole.sets[0].attrs


def test_checks_refuse_what_cannot_run_before_any_work():
    store = FakeSetStore()
    with pytest.raises(DistillError, match="needs epoch 5 but expert 0 stops at epoch 4"):
        distill(_run(_cfg(max_start_epoch=4, expert_epochs=2), store=store))
    with pytest.raises(DistillError, match="3-parameter experts but the model ConvNetD1 has 5"):
        distill(_run(_cfg(), store=store, student=FakeStudent(_cfg(), num_params=5)))
    with pytest.raises(DistillError, match="the data has 3 classes but the model outputs 2"):
        distill(_run(_cfg(), store=store, data=FakeData(num_classes=3)))
    with pytest.raises(DistillError, match=r"the data's images are \(1, 4, 4\)"):
        distill(_run(_cfg(), store=store, data=FakeData(image_shape=(1, 4, 4))))
    with pytest.raises(DistillError, match="no complete expert"):
        distill(_run(_cfg(), store=store, traj=type("Empty", (FakeTrajectories,), {"expert_ids": lambda self: []})(
            FakeTrajectories.random().trajectories)))
    assert store.checkpoints == [] and store.reads == 0
