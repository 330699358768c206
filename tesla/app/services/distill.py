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
the run's RNG state, the label source, the moving average and the health streaks).

The recipe's levers are values chosen once from the config (:class:`Recipe`), never a
flag tested in the loop: the sampling of start epochs (:mod:`tesla.domain.sampling`,
uniform or DATM's widening window), the label strategy (:mod:`tesla.domain.labels`;
``learned-teacher`` starts from real images the experts classify correctly, with their
logits, :func:`start_set`), what is evaluated and stored (the images, or FTD's moving
average of them, :class:`MovingAverage`), PAD's parameter selection (a setting of the
engine, :func:`tesla.domain.engines.from_config`) and the health guard
(:mod:`tesla.domain.health`).

Run health, every iteration: the labels the iteration trained on are measured
(agreement: the fraction of images whose label argmax is their class; the mean label
entropy) and the guard counts the iterations in a row that they stayed below
``min_label_agreement``, and that the learned lr sat at its floor with the loss near 1.
Hard labels are not measured: class ids name their classes by construction (their
agreement would be 1 whatever the images became), so the event reports None and only
the stall check applies. A collapse or a stall stops the run like a NaN does
(:class:`~tesla.domain.errors.NumericalError`), keeping the store's last checkpoint and
saying what collapsed and what to change; and a completed run checks the labels it is
about to store once more, with no patience, so it never stores a set whose labels no
longer name their classes.

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
from typing import Mapping, NoReturn, Optional, Protocol, Sequence, Union

import attrs

from tesla.domain import events, guard, sampling
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.ema import ImageEMA, ema_for
from tesla.domain.engines import Engine
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.guard import Stop
from tesla.domain.health import Guard, Health, Streaks, Verdict, guard_for
from tesla.domain.identity import check_same_trajectories
from tesla.domain.labels import (LabelPlan, LabelStrategy, TeacherStart, choose_initial, consensus_weights,
                                 labels_for)
from tesla.domain.ports import (Cancel, DataSource, EventSink, Evaluator, Gauges, Images, Labels, NoGauges, NullSink,
                                Ranks, SetStore, SingleProcess, State, Step, Student, Trajectories)
from tesla.domain.records import Array, Checkpoint, FinalSet
from tesla.domain.sampling import Sampling, sampling_for

# fields that may differ when a run is resumed (the usual fixes, the run length, the health thresholds)
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "lr_img", "lr_lr", "lr_label", "max_grad_norm", "max_loss",
                     "remake_weights", "micro_batch", "memory_budget", "set_on",  # memory only: the same numbers
                     "min_label_agreement", "collapse_iterations", "stall_iterations", "stall_tolerance"}
EMA_IMAGES = "ema_images"  # the checkpoint's array of the moving average


@attrs.frozen
class DistillResult:
    """How a run ended.

    Attributes:
        health: agreement and entropy of the stored labels (None: hard labels, or no set).
        label_init: how learned labels began (``LabelInit.provenance``; None: not learned).
    """

    status: str  # completed | cancelled
    iterations: int
    loss: Optional[float]
    lr: float
    label_source: dict
    health: Optional[dict] = None
    label_init: Optional[dict] = None


# --- the recipe: the levers, chosen once from the config ------------------------------


class Average(Protocol):
    """What a run evaluates and stores: its images, or a moving average of them."""

    def start(self, student: Student, state: State) -> Optional[Images]:
        """The average of a fresh set (None: nothing is averaged)."""

    def update(self, student: Student, state: State, average: Optional[Images]) -> Optional[Images]:
        """The average after an image update."""

    def shown(self, student: Student, state: State, average: Optional[Images]) -> State:
        """The set as it is evaluated, previewed and stored."""

    def arrays(self, student: Student, average: Optional[Images]) -> dict[str, Array]:
        """What a checkpoint holds of the average."""

    def restore(self, student: Student, arrays: Mapping[str, Array]) -> Optional[Images]:
        """The average a checkpoint holds."""


