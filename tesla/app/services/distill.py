"""The distillation service: the loop that turns expert trajectories into a synthetic set.

One iteration (:func:`iterate`): draw an expert and a start epoch, read the start and
target snapshots, label the set (class ids, a teacher's softmax, learned logits), plan
the student steps (batches and augmentation seeds), let the engine compute the loss and
the gradients (:mod:`tesla.domain.matching`), sum the data gradient over the ranks,
check the numbers (:mod:`tesla.domain.guard`), and update the set. Between iterations
(:func:`after_iteration`) the run publishes an ``Iteration`` event, memory samples,
previews and evaluations at their cadence, and checkpoints every ``checkpoint_every``
iterations and when it stops, so that a resumed run ends exactly where an uninterrupted
one does (the whole state is in the checkpoint: images, lr, logits, momentum buffers,
the run's RNG state and the label source).

Everything the loop touches comes in through ports, assembled once by the composition
root into a :class:`DistillRun`: the trajectories, the synthetic store, the
:class:`~tesla.domain.ports.Student` that does the numerics, the engine, the ranks.
What differs between one process and the ranks of a distributed run, or between rank 0
and the others, is which objects were put in (a null store, null gauges, a null sink),
never a flag tested here. The module imports no framework and is tested on fakes.
"""

from __future__ import annotations

import random
import time
from typing import Mapping, NoReturn, Optional, Sequence, Union

import attrs

from tesla.domain import events, guard, sampling
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.engines import Engine
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.guard import Stop
from tesla.domain.identity import check_same_trajectories
from tesla.domain.labels import LabelPlan, plan_labels
from tesla.domain.ports import (Cancel, DataSource, EventSink, Evaluator, Gauges, Labels, NoGauges, NullSink, Ranks,
                                SetStore, SingleProcess, State, Step, Student, Trajectories)
from tesla.domain.records import Checkpoint, FinalSet

# fields that may differ when a run is resumed (the usual fixes and the run length)
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "lr_img", "lr_lr", "lr_label", "max_grad_norm", "max_loss",
                     "remake_weights", "micro_batch", "memory_budget", "set_on"}  # memory only: the same numbers


@attrs.frozen
class DistillResult:
    status: str  # completed | cancelled
    iterations: int
    loss: Optional[float]
    lr: float
    label_source: dict


@attrs.frozen
class Cadence:
    """How often a run shows itself (0: never); checkpoints follow the config.

    Attributes:
        preview_every: an image preview every k iterations (and after the first).
        memory_every: a memory sample every k iterations (and after the first).
        eval_every: an evaluation of the set every k iterations.
    """

    preview_every: int = 0
    memory_every: int = 10
    eval_every: int = 0

    def memory_due(self, done: int, first: int) -> bool:
        return bool(self.memory_every) and (done == first + 1 or done % self.memory_every == 0)

    def preview_due(self, done: int, first: int) -> bool:
        return bool(self.preview_every) and (done % self.preview_every == 0 or done == first + 1)

    def eval_due(self, done: int) -> bool:
        return bool(self.eval_every) and done % self.eval_every == 0


def no_evaluation(state: State, iteration: int) -> None:
    """The evaluator of a run that scores nothing while it goes."""


@attrs.frozen
class DistillRun:
    """Everything one distillation needs, assembled by the composition root.

    Attributes:
        cfg, model: the run's configs.
        data: real images (the initial set).
        trajectories: the experts.
        store: where checkpoints and the finished set go (a store that writes nothing on
            ranks other than 0).
        student: the numerics outside the engine.
        engine: the gradient engine (:func:`tesla.domain.engines.from_config`).
        ranks: the processes sharing pass 2 (one process: :class:`SingleProcess`).
        gauges: previews and memory samples (:class:`NoGauges` where nothing is shown).
        evaluator: scores the set at ``cadence.eval_every``.
        cadence: how often to preview, sample memory and evaluate.
        resume: continue from the store's last checkpoint (when there is one).
        run_config: what ``RunStarted`` records (default: the two configs).
        provenance: recorded with the finished set (data, trajectories, class names ...).
        trajectory_identity: the trajectories' URL and fingerprint
            (:func:`tesla.domain.identity.trajectory_identity`), kept in every checkpoint
            and compared on resume; None records and checks nothing.
    """

    cfg: DistillConfig
    model: ModelConfig
    data: DataSource
    trajectories: Trajectories
    store: SetStore
    student: Student
    engine: Engine
    ranks: Ranks = SingleProcess()
    gauges: Gauges = NoGauges()
    evaluator: Evaluator = no_evaluation
    cadence: Cadence = Cadence()
    resume: bool = False
    run_config: Optional[dict] = None
    provenance: Mapping = attrs.field(factory=dict)
    trajectory_identity: Optional[Mapping] = None


