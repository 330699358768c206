"""The recipe's levers and run health in the distillation loop, on fakes.

Each lever is checked against its definition at loop level: the start epochs are the
sampling strategy's draws at each 0-based iteration; ``learned-teacher`` starts from the
first pool images the chooser classifies correctly, labelled with the mean logits of the
experts that classify them correctly; what is stored and evaluated is FTD's moving
average of the image iterates; PAD's selection is placed at the Student's layers. Run
health: every Iteration event carries the agreement and entropy of the labels that
iteration trained on (None for hard labels); a collapse or a stall stops the run with
NumericalError keeping the last checkpoint, which then resumes; a completed run refuses
to store labels that no longer name their classes; and resume equals an uninterrupted run
with every lever on, health streaks included.
"""

from __future__ import annotations

import math
import random

import attrs
import pytest

from tesla.app.services.distill import RESUMABLE_CHANGES, Cadence, DistillRun, distill
from tesla.app.services.run import DistillRequest, prepare_distillation
from tesla.domain import sampling
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.engines import from_config
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.health import label_agreement, mean_entropy
from tesla.domain.ports import ListSink
from tests.unit.fakes import (V, FakeData, FakeParts, FakeSetStore, FakeStudent, FakeTrajectories, StopAfter, argmax,
                              fake_logits, softmax)

MODEL = ModelConfig(depth=1, width=2, channels=1, image_size=2, num_classes=2)


def _cfg(**kw) -> DistillConfig:
    base = dict(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=3, iterations=8, checkpoint_every=2, lr_img=0.1,
                lr_lr=1e-3, lr_init=0.05, seed=1)
    base.update(kw)
    return DistillConfig(**base)


def _run(cfg: DistillConfig, *, store=None, student=None, traj=None, data=None, engine=None, **kw) -> DistillRun:
    student = student or FakeStudent(cfg)
    return DistillRun(cfg=cfg, model=MODEL, data=data or FakeData(), trajectories=traj or FakeTrajectories.random(),
                      store=FakeSetStore() if store is None else store, student=student,
                      engine=engine or from_config(cfg, layout=student.layout), **kw)


def _healthy(experts: int = 2, epochs: int = 5, dim: int = 3, seed: int = 0) -> FakeTrajectories:
    """Experts whose fake network classifies FakeData well (w[0] near 0)."""
    rng = random.Random(seed)
    return FakeTrajectories({e: [V([rng.uniform(-0.2, 0.2)] + [rng.uniform(-1, 1) for _ in range(dim - 1)])
                                 for _ in range(epochs + 1)] for e in range(experts)})


def _collapsing_after(epoch: int, experts: int = 2, epochs: int = 5, dim: int = 3) -> FakeTrajectories:
    """Experts that call every FakeData image class 0 from ``epoch`` on (w[0] = 8 shifts
    every image's mean below class 0), healthy before."""
    return FakeTrajectories({e: [V([8.0 if k >= epoch else 0.0] + [0.1 * e + 0.3 * k] * (dim - 1))
                                 for k in range(epochs + 1)] for e in range(experts)})


# --- sampling -----------------------------------------------------------------------------


def _replayed_draws(cfg: DistillConfig, experts: list, num_images: int) -> list:
    """The (expert, start) pairs the run's RNG gives when each iteration draws with the
    strategy at its 0-based index and then plans its steps (the loop's order)."""
    rng, strategy, out = random.Random(cfg.seed), sampling.sampling_for(cfg), []
    for i in range(cfg.iterations):
        out.append(strategy.draw(rng, i, experts))
        sampling.make_steps(num_images, cfg.syn_steps, cfg.batch_syn, rng, augment=cfg.dsa)
    return out


@pytest.mark.parametrize("kw", [dict(), dict(min_start_epoch=1),
                                dict(sampling="window", initial_max_start_epoch=1, window_iterations=6)])
