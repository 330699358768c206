"""A whole run from one's own data: ``tesla run DATA --ipc K``.

The four commands a newcomer would otherwise chain by hand (``data prepare`` ->
``experts`` -> ``distill`` -> ``evaluate``), each with settings that fit each other, the
data and the machine. :func:`prepare_pipeline` does everything a wrong argument could
fail, then the work that decides the settings:

1. says what ``DATA`` is (:class:`~tesla.domain.ports.FindData`): ``demo``, a CIFAR
   folder, a prepared store, or a source folder (an ImageFolder tree ...) that it
   prepares into ``OUT/data.zarr`` first (resumable, with its own progress);
2. loads the data for its counts and shape, measures how fast this machine trains the
   network for it (:class:`~tesla.domain.ports.MachineSpeed`) and sizes every stage to
   the data, the IPC and the time budget (:func:`tesla.domain.sizing.plan_run`), or
   takes the plan a first call recorded (a rerun continues the same run; an option
   typed differently is refused with one line);
3. records the plan (``OUT/plan.json``, and its table ``OUT/plan.md``) for the caller to
   print before the work.

The job then runs the stages through the services every command uses, each of which
resumes what it finds: the experts (``OUT/experts.zarr``: complete experts are kept), the
distillation (``OUT`` is its run directory: ``config.json``, ``events.jsonl``,
``synthetic.zarr``, ``images/`` with real images beside the distilled ones; the last
checkpoint is continued), the evaluation (the distilled set and random real images at
the same IPC), and keeps the results beside them (``results.png``, ``results.md``,
``results.json``). Stopped anywhere (Ctrl-C), the same command continues where it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import attrs

from tesla.app.services.evaluate import evaluate_set
from tesla.app.services.experts import ExpertsPorts, ExpertsRequest, data_label, prepare_experts
from tesla.app.services.results import RESULTS_CHART, RESULTS_JSON, RESULTS_MD, keep_results, read_results
from tesla.app.services.run import DistillRequest, prepare_distillation
from tesla.domain import events
from tesla.domain.config import DataConfig, to_dict
from tesla.domain.errors import DataError, RunDirError
from tesla.domain.ports import (Cancel, DistillParts, EvaluationTraining, EventSink, FindData, LoadData, MachineSpeed,
                                NullSink, PrepareData, ReadSet, ResultsChart, RunFiles)
from tesla.domain.rundir import IMAGES
from tesla.domain.sizing import (DataFacts, Plan, Wishes, plan_from_dict, plan_markdown, plan_model, plan_run,
                                 plan_to_dict, wishes_differ)

PLAN = "plan.json"
PLAN_TABLE = "plan.md"
PREPARED_DATA = "data.zarr"
EXPERTS = "experts.zarr"
SET = "synthetic.zarr"
DEFAULT_IMAGE_SIZE = 32  # a source's images are stored at this side unless asked (CIFAR's)
SOURCES = ("imagefolder", "tiny-imagenet", "imagenet64")


@attrs.frozen
class RunRequest:
    """``tesla run`` as asked: the data, where, the wishes, and which wishes were typed
    (a rerun must agree with the recorded plan on those)."""

    data: str
    out: Path
    wishes: Wishes
    image_size: Optional[int] = None
    typed: frozenset = frozenset()
    preview_every: int = 10


@attrs.frozen
class PipelinePorts:
    """The adapters a whole run works through (built by :mod:`tesla.app.bootstrap`)."""

    find_data: FindData
    prepare_data: PrepareData
    load_data: LoadData
    speed: MachineSpeed
    experts: ExpertsPorts
    distill: DistillParts
    evaluation: EvaluationTraining
    read_set: ReadSet
    files: RunFiles
    results_chart: Optional[ResultsChart] = None
    gpu: bool = False


@attrs.frozen
class RunResult:
    """How a run ended: ``status`` completed | cancelled, the stage it stopped in, the
    scores and the files it kept."""

    status: str
    stage: str
    scores: tuple = ()
    written: tuple = ()
    images: Optional[Path] = None


@attrs.frozen
class PreparedPipeline:
    """A checked, sized run: ``job(sink, cancel)`` runs the stages; ``plan`` and ``facts``
    are what the caller shows first; ``status`` is ``cancelled`` when the data
    preparation was stopped (there is no job then)."""

    job: Optional[Callable[[EventSink, Cancel], RunResult]]
    plan: Optional[Plan]
    facts: Optional[DataFacts]
    out: Path
    resumed: bool = False
    status: str = "ready"


def prepare_pipeline(req: RunRequest, ports: PipelinePorts, sink: Optional[EventSink] = None,
                     cancel: Optional[Cancel] = None) -> PreparedPipeline:
    """Check the arguments, prepare the data when needed, size the run (or read its
    recorded plan), record it; see the module docstring. Nothing is written when an
    argument is refused."""
    sink = sink or NullSink()
    out = Path(req.out)
    kind, path = ports.find_data(req.data)
    if ports.files.kind(out) == "file":
        raise RunDirError(f"{out} exists and is not a directory: choose another --out")
    recorded = _recorded(ports.files, out)
    if recorded is not None:
        differs = wishes_differ(recorded, req.wishes, req.typed)
        if differs:
            raise RunDirError(f"{out} holds a run planned with other settings: {differs}: leave the option out to "
                              "continue it, or choose another --out")
        if recorded.get("data_arg") not in (None, req.data):
            raise RunDirError(f"{out} holds a run on {recorded['data_arg']}, not {req.data}: choose another --out")
    side = _image_size(req, recorded)
    if kind in SOURCES:
        data_cfg = _prepared(req, ports, kind, path, out, side, sink, cancel)
        if data_cfg is None:
            return PreparedPipeline(job=None, plan=None, facts=None, out=out, status="cancelled")
    else:
        data_cfg = DataConfig(name=kind, root=path or None)
    if recorded is not None:
        plan, facts = plan_from_dict(recorded["plan"]), DataFacts(**recorded["facts"])
    else:
        plan, facts = _size(req, ports, data_cfg, sink)
    data_cfg = attrs.evolve(data_cfg, zca=plan.zca)
    if recorded is None:
        ports.files.make_writable_dir(out)
        record = {"data_arg": req.data, "image_size": side, "data": to_dict(data_cfg), "facts": attrs.asdict(facts),
                  "wishes": attrs.asdict(req.wishes), "plan": plan_to_dict(plan)}
        ports.files.write_atomic(out / PLAN, json.dumps(record, indent=2))
        ports.files.write_atomic(out / PLAN_TABLE, plan_markdown(plan, facts))

    def job(sink: EventSink, cancel: Cancel) -> RunResult:
        return run_stages(req, ports, plan, data_cfg, sink, cancel)

    return PreparedPipeline(job=job, plan=plan, facts=facts, out=out, resumed=recorded is not None)


def _recorded(files: RunFiles, out: Path) -> Optional[dict]:
    path = out / PLAN
    if files.kind(path) == "missing":
        return None
    try:
        return json.loads(files.read_text(path))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable ({e}): choose another --out") from None


def _image_size(req: RunRequest, recorded: Optional[dict]) -> int:
    """The side a source's images are stored at: typed, else the recorded run's, else the default."""
    before = (recorded or {}).get("image_size")
    if req.image_size is not None and "image_size" in req.typed:
        if before is not None and before != req.image_size:
            raise RunDirError(f"{req.out} holds a run planned with other settings: --image-size {req.image_size} "
                              f"(the run was planned with {before}): leave the option out to continue it, or "
                              "choose another --out")
        return req.image_size
    return before or req.image_size or DEFAULT_IMAGE_SIZE


def _prepared(req: RunRequest, ports: PipelinePorts, kind: str, path: str, out: Path, side: int, sink: EventSink,
              cancel: Optional[Cancel]) -> Optional[DataConfig]:
    """A source folder prepared into ``OUT/data.zarr`` (resumed when there); None when stopped."""
    dest = out / PREPARED_DATA
    ports.files.make_writable_dir(out)
    summary = ports.prepare_data(path, str(dest), fmt=kind, image_size=side,
                                 sink=sink, should_stop=cancel.is_set if cancel is not None else (lambda: False))
    if not summary.complete:
        return None
    return DataConfig(name="prepared", root=str(dest))


def _size(req: RunRequest, ports: PipelinePorts, data_cfg: DataConfig, sink: EventSink) -> tuple[Plan, DataFacts]:
    """The data's facts, the machine's speed for the network that fits it, and the plan."""
    sink.emit(events.Progress(label=data_label(data_cfg), done=0, total=1))
    data = ports.load_data(data_cfg)
    sink.emit(events.Progress(label=data_label(data_cfg), done=1, total=1))
    facts = DataFacts(name=req.data, num_classes=int(data.num_classes), num_train=int(data.num_train),
                      num_test=int(data.num_test), image_shape=tuple(int(v) for v in data.image_shape),
                      dataset=data_cfg.name)
    if facts.num_test == 0:
        raise DataError(f"{req.data} holds no test images: the evaluation needs held-out images (val/ or test/)")
    model, _ = plan_model(facts, req.wishes, gpu=ports.gpu)
    label = f"measure this machine's speed ({model.name} width {model.width})"
    sink.emit(events.Progress(label=label, done=0, total=1))
    seconds = ports.speed.seconds_per_image(model)
    sink.emit(events.Progress(label=label, done=1, total=1))
    return plan_run(facts, req.wishes, gpu=ports.gpu, seconds_per_image=seconds), facts


# --- the stages ----------------------------------------------------------------------------------


def run_stages(req: RunRequest, ports: PipelinePorts, plan: Plan, data_cfg: DataConfig, sink: EventSink,
               cancel: Cancel) -> RunResult:
    """Experts, distillation, evaluation: each resumes what it finds; a cancel ends the run
    after the stage's own checkpoint."""
    out = Path(req.out)
    if finished(ports.files, out):
        scores = read_results(ports.files, out)
        sink.emit(events.Warning(message=f"{out} is complete: its results ({RESULTS_JSON}) are shown again; "
                                         "choose another --out for a new run"))
        return RunResult(status="completed", stage="done", scores=scores, images=out / IMAGES,
                         written=tuple(out / name for name in (RESULTS_CHART, RESULTS_MD, RESULTS_JSON)
                                       if ports.files.kind(out / name) != "missing"))
    experts = prepare_experts(ExpertsRequest(out=str(out / EXPERTS), data=data_cfg, model=plan.model,
                                             experts=plan.experts), ports.experts, sink=sink)
    if experts.job(sink, cancel).status != "completed":
        return RunResult(status="cancelled", stage="experts")
    distill = prepare_distillation(DistillRequest(trajectories=str(out / EXPERTS), out=out, cfg=plan.distill,
                                                  set_name=SET, resume=True, preview_every=req.preview_every),
                                   ports.distill)
    if distill.job(sink, cancel).status != "completed":
        return RunResult(status="cancelled", stage="distill")
    return _evaluate(req, ports, plan, data_cfg, sink)