@attrs.frozen
class LastIterate:
    """No average: the run evaluates and stores its images as they are (the paper)."""

    def start(self, student: Student, state: State) -> None:
        return None

    def update(self, student: Student, state: State, average: Optional[Images]) -> None:
        return None

    def shown(self, student: Student, state: State, average: Optional[Images]) -> State:
        return state

    def arrays(self, student: Student, average: Optional[Images]) -> dict[str, Array]:
        return {}

    def restore(self, student: Student, arrays: Mapping[str, Array]) -> None:
        return None


@attrs.frozen
class MovingAverage:
    """FTD's moving average of the images (:mod:`tesla.domain.ema`): updated after every
    image update, evaluated and stored in their place, checkpointed as ``ema_images``."""

    ema: ImageEMA

    def start(self, student: Student, state: State) -> Images:
        return self.ema.start(student.images(state))

    def update(self, student: Student, state: State, average: Optional[Images]) -> Images:
        return self.ema.update(average, student.images(state))

    def shown(self, student: Student, state: State, average: Optional[Images]) -> State:
        return student.with_images(state, average)

    def arrays(self, student: Student, average: Optional[Images]) -> dict[str, Array]:
        return {EMA_IMAGES: student.images_array(average)}

    def restore(self, student: Student, arrays: Mapping[str, Array]) -> Images:
        if EMA_IMAGES not in arrays:  # check_resumable refuses another ema_decay; a damaged checkpoint
            raise DistillError(f"the checkpoint holds no {EMA_IMAGES} but ema_decay {self.ema.decay:g} is set: "
                               "resume with the run's own settings or choose a new --out")
        return student.images_from(arrays[EMA_IMAGES])


@attrs.frozen
class Recipe:
    """The levers of a run, each chosen once from the config.

    Attributes:
        sampling: where iteration ``i`` starts on the trajectories (uniform, window).
        labels: where the labels come from, and how learned ones begin.
        average: what is evaluated and stored (the images or their moving average).
        guard: the thresholds of run health.
    """

    sampling: Sampling
    labels: LabelStrategy
    average: Average
    guard: Guard

    @classmethod
    def of(cls, cfg: DistillConfig, num_classes: int) -> "Recipe":
        ema = ema_for(cfg)
        return cls(sampling=sampling_for(cfg), labels=labels_for(cfg),
                   average=LastIterate() if ema is None else MovingAverage(ema), guard=guard_for(cfg, num_classes))


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
    recipe: Recipe = attrs.field(
        default=attrs.Factory(lambda self: Recipe.of(self.cfg, self.model.num_classes), takes_self=True))


@attrs.define
class Progress:
    """Where a run is: the set, the run's RNG, the iterations done, the label source,
    the moving average of the images and the health streaks."""

    state: State
    rng: random.Random
    first: int  # iterations done when this call started
    done: int
    labels: LabelPlan  # where the labels of the last iteration came from
    loss: Optional[float] = None
    average: Optional[Images] = None  # the moving average of the images (None: not averaged)
    streaks: Streaks = Streaks()
    label_init: Optional[dict] = None  # how learned labels began (None: not learned)


@attrs.frozen
class Draw:
    """What an iteration drew from the run's RNG."""

    expert: int
    start_epoch: int
    plan: LabelPlan
    steps: Sequence[Step]


