"""The evaluation service: a synthetic set judged under a protocol, beside its honest references.

A set is judged by training fresh, randomly initialised networks on it and measuring top-1
on the real test set: mean +- std over ``num_models`` networks, for each architecture asked
for. *How* the networks train is a protocol, a small value chosen once
(:mod:`tesla.app.services.protocols`: ``MTTProtocol``, ``RelabelProtocol``, and
``FullRealProtocol`` for the whole training set), so the loop that trains, reports and
scores never asks which:

- ``mtt`` (the default): the MTT/TESLA protocol: SGD momentum 0.9, weight decay 5e-4,
  lr = the learned lr unless given, x0.1 at half time, DSA on every batch, cross-entropy
  with the stored soft or hard labels;
- ``relabel``: the protocol of SRe2L, RDED and DD-Ranking's soft-label mode: a teacher
  relabels every augmented batch (KL at a temperature, crop, flip, CutMix; AdamW and a
  cosine schedule, :mod:`tesla.domain.relabel`); the stored labels are not used. The
  teacher is an expert snapshot or a network trained on the real data (cached).

Every protocol trains its ``random-real`` reference (random real images at the same
images per class) under *the same* protocol, so each number has its honest reference;
``full-real`` (the whole training set, hard labels) is the ceiling. With ``scores``,
the runs DD-Ranking's Label-Robust and Augmentation-Robust Scores need are added (the set
with hard labels, the set and its reference with augmentation switched over, the whole
training set) and the scores computed per evaluation round (:mod:`tesla.domain.scores`).

The networks are trained through the :class:`~tesla.domain.ports.EvaluationTraining`
and :class:`~tesla.domain.ports.RelabelTraining` ports, teachers come through
:class:`~tesla.domain.ports.Teachers`; this module decides what is trained (runs,
architectures, seeds, lr, epochs, the references' images) and turns accuracies into
scores and events: ``RunStarted(job="evaluate")``, Progress ``networks`` and ``epochs``
from the start (a real-data teacher first reports ``teacher epochs``), one Evaluation per
(run, architecture), and ``RunFinished`` with the scores in its summary.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Optional

import attrs

from tesla.app.services.protocols import (REAL_LR, EvalProtocol, FullRealProtocol, MTTProtocol,  # noqa: F401
                                          RelabelProtocol, full_real_recipe, real_teacher_recipe, student_lr)
from tesla.domain import events
from tesla.domain.config import ConfigError, EvalConfig, ModelConfig, from_dict, to_dict
from tesla.domain.data import recorded_data_config
from tesla.domain.errors import NumericalError, UserError
from tesla.domain.ports import (Cancel, EvaluationTraining, EventSink, Images, Labels, LoadData, NetworkEpochFn,
                                NullSink, ReadSet, RealData, RecordEvaluation, RelabelTraining, StoredSet, Teachers)
from tesla.domain.relabel import TEACHER_EPOCHS, RelabelConfig, TeacherChoice
from tesla.domain.scores import (CONVENTIONS, DEFAULT_WEIGHT, augmentation_robust_scores, check_weight,
                                 label_robust_scores)
from tesla.domain.urls import redact_url

RANDOM_REAL_SEED = 7919  # class c of the random-real reference is drawn with seed * 7919 + c
PROTOCOLS = ("mtt", "relabel")
PROGRESS_EVENTS = 100  # at most about this many ``epochs`` Progress events per evaluation


@attrs.frozen
class Score:
    """Accuracies (%) of the networks of one run and architecture.

    Attributes:
        subject: what was trained on (``synthetic``, ``random-real``, ``full-real``, with a
            variant such as ``synthetic hard`` or ``random-real no-aug``).
        protocol: how (``mtt``, ``relabel``).
        labels: what the networks learned from: the stored kind (``hard``, ``soft``,
            ``learned``) or ``teacher`` (relabelled every batch).
        augment: whether the protocol augmented the batches.
        lr: the networks' lr (SGD for mtt, AdamW for relabel).
    """

    model: str
    subject: str
    mean: float
    std: float
    accuracies: tuple
    protocol: str = "mtt"
    labels: str = "stored"
    augment: bool = True
    lr: Optional[float] = None

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"

    def to_json(self) -> dict:
        return {"model": self.model, "subject": self.subject, "protocol": self.protocol, "labels": self.labels,
                "augment": self.augment, "lr": self.lr, "mean": self.mean, "std": self.std,
                "accuracies": list(self.accuracies)}


def score(model: str, subject: str, accs: list[float], **fields: Any) -> Score:
    """Mean and sample standard deviation (0 for one network) of top-1 accuracies."""
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return Score(model=model, subject=subject, mean=statistics.fmean(accs), std=std, accuracies=tuple(accs),
                 **fields)


def arch_config(base: ModelConfig, arch: str) -> ModelConfig:
    """The evaluation model ``arch`` at ``base``'s input shape and classes."""
    if arch == base.arch:
        return base
    return attrs.evolve(base, arch=arch, norm="instancenorm" if arch != "vit" else base.norm)