def _evaluate(req: RunRequest, ports: PipelinePorts, plan: Plan, data_cfg: DataConfig, sink: EventSink) -> RunResult:
    out = Path(req.out)
    syn = ports.read_set(str(out / SET))
    data = ports.load_data(data_cfg)
    labels = syn.soft_labels if syn.soft_labels is not None else syn.labels
    sink.emit(events.RunStarted(job="evaluate", config={"evaluate": to_dict(plan.evaluate)}))
    scores = evaluate_set(syn.images, labels, syn.lr, data, model_cfg=plan.model, cfg=plan.evaluate,
                          training=ports.evaluation, ipc=plan.distill.ipc, random_real=True, sink=sink)
    settings = run_settings(req, plan)
    written = keep_results(scores, out, chart=ports.results_chart, files=ports.files,
                           title=f"tesla run {Path(req.data).name or req.data}: {plan.model.name} "
                                 f"width {plan.model.width}, "
                                 f"IPC {plan.distill.ipc}, {plan.distill.iterations} iterations",
                           engine=plan.distill.engine, ipc=plan.distill.ipc, settings=settings,
                           chance=100.0 / plan.model.num_classes)
    sink.emit(events.RunFinished(status="completed", summary={"scores": {f"{s.model} {s.subject}": s.mean
                                                                         for s in scores}}))
    return RunResult(status="completed", stage="evaluate", scores=tuple(scores), written=written, images=out / IMAGES)


def run_settings(req: RunRequest, plan: Plan) -> dict:
    """What made a run's figures, in words (kept beside them in results.md)."""
    e, d, v = plan.experts, plan.distill, plan.evaluate
    return {"data": req.data, "model": f"{plan.model.name} width {plan.model.width}", "zca": plan.zca,
            "experts": f"{e.num_experts} x {e.epochs} epochs",
            "distillation": f"{d.engine}, IPC {d.ipc}, {d.syn_steps} steps, max start epoch {d.max_start_epoch}, "
                            f"{d.iterations} iterations, batch {d.batch_syn or 'all'}, lr_img {d.lr_img:g}",
            "evaluation": f"{v.num_models} networks x {v.epochs} epochs", "seed": req.wishes.seed,
            "plan": str(Path(req.out) / PLAN_TABLE)}


def finished(files: RunFiles, out: Path) -> bool:
    """The run in ``out`` has its results (a rerun has nothing left to do but show them)."""
    return files.kind(Path(out) / RESULTS_JSON) != "missing"


__all__ = ["PipelinePorts", "PreparedPipeline", "RunRequest", "RunResult", "prepare_pipeline", "run_stages"]
