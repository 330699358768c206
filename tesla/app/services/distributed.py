"""Experts and distillation over several processes (``torchrun``), and store merging.

Experts
    Experts are independent, so ranks split them: the experts still to train (ids not
    complete anywhere yet) are dealt round robin (:func:`~tesla.adapters.torch.dist.split_ids`)
    and each rank trains its share with :func:`~tesla.app.services.experts.train_experts`.
    Expert ``i`` is seeded ``seed + i`` whichever rank trains it, so the store holds
    exactly what one process would have written (bitwise on CPU).

    *Zarr* (a directory on a shared filesystem, or ``s3://``/``gs://`` ...): every rank
    writes its experts into the one store; Zarr keeps each expert in its own objects, so
    concurrent writers of different experts do not meet. Rank 0 creates and checks the
    store before the others open it.

    *HDF5* is one file with one writer, so with ``world > 1`` rank ``k`` writes
    ``<stem>.rank<k>.h5`` next to the requested file and, once every rank has closed its
    file, rank 0 merges them into the requested file with :func:`merge_trajectory_stores`
    (when it can see them all; on nodes without a shared filesystem, copy the rank files
    together and run ``tesla merge-trajectories``). The rank files are kept; delete
    them once the merged file is where you want it.

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

import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Optional, Sequence

import attrs
import torch

from tesla.adapters.torch.dist import DistContext, single_process, split_ids
from tesla.domain import events
from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig, from_dict, to_dict
from tesla.domain.ports import EventSink, NullSink

# --- URLs and options -------------------------------------------------------------------


def is_remote(url: str) -> bool:
    """An fsspec URL other than ``file://`` (storage options apply to these only)."""
    url = str(url)
    return "://" in url and not url.startswith("file://")


def options_for(url: str, storage_options: Optional[dict]) -> Optional[dict]:
    """``storage_options`` for a remote URL, None for a local path (where stores refuse them)."""
    return dict(storage_options) if storage_options and is_remote(url) else None


def redact_url(url: Any) -> str:
    """``url`` without user info or query (``s3://key:secret@b/x?token=t`` -> ``s3://***@b/x``),
    for what is written to config.json, provenance and events."""
    text = str(url)
    if "://" not in text:
        return text
    parts = urllib.parse.urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def rank_store_url(url: str, rank: int, world: int) -> str:
    """Where rank ``rank`` writes experts: its own ``<stem>.rank<k>.h5`` for HDF5 when
    ``world > 1``, else ``url`` (Zarr is shared)."""
    from tesla.adapters.stores.backend import is_hdf5_url

    if world == 1 or not is_hdf5_url(url):
        return str(url)
    path = Path(url)
    return str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))


# --- merging ----------------------------------------------------------------------------


@attrs.frozen
class MergeResult:
    """What :func:`merge_trajectory_stores` did.

    Attributes:
        dest: the merged store.
        copied: (source url, expert id) of every expert copied.
        skipped: (source url, expert id) of experts already in ``dest`` with the same checksums.
        incomplete: (source url, expert id) of unfinished experts left behind.
    """

    dest: str
    copied: tuple = ()
    skipped: tuple = ()
    incomplete: tuple = ()


def merge_trajectory_stores(srcs: Sequence[str], dest: str, *, storage_options: Optional[dict] = None,
                            sink: Optional[EventSink] = None) -> MergeResult:
    """Copy every complete expert of ``srcs`` into ``dest`` (created when missing), keeping ids.

    Used to join the per-rank HDF5 files of a distributed ``tesla experts`` run, or any
    stores of the same model (HDF5 or Zarr, local or remote). Snapshots are streamed
    one at a time (their checksums are verified on read and recomputed on write), and
    an expert is marked complete in ``dest`` only after its last snapshot, so an
    interrupted merge can simply be run again.

    Args:
        srcs: trajectory stores to read (never modified).
        dest: the store to write; it may already hold experts.
        storage_options: fsspec options for the remote URLs among them.

    Raises:
        StoreError: a source is missing or holds another model/dataset, or an expert id
            is in ``dest`` (or an earlier source) with different contents.
    """
    from tesla.adapters.stores.errors import StoreError
    from tesla.adapters.stores.trajectory import open_trajectory_store

    sink = sink or NullSink()
    if not srcs:
        raise StoreError("no source stores to merge: pass at least one SRC before DEST")
    if str(dest) in {str(s) for s in srcs}:
        raise StoreError(f"{dest} is both a source and the destination: merge into a new store")
    copied, skipped, incomplete = [], [], []
    out = open_trajectory_store(str(dest), "a", storage_options=options_for(dest, storage_options))
    try:
        for src_url in srcs:
            with open_trajectory_store(str(src_url), "r", storage_options=options_for(src_url, storage_options)) as src:
                m = src.meta
                out.initialize(m.model, m.layout, m.num_params, m.dataset)  # refuses another model
                have = set(out.expert_ids())
                incomplete += [(str(src_url), i) for i in src.incomplete_ids()]
                for eid in src.expert_ids():
                    a = src.expert_attrs(eid)
                    if eid in have:
                        if out.expert_attrs(eid).get("crc32") == a.get("crc32"):
                            skipped.append((str(src_url), eid))
                            continue
                        raise StoreError(f"{dest}: expert {eid} from {src_url} differs from the expert {eid} "
                                         "already there: merge the stores into a new one, or leave one source out")
                    _copy_expert(src, out, eid, a)
                    copied.append((str(src_url), eid))
                    sink.emit(events.Checkpoint(path=f"{redact_url(dest)}#expert-{eid}", iteration=eid))
    finally:
        out.close()
    return MergeResult(dest=str(dest), copied=tuple(copied), skipped=tuple(skipped), incomplete=tuple(incomplete))