@attrs.define
class Progress:
    """Where a run is: the set, the run's RNG, the iterations done, the label source."""

    state: State
    rng: random.Random
    first: int  # iterations done when this call started
    done: int
    labels: LabelPlan  # where the labels of the last iteration came from
    loss: Optional[float] = None


@attrs.frozen
class Draw:
    """What an iteration drew from the run's RNG."""

    expert: int
    start_epoch: int
    plan: LabelPlan
    steps: Sequence[Step]


@attrs.frozen
class Outcome:
    """A good iteration, as the ``Iteration`` event reports it."""

    loss: float
    lr: float
    expert: int
    start_epoch: int
    grad_norm: float
    plan: LabelPlan
    seconds: float


class _NeverCancelled:
    def is_set(self) -> bool:
        return False


# --- checks before any work -----------------------------------------------------------


def check_inputs(cfg: DistillConfig, model_cfg: ModelConfig, data: DataSource, trajectories: Trajectories,
                 num_params: int) -> list[int]:
    """Refuse, before any work, what cannot run; returns the usable expert ids.

    Args:
        num_params: P of the student network built from ``model_cfg``.
    """
    meta = trajectories.meta
    if meta.num_params != num_params:
        raise DistillError(f"the trajectory store holds {meta.num_params}-parameter experts but the model "
                           f"{model_cfg.name} has {num_params}: pass the model the experts were trained with")
    if data.num_classes != model_cfg.num_classes:
        raise DistillError(f"the data has {data.num_classes} classes but the model outputs {model_cfg.num_classes}")
    shape = tuple(data.image_shape)
    if shape != (model_cfg.channels, model_cfg.image_size, model_cfg.image_size):
        raise DistillError(f"the data's images are {shape} but the model expects "
                           f"{(model_cfg.channels, model_cfg.image_size, model_cfg.image_size)}")
    ids = trajectories.expert_ids()
    if not ids:
        raise DistillError("the trajectory store holds no complete expert: run `tesla experts` first")
    needed = cfg.last_epoch_needed
    short = [e for e in ids if trajectories.num_snapshots(e) - 1 < needed]
    if short:
        have = min(trajectories.num_snapshots(e) for e in short) - 1
        raise DistillError(f"max_start_epoch + expert_epochs needs epoch {needed} but expert {short[0]} stops at "
                           f"epoch {have}: lower --max-start-epoch/--expert-epochs or train longer experts")
    n = cfg.ipc * data.num_classes
    if cfg.batch_syn is not None and cfg.batch_syn > n:
        raise DistillError(f"batch_syn {cfg.batch_syn} is larger than the synthetic set ({n} images)")
    return ids