# --- runs: what is trained, and progress while it is ------------------------------------------


@attrs.frozen
class Run:
    """One subject trained one way: ``num_models`` networks per architecture."""

    subject: str
    protocol: Any
    images: Images
    labels: Labels
    lr: float
    labels_kind: str


class Tally:
    """Progress of an evaluation: ``networks`` done and ``epochs`` done (over all
    networks), as Progress events from the start, an ``epochs`` event per block of epochs
    and both at the end of every network."""

    def __init__(self, sink: EventSink, networks: int, epochs: int) -> None:
        self.sink, self.total_networks, self.total_epochs = sink, networks, epochs
        self.networks = self.epochs = self._shown = 0
        self.block = max(1, epochs // PROGRESS_EVENTS)

    def start(self) -> None:
        self._networks()
        self._epochs()

    def _networks(self) -> None:
        self.sink.emit(events.Progress(label="networks", done=self.networks, total=self.total_networks))

    def _epochs(self) -> None:
        self._shown = self.epochs
        self.sink.emit(events.Progress(label="epochs", done=self.epochs, total=self.total_epochs))

    def run(self, count: int, epochs: int) -> tuple[NetworkEpochFn, Callable[[], None]]:
        """(on_epoch for a call training ``count`` networks of ``epochs`` epochs, and what
        to call after it, which settles the counts even where training reported nothing)."""
        networks0, epochs0 = self.networks, self.epochs

        def on_epoch(i: int, epoch: int) -> None:
            self.epochs = min(self.epochs + 1, epochs0 + count * epochs)
            if epoch >= epochs:
                self.networks = min(self.networks + 1, networks0 + count)
                self._networks()
                self._epochs()
            elif self.epochs - self._shown >= self.block:
                self._epochs()

        def settle() -> None:
            if (self.networks, self.epochs) != (networks0 + count, epochs0 + count * epochs):
                self.networks, self.epochs = networks0 + count, epochs0 + count * epochs
                self._networks()
                self._epochs()

        return on_epoch, settle


def _emit(sink: EventSink, s: Score, iteration: Optional[int]) -> None:
    sink.emit(events.Evaluation(model=s.model, subject=s.subject, mean=s.mean, std=s.std, n=len(s.accuracies),
                                iteration=iteration, accuracies=s.accuracies, protocol=s.protocol))


def train_run(run: Run, data: RealData, *, model_cfg: ModelConfig, models: tuple, seeds: list[int],
              tally: Optional[Tally] = None, sink: Optional[EventSink] = None,
              iteration: Optional[int] = None) -> list[Score]:
    """The networks of ``run`` for each architecture; one Score and one Evaluation each."""
    sink = sink or NullSink()
    out = []
    for arch in models:
        mcfg = arch_config(model_cfg, arch)
        on_epoch, settle = tally.run(len(seeds), run.protocol.epochs) if tally else (lambda i, e: None, lambda: None)
        accs = run.protocol.train(mcfg, run.images, run.labels, data, seeds=seeds, lr=run.lr, on_epoch=on_epoch)
        settle()
        out.append(score(mcfg.name, run.subject, list(accs), protocol=run.protocol.name, labels=run.labels_kind,
                         augment=run.protocol.augments, lr=run.lr))
        _emit(sink, out[-1], iteration)
    return out


# --- the functions the demo and the run-time evaluator call (the mtt protocol) ------------------


def train_many(images: Images, labels: Labels, data: RealData, *, model_cfg: ModelConfig, cfg: EvalConfig,
               lr: float, subject: str, training: EvaluationTraining, epochs: Optional[int] = None,
               sink: Optional[EventSink] = None, iteration: Optional[int] = None) -> list[Score]:
    """Train ``cfg.num_models`` fresh networks (seeds ``cfg.seed + i``) per architecture
    on (images, labels) under the mtt protocol; one score and one Evaluation event per
    architecture."""
    protocol = MTTProtocol(attrs.evolve(cfg, epochs=epochs or cfg.epochs), training)
    run = Run(subject, protocol, images, labels, lr, "stored")
    return train_run(run, data, model_cfg=model_cfg, models=cfg.models, seeds=_seeds(cfg), sink=sink,
                     iteration=iteration)


def _seeds(cfg: EvalConfig) -> list[int]:
    return [cfg.seed + i for i in range(cfg.num_models)]


def random_real_images(data: RealData, ipc: int, seed: int, training: EvaluationTraining) -> tuple[Images, Labels]:
    """``ipc`` random real images per class (class c drawn with ``seed * 7919 + c``), hard labels."""
    return training.random_real(data, ipc, [seed * RANDOM_REAL_SEED + c for c in range(data.num_classes)])


def evaluate_set(images: Images, labels: Labels, learned_lr: Optional[float], data: RealData, *,
                 model_cfg: ModelConfig, cfg: EvalConfig, training: EvaluationTraining, ipc: Optional[int] = None,
                 random_real: bool = True, full_real: bool = False, full_epochs: Optional[int] = None,
                 sink: Optional[EventSink] = None, iteration: Optional[int] = None) -> list[Score]:
    """Scores of a synthetic set and, optionally, of its references, under the mtt protocol.

    Args:
        images, labels: the set; labels are ids (N,) or probabilities (N, K).
        learned_lr: the set's learned lr (used unless ``cfg.lr`` is set).
        ipc: images per class of the random-real reference (default: N / classes).
    """
    lr = student_lr(learned_lr, cfg)
    scores = train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=lr, subject="synthetic",
                        training=training, sink=sink, iteration=iteration)
    if random_real:
        ipc = ipc or training.count(images) // data.num_classes
        scores += random_real_scores(data, ipc, model_cfg=model_cfg, cfg=cfg, training=training, sink=sink,
                                     iteration=iteration)
    if full_real:
        scores += full_real_scores(data, model_cfg=model_cfg, cfg=cfg, training=training, epochs=full_epochs,
                                   sink=sink)
    return scores


