"""The demo: the whole pipeline on the embedded real dataset, no download, minutes on a CPU.

Experts on the embedded 16 px CIFAR-10 images, a TESLA distillation from their
trajectories, then the evaluation protocol on the distilled set beside random real
images at the same IPC, the pictures of the set beside real images, and the results
as a bar chart and a table kept in the run directory (``results.png``, ``results.md``,
``results.json``). Every stage is the real service
used by the CLI (:mod:`~tesla.app.services.experts`, the distillation,
:mod:`~tesla.app.services.evaluate`); only the sizes (the ``demo`` preset) are small.
The stages reach torch and the stores through :class:`DemoPorts`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator, Optional

import attrs

from tesla.app.services.evaluate import evaluate_set
from tesla.app.services.experts import train_experts
from tesla.app.services.results import keep_results
from tesla.domain import presets
from tesla.domain.config import DataConfig, DistillConfig, to_dict
from tesla.domain.ports import (Cancel, DistillStage, EvaluationTraining, EventSink, ExpertTraining, LoadData, RealData,
                                ResultsChart, RunFiles, TrajectoryStores)
from tesla.domain.rundir import IMAGES

DEMO_RUN = "run"  # the run directory inside the demo's folder (the trajectories sit beside it)


@attrs.frozen
class DemoPorts:
    """The stages' adapters; ``results_chart`` and ``files`` (None: none written) draw and
    keep the results beside the run."""

    load_data: LoadData
    stores: TrajectoryStores
    experts: ExpertTraining
    distill: DistillStage
    evaluation: EvaluationTraining
    results_chart: Optional[ResultsChart] = None
    files: Optional[RunFiles] = None


@attrs.frozen
class DemoResult:
    scores: tuple
    distill_loss: Optional[float]
    lr: float
    seconds: dict
    images_dir: Path
    run_dir: Path
    written: tuple = ()  # results.png, results.md, results.json where written


def run_demo(out: Path, *, ports: DemoPorts, sink: EventSink, cancel: Optional[Cancel] = None,
             engine: str = "tesla", seed: int = 0, preset: Optional[presets.Preset] = None) -> DemoResult:
    """Experts, distillation, images and evaluation in ``out``; KeyboardInterrupt when cancelled."""
    p = preset or presets.demo()
    out = Path(out)
    data = ports.load_data(DataConfig(name="demo"))
    clock = _Stopwatch()
    trajectories = str(out / "trajectories.zarr")
    with clock("experts"):
        _train_experts(p, seed, data, trajectories, ports, sink, cancel)
    run_dir = out / DEMO_RUN
    distill_cfg = attrs.evolve(p.distill, engine=engine, seed=seed)
    with clock("distill"):
        result, syn = ports.distill(distill_cfg, p.model, data, trajectories, run_dir, sink, cancel)
    if result.status != "completed" or syn is None:
        raise KeyboardInterrupt("demo cancelled during distillation")
    images_dir = run_dir / IMAGES  # written by the distillation stage, real images beside the set
    with clock("evaluate"):
        labels = syn.soft_labels if syn.soft_labels is not None else syn.labels
        scores = evaluate_set(syn.images, labels, syn.lr, data, model_cfg=p.model,
                              cfg=attrs.evolve(p.evaluate, seed=seed), training=ports.evaluation, ipc=distill_cfg.ipc,
                              random_real=True, sink=sink, iteration=result.iterations)
    settings = demo_settings(p, distill_cfg, seed)
    written = keep_results(scores, run_dir, chart=ports.results_chart, files=ports.files,
                           title=f"tesla demo: {settings['data']}, {settings['model']}, IPC {distill_cfg.ipc}",
                           engine=engine,
                           ipc=distill_cfg.ipc, settings=settings, chance=100.0 / data.num_classes)
    return DemoResult(scores=tuple(scores), distill_loss=result.loss, lr=result.lr, seconds=clock.seconds,
                      images_dir=images_dir, run_dir=run_dir, written=written)


def demo_settings(p: presets.Preset, cfg: DistillConfig, seed: int) -> dict:
    """What made the demo's figures, in words (kept beside them in results.md)."""
    e, v = p.experts, p.evaluate
    return {"data": f"embedded CIFAR-10 ({p.model.image_size} px)", "model": f"{p.model.name} width {p.model.width}",
            "experts": f"{e.num_experts} x {e.epochs} epochs",
            "distillation": f"{cfg.engine}, IPC {cfg.ipc}, {cfg.syn_steps} steps, {cfg.iterations} iterations, "
                            f"lr_img {cfg.lr_img:g}",
            "evaluation": f"{v.num_models} networks x {v.epochs} epochs", "seed": seed}


def _train_experts(p: presets.Preset, seed: int, data: RealData, url: str, ports: DemoPorts, sink: EventSink,
                   cancel: Optional[Cancel]) -> None:
    store = ports.stores.open(url)
    try:
        experts = train_experts(model_cfg=p.model, expert_cfg=attrs.evolve(p.experts, seed=seed), data=data,
                                store=store, dataset=to_dict(DataConfig(name="demo")), training=ports.experts,
                                sink=sink, cancel=cancel)
    finally:
        store.close()
    if experts.status != "completed":
        raise KeyboardInterrupt("demo cancelled during expert training")


class _Stopwatch:
    """Seconds per stage: ``with clock("name"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - t