def check_resumable(cfg: DistillConfig, checkpoint_attrs: Mapping) -> None:
    """Refuse to resume a checkpoint made with other settings than the usual fixes."""
    saved = checkpoint_attrs.get("distill", {})
    now = to_dict(cfg)
    changed = sorted(k for k in saved if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise DistillError(f"the checkpoint in the output was made with different {', '.join(changed)}: "
                           "resume with the same settings or choose a new --out")


def rng_state_to_json(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_state_from_json(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])


# --- the loop ---------------------------------------------------------------------------


def distill(run: DistillRun, sink: Optional[EventSink] = None, cancel: Optional[Cancel] = None) -> DistillResult:
    """Run (or resume) a distillation; see the module docstring.

    Args:
        run: the run, assembled by the composition root.
        sink: where events go.
        cancel: read once per iteration; when set, the run stops after the current
            iteration with a checkpoint (status ``cancelled``).

    Raises:
        DistillError: the inputs do not fit (before any work) or the checkpoint was made
            with other settings.
        NumericalError: NaN/inf or divergence; the last good state is kept.
    """
    sink = sink or NullSink()
    cancel = cancel or _NeverCancelled()
    experts = check_inputs(run.cfg, run.model, run.data, run.trajectories, run.student.num_params)
    progress = begin(run, sink)
    status = "completed"
    while progress.done < run.cfg.iterations:
        if cancel.is_set():
            status = "cancelled"
            break
        outcome = iterate(run, progress, experts)
        if isinstance(outcome, Stop):
            stop_run(run, progress, outcome, sink)
        after_iteration(run, progress, outcome, sink)
    write_checkpoint(run, progress, sink)
    return finish(run, progress, status, sink)


def begin(run: DistillRun, sink: EventSink) -> Progress:
    """A fresh set, or the store's last checkpoint on resume (refused when made with other settings)."""
    cfg = run.cfg
    rng = random.Random(cfg.seed)
    labels = LabelPlan("learned" if cfg.labels == "learned" else "hard")  # until a teacher labels the set
    found = run.store.last_checkpoint() if run.resume else None
    if found is None:
        progress = Progress(state=run.student.initial(run.data), rng=rng, first=0, done=0, labels=labels)
    else:
        check_resumable(cfg, found.attrs)
        check_same_trajectories(found.attrs.get("trajectories"), run.trajectory_identity)
        state = run.student.restore(found.arrays)
        rng.setstate(rng_state_from_json(found.attrs["rng"]))
        recorded = found.attrs.get("label_source")
        progress = Progress(state=state, rng=rng, first=found.iteration, done=found.iteration,
                            labels=LabelPlan.from_provenance(recorded) if recorded else labels)
    config = run.run_config or {"distill": to_dict(cfg), "model": to_dict(run.model)}
    sink.emit(events.RunStarted(job="distill", config=config, total=cfg.iterations))
    if found is not None:
        sink.emit(events.Warning(message=f"resumed from the checkpoint at iteration {found.iteration}",
                                 iteration=found.iteration))
    return progress


def draw(run: DistillRun, progress: Progress, experts: Sequence[int]) -> Draw:
    """The iteration's expert, start epoch, label plan and student steps, from the run's RNG."""
    cfg = run.cfg
    expert, start_epoch = sampling.sample_trajectory_point(progress.rng, experts, cfg.max_start_epoch)
    plan = plan_labels(cfg.labels, expert=expert, start_epoch=start_epoch, expert_epochs=cfg.expert_epochs,
                       num_snapshots=run.trajectories.num_snapshots(expert), fixed_epoch=cfg.label_epoch)
    steps = sampling.make_steps(run.student.size(progress.state), cfg.syn_steps, cfg.batch_syn, progress.rng,
                                augment=cfg.dsa)
    return Draw(expert=expert, start_epoch=start_epoch, plan=plan, steps=steps)


def label(run: DistillRun, state: State, plan: LabelPlan) -> Labels:
    """The labels ``plan`` asks for (a teacher's snapshot is read for a teacher plan)."""
    teacher = run.student.weights(run.trajectories.load(plan.expert, plan.epoch)) if plan.teacher else None
    return run.student.labels(state, plan, teacher)


def iterate(run: DistillRun, progress: Progress, experts: Sequence[int]) -> Union[Outcome, Stop]:
    """One iteration: match, check, update. Returns what it did, or why the run must stop
    (the set is then left as it was before the update, or as the update broke it)."""
    t0 = time.perf_counter()
    student, state, done = run.student, progress.state, progress.done
    d = draw(run, progress, experts)
    start = student.weights(run.trajectories.load(d.expert, d.start_epoch))
    target = student.weights(run.trajectories.load(d.expert, d.start_epoch + run.cfg.expert_epochs))
    compute = student.compute(state, label(run, state, d.plan))
    matched = run.engine(compute, start, target, student.lr(state), d.steps)
    images_grad, labels_grad = compute.data_grad()
    images_grad = run.ranks.sum(images_grad)  # every rank then applies the same update
    labels_grad = None if labels_grad is None else run.ranks.sum(labels_grad)
    trouble = guard.before_update(done, matched.loss, matched.lr_grad, grad_finite=student.finite(images_grad),
                                  state_problem=student.problem(state), max_loss=run.cfg.max_loss)
    if trouble is not None:
        return trouble
    grad_norm = student.step(state, images_grad, labels_grad, matched.lr_grad)
    trouble = guard.after_update(done, matched.loss, state_problem=student.problem(state))
    if trouble is not None:
        return trouble
    return Outcome(loss=matched.loss, lr=student.lr(state), expert=d.expert, start_epoch=d.start_epoch,
                   grad_norm=grad_norm, plan=d.plan, seconds=time.perf_counter() - t0)


def after_iteration(run: DistillRun, progress: Progress, outcome: Outcome, sink: EventSink) -> None:
    """Record a good iteration, publish it, and checkpoint or evaluate when due."""
    progress.loss = outcome.loss
    progress.labels = outcome.plan
    progress.done += 1
    done, cadence = progress.done, run.cadence
    sink.emit(events.Iteration(iteration=done, total=run.cfg.iterations, loss=outcome.loss, lr=outcome.lr,
                               expert=outcome.expert, start_epoch=outcome.start_epoch, seconds=outcome.seconds,
                               grad_norm=outcome.grad_norm))
    if cadence.memory_due(done, progress.first):
        _emit(sink, run.gauges.memory(done))
    if cadence.preview_due(done, progress.first):
        _emit(sink, run.gauges.preview(progress.state, done))
    if checkpoint_due(run.cfg, done):
        write_checkpoint(run, progress, sink)
    if cadence.eval_due(done):
        run.evaluator(progress.state, done)


def _emit(sink: EventSink, event: Optional[object]) -> None:
    if event is not None:
        sink.emit(event)


# --- checkpoints, the stop and the end ------------------------------------------------


def checkpoint_due(cfg: DistillConfig, done: int) -> bool:
    """A checkpoint every ``checkpoint_every`` iterations; the last one is written as the run ends."""
    return done % cfg.checkpoint_every == 0 and done < cfg.iterations


def checkpoint_of(run: DistillRun, progress: Progress) -> Checkpoint:
    """The whole state of the run: enough to continue bit for bit."""
    attrs_ = {"iteration": progress.done, "rng": rng_state_to_json(progress.rng), "distill": to_dict(run.cfg),
              "model": to_dict(run.model), "label_source": progress.labels.provenance()}
    if run.trajectory_identity:
        attrs_["trajectories"] = dict(run.trajectory_identity)
    return Checkpoint(iteration=progress.done, arrays=run.student.checkpoint_arrays(progress.state), attrs=attrs_)


def write_checkpoint(run: DistillRun, progress: Progress, sink: EventSink) -> None:
    where = run.store.save_checkpoint(checkpoint_of(run, progress))
    sink.emit(events.Checkpoint(path=str(where), iteration=progress.done))


def last_kept(store: SetStore) -> int:
    """The iterations done in the store's last checkpoint (0: none, the run starts over)."""
    last = store.last_checkpoint()
    return last.iteration if last is not None else 0


def stop_run(run: DistillRun, progress: Progress, trouble: Stop, sink: EventSink) -> NoReturn:
    """Keep the last good state, say what happened and what to do, and raise NumericalError."""
    if trouble.checkpoint_now:  # the state before this iteration is good
        write_checkpoint(run, progress, sink)
    else:
        trouble = attrs.evolve(trouble, kept=last_kept(run.store))
    message = trouble.message()
    sink.emit(events.Error(message=message, iteration=progress.done))
    sink.emit(events.RunFinished(status="failed", summary={"iteration": progress.done, "error": message}))
    raise NumericalError(message)


def final_set(run: DistillRun, progress: Progress) -> FinalSet:
    """The finished set. Teacher labels are remade from the recorded teacher on the final
    images (the ones stored beside them), so a run resumed after its last checkpoint
    stores exactly what an uninterrupted one does."""
    cfg, plan = run.cfg, progress.labels
    soft = label(run, progress.state, plan) if plan.teacher else None
    attrs_ = {"iteration": progress.done, "distill": to_dict(cfg), "model": to_dict(run.model),
              "label_source": plan.provenance(), "seed": cfg.seed, "num_classes": run.model.num_classes,
              "ipc": cfg.ipc, **run.provenance}
    return FinalSet(arrays=run.student.final_arrays(progress.state, soft), attrs=attrs_)


def finish(run: DistillRun, progress: Progress, status: str, sink: EventSink) -> DistillResult:
    """Store the finished set (a completed run), and report."""
    if status == "completed":
        run.store.save_set(final_set(run, progress))
    lr = run.student.lr(progress.state)
    sink.emit(events.RunFinished(status=status, summary={"iterations": progress.done, "loss": progress.loss,
                                                         "lr": lr}))
    return DistillResult(status=status, iterations=progress.done, loss=progress.loss, lr=lr,
                         label_source=progress.labels.provenance())


__all__ = [
    "Cadence", "DistillError", "DistillResult", "DistillRun", "NumericalError", "RESUMABLE_CHANGES", "check_inputs",
    "check_resumable", "checkpoint_due", "distill", "iterate", "no_evaluation",
]