def test_the_start_epochs_are_the_sampling_strategys_draws_at_each_iteration(kw):
    cfg, sink = _cfg(**kw), ListSink()
    distill(_run(cfg), sink)
    got = [(e.expert, e.start_epoch) for e in sink.of("iteration")]
    assert got == _replayed_draws(cfg, [0, 1], 4)
    strategy = sampling.sampling_for(cfg)
    assert all(strategy.bounds(i)[0] <= s < strategy.bounds(i)[1] for i, (_, s) in enumerate(got))
    if cfg.sampling == "window":  # it opens: [0, 1) at the start, [0, 3) at the end
        assert got[0][1] == 0 and strategy.bounds(7) == (0, 3)


def test_uniform_sampling_draws_what_the_paper_loop_drew():
    """Default runs resume and reproduce bit for bit: the draws are sample_trajectory_point's."""
    cfg, sink = _cfg(), ListSink()
    distill(_run(cfg), sink)
    rng, legacy = random.Random(cfg.seed), []
    for _ in range(cfg.iterations):
        legacy.append(sampling.sample_trajectory_point(rng, [0, 1], cfg.max_start_epoch))
        sampling.make_steps(4, cfg.syn_steps, cfg.batch_syn, rng, augment=cfg.dsa)
    assert [(e.expert, e.start_epoch) for e in sink.of("iteration")] == legacy


# --- learned-teacher ----------------------------------------------------------------------


def test_learned_teacher_starts_from_correctly_classified_images_with_the_experts_mean_logits():
    cfg = _cfg(labels="learned-teacher", ipc=2, label_momentum=0.9)
    traj, data, store = FakeTrajectories.random(seed=3), FakeData(), FakeSetStore()
    distill(_run(cfg, traj=traj, data=data, store=store), cancel=StopAfter(0))
    first = store.checkpoints[0]
    assert first.iteration == 0
    # by hand: a pool of 4 * ipc per class, the chooser (expert 0) at its last epoch keeps
    # the first ipc it classifies correctly; logits = mean over the correct experts
    last = [traj.trajectories[e][-1] for e in (0, 1)]
    pool = [x for c in range(2) for x in data.sample_class(c, 8, seed=cfg.seed * 100_003 + c)]
    preds = [[argmax(fake_logits(w, x, 2)) for x in pool] for w in last]
    chosen, correct = [], 0
    for c in range(2):
        right = [i for i in range(c * 8, c * 8 + 8) if preds[0][i] == c]
        wrong = [i for i in range(c * 8, c * 8 + 8) if preds[0][i] != c]
        chosen += (right + wrong)[:2]
        correct += min(len(right), 2)
    assert list(first.arrays["images"]) == [pool[i] for i in chosen]
    for row, i in zip(first.arrays["label_logits"], chosen):
        c = i // 8
        voters = [e for e in (0, 1) if preds[e][i] == c] or [0, 1]
        mean = [sum(fake_logits(last[e], pool[i], 2)[j] for e in voters) / len(voters) for j in range(2)]
        assert row == pytest.approx(mean, abs=1e-12)
    assert first.attrs["label_init"] == {"source": "experts", "chooser": 0, "experts": [0, 1], "epoch": 4,
                                         "correct": correct, "images": 4}
    assert 0 < correct  # the case is not degenerate: some chosen images are classified correctly


def test_learned_teacher_provenance_is_stored_with_the_set_and_survives_resume():
    cfg = _cfg(labels="learned-teacher")
    whole = FakeSetStore()
    result = distill(_run(cfg, store=whole))
    stored = whole.sets[0].attrs
    assert stored["label_init"]["source"] == "experts" and stored["label_source"]["kind"] == "learned"
    assert result.label_init == stored["label_init"] and "label_logits" in whole.sets[0].arrays
    part = FakeSetStore()
    distill(_run(cfg, store=part), cancel=StopAfter(3))
    distill(_run(cfg, store=part, resume=True))
    assert part.sets[0].attrs == stored and part.sets[0].arrays == whole.sets[0].arrays


# --- the moving average --------------------------------------------------------------------


def _close(a, b) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(abs(p - q) < 1e-12 for p, q in zip(x, y))
                                    for x, y in zip(a, b))


