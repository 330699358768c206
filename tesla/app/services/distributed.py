"""Distillation over several processes (``torchrun``).

Experts over several processes and store merging live in
:mod:`tesla.app.services.experts` and :mod:`tesla.app.services.merge`, the URL helpers
in :mod:`tesla.domain.urls`; their old names stay importable from here for now.

Distillation (``tesla`` engine)
    Pass 1 of an iteration is cheap (plain gradients) and deterministic, and every rank
    draws the same expert, start epoch, batches and augmentation seeds from the same
    seeded RNG, so every rank runs pass 1 whole and holds the same ``w_i`` and ``v``.
    Pass 2 (one double-backward graph per step, the expensive part) is split by step:
    rank ``r`` replays the steps with ``index % world == r``. The per-rank data
    gradients are summed with an all-reduce, so every rank applies the same update and
    holds the same images and lr; rank 0 alone writes checkpoints, the final set, PNGs
    and events. Cancellation is agreed (one scalar all-reduce per iteration), so all
    ranks stop after the same iteration and the checkpoint is consistent.

Secrets: storage options (credentials, endpoints) go to the stores only; URLs recorded
in ``config.json``, provenance and events pass through :func:`redact_url`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import torch

from tesla.adapters.torch.dist import DistContext, single_process
from tesla.domain.config import DistillConfig, ModelConfig, from_dict, to_dict
from tesla.domain.ports import NullSink

# --- URLs, merging and experts: moved; the old names stay importable from here ---------------

from tesla.adapters.stores.opener import rank_store_url  # noqa: E402,F401
from tesla.app.services.experts import distributed_experts  # noqa: E402,F401
from tesla.app.services.merge import MergeResult  # noqa: E402,F401
from tesla.app.services.merge import copy_expert as _copy_expert  # noqa: E402,F401
from tesla.app.services.merge import merge_trajectory_stores  # noqa: E402,F401
from tesla.domain.urls import is_remote, options_for, redact_url  # noqa: E402,F401


# --- distillation -----------------------------------------------------------------------


class AgreedCancel:
    """A cancel flag that every rank reads the same: set when any rank's own flag is set.

    ``is_set`` is a collective (one scalar all-reduce), so every rank must call it the
    same number of times; the distillation loop does (once per iteration, on every rank,
    because all ranks follow the same control flow).
    """

    def __init__(self, local: Optional[threading.Event], ctx: DistContext) -> None:
        self.local = local or threading.Event()
        self.ctx = ctx

    def set(self) -> None:
        self.local.set()

    def is_set(self) -> bool:
        if self.ctx.world == 1:
            return self.local.is_set()
        flag = torch.tensor([1.0 if self.local.is_set() else 0.0])
        self.ctx.all_reduce_sum_(flag)
        return bool(flag.item() > 0)


class _CheckpointReader:
    """The synthetic store as ranks other than 0 see it: they only read the latest
    checkpoint (on ``--resume``); writing is rank 0's job."""

    def __init__(self, url: str, storage_options: Optional[dict]) -> None:
        self.url = url
        self.storage_options = storage_options

    def latest_checkpoint(self) -> Any:
        from tesla.adapters.stores.errors import StoreError
        from tesla.adapters.stores.synthetic import open_synthetic_store

        try:
            store = open_synthetic_store(self.url, "r", storage_options=self.storage_options)
        except StoreError:
            return None
        try:
            return store.latest_checkpoint()
        finally:
            store.close()

    def write_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("only rank 0 writes checkpoints")

    write_set = write_checkpoint