@attrs.frozen
class Outcome:
    """A good iteration, as the ``Iteration`` event reports it (``health``: of the labels
    it trained on; None for hard labels)."""

    loss: float
    lr: float
    expert: int
    start_epoch: int
    grad_norm: float
    plan: LabelPlan
    seconds: float
    health: Optional[Health] = None


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
        NumericalError: NaN/inf or divergence, labels that collapsed or a run that stalled
            (run health); the last good state is kept.
    """
    sink = sink or NullSink()
    cancel = cancel or _NeverCancelled()
    experts = check_inputs(run.cfg, run.model, run.data, run.trajectories, run.student.num_params)
    progress = begin(run, sink, experts)
    status = "completed"
    while progress.done < run.cfg.iterations:
        if cancel.is_set():
            status = "cancelled"
            break
        outcome = iterate(run, progress, experts)
        if isinstance(outcome, Stop):
            stop_run(run, progress, outcome, sink)
        after_iteration(run, progress, outcome, sink)
    final = final_set(run, progress, sink) if status == "completed" else None  # its labels are checked first
    write_checkpoint(run, progress, sink)
    return finish(run, progress, status, sink, final)


def begin(run: DistillRun, sink: EventSink, experts: Sequence[int]) -> Progress:
    """A fresh set (:func:`start_set`), or the store's last checkpoint on resume (refused
    when made with other settings)."""
    cfg, recipe = run.cfg, run.recipe
    rng = random.Random(cfg.seed)
    labels = LabelPlan("learned" if recipe.labels.learned else "hard")  # until a teacher labels the set
    found = run.store.last_checkpoint() if run.resume else None
    if found is None:
        state, label_init = start_set(run, experts)
        progress = Progress(state=state, rng=rng, first=0, done=0, labels=labels, label_init=label_init,
                            average=recipe.average.start(run.student, state))
    else:
        check_resumable(cfg, found.attrs)
        check_same_trajectories(found.attrs.get("trajectories"), run.trajectory_identity)
        state = run.student.restore(found.arrays)
        rng.setstate(rng_state_from_json(found.attrs["rng"]))
        recorded = found.attrs.get("label_source")
        progress = Progress(state=state, rng=rng, first=found.iteration, done=found.iteration,
                            labels=LabelPlan.from_provenance(recorded) if recorded else labels,
                            average=recipe.average.restore(run.student, found.arrays),
                            streaks=Streaks.from_dict(found.attrs.get("health")),
                            label_init=found.attrs.get("label_init"))
    config = run.run_config or {"distill": to_dict(cfg), "model": to_dict(run.model)}
    sink.emit(events.RunStarted(job="distill", config=config, total=cfg.iterations))
    if found is not None:
        sink.emit(events.Warning(message=f"resumed from the checkpoint at iteration {found.iteration}",
                                 iteration=found.iteration))
    return progress


def start_set(run: DistillRun, experts: Sequence[int]) -> tuple[State, Optional[dict]]:
    """A fresh set, and the provenance of its initial labels (None: they are not learned).

    ``learned-teacher`` (DATM, :mod:`tesla.domain.labels`): a pool of
    ``candidates(ipc)`` real images per class is drawn, the chooser expert keeps per
    class the first ``ipc`` it classifies correctly, and each kept image's logits are
    the mean of the logits of the experts that classify it correctly; the experts are
    read at their init epoch (the last snapshot unless ``label_epoch`` says otherwise).
    """
    strategy, student, traj = run.recipe.labels, run.student, run.trajectories
    init = strategy.init_plan(experts)
    if init is None or not strategy.chooses_images:
        return student.initial(run.data), None if init is None else init.provenance()
    teachers = [student.weights(traj.load(e, init.epoch_of(traj.num_snapshots(e)))) for e in init.experts]
    per_class = strategy.candidates(run.cfg.ipc)
    pool = student.candidates(run.data, per_class)
    votes = [student.predict(t, pool) for t in teachers]
    chosen, correct = choose_initial(votes[init.experts.index(init.chooser)], per_class=per_class,
                                     num_classes=run.model.num_classes, ipc=run.cfg.ipc)
    weights = consensus_weights([[v[i] for i in chosen] for v in votes], [i // per_class for i in chosen])
    state = student.initial(run.data, TeacherStart(pool=pool, chosen=chosen, teachers=teachers, weights=weights))
    epoch = init.epoch_of(traj.num_snapshots(init.chooser))
    return state, init.provenance(epoch=epoch, correct=correct, images=len(chosen))


def draw(run: DistillRun, progress: Progress, experts: Sequence[int]) -> Draw:
    """The iteration's expert, start epoch (the recipe's sampling at this 0-based
    iteration), label plan and student steps, from the run's RNG."""
    cfg = run.cfg
    expert, start_epoch = run.recipe.sampling.draw(progress.rng, progress.done, experts)
    plan = run.recipe.labels.plan(expert=expert, start_epoch=start_epoch, expert_epochs=cfg.expert_epochs,
                                  num_snapshots=run.trajectories.num_snapshots(expert))
    steps = sampling.make_steps(run.student.size(progress.state), cfg.syn_steps, cfg.batch_syn, progress.rng,
                                augment=cfg.dsa)
    return Draw(expert=expert, start_epoch=start_epoch, plan=plan, steps=steps)