def test_what_is_stored_and_evaluated_is_the_moving_average_of_the_image_iterates():
    cfg = _cfg(ema_decay=0.7, checkpoint_every=1, iterations=5)
    store, first, seen = FakeSetStore(), FakeSetStore(), []
    distill(_run(cfg, store=first), cancel=StopAfter(0))  # the initial images
    distill(_run(cfg, store=store, cadence=Cadence(eval_every=5),
                 evaluator=lambda state, it: seen.append(list(state.images))))
    iterates = [list(first.checkpoints[0].arrays["images"])] + [list(c.arrays["images"]) for c in store.checkpoints]
    assert _close(first.checkpoints[0].arrays["ema_images"], iterates[0])  # ema_0 = x_0
    ema = iterates[0]
    for t, images in enumerate(iterates[1:], start=1):  # ema_t = 0.7 ema_{t-1} + 0.3 x_t
        ema = [[0.7 * a + 0.3 * b for a, b in zip(e, x)] for e, x in zip(ema, images)]
        assert _close(store.checkpoints[t - 1].arrays["ema_images"], ema)
    final = store.sets[0].arrays["images"]
    assert _close(final, ema) and not _close(final, iterates[-1])  # the average, not the last iterate
    assert seen == [list(final)]  # the evaluation at iteration 5 trained on the average


def test_without_a_decay_nothing_is_averaged():
    store = FakeSetStore()
    distill(_run(_cfg(checkpoint_every=4), store=store))
    assert "ema_images" not in store.checkpoints[0].arrays
    assert store.sets[0].arrays["images"] == store.checkpoints[-1].arrays["images"]


# --- PAD -------------------------------------------------------------------------------------


def test_the_set_up_places_pads_selection_at_the_students_layers():
    cfg = _cfg(match_fraction=0.5, iterations=3)
    layout = [("a", (1,)), ("b", (2,))]
    traj = FakeTrajectories.random(model=to_dict(MODEL), dataset={"name": "demo"})
    parts = FakeParts(traj)
    parts.student = lambda model_cfg, c: FakeStudent(c, layout=layout)  # type: ignore[method-assign]
    prepared = prepare_distillation(DistillRequest(trajectories="e.zarr", out="/runs/pad", cfg=cfg, preview_every=0),
                                    parts)
    through_setup = ListSink()
    prepared.job(through_setup, None)
    direct = ListSink()  # the engine built from the Student's layout by hand: "b", from flat index 1
    distill(_run(cfg, traj=traj, student=FakeStudent(cfg, layout=layout),
                 engine=from_config(cfg, layout=layout)), direct)
    assert from_config(cfg, layout=layout).selection.start == 1
    assert [e.loss for e in through_setup.of("iteration")] == [e.loss for e in direct.of("iteration")]


def test_a_selected_slice_changes_what_the_loop_matches():
    cfg, cut = _cfg(iterations=3), _cfg(iterations=3, match_fraction=0.5)
    layout = [("a", (1,)), ("b", (2,))]
    plain, pad = ListSink(), ListSink()
    distill(_run(cfg, student=FakeStudent(cfg, layout=layout)), plain)
    distill(_run(cut, student=FakeStudent(cut, layout=layout)), pad)
    assert [e.loss for e in plain.of("iteration")] != [e.loss for e in pad.of("iteration")]
    assert from_config(cut, layout=layout).selection.start == 1


# --- run health ------------------------------------------------------------------------------


def test_every_iteration_reports_the_health_of_the_labels_it_trained_on():
    cfg = _cfg(labels="teacher-target", checkpoint_every=1, iterations=5, min_label_agreement=0)
    traj, store, sink, first = _healthy(), FakeSetStore(), ListSink(), FakeSetStore()
    distill(_run(cfg, traj=traj, store=first), cancel=StopAfter(0))
    distill(_run(cfg, traj=traj, store=store), sink)
    before = [first.checkpoints[0]] + store.checkpoints[:-1]  # the images each iteration labelled
    for event, ck in zip(sink.of("iteration"), before):
        teacher = traj.trajectories[event.expert][event.start_epoch + 1]
        rows = [softmax(fake_logits(teacher, x, 2)) for x in ck.arrays["images"]]
        assert event.agreement == label_agreement([argmax(r) for r in rows], [0, 0, 1, 1])
        assert event.label_entropy == pytest.approx(mean_entropy([list(r) for r in rows]), abs=1e-12)
        assert event.low_agreement == 0 and event.stalled == 0