def prepare_distillation(req: Any, ctx: Optional[DistContext] = None, *, store_url: Optional[str] = None) -> Any:
    """:func:`tesla.app.services.run.run_distillation` for one rank of a distributed run
    (or a single process with ``ctx=None``), with the synthetic store at any URL.

    Every rank opens and checks the inputs (a failure on any rank stops all of them with
    one message); rank 0 alone creates the run directory and the store. The returned
    job runs :func:`~tesla.app.services.distill.distill` with this rank's shard.

    Args:
        req: a :class:`~tesla.app.services.run.DistillRequest`.
        ctx: this rank's context; None for one process on ``req.device``.
        store_url: the synthetic store (a local path or an fsspec URL such as
            ``s3://bucket/run/synthetic.zarr``); default ``req.out / req.set_name``.
            ``req.storage_options`` apply to whichever of the URLs is remote.
    """
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model
    from tesla.app import bootstrap
    from tesla.app.services.distill import DistillError, check_inputs, check_resumable, distill
    from tesla.app.services.run import PreparedRun, data_config_from_store, make_evaluator

    if ctx is None:
        ctx = single_process(bootstrap.resolve_device(req.device))
    cfg: DistillConfig = req.cfg
    opts = req.storage_options
    device = ctx.device

    def open_inputs() -> tuple:
        if ctx.world > 1 and cfg.engine != "tesla":
            raise DistillError(f"engine {cfg.engine!r} cannot split its steps across processes: use --engine tesla")
        trajectories = bootstrap.open_trajectories(req.trajectories, "r", options_for(req.trajectories, opts))
        model_cfg = from_dict(ModelConfig, dict(trajectories.meta.model))
        data_cfg = data_config_from_store(trajectories.meta.dataset, req.dataset, req.data)
        data = bootstrap.load_data(data_cfg, storage_options=options_for(data_cfg.root or "", opts))
        check_inputs(cfg, model_cfg, data, trajectories, FlatView(build_model(model_cfg)))
        return trajectories, model_cfg, data_cfg, data

    trajectories, model_cfg, data_cfg, data = ctx.agree(open_inputs)
    url = str(store_url) if store_url else str(Path(req.out) / req.set_name)
    config = {"distill": to_dict(cfg), "model": to_dict(model_cfg), "data": to_dict(data_cfg),
              "trajectories": redact_url(req.trajectories)}
    if store_url:
        config["store"] = redact_url(url)
    if ctx.world > 1:
        config["distributed"] = {"world": ctx.world}

    def open_output() -> tuple:
        run_dir = bootstrap.prepare_run_dir(req.out, config, resume=req.resume, compare_keys=("model", "data"))
        store = bootstrap.open_synthetic(url, "a", options_for(url, opts))
        last = store.latest_checkpoint()
        if req.resume and last is not None:
            check_resumable(cfg, last[2])  # before any work or log line
        if not req.resume and last is not None:
            store.close()
            raise DistillError(f"{redact_url(url)} already holds checkpoints: pass --resume or choose another "
                               + ("--store" if store_url else "--out"))
        return run_dir, store

    opened = ctx.agree(open_output, only_writer=True)
    if ctx.is_writer:
        run_dir, store = opened
    else:
        run_dir, store = Path(req.out), _CheckpointReader(url, options_for(url, opts))
    normalizer = getattr(data, "normalizer", None)
    decode = normalizer.decode if normalizer is not None else None
    provenance = {"trajectories": redact_url(req.trajectories), "dataset": to_dict(data_cfg),
                  "class_names": list(getattr(data, "class_names", []) or []),
                  "normalizer_state": normalizer.to_state() if normalizer is not None else None}

    def job(sink: Any, cancel: threading.Event) -> Any:
        evaluator = None
        if req.eval_every and ctx.is_writer:  # the others wait for rank 0 in the next collective
            evaluator = make_evaluator(data, model_cfg, req, bootstrap.evaluation_training(device), sink)
        result = distill(cfg=cfg, model_cfg=model_cfg, data=data, trajectories=trajectories, store=store,
                         sink=sink if ctx.is_writer else NullSink(), device=device,
                         cancel=AgreedCancel(cancel, ctx), resume=req.resume, run_config=config, decode=decode,
                         preview_every=req.preview_every if ctx.is_writer else 0,
                         memory_every=10 if ctx.is_writer else 0, evaluator=evaluator,
                         eval_every=req.eval_every if ctx.is_writer else 0, provenance=provenance,
                         shard=ctx.shard, all_reduce=ctx.all_reduce_sum_ if ctx.world > 1 else None,
                         is_writer=ctx.is_writer)
        if result.status == "completed" and ctx.is_writer:
            from tesla.adapters.stores.export import default_decode, export_png_grid

            syn = store.read_set()
            export_png_grid(syn, str(Path(run_dir) / "images"), decode=default_decode(syn))
        return result

    return PreparedRun(job=job, run_dir=Path(run_dir), model=model_cfg, data=data_cfg, config=config)


__all__ = [
    "AgreedCancel", "MergeResult", "distributed_experts", "is_remote", "merge_trajectory_stores", "options_for",
    "prepare_distillation", "rank_store_url", "redact_url",
]