def random_real_scores(data: RealData, ipc: int, *, model_cfg: ModelConfig, cfg: EvalConfig,
                       training: EvaluationTraining, sink: Optional[EventSink] = None,
                       iteration: Optional[int] = None) -> list[Score]:
    """Random real images at the same IPC, hard labels, the same protocol (lr ``cfg.lr``
    or :data:`REAL_LR`)."""
    images, labels = random_real_images(data, ipc, cfg.seed, training)
    return train_many(images, labels, data, model_cfg=model_cfg, cfg=cfg, lr=cfg.lr or REAL_LR,
                      subject="random-real", training=training, sink=sink, iteration=iteration)


def full_real_scores(data: RealData, *, model_cfg: ModelConfig, cfg: EvalConfig, training: EvaluationTraining,
                     epochs: Optional[int] = None, sink: Optional[EventSink] = None) -> list[Score]:
    """The whole real training set (see :func:`full_real_recipe`); the training port
    streams its batches, so an on-disk prepared set (ImageNet) works as well as an
    in-memory one."""
    protocol = FullRealProtocol(full_real_recipe(cfg, epochs), training)
    run = Run("full-real", protocol, None, None, protocol.recipe.lr, "hard")
    return train_run(run, data, model_cfg=model_cfg, models=cfg.models, seeds=_seeds(cfg), sink=sink)