def _copy_expert(src: Any, out: Any, eid: int, attrs_: dict) -> None:
    keep = {k: v for k, v in attrs_.items() if k not in ("complete", "crc32", "epochs", "test_accuracy")}
    epochs = int(attrs_["epochs"])
    with out.begin_expert(eid, epochs, keep) as writer:
        for epoch in range(epochs + 1):
            writer.write(epoch, src.load(eid, epoch))  # load verifies the source checksum
        accuracy = attrs_.get("test_accuracy")
        if accuracy is not None:
            writer.set_attrs(test_accuracy=list(accuracy))


# --- experts ----------------------------------------------------------------------------


def distributed_experts(*, ctx: DistContext, out: str, model_cfg: ModelConfig, expert_cfg: ExpertConfig, data: Any,
                        dataset: dict, storage_options: Optional[dict] = None, sink: Optional[EventSink] = None,
                        cancel: Optional[threading.Event] = None, run_config: Optional[dict] = None,
                        merge: bool = True) -> Any:
    """Train ``expert_cfg.num_experts`` experts split over the ranks of ``ctx`` into ``out``.

    Every rank calls this with the same arguments (module docstring). Events go to
    ``sink`` (pass a :class:`NullSink` on ranks other than 0).

    Returns:
        ExpertsResult over all ranks (the same on every rank): status ``completed`` only
        when every rank completed.
    """
    from tesla.adapters.stores.backend import is_hdf5_url
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model
    from tesla.app import bootstrap
    from tesla.app.services.experts import ExpertsError, ExpertsResult, train_experts

    sink = sink or NullSink()
    opts = options_for(out, storage_options)
    hdf5 = is_hdf5_url(out)
    mine_url = rank_store_url(out, ctx.rank, ctx.world)

    def open_initialised(url: str) -> Any:
        if data.num_classes != model_cfg.num_classes:
            raise ExpertsError(f"the data has {data.num_classes} classes but the model outputs "
                               f"{model_cfg.num_classes}")
        view = FlatView(build_model(model_cfg, seed=0))
        store = bootstrap.open_trajectories(url, "a", opts)
        try:
            store.initialize(model=to_dict(model_cfg), layout=view.layout, num_params=view.num_params,
                             dataset=dataset)
        except BaseException:
            store.close()
            raise
        return store

    if hdf5:  # every rank its own file
        store = ctx.agree(lambda: open_initialised(mine_url))
    else:  # one shared store: rank 0 creates and checks it before the others open it
        first = ctx.agree(lambda: open_initialised(out), only_writer=True)
        store = ctx.agree(lambda: first if ctx.is_writer else open_initialised(out))

    def finished_here() -> set:
        done = set(store.expert_ids())
        if hdf5 and ctx.world > 1 and ctx.is_writer and _exists(out):  # merged by an earlier run
            with bootstrap.open_trajectories(out, "r") as merged:
                view = FlatView(build_model(model_cfg, seed=0))
                merged.check_compatible(to_dict(model_cfg), view.layout, view.num_params, dataset)
                done |= set(merged.expert_ids())
        return done

    done = ctx.agree(finished_here)
    done = set().union(*ctx.all_gather_object(sorted(done)))
    wanted = list(range(expert_cfg.num_experts))
    todo = [i for i in wanted if i not in done]
    mine = split_ids(todo, ctx.rank, ctx.world)
    config = dict(run_config or {"experts": to_dict(expert_cfg), "model": to_dict(model_cfg)})
    config["distributed"] = {"world": ctx.world}
    sink.emit(events.RunStarted(job="experts", config=config, total=len(mine) * expert_cfg.epochs))
    if len(todo) > len(mine):
        sink.emit(events.Warning(message=f"{ctx.world} ranks train {len(todo)} experts; this log follows "
                                         f"rank 0's {len(mine)} ({', '.join(map(str, mine)) or 'none'})"))
    try:
        result = train_experts(model_cfg=model_cfg, expert_cfg=expert_cfg, data=data, store=store, dataset=dataset,
                               sink=sink, device=ctx.device, cancel=cancel, ids=mine, announce=False)
    finally:
        store.close()  # before the gather: rank 0 may open this rank's HDF5 file next
    reports = ctx.all_gather_object((result.status, list(result.trained), dict(result.final_accuracy)))
    trained = sorted(i for _, t, _ in reports for i in t)
    accuracy = {k: v for _, _, acc in reports for k, v in acc.items()}
    status = "completed" if all(s == "completed" for s, _, _ in reports) else "cancelled"
    skipped = sorted(done & set(wanted))
    summary: dict = {"trained": trained, "skipped": skipped, "final_accuracy": accuracy, "world": ctx.world}
    if hdf5 and ctx.world > 1 and ctx.is_writer and merge:
        rank_files = [rank_store_url(out, k, ctx.world) for k in range(ctx.world)]
        absent = [f for f in rank_files if not _exists(f)]
        if absent:
            sink.emit(events.Warning(message=f"{', '.join(absent)} not visible from rank 0: copy the rank files "
                                             f"together and run `tesla merge-trajectories {' '.join(rank_files)} "
                                             f"{out}`"))
        else:
            merged = merge_trajectory_stores(rank_files, out)
            summary["merged"] = {"into": out, "experts": len(merged.copied) + len(merged.skipped),
                                 "rank_files": rank_files}  # kept: delete them once the merged file is in place
    sink.emit(events.RunFinished(status=status, summary=summary))
    return ExpertsResult(status=status, trained=tuple(trained), skipped=tuple(skipped), final_accuracy=accuracy)


def _exists(path: str) -> bool:
    return os.path.exists(path)


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
            evaluator = make_evaluator(data, model_cfg, req, device, sink)
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
