"""``tesla bench quality``: the ablation table of distillation recipes, on one set of experts.

With the same experts, the same seeds and the same evaluation, each recipe
(:mod:`tesla.domain.quality`: engine x labels x sampling x EMA x parameter selection, or
any overrides) is distilled into ``out/recipes/<name>`` by the distillation service and
its set evaluated by the evaluation service's protocol (the same networks, seeds and
epochs for every row), beside random real images at the same IPC trained the same way.
A recipe that the run-health guard stops (labels collapsed, the run stalled) or that
fails numerically is a row that says so and why, not an error: knowing which recipe
breaks is what the table is for. What runs on torch and the stores comes through
:class:`QualityPorts`; this module decides what is run, compared and reported.

Each recipe's run directory is resumed when it is there, so a bench that was stopped
continues where it was (and a finished recipe costs only its evaluation again).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import attr
import attrs

from tesla.app.services.evaluate import Score, random_real_scores, student_lr, train_many
from tesla.domain import events
from tesla.domain.config import DistillConfig, EvalConfig, ModelConfig, from_dict, to_dict
from tesla.domain.data import recorded_data_config
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.ports import (Cancel, DistillStage, EvaluationTraining, EventSink, LoadData, NullSink, QualityPlot,
                                RealData, TrajectoryStores)
from tesla.domain.quality import Recipe, TableRow, check_recipes

COMPLETED, STOPPED, CANCELLED = "completed", "stopped", "cancelled"
RECIPES_DIR = "recipes"


@attrs.frozen
class QualityPorts:
    stores: TrajectoryStores
    load_data: LoadData
    distill: DistillStage
    training: EvaluationTraining


@attrs.frozen
class QualityRequest:
    """What to compare.

    Attributes:
        trajectories: the experts every recipe distils from.
        out: the bench folder (``recipes/<name>/`` run directories, CSV, PNG).
        base: the config every recipe starts from (a preset with its overrides).
        recipes: the rows, in order.
        evaluation: the protocol every set (and random real) is trained with.
        baseline: the recipe the others are compared with.
        dataset, data: overrides of the data the experts record.
    """

    trajectories: str
    out: Path
    base: DistillConfig
    recipes: tuple
    evaluation: EvalConfig
    baseline: str = "tesla"
    dataset: Optional[str] = None
    data: Optional[str] = None


@attrs.frozen
class QualityRow:
    """One recipe's outcome: ``scores`` (one per evaluation architecture) when completed,
    ``reason`` when the guard or the numbers stopped it."""

    recipe: Recipe
    status: str
    scores: tuple = ()
    reason: Optional[str] = None
    iterations: Optional[int] = None
    loss: Optional[float] = None
    lr: Optional[float] = None
    agreement: Optional[float] = None
    distill_seconds: float = 0.0
    eval_seconds: float = 0.0

    def score(self, model: str) -> Optional[Score]:
        return next((s for s in self.scores if s.model == model), None)


@attrs.frozen
class QualityResult:
    """The table: the rows, the random-real reference (one score per architecture), and
    what every row shared."""

    rows: tuple
    reference: tuple
    baseline: str
    base: DistillConfig
    evaluation: EvalConfig
    model: ModelConfig
    trajectories: str
    experts: int
    status: str = COMPLETED

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.reference]

    def reference_score(self, model: str) -> Optional[Score]:
        return next((s for s in self.reference if s.model == model), None)

    def baseline_row(self) -> Optional[QualityRow]:
        return next((r for r in self.rows if r.recipe.name == self.baseline), None)


@attrs.frozen
class PreparedQuality:
    job: Callable[[EventSink, Optional[Cancel]], QualityResult]
    model: ModelConfig
    configs: tuple


def prepare_quality(req: QualityRequest, ports: QualityPorts) -> PreparedQuality:
    """Check every recipe against the experts and open the data, before any work."""
    configs = check_recipes(req.recipes, req.base, req.baseline)
    trajectories = ports.stores.read(req.trajectories)
    try:
        meta, ids = trajectories.meta, trajectories.expert_ids()
        snapshots = min((trajectories.num_snapshots(e) for e in ids), default=0)
    finally:
        trajectories.close()
    if not ids:
        raise DistillError(f"{req.trajectories} holds no complete expert: run `tesla experts` first")
    for recipe, cfg in zip(req.recipes, configs):
        if cfg.last_epoch_needed > snapshots - 1:
            raise DistillError(f"recipe {recipe.name!r} needs expert epoch {cfg.last_epoch_needed} but the experts "
                               f"stop at epoch {snapshots - 1}: lower max_start_epoch/expert_epochs in the recipe "
                               "or the base, or train longer experts")
    model = from_dict(ModelConfig, dict(meta.model))
    data = ports.load_data(recorded_data_config(meta.dataset, req.dataset, req.data))

    def job(sink: EventSink, cancel: Optional[Cancel]) -> QualityResult:
        return run_quality(req, ports, model, data, configs, len(ids), sink, cancel)

    return PreparedQuality(job=job, model=model, configs=tuple(configs))


def run_quality(req: QualityRequest, ports: QualityPorts, model: ModelConfig, data: RealData,
                configs: Sequence[DistillConfig], experts: int, sink: Optional[EventSink] = None,
                cancel: Optional[Cancel] = None) -> QualityResult:
    """Random real once, then each recipe: distil, evaluate (or record why it stopped)."""
    sink = sink or NullSink()
    total = len(req.recipes)
    sink.emit(events.RunStarted(job="bench", config={"quality": settings(req, model)}, total=total))
    reference = random_real_scores(data, req.base.ipc, model_cfg=model, cfg=req.evaluation, training=ports.training,
                                   sink=sink)
    rows: list[QualityRow] = []
    status = COMPLETED
    for i, (recipe, cfg) in enumerate(zip(req.recipes, configs)):
        if cancel is not None and cancel.is_set():
            status = CANCELLED
            break
        row = run_recipe(req, ports, model, data, recipe, cfg, sink, cancel)
        rows.append(row)
        if row.status == CANCELLED:
            status = CANCELLED
            break
        sink.emit(events.Progress(label="recipes", done=i + 1, total=total))
    result = QualityResult(rows=tuple(rows), reference=tuple(reference), baseline=req.baseline, base=req.base,
                           evaluation=req.evaluation, model=model, trajectories=req.trajectories, experts=experts,
                           status=status)
    sink.emit(events.RunFinished(status=status, summary={"recipes": len(rows),
                                                         "stopped": [r.recipe.name for r in rows
                                                                     if r.status == STOPPED]}))
    return result


def run_recipe(req: QualityRequest, ports: QualityPorts, model: ModelConfig, data: RealData, recipe: Recipe,
               cfg: DistillConfig, sink: EventSink, cancel: Optional[Cancel]) -> QualityRow:
    """One row: the distillation (resumed in its run directory) and the evaluation of its set."""
    t0 = time.perf_counter()
    run_dir = Path(req.out) / RECIPES_DIR / recipe.name
    try:
        outcome, syn = ports.distill(cfg, model, data, req.trajectories, run_dir, sink, cancel)
    except NumericalError as err:  # the health guard, NaN or divergence: the row says why
        sink.emit(events.Warning(message=f"recipe {recipe.name} stopped: {err}"))
        return QualityRow(recipe, STOPPED, reason=str(err), distill_seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if outcome.status != COMPLETED or syn is None:
        return QualityRow(recipe, CANCELLED, iterations=outcome.iterations, distill_seconds=seconds)
    t1 = time.perf_counter()
    labels = syn.soft_labels if syn.soft_labels is not None else syn.labels
    scores = train_many(syn.images, labels, data, model_cfg=model, cfg=req.evaluation,
                        lr=student_lr(syn.lr, req.evaluation), subject="synthetic", training=ports.training,
                        sink=sink, iteration=outcome.iterations)
    health = syn.attrs.get("label_health") or {}
    return QualityRow(recipe, COMPLETED, scores=tuple(scores), iterations=outcome.iterations, loss=outcome.loss,
                      lr=outcome.lr, agreement=health.get("agreement"), distill_seconds=seconds,
                      eval_seconds=time.perf_counter() - t1)


def settings(req: QualityRequest, model: ModelConfig) -> dict:
    """What every row shared (the table's caption, and the RunStarted event)."""
    return {"base": to_dict(req.base), "evaluation": to_dict(req.evaluation), "model": to_dict(model),
            "trajectories": req.trajectories, "baseline": req.baseline,
            "recipes": {r.name: r.describe() for r in req.recipes}}


# --- the table -----------------------------------------------------------------------------


def table(result: QualityResult) -> list[TableRow]:
    """Rows per recipe and architecture, with the differences to random real and to the
    baseline (percentage points; None where a side is missing)."""
    out = []
    base = result.baseline_row()
    for row in result.rows:
        for model in result.models:
            s, ref = row.score(model), result.reference_score(model)
            b = None if base is None else base.score(model)
            out.append(TableRow(
                recipe=row.recipe.name, changes=row.recipe.describe(), status=row.status, model=model,
                mean=None if s is None else s.mean, std=None if s is None else s.std,
                n=0 if s is None else len(s.accuracies), real_mean=None if ref is None else ref.mean,
                real_std=None if ref is None else ref.std,
                vs_real=None if s is None or ref is None else s.mean - ref.mean,
                vs_baseline=None if s is None or b is None else s.mean - b.mean,
                agreement=row.agreement, reason=row.reason, accuracies=() if s is None else s.accuracies))
    return out


def verdicts(result: QualityResult) -> list[str]:
    """The sentences under the table: the best recipe against the baseline, recipes below
    random real, and which were stopped (and why)."""
    lines = []
    for model in result.models:
        rows = [r for r in table(result) if r.model == model and r.mean is not None]
        ref = result.reference_score(model)
        if not rows:
            lines.append(f"{model}: no recipe completed")
            continue
        best = max(rows, key=lambda r: r.mean)
        gain = "" if best.vs_baseline is None else f", {best.vs_baseline:+.2f} points over {result.baseline}"
        lines.append(f"{model}: best {best.recipe} {best.mean:.2f} +- {best.std:.2f} %{gain}"
                     + ("" if ref is None else f" (random real {ref.mean:.2f} +- {ref.std:.2f} %)"))
        below = [r.recipe for r in rows if r.vs_real is not None and r.vs_real < 0]
        if below:
            lines.append(f"{model}: completed below random real: {', '.join(below)}")
    done = [r.recipe.name for r in result.rows if r.status == COMPLETED]
    lines.append(f"completed: {', '.join(done) if done else 'none'}")
    for r in result.rows:
        if r.status == STOPPED:
            lines.append(f"stopped by the guard: {r.recipe.name}: {r.reason}")
        elif r.status == CANCELLED:
            lines.append(f"cancelled: {r.recipe.name}")
    return lines


CSV_COLUMNS = ("recipe", "changes", "status", "model", "mean", "std", "n", "random_real_mean", "random_real_std",
               "vs_random_real", "vs_baseline", "label_agreement", "iterations", "loss", "lr", "distill_seconds",
               "eval_seconds", "accuracies", "reason")


def write_csv(result: QualityResult, path: Path) -> Path:
    """One line per recipe and architecture (:data:`CSV_COLUMNS`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {r.recipe.name: r for r in result.rows}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for t in table(result):
            r = rows[t.recipe]
            w.writerow([t.recipe, t.changes, t.status, t.model, _fmt(t.mean), _fmt(t.std), t.n, _fmt(t.real_mean),
                        _fmt(t.real_std), _fmt(t.vs_real), _fmt(t.vs_baseline), _fmt(t.agreement), r.iterations or "",
                        _fmt(r.loss), _fmt(r.lr), f"{r.distill_seconds:.1f}", f"{r.eval_seconds:.1f}",
                        " ".join(f"{a:.2f}" for a in t.accuracies), t.reason or ""])
    return path


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.6g}"


def caption(result: QualityResult) -> str:
    """What every row shared, in one line (the chart's title)."""
    base, ev, m = result.base, result.evaluation, result.model
    return (f"{m.name} width {m.width}, IPC {base.ipc}, {base.iterations} iterations x {base.syn_steps} steps, "
            f"{result.experts} experts; {ev.num_models} networks x {ev.epochs} epochs each")


def quality_report(result: QualityResult, out: Path, plot: QualityPlot) -> dict:
    """``quality.csv`` and the bar chart ``quality.png`` in ``out``."""
    out = Path(out)
    return {"csv": write_csv(result, out / "quality.csv"),
            "png": plot(table(result), result.baseline, caption(result), out / "quality.png")}


def quality_json(result: QualityResult, files: dict) -> str:
    """One JSON object: the shared settings, the table's rows, the verdicts and the files."""
    data = {"status": result.status, "baseline": result.baseline, "caption": caption(result),
            "base": to_dict(result.base), "evaluation": to_dict(result.evaluation), "model": to_dict(result.model),
            "trajectories": result.trajectories, "experts": result.experts,
            "rows": [attr.asdict(r, retain_collection_types=False) for r in table(result)],
            "verdicts": verdicts(result), "files": {k: str(v) for k, v in files.items()}}
    return json.dumps(data)


__all__ = ["CANCELLED", "COMPLETED", "PreparedQuality", "QualityPorts", "QualityRequest", "QualityResult",
           "QualityRow", "STOPPED", "TableRow", "caption", "prepare_quality", "quality_json", "quality_report",
           "run_quality", "table", "verdicts", "write_csv"]