def test_hard_labels_are_not_measured_and_learned_ones_are():
    hard, learned = ListSink(), ListSink()
    distill(_run(_cfg()), hard)
    assert {(e.agreement, e.label_entropy) for e in hard.of("iteration")} == {(None, None)}
    distill(_run(_cfg(labels="learned")), learned)
    # logits 10 on the class: softmax (1 - s, s) with s = 1 / (1 + e^10)
    s = 1 / (1 + math.exp(10))
    assert {e.agreement for e in learned.of("iteration")} == {1.0}
    assert learned.of("iteration")[0].label_entropy == pytest.approx(-(s * math.log(s) + (1 - s) * math.log(1 - s)))


def _fails(run: DistillRun) -> tuple[str, ListSink]:
    sink = ListSink()
    with pytest.raises(NumericalError) as err:
        distill(run, sink)
    assert sink.of("error")[0].message == str(err.value) and sink.events[-1].status == "failed"
    return str(err.value), sink


def test_the_guard_stops_a_run_whose_labels_collapse_and_keeps_its_last_checkpoint():
    cfg = _cfg(labels="teacher-last", collapse_iterations=3, checkpoint_every=2, iterations=8)
    store = FakeSetStore()
    msg, sink = _fails(_run(cfg, traj=_collapsing_after(0), store=store))
    assert msg == ("the labels collapsed: only 50.0% of the synthetic images have a label whose argmax is their own "
                   "class (min_label_agreement 0.75) for 3 iterations up to iteration 3, and 100% of the labels name "
                   "class 0; lower --lr-img (halve it) and resume, or start again with --labels learned-teacher or "
                   "--labels hard, or with --engine exact; the last checkpoint (after iteration 2) is kept for --resume")
    assert [e.low_agreement for e in sink.of("iteration")] == [1, 2, 3]
    assert [c.iteration for c in store.checkpoints] == [2] and store.sets == []
    assert sink.events[-1].summary["health"] == "collapsed"


def test_a_run_stopped_by_the_guard_resumes_from_its_kept_checkpoint():
    """A mid-run collapse (teachers collapse from epoch 3 on, the target of start 2): the
    run stops; resumed with teachers that do not collapse (standing for the fix) it
    continues from the kept checkpoint and completes."""
    cfg = _cfg(labels="teacher-target", collapse_iterations=2, checkpoint_every=2, iterations=12, seed=2)
    store = FakeSetStore()
    msg, sink = _fails(_run(cfg, traj=_collapsing_after(3), store=store))
    assert [e.low_agreement for e in sink.of("iteration")] == [0, 1, 0, 1, 2]  # healthy, then two in a row
    kept = store.checkpoints[-1].iteration
    assert kept == 4 and "(after iteration 4) is kept" in msg and store.sets == []
    rest = ListSink()
    result = distill(_run(cfg, traj=_collapsing_after(99), store=store, resume=True), rest)
    assert rest.of("warning")[0].message == "resumed from the checkpoint at iteration 4"
    assert [e.iteration for e in rest.of("iteration")] == list(range(5, 13)) and result.status == "completed"
    assert {e.low_agreement for e in rest.of("iteration")} == {0} and len(store.sets) == 1


def test_the_streaks_are_checkpointed_so_a_resumed_run_stops_where_the_whole_one_does():
    cfg = _cfg(labels="teacher-target", collapse_iterations=3, checkpoint_every=100, iterations=30)
    traj = _collapsing_after(3)
    _, whole = _fails(_run(cfg, traj=traj))
    lows = [e.low_agreement for e in whole.of("iteration")]
    mid = next(i for i, n in enumerate(lows, start=1) if n >= 1)  # stop inside a streak
    store = FakeSetStore()
    distill(_run(cfg, traj=traj, store=store), cancel=StopAfter(mid))
    assert store.checkpoints[-1].attrs["health"] == {"low_agreement": lows[mid - 1], "stalled": 0}
    _, rest = _fails(_run(cfg, traj=traj, store=store, resume=True))
    assert [e.low_agreement for e in rest.of("iteration")] == lows[mid:]