def label(run: DistillRun, state: State, plan: LabelPlan) -> Labels:
    """The labels ``plan`` asks for (a teacher's snapshot is read for a teacher plan)."""
    teacher = run.student.weights(run.trajectories.load(plan.expert, plan.epoch)) if plan.teacher else None
    return run.student.labels(state, plan, teacher)


def measure(run: DistillRun, state: State, plan: LabelPlan, labels: Labels) -> Optional[Health]:
    """Run health of ``labels`` (None for class ids: :attr:`LabelPlan.measured`)."""
    if not plan.measured:
        return None
    return Health.measure(*run.student.health(state, labels))


def shown(run: DistillRun, progress: Progress) -> State:
    """The set as it is evaluated, previewed and stored (the moving average where the run
    keeps one)."""
    return run.recipe.average.shown(run.student, progress.state, progress.average)


def iterate(run: DistillRun, progress: Progress, experts: Sequence[int]) -> Union[Outcome, Stop]:
    """One iteration: match, check, update. Returns what it did, or why the run must stop
    (the set is then left as it was before the update, or as the update broke it)."""
    t0 = time.perf_counter()
    student, state, done = run.student, progress.state, progress.done
    d = draw(run, progress, experts)
    start = student.weights(run.trajectories.load(d.expert, d.start_epoch))
    target = student.weights(run.trajectories.load(d.expert, d.start_epoch + run.cfg.expert_epochs))
    labels = label(run, state, d.plan)
    health = measure(run, state, d.plan, labels)  # the labels this iteration trains on
    compute = student.compute(state, labels)
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
                   grad_norm=grad_norm, plan=d.plan, seconds=time.perf_counter() - t0, health=health)


def after_iteration(run: DistillRun, progress: Progress, outcome: Outcome, sink: EventSink) -> None:
    """Record a good iteration (the moving average, the health streaks), publish it, stop
    a run whose labels collapsed or that stalled, and checkpoint or evaluate when due."""
    progress.loss = outcome.loss
    progress.labels = outcome.plan
    progress.done += 1
    progress.average = run.recipe.average.update(run.student, progress.state, progress.average)
    health = outcome.health
    progress.streaks = run.recipe.guard.observe(progress.streaks, agreement=None if health is None else
                                                health.agreement, lr=outcome.lr, loss=outcome.loss)
    done, cadence = progress.done, run.cadence
    sink.emit(events.Iteration(iteration=done, total=run.cfg.iterations, loss=outcome.loss, lr=outcome.lr,
                               expert=outcome.expert, start_epoch=outcome.start_epoch, seconds=outcome.seconds,
                               grad_norm=outcome.grad_norm, agreement=None if health is None else health.agreement,
                               label_entropy=None if health is None else health.entropy,
                               low_agreement=progress.streaks.low_agreement, stalled=progress.streaks.stalled))
    verdict = run.recipe.guard.verdict(progress.streaks, health, iteration=done)
    if verdict is not None:
        stop_unhealthy(run, progress, verdict, sink)
    if cadence.memory_due(done, progress.first):
        _emit(sink, run.gauges.memory(done))
    if cadence.preview_due(done, progress.first):
        _emit(sink, run.gauges.preview(shown(run, progress), done))
    if checkpoint_due(run.cfg, done):
        write_checkpoint(run, progress, sink)
    if cadence.eval_due(done):
        run.evaluator(evaluated(run, progress), done)