# --- DD-Ranking's scores from the runs ---------------------------------------------------------


@attrs.frozen
class Robustness:
    """DD-Ranking's scores of one architecture (:mod:`tesla.domain.scores`), and which
    runs fed each term."""

    model: str
    label: Any  # LabelRobustness
    augmentation: Any  # AugmentationRobustness
    sources: dict

    def to_json(self) -> dict:
        def stat(s: Any) -> dict:
            return {"mean": s.mean, "std": s.std, "values": list(s.values)}

        lab, aug = self.label, self.augmentation
        return {"model": self.model, "convention": lab.convention,
                "hlr": stat(lab.hlr), "ior": stat(lab.ior), "lrs": stat(lab.lrs), "lrs_weight": lab.weight,
                "aug_gain": stat(aug.aug_gain), "naug_gain": stat(aug.naug_gain), "ars": stat(aug.ars),
                "ars_weight": aug.weight, "sources": dict(self.sources)}


@attrs.frozen
class ScoreSettings:
    """``weight``: DD-Ranking's ``lrs_lambda`` (of IOR); ``ars_weight``: its ``ars_lambda``
    (of the augmented gain); ``convention``: see :mod:`tesla.domain.scores`."""

    weight: float = attrs.field(default=DEFAULT_WEIGHT, validator=lambda _i, a, v: check_weight("--score-weight", v))
    ars_weight: float = attrs.field(default=DEFAULT_WEIGHT,
                                    validator=lambda _i, a, v: check_weight("--ars-weight", v))
    convention: str = attrs.field(default="documented")

    @convention.validator
    def _known(self, _a: Any, value: str) -> None:
        if value not in CONVENTIONS:
            raise ConfigError(f"--score-convention {value!r}: choose from {', '.join(CONVENTIONS)}")


def score_roles(main_augments: bool, hard_run: bool) -> dict[str, tuple[str, ...]]:
    """Which subject feeds each of DD-Ranking's accuracies: ``full_hard``, ``syn_hard``,
    ``syn_any``, ``rdm_any`` (the label score) and ``syn_aug``, ``rdm_aug``, ``syn_naug``,
    ``rdm_naug`` (the augmentation score)."""
    other = "no-aug" if main_augments else "aug"
    aug = ("synthetic", "random-real") if main_augments else (f"synthetic {other}", f"random-real {other}")
    naug = (f"synthetic {other}", f"random-real {other}") if main_augments else ("synthetic", "random-real")
    return {"full_hard": ("full-real",), "syn_hard": ("synthetic hard" if hard_run else "synthetic",),
            "syn_any": ("synthetic",), "rdm_any": ("random-real",),
            "syn_aug": (aug[0],), "rdm_aug": (aug[1],), "syn_naug": (naug[0],), "rdm_naug": (naug[1],)}


def robustness(scores: list[Score], roles: dict, settings: ScoreSettings) -> list[Robustness]:
    """LRS and ARS (and their terms) per architecture, round by round."""
    out = []
    for model in dict.fromkeys(s.model for s in scores):
        by = {s.subject: list(s.accuracies) for s in scores if s.model == model}
        acc = {role: by[subject] for role, (subject,) in roles.items()}
        lab = label_robust_scores(acc["full_hard"], acc["syn_hard"], acc["syn_any"], acc["rdm_any"],
                                  weight=settings.weight, convention=settings.convention)
        aug = augmentation_robust_scores(acc["syn_aug"], acc["rdm_aug"], acc["syn_naug"], acc["rdm_naug"],
                                         weight=settings.ars_weight, convention=settings.convention)
        out.append(Robustness(model=model, label=lab, augmentation=aug,
                              sources={role: subject for role, (subject,) in roles.items()}))
    return out