class _Stuck:
    """An engine whose loss stays near 1 and whose lr gradient drives the lr to its floor."""

    name = "tesla"

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, compute, start, target, alpha, steps):
        return attrs.evolve(self.engine(compute, start, target, alpha, steps), loss=0.99, lr_grad=1e6)


def test_a_stalled_run_stops_even_with_hard_labels():
    cfg = _cfg(stall_iterations=3, checkpoint_every=100)
    msg, sink = _fails(_run(cfg, engine=_Stuck(from_config(cfg))))
    assert msg.startswith("the run stalled: the learned lr has sat at its floor min_lr 1e-06 while the matching loss "
                          "stayed above 0.95 for 3 iterations up to iteration 3")
    assert msg.endswith("no checkpoint was written before it, so start the run again (without --resume)")
    assert [e.stalled for e in sink.of("iteration")] == [1, 2, 3]
    assert all(e.agreement is None for e in sink.of("iteration"))
    off = distill(_run(attrs.evolve(cfg, stall_iterations=0), engine=_Stuck(from_config(cfg))))
    assert off.status == "completed"


class _FinalCollapse(FakeStudent):
    """Healthy teacher labels during the run; the labels of the set to store name class 0."""

    def labels(self, state, plan, teacher):
        out = super().labels(state, plan, teacher)
        if plan.teacher and len(self.label_calls) > self.cfg.iterations:
            state.soft = [V([1.0, 0.0]) for _ in state.images]
            return state.soft
        return out


def test_a_completed_run_never_stores_labels_that_no_longer_name_their_classes():
    cfg = _cfg(labels="teacher-target", iterations=6, checkpoint_every=4)
    store = FakeSetStore()
    msg, _ = _fails(_run(cfg, traj=_healthy(), store=store, student=_FinalCollapse(cfg)))
    assert "in the set about to be stored" in msg and "(after iteration 4) is kept" in msg
    assert store.sets == [] and [c.iteration for c in store.checkpoints] == [4]  # no final checkpoint either
    healthy = FakeSetStore()
    result = distill(_run(cfg, traj=_healthy(), store=healthy))
    assert healthy.sets[0].attrs["label_health"]["agreement"] == 1.0 == result.health["agreement"]


def test_the_health_thresholds_may_change_on_resume_the_levers_may_not():
    assert {"min_label_agreement", "collapse_iterations", "stall_iterations", "stall_tolerance"} <= RESUMABLE_CHANGES
    assert not {"ema_decay", "sampling", "match_fraction", "label_momentum", "labels"} & RESUMABLE_CHANGES
    cfg, store = _cfg(), FakeSetStore()
    distill(_run(cfg, store=store), cancel=StopAfter(2))
    distill(_run(_cfg(min_label_agreement=0.5, stall_iterations=7), store=store, resume=True))
    with pytest.raises(DistillError, match="different ema_decay"):
        distill(_run(_cfg(ema_decay=0.9), store=FakeSetStore(store.checkpoints[:1]), resume=True))


# --- every lever at once ----------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [0, 3, 7])
def test_resume_equals_uninterrupted_with_every_lever_on(stop_after):
    cfg = _cfg(labels="learned-teacher", label_momentum=0.9, sampling="window", min_start_epoch=0,
               initial_max_start_epoch=1, window_iterations=5, ema_decay=0.8, match_fraction=0.5, iterations=9,
               checkpoint_every=3)
    layout = [("a", (1,)), ("b", (2,))]
    whole, sink = FakeSetStore(), ListSink()
    distill(_run(cfg, store=whole, student=FakeStudent(cfg, layout=layout)), sink)
    part = FakeSetStore()
    distill(_run(cfg, store=part, student=FakeStudent(cfg, layout=layout)), cancel=StopAfter(stop_after))
    rest = ListSink()
    distill(_run(cfg, store=part, student=FakeStudent(cfg, layout=layout), resume=True), rest)
    assert part.sets[-1].arrays == whole.sets[-1].arrays and part.sets[-1].attrs == whole.sets[-1].attrs
    strip = lambda e: attrs.evolve(e, seconds=0.0, time=0.0)  # noqa: E731
    assert [strip(e) for e in rest.of("iteration")] == [strip(e) for e in sink.of("iteration")][stop_after:]
