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
import torch

from tesla.domain.config import DataConfig, DistillConfig, EvalConfig, ModelConfig, from_dict, to_dict


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


@attrs.frozen
class PreparedRun:
    job: Callable[[Any, threading.Event], Any]
    run_dir: Path
    model: ModelConfig
    data: DataConfig
    config: dict


def data_config_from_store(meta_dataset: dict, dataset: Optional[str], data: Optional[str]) -> DataConfig:
    """The data the experts were trained on, unless overridden."""
    known = {k: v for k, v in (meta_dataset or {}).items() if k in ("name", "root", "zca", "image_size")}
    if dataset:
        known["name"] = dataset
    if data:
        known["root"] = data
    if not known.get("name"):
        known["name"] = "cifar10"
    return DataConfig(**known)


def run_distillation(req: DistillRequest) -> PreparedRun:
    from tesla.app import bootstrap
    from tesla.app.services.distill import DistillError, check_inputs, distill
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model

    device = bootstrap.resolve_device(req.device)
    trajectories = bootstrap.open_trajectories(req.trajectories, "r", req.storage_options)
    meta = trajectories.meta
    model_cfg = from_dict(ModelConfig, dict(meta.model))
    data_cfg = data_config_from_store(meta.dataset, req.dataset, req.data)
    data = bootstrap.load_data(data_cfg, storage_options=req.storage_options)
    check_inputs(req.cfg, model_cfg, data, trajectories, FlatView(build_model(model_cfg)))
    config = {"distill": to_dict(req.cfg), "model": to_dict(model_cfg), "data": to_dict(data_cfg),
              "trajectories": str(req.trajectories)}
    run_dir = bootstrap.prepare_run_dir(req.out, config, resume=req.resume, compare_keys=("model", "data"))
    store_url = str(Path(req.out) / req.set_name)
    store = bootstrap.open_synthetic(store_url, "a")
    if not req.resume and store.latest_checkpoint() is not None:
        raise DistillError(f"{store_url} already holds checkpoints: pass --resume or choose another --out")
    normalizer = getattr(data, "normalizer", None)
    decode = normalizer.decode if normalizer is not None else None
    provenance = {"trajectories": str(req.trajectories), "dataset": to_dict(data_cfg),
                  "class_names": list(getattr(data, "class_names", []) or []),
                  "normalizer_state": normalizer.to_state() if normalizer is not None else None}

    def job(sink: Any, cancel: threading.Event):
        evaluator = None
        if req.eval_every:
            evaluator = make_evaluator(data, model_cfg, req, device, sink)
        result = distill(cfg=req.cfg, model_cfg=model_cfg, data=data, trajectories=trajectories, store=store,
                         sink=sink, device=device, cancel=cancel, resume=req.resume, run_config=config,
                         decode=decode, preview_every=req.preview_every, evaluator=evaluator,
                         eval_every=req.eval_every, provenance=provenance)
        if result.status == "completed":
            from tesla.adapters.stores.export import default_decode, export_png_grid

            syn = store.read_set()
            export_png_grid(syn, str(Path(run_dir) / "images"), decode=default_decode(syn))
        return result

    return PreparedRun(job=job, run_dir=run_dir, model=model_cfg, data=data_cfg, config=config)


def make_evaluator(data: Any, model_cfg: ModelConfig, req: DistillRequest, device: torch.device, sink: Any):
    """Evaluate the current set during a run (fewer, shorter networks than the final
    protocol); the random-real reference is measured once, on the first call."""
    from tesla.app.services.evaluate import random_real_scores, train_many

    cfg = EvalConfig(num_models=req.eval_models, epochs=req.eval_epochs)
    done = {"baseline": False}

    def evaluator(state: Any, iteration: int) -> None:
        train_many(state.images.detach(), state.current_labels(), data, model_cfg=model_cfg, cfg=cfg, lr=state.lr_value,
                   subject="synthetic", device=device, sink=sink, iteration=iteration)
        if not done["baseline"]:
            random_real_scores(data, req.cfg.ipc, model_cfg=model_cfg, cfg=cfg, device=device, sink=sink,
                               iteration=iteration)
            done["baseline"] = True

    return evaluator