# --- a stored set: request -> prepared job -----------------------------------------------------


@attrs.frozen
class EvaluateRequest:
    """``tesla evaluate``: a stored set, the protocol, which references, data overrides.

    ``cfg`` is the mtt protocol's settings (and the networks, architectures and seeds of
    every protocol); ``relabel`` the relabel protocol's. ``scores`` adds DD-Ranking's runs;
    ``record`` writes the results into the set's provenance.
    """

    synthetic: str
    cfg: EvalConfig
    hard: bool = False
    random_real: bool = True
    full_real: bool = False
    full_epochs: Optional[int] = None
    dataset: Optional[str] = None
    data: Optional[str] = None
    protocol: str = attrs.field(default="mtt", validator=attrs.validators.in_(PROTOCOLS))
    relabel: RelabelConfig = RelabelConfig()
    teacher: TeacherChoice = TeacherChoice()
    teacher_epochs: int = TEACHER_EPOCHS
    trajectories: Optional[str] = None
    scores: bool = False
    score_settings: ScoreSettings = ScoreSettings()
    record: bool = False


@attrs.frozen
class EvaluatePorts:
    read_set: ReadSet
    load_data: LoadData
    training: EvaluationTraining
    relabel: Optional[RelabelTraining] = None
    teachers: Optional[Teachers] = None
    record: Optional[RecordEvaluation] = None


@attrs.frozen
class EvaluationResult:
    """What an evaluation produced: one Score per (run, architecture), DD-Ranking's scores
    when asked for, the protocol's settings, and ``completed`` or ``cancelled``."""

    scores: list
    robustness: list
    protocol: dict
    status: str = "completed"

    def to_json(self) -> Any:
        rows = [s.to_json() for s in self.scores]
        if not self.robustness:
            return rows
        return {"results": rows, "scores": [r.to_json() for r in self.robustness], "protocol": self.protocol}


@attrs.frozen
class PreparedEvaluation:
    job: Callable[[EventSink, Cancel], EvaluationResult]
    set: StoredSet
    config: dict = attrs.field(factory=dict)


def _cancelled(cancel: Optional[Cancel]) -> bool:
    return cancel is not None and cancel.is_set()


