"""A distillation run on disk: from a request (paths, configs) to a ready job.

``run_distillation`` does every check and every open before any work (stores, data,
run directory, configs), so a bad argument fails in a second with one line and writes
nothing; it returns a :class:`PreparedRun` whose ``job(sink, cancel)`` the CLI runs
under a progress bar or the TUI. The run directory holds::

    config.json        the configs that made the run
    events.jsonl       the event log (the TUI and scripts follow it)
    synthetic.zarr|h5  checkpoints and the final set, with provenance
    images/            PNG grids per class of the final set (un-whitened)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Optional

import attrs

from tesla.domain.config import DataConfig, DistillConfig, EvalConfig, ModelConfig
from tesla.domain.data import recorded_data_config as data_config_from_store  # noqa: F401  (its old name)
from tesla.domain.ports import EvaluationTraining


@attrs.frozen
class DistillRequest:
    trajectories: str
    out: Path
    cfg: DistillConfig
    dataset: Optional[str] = None
    data: Optional[str] = None
    set_name: str = "synthetic.zarr"
    device: str = "auto"
    resume: bool = False
    eval_every: int = 0
    eval_models: int = 2
    eval_epochs: int = 300
    preview_every: int = 10
    storage_options: Optional[dict] = None
    store_url: Optional[str] = None  # synthetic store URL; default: out / set_name


@attrs.frozen
class PreparedRun:
    job: Callable[[Any, threading.Event], Any]
    run_dir: Path
    model: ModelConfig
    data: DataConfig
    config: dict


def run_distillation(req: DistillRequest) -> PreparedRun:
    """Check and open everything for one process; the job is then ``prepared.job(sink, cancel)``.

    The single-process case of
    :func:`tesla.app.services.distributed.prepare_distillation`, which holds the one
    implementation (ranks, remote store URLs, credentials kept out of records).
    """
    from tesla.app.services.distributed import prepare_distillation

    return prepare_distillation(req, None, store_url=req.store_url)


def make_evaluator(data: Any, model_cfg: ModelConfig, req: DistillRequest, training: EvaluationTraining, sink: Any):
    """Evaluate the current set during a run (fewer, shorter networks than the final
    protocol, trained through ``training``); the random-real reference is measured
    once, on the first call."""
    from tesla.app.services.evaluate import random_real_scores, train_many

    cfg = EvalConfig(num_models=req.eval_models, epochs=req.eval_epochs)
    done = {"baseline": False}

    def evaluator(state: Any, iteration: int) -> None:
        train_many(state.images.detach(), state.current_labels(), data, model_cfg=model_cfg, cfg=cfg, lr=state.lr_value,
                   subject="synthetic", training=training, sink=sink, iteration=iteration)
        if not done["baseline"]:
            random_real_scores(data, req.cfg.ipc, model_cfg=model_cfg, cfg=cfg, training=training, sink=sink,
                               iteration=iteration)
            done["baseline"] = True

    return evaluator