def evaluated(run: DistillRun, progress: Progress) -> State:
    """The set an evaluation trains on: :func:`shown`, with a teacher's labels remade on
    those very images (not on the images before the last update)."""
    state = shown(run, progress)
    if progress.labels.teacher:
        label(run, state, progress.labels)
    return state


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
              "model": to_dict(run.model), "label_source": progress.labels.provenance(),
              "health": progress.streaks.to_dict()}
    if run.trajectory_identity:
        attrs_["trajectories"] = dict(run.trajectory_identity)
    if progress.label_init is not None:
        attrs_["label_init"] = progress.label_init
    arrays = {**run.student.checkpoint_arrays(progress.state),
              **run.recipe.average.arrays(run.student, progress.average)}
    return Checkpoint(iteration=progress.done, arrays=arrays, attrs=attrs_)


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


def stop_unhealthy(run: DistillRun, progress: Progress, verdict: Verdict, sink: EventSink) -> NoReturn:
    """The labels collapsed or the run stalled: keep the store's last checkpoint (this
    state is not a good one), say what failed and what to change, raise NumericalError."""
    kept = last_kept(run.store)
    where = (f"the last checkpoint (after iteration {kept}) is kept for --resume" if kept
             else "no checkpoint was written before it, so start the run again (without --resume)")
    message = f"{verdict.message}; {where}"
    sink.emit(events.Error(message=message, iteration=progress.done))
    sink.emit(events.RunFinished(status="failed", summary={"iteration": progress.done, "error": message,
                                                           "health": verdict.kind}))
    raise NumericalError(message)


def final_set(run: DistillRun, progress: Progress, sink: Optional[EventSink] = None) -> FinalSet:
    """The finished set: :func:`shown` (the moving average where the run keeps one) with
    its labels. Teacher labels are remade from the recorded teacher on the images stored
    beside them, so a run resumed after its last checkpoint stores exactly what an
    uninterrupted one does. Labels that no longer name their classes are refused
    (:meth:`~tesla.domain.health.Guard.check_stored`): the run stops instead."""
    cfg, plan = run.cfg, progress.labels
    state = shown(run, progress)
    labels = label(run, state, plan) if plan.measured else None
    health = measure(run, state, plan, labels)
    verdict = None if health is None else run.recipe.guard.check_stored(health)
    if verdict is not None:
        stop_unhealthy(run, progress, verdict, sink or NullSink())
    attrs_ = {"iteration": progress.done, "distill": to_dict(cfg), "model": to_dict(run.model),
              "label_source": plan.provenance(), "seed": cfg.seed, "num_classes": run.model.num_classes,
              "ipc": cfg.ipc, **run.provenance}
    if progress.label_init is not None:
        attrs_["label_init"] = progress.label_init
    if health is not None:
        attrs_["label_health"] = health_record(health)
    return FinalSet(arrays=run.student.final_arrays(state, labels if plan.teacher else None), attrs=attrs_)


def health_record(health: Health) -> dict:
    """What a stored set (and the result) records of its labels' health."""
    return {"agreement": health.agreement, "entropy": health.entropy, "dominant": health.dominant,
            "dominant_share": health.dominant_share}


def finish(run: DistillRun, progress: Progress, status: str, sink: EventSink,
           final: Optional[FinalSet] = None) -> DistillResult:
    """Store the finished set (a completed run's, checked by :func:`final_set`), and report."""
    if final is not None:
        run.store.save_set(final)
    lr = run.student.lr(progress.state)
    health = None if final is None else final.attrs.get("label_health")
    summary = {"iterations": progress.done, "loss": progress.loss, "lr": lr}
    if health is not None:
        summary["label_agreement"] = health["agreement"]
    sink.emit(events.RunFinished(status=status, summary=summary))
    return DistillResult(status=status, iterations=progress.done, loss=progress.loss, lr=lr,
                         label_source=progress.labels.provenance(), health=health, label_init=progress.label_init)


__all__ = [
    "Cadence", "DistillError", "DistillResult", "DistillRun", "LastIterate", "MovingAverage", "NumericalError",
    "RESUMABLE_CHANGES", "Recipe", "check_inputs", "check_resumable", "checkpoint_due", "distill", "iterate",
    "no_evaluation", "start_set",
]