class _Evaluation:
    """One prepared evaluation: everything opened and checked, nothing trained yet."""

    def __init__(self, req: EvaluateRequest, ports: EvaluatePorts, syn: StoredSet, model_cfg: ModelConfig,
                 data_cfg: Any, data: RealData) -> None:
        self.req, self.ports, self.syn, self.model_cfg = req, ports, syn, model_cfg
        self.data_cfg, self.data = data_cfg, data
        self.hard_labels = req.hard or syn.soft_labels is None
        self.stored_kind = "hard" if self.hard_labels else syn.labels_kind
        self.mtt = MTTProtocol(req.cfg, ports.training)
        self.teacher: Optional[tuple[Any, dict]] = None
        self._check()

    def _check(self) -> None:
        """Every refusal before any training: ports, lr, teacher store."""
        req = self.req
        if req.protocol == "mtt" or req.scores:
            student_lr(self.syn.lr, req.cfg)  # the set's mtt (or hard-label) networks need an lr
        if req.protocol != "relabel":
            return
        if self.ports.relabel is None or self.ports.teachers is None:
            raise ConfigError("this build has no relabel protocol: use --protocol mtt")
        if req.teacher.kind == "expert":
            url = req.trajectories or self.syn.attrs.get("trajectories")
            if not url:
                raise ConfigError(f"{req.synthetic} records no trajectory store for --teacher {req.teacher}: "
                                  f"pass --trajectories")
            teacher, facts = self.ports.teachers.from_expert(url, req.teacher.expert, req.teacher.epoch,
                                                             self.data.num_classes)
            self.teacher = (teacher, {"kind": "expert", "trajectories": redact_url(url),
                                      "expert": req.teacher.expert, **facts})

    def config(self) -> dict:
        """What RunStarted (and the TUI's header) records."""
        protocol = ({"name": "mtt"} if self.req.protocol == "mtt"
                    else {"name": "relabel", **to_dict(self.req.relabel), "teacher": str(self.req.teacher)})
        return {"set": redact_url(self.req.synthetic), "data": to_dict(self.data_cfg), "model": to_dict(self.model_cfg),
                "distill": {"ipc": self.syn.ipc, "labels": self.stored_kind}, "evaluate": to_dict(self.req.cfg),
                "protocol": protocol, "scores": self.req.scores}

    # -- the job ---------------------------------------------------------------------------

    def main_protocol(self, sink: EventSink) -> Any:
        req = self.req
        if req.protocol == "mtt":
            return self.mtt
        teacher, facts = self.teacher or self._real_teacher(sink)
        return RelabelProtocol(req.relabel, teacher, self.ports.relabel, teacher_facts=facts)

    def _real_teacher(self, sink: EventSink) -> tuple[Any, dict]:
        req = self.req
        model = arch_config(self.model_cfg, req.teacher.arch) if req.teacher.arch else self.model_cfg
        recipe = real_teacher_recipe(req.teacher_epochs, req.cfg.seed)
        key = {"data": to_dict(self.data_cfg), "classes": self.data.num_classes,
               "image_shape": list(self.data.image_shape), "model": to_dict(model), "recipe": to_dict(recipe)}
        label = "teacher epochs"
        sink.emit(events.Progress(label=label, done=0, total=recipe.epochs))

        def on_epoch(_net: int, epoch: int) -> None:
            sink.emit(events.Progress(label=label, done=epoch, total=recipe.epochs))

        teacher, facts = self.ports.teachers.from_real(model, self.data, recipe, key, on_epoch=on_epoch)
        sink.emit(events.Progress(label=label, done=recipe.epochs, total=recipe.epochs))
        return teacher, {"kind": "real", "model": model.name, "epochs": recipe.epochs, **facts}

    def runs(self, main: Any) -> list[Run]:
        """The runs, in order: the set, its random reference, the score runs, full real."""
        req, syn = self.req, self.syn
        labels = syn.labels if self.hard_labels else syn.soft_labels
        syn_run = Run("synthetic", main, syn.images, labels, main.lr(syn.lr, real=False),
                      main.labels_used(self.stored_kind))
        runs = [syn_run]
        need_random = req.random_real or req.scores
        if need_random:
            ipc = syn.ipc or self.ports.training.count(syn.images) // self.data.num_classes
            rdm_images, rdm_labels = random_real_images(self.data, ipc, req.cfg.seed, self.ports.training)
            runs.append(Run("random-real", main, rdm_images, rdm_labels, main.lr(None, real=True),
                            main.labels_used("hard")))
        if req.scores:
            if self._hard_run(main):
                runs.append(Run("synthetic hard", self.mtt, syn.images, syn.labels,
                                self.mtt.lr(syn.lr, real=False), "hard"))
            other = main.with_augmentation(not main.augments)
            suffix = "no-aug" if main.augments else "aug"
            runs.append(attrs.evolve(syn_run, subject=f"synthetic {suffix}", protocol=other))
            runs.append(attrs.evolve(runs[1], subject=f"random-real {suffix}", protocol=other))
        if req.full_real or req.scores:
            full = FullRealProtocol(full_real_recipe(req.cfg, req.full_epochs), self.ports.training)
            runs.append(Run("full-real", full, None, None, full.recipe.lr, "hard"))
        return runs

    def _hard_run(self, main: Any) -> bool:
        """The set must be trained again with hard labels unless its main run already was
        (DD-Ranking's hard-label score uses the one run for both)."""
        return not (main.name == "mtt" and self.hard_labels)

    def job(self, sink: EventSink, cancel: Optional[Cancel]) -> EvaluationResult:
        sink.emit(events.RunStarted(job="evaluate", config=self.config()))
        try:
            result = self._train_all(sink, cancel)
        except FloatingPointError as e:
            sink.emit(events.Error(message=str(e)))
            sink.emit(events.RunFinished(status="failed"))
            raise NumericalError(str(e)) from None
        except BaseException:
            sink.emit(events.RunFinished(status="failed"))
            raise
        summary = {"results": [s.to_json() for s in result.scores]}
        if result.robustness:
            summary["scores"] = [r.to_json() for r in result.robustness]
        if self.req.record and result.status == "completed":
            self._record(result, sink)
        sink.emit(events.RunFinished(status=result.status, summary=summary))
        return result

    def _train_all(self, sink: EventSink, cancel: Optional[Cancel]) -> EvaluationResult:
        req = self.req
        main = self.main_protocol(sink)
        runs = self.runs(main)
        seeds, models = _seeds(req.cfg), req.cfg.models
        tally = Tally(sink, networks=len(runs) * len(models) * len(seeds),
                      epochs=sum(r.protocol.epochs for r in runs) * len(models) * len(seeds))
        tally.start()
        scores: list[Score] = []
        for run in runs:
            if _cancelled(cancel):
                return EvaluationResult(scores=scores, robustness=[], protocol=main.settings(), status="cancelled")
            scores += train_run(run, self.data, model_cfg=self.model_cfg, models=models, seeds=seeds, tally=tally,
                                sink=sink)
        robust = []
        if req.scores:
            roles = score_roles(main.augments, self._hard_run(main))
            robust = robustness(scores, roles, req.score_settings)
        return EvaluationResult(scores=scores, robustness=robust, protocol=main.settings())

    def _record(self, result: EvaluationResult, sink: EventSink) -> None:
        """The results into the set's provenance; a store that refuses (read-only, remote
        without write access) costs a warning, not the results already measured."""
        record = {"protocol": result.protocol, "evaluate": to_dict(self.req.cfg),
                  "data": to_dict(self.data_cfg), "results": [s.to_json() for s in result.scores]}
        if result.robustness:
            record["scores"] = [r.to_json() for r in result.robustness]
        try:
            if self.ports.record is None:
                raise ConfigError("this build cannot write evaluation records")
            self.ports.record(self.req.synthetic, record)
        except UserError as e:
            sink.emit(events.Warning(message=f"results not recorded in {redact_url(self.req.synthetic)}: {e} "
                                             f"(pass --no-record to skip)"))


def prepare_evaluation(req: EvaluateRequest, ports: EvaluatePorts) -> PreparedEvaluation:
    """Read the set, open its data and the teacher's store (every refusal before any training)."""
    if req.full_epochs is not None and (isinstance(req.full_epochs, bool) or not isinstance(req.full_epochs, int)
                                        or req.full_epochs < 1):
        raise ConfigError(f"--full-epochs must be an integer >= 1 (got {req.full_epochs!r})")
    syn = ports.read_set(req.synthetic)
    if "model" not in syn.attrs:
        raise ConfigError(f"{req.synthetic} records no model: it was not written by `tesla distill`")
    model_cfg = from_dict(ModelConfig, syn.attrs["model"])
    data_cfg = recorded_data_config(syn.attrs.get("dataset", {}), req.dataset, req.data)
    data = ports.load_data(data_cfg)
    evaluation = _Evaluation(req, ports, syn, model_cfg, data_cfg, data)
    return PreparedEvaluation(job=evaluation.job, set=syn, config=evaluation.config())
