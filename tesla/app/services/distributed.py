"""Experts over several processes (``torchrun``), and store merging.

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

Distillation over ranks is set up with the single-process case in
:mod:`tesla.app.services.run`; URL policy lives in :mod:`tesla.domain.urls`.

Secrets: storage options (credentials, endpoints) go to the stores only; URLs recorded
in ``config.json``, provenance and events pass through
:func:`~tesla.domain.urls.redact_url`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional, Sequence

import attrs

from tesla.adapters.torch.dist import DistContext, split_ids
from tesla.domain import events
from tesla.domain.config import ExpertConfig, ModelConfig, to_dict
from tesla.domain.ports import EventSink, NullSink
from tesla.domain.urls import is_remote, options_for, rank_store_url, redact_url  # noqa: F401 - re-exported

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


__all__ = [
    "MergeResult", "distributed_experts", "is_remote", "merge_trajectory_stores", "options_for", "rank_store_url",
    "redact_url",
]
