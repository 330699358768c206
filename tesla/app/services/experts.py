"""The experts service: train E teacher networks and stream their trajectories to a store.

The published "buffer" step: for each expert, a freshly initialised network (seeded by
``seed + i``) is trained on the real data and its flat parameters are written after
init and after every epoch, with the test accuracy. Each expert is written through the
store's streaming writer and marked complete only when its last snapshot is in, so an
interrupted run loses at most the experts in progress; running again skips the complete
ones and redoes those from their seeds, which gives the same trajectories (training is
deterministic for a seed on CPU).

Shape: a request, then :func:`prepare_experts`, which does every check and every open
before any work (the data against the model, an existing store against the model and
dataset, the run directory) and returns a job ``job(sink, cancel)`` that the CLI runs
under its display. The service reaches the world only through ports
(:class:`ExpertsPorts`): it loads data, opens stores and trains networks through them,
so it runs on hand-written fakes as well as on torch and HDF5/Zarr.

Several processes (torchrun ranks, a :class:`~tesla.domain.ports.Ranks`) split the
experts still to train round robin and write them into one shared store (Zarr) or into
one file per rank (HDF5, one writer per file) that rank 0 then merges
(:func:`tesla.app.services.merge.merge_trajectory_stores`). Expert ``i`` is seeded
``seed + i`` whichever rank trains it, so the store holds exactly what one process
would have written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import attrs

from tesla.app.services.merge import merge_trajectory_stores
from tesla.domain import events
from tesla.domain.config import DataConfig, ExpertConfig, ModelConfig, to_dict
from tesla.domain.data import check_data_fits, model_for_data
from tesla.domain.errors import TrainingStopped
from tesla.domain.experts import check_one_recipe, split_ids
from tesla.domain.footprint import check_fits, experts_footprint
from tesla.domain.ports import (Cancel, EventSink, ExpertOutput, ExpertTraining, FreeMemory, LoadData, ModelLayout,
                                NullSink, PrepareRunDir, Ranks, RealData, TrajectoryOutput, TrajectoryStores,
                                UnknownMemory)
from tesla.domain.urls import redact_json, redact_url

COMPARE = ("model", "data")  # what a run directory must agree on when it is used again


@attrs.frozen
class ExpertsResult:
    """What a run did: ``status`` completed | cancelled; ids trained now and kept from
    before; each trained expert's final test accuracy."""

    status: str
    trained: tuple
    skipped: tuple
    final_accuracy: dict


@attrs.frozen
class ExpertsRequest:
    """An experts run as the user asked for it.

    Attributes:
        out: the trajectory store (path or URL).
        data, model, experts: the configs (see :func:`tesla.domain.experts.experts_configs`).
        fit_model: take the model's classes and input shape from the data once loaded
            (no preset); ``depth`` then overrides the depth that fits the image side.
        run_dir: where the event log and config.json go (None: no log).
    """

    out: str
    data: DataConfig
    model: ModelConfig
    experts: ExpertConfig
    fit_model: bool = False
    depth: Optional[int] = None
    run_dir: Optional[Path] = None


@attrs.frozen
class ExpertsPorts:
    """The adapters an experts run works through (built by :mod:`tesla.app.bootstrap`)."""

    load_data: LoadData
    stores: TrajectoryStores
    training: ExpertTraining
    run_dirs: PrepareRunDir
    memory: FreeMemory = UnknownMemory()  # the size check before the first network is built


@attrs.frozen
class PreparedExperts:
    """A checked, opened run: ``job(sink, cancel)`` trains; ``model`` is the model as fitted
    to the data and ``config`` what config.json records."""

    job: Callable[[EventSink, Cancel], ExpertsResult]
    model: ModelConfig
    config: dict


# --- request -> prepared job ---------------------------------------------------------------


def prepare_experts(req: ExpertsRequest, ports: ExpertsPorts, ranks: Optional[Ranks] = None,
                    sink: Optional[EventSink] = None) -> PreparedExperts:
    """Check and open everything for ``req``; nothing is written when a check fails.

    Order: the data (and the model fitted to it, within the machine's memory), an
    existing store (same model, dataset and recipe), the run directory's refusals; then
    the store is opened (a new one created) and, last, the run directory made and its
    config recorded, so a store that cannot be made leaves no config behind. With
    ``ranks`` this is one rank of a distributed run (every rank calls it with the same
    request). Each step is announced to ``sink`` as it starts and ends (Progress events,
    and a Warning naming the experts a store already holds), so the minutes of loading
    data and fitting ZCA are not silent.
    """
    sink = sink or NullSink()
    if ranks is not None:
        return _prepare_ranked(req, ports, ranks, sink)
    data = _load(req, ports, sink)
    model = _fitted_model(req, data)
    check_fits(experts_footprint(model, req.experts), ports.memory)  # before the model is built
    layout = ports.training.layout(model)
    dataset = to_dict(req.data)
    store = None
    if ports.stores.exists(req.out):
        with _step(sink, f"check the trajectory store {redact_url(req.out)}"):
            store = _checked(ports.stores.open(req.out), model, layout, dataset, req.experts)
        _say_kept(sink, store, req)
    config = _run_config(req, model)
    try:
        if req.run_dir is not None:  # every refusal first; the directory is made once the store is open
            ports.run_dirs(req.run_dir, config, resume=True, compare_keys=COMPARE, check_only=True)
        if store is None:
            store = ports.stores.open(req.out)
        if req.run_dir is not None:
            ports.run_dirs(req.run_dir, config, resume=True, compare_keys=COMPARE)
    except BaseException:
        if store is not None:
            store.close()
        raise
    opened = store

    def job(sink: EventSink, cancel: Cancel) -> ExpertsResult:
        return train_experts(model_cfg=model, expert_cfg=req.experts, data=data, store=opened, dataset=dataset,
                             training=ports.training, sink=sink, cancel=cancel, run_config=config)

    return PreparedExperts(job=job, model=model, config=config)


def _prepare_ranked(req: ExpertsRequest, ports: ExpertsPorts, ranks: Ranks, sink: EventSink) -> PreparedExperts:
    data = ranks.agree(lambda: _load(req, ports, sink if ranks.is_writer else NullSink()))
    model = _fitted_model(req, data)
    ranks.agree(lambda: check_fits(experts_footprint(model, req.experts), ports.memory))
    config = _run_config(req, model)
    if req.run_dir is not None:
        ranks.agree(lambda: ports.run_dirs(req.run_dir, config, resume=True, compare_keys=COMPARE),
                    only_writer=True)

    def job(sink: EventSink, cancel: Cancel) -> ExpertsResult:
        return distributed_experts(ranks=ranks, out=req.out, model_cfg=model, expert_cfg=req.experts, data=data,
                                   dataset=to_dict(req.data), stores=ports.stores, training=ports.training,
                                   sink=sink, cancel=cancel, run_config=config)

    return PreparedExperts(job=job, model=model, config=config)


@contextlib.contextmanager
def _step(sink: EventSink, label: str) -> Iterator[None]:
    """``label`` started (0 of 1) and, when the block ends without an error, done (1 of 1)."""
    sink.emit(events.Progress(label=label, done=0, total=1))
    yield
    sink.emit(events.Progress(label=label, done=1, total=1))


def data_label(cfg: DataConfig) -> str:
    """What loading ``cfg`` does, in words (the set-up's first step)."""
    where = f" from {redact_url(cfg.root)}" if cfg.root else ""
    zca = " and fit ZCA (cached after the first time)" if cfg.zca else ""
    return f"load {cfg.name} data{where}{zca}"


def _load(req: ExpertsRequest, ports: ExpertsPorts, sink: EventSink) -> RealData:
    with _step(sink, data_label(req.data)):
        return ports.load_data(req.data)


def _say_kept(sink: EventSink, store: TrajectoryOutput, req: ExpertsRequest) -> None:
    kept = sorted(set(store.expert_ids()) & set(range(req.experts.num_experts)))
    if kept:
        left = req.experts.num_experts - len(kept)
        sink.emit(events.Warning(message=f"{redact_url(req.out)} already holds {len(kept)} complete expert(s) "
                                         f"({', '.join(map(str, kept))}): kept; {left} to train"))


def _fitted_model(req: ExpertsRequest, data: RealData) -> ModelConfig:
    """The model for the loaded data, refused (DataMismatchError) when it cannot take it."""
    model = req.model
    if req.fit_model:
        model = model_for_data(model, data.num_classes, data.image_shape, req.depth)
    check_data_fits(data.num_classes, data.image_shape, model)
    return model


def _run_config(req: ExpertsRequest, model: ModelConfig) -> dict:
    return {"experts": to_dict(req.experts), "model": to_dict(model), "data": to_dict(req.data)}


def _checked(store: TrajectoryOutput, model: ModelConfig, layout: ModelLayout, dataset: dict,
             recipe: Optional[ExpertConfig] = None) -> TrajectoryOutput:
    """``store``, refused (and closed) when it already holds another model or dataset, or
    (given ``recipe``) experts trained with another recipe."""
    try:
        if store.initialized:
            store.check_compatible(to_dict(model), layout.layout, layout.num_params, dataset)
            if recipe is not None:
                check_recipe(store, recipe)
    except BaseException:
        store.close()
        raise
    return store


def check_recipe(store: TrajectoryOutput, recipe: ExpertConfig) -> None:
    """Refuse (ExpertsError) a recipe other than the one of the store's complete experts."""
    recorded = {i: store.expert_attrs(i).get("train_config") for i in store.expert_ids()}
    check_one_recipe(redact_url(store.url), recorded, recipe)


# --- the loop ------------------------------------------------------------------------------


def train_experts(*, model_cfg: ModelConfig, expert_cfg: ExpertConfig, data: RealData, store: TrajectoryOutput,
                  dataset: dict, training: ExpertTraining, sink: Optional[EventSink] = None,
                  cancel: Optional[Cancel] = None, ids: Optional[Sequence[int]] = None,
                  run_config: Optional[dict] = None, announce: bool = True) -> ExpertsResult:
    """Train ``expert_cfg.num_experts`` experts (ids 0..E-1, or ``ids``) into ``store``.

    Complete experts already in the store are skipped (that is how a run resumes); the
    experts train in groups of ``expert_cfg.parallel``. A cancel between groups, or one
    the training notices between epochs, ends the run ``cancelled``; the unfinished
    group stays incomplete in the store and is trained again from its seeds next time.
    ``announce=False`` leaves RunStarted/RunFinished to the caller (a distributed run).
    """
    sink = sink or NullSink()
    check_data_fits(data.num_classes, data.image_shape, model_cfg)
    layout = training.layout(model_cfg)
    store.initialize(model=to_dict(model_cfg), layout=layout.layout, num_params=layout.num_params,
                     dataset=redact_json(dataset))  # a data URL's credentials stay out of the store
    wanted = list(range(expert_cfg.num_experts)) if ids is None else list(ids)
    skipped = tuple(sorted(set(store.expert_ids()) & set(wanted)))
    todo = [i for i in wanted if i not in skipped]
    if announce:
        config = run_config or {"experts": to_dict(expert_cfg), "model": to_dict(model_cfg)}
        sink.emit(events.RunStarted(job="experts", config=config, total=len(todo) * expert_cfg.epochs))
    accuracy: dict = {}
    trained: list = []
    status = "completed"
    for first in range(0, len(todo), expert_cfg.parallel):
        group = todo[first:first + expert_cfg.parallel]
        if (cancel is not None and cancel.is_set()) or not _train_group(
                group, model_cfg, expert_cfg, data, store, training, sink, cancel, accuracy):
            status = "cancelled"
            break
        trained += group
    if announce:
        sink.emit(events.RunFinished(status=status, summary={"trained": trained, "skipped": list(skipped),
                                                             "final_accuracy": accuracy}))
    return ExpertsResult(status=status, trained=tuple(trained), skipped=skipped, final_accuracy=accuracy)


def _train_group(group: list, model_cfg: ModelConfig, expert_cfg: ExpertConfig, data: RealData,
                 store: TrajectoryOutput, training: ExpertTraining, sink: EventSink,
                 cancel: Optional[Cancel], accuracy: dict) -> bool:
    """Train one group together and mark its experts complete; False when it was stopped."""
    seeds = [expert_cfg.seed + i for i in group]
    writers = [store.begin_expert(i, expert_cfg.epochs, {"seed": sd, "lr": expert_cfg.lr,
                                                          "train_config": to_dict(expert_cfg)})
               for i, sd in zip(group, seeds)]
    try:
        histories = training.train(model_cfg, expert_cfg, data, seeds, on_snapshot=[_snapshot_to(w) for w in writers],
                                   on_epoch=[_epoch_event(sink, i) for i in group],
                                   should_stop=cancel.is_set if cancel is not None else None)
    except TrainingStopped:
        sink.emit(events.Warning(message=f"expert(s) {', '.join(map(str, group))} stopped before their last "
                                         "epoch; they will be trained again from their seeds on --resume"))
        return False
    for expert_id, writer, history in zip(group, writers, histories):
        writer.finish()
        accuracy[expert_id] = history[-1]
        sink.emit(events.Checkpoint(path=f"{redact_url(store.url)}#expert-{expert_id}", iteration=expert_id))
    return True


def _snapshot_to(writer: ExpertOutput) -> Callable:
    return lambda epoch, flat, acc: writer.write(epoch, flat, test_accuracy=acc)


def _epoch_event(sink: EventSink, expert_id: int) -> Callable:
    def emit(epoch: int, epochs: int, train_loss: float, train_acc: float, test_acc: Optional[float],
             seconds: float) -> None:
        sink.emit(events.Epoch(expert=expert_id, epoch=epoch, epochs=epochs, train_loss=train_loss,
                               train_acc=train_acc, test_acc=test_acc, seconds=seconds))

    return emit


# --- several processes ---------------------------------------------------------------------


def distributed_experts(*, ranks: Ranks, out: str, model_cfg: ModelConfig, expert_cfg: ExpertConfig,
                        data: RealData, dataset: dict, stores: TrajectoryStores, training: ExpertTraining,
                        sink: Optional[EventSink] = None, cancel: Optional[Cancel] = None,
                        run_config: Optional[dict] = None, merge: bool = True) -> ExpertsResult:
    """Train ``expert_cfg.num_experts`` experts split over ``ranks`` into ``out``.

    Every rank calls this with the same arguments (module docstring); events go to
    ``sink`` (a :class:`NullSink` on ranks other than 0).

    Returns:
        ExpertsResult over all ranks (the same on every rank): status ``completed`` only
        when every rank completed.
    """
    sink = sink or NullSink()
    layout = training.layout(model_cfg)
    per_rank = not stores.shared(out)
    store = _open_ranked(ranks, out, per_rank, stores, model_cfg, layout, data, dataset, expert_cfg)
    done = ranks.agree(lambda: _finished(store, ranks, out, per_rank, stores, model_cfg, layout, dataset))
    done = set().union(*ranks.all_gather(sorted(done)))
    wanted = list(range(expert_cfg.num_experts))
    todo = [i for i in wanted if i not in done]
    mine = split_ids(todo, ranks.rank, ranks.world)
    config = dict(run_config or {"experts": to_dict(expert_cfg), "model": to_dict(model_cfg)})
    config["distributed"] = {"world": ranks.world}
    sink.emit(events.RunStarted(job="experts", config=config, total=len(mine) * expert_cfg.epochs))
    if len(todo) > len(mine):
        sink.emit(events.Warning(message=f"{ranks.world} ranks train {len(todo)} experts; this log follows "
                                         f"rank 0's {len(mine)} ({', '.join(map(str, mine)) or 'none'})"))
    try:
        result = train_experts(model_cfg=model_cfg, expert_cfg=expert_cfg, data=data, store=store, dataset=dataset,
                               training=training, sink=sink, cancel=cancel, ids=mine, announce=False)
    finally:
        store.close()  # before the gather: rank 0 may open this rank's HDF5 file next
    overall = _over_all_ranks(ranks, result, skipped=tuple(sorted(done & set(wanted))))
    summary: dict = {"trained": list(overall.trained), "skipped": list(overall.skipped),
                     "final_accuracy": overall.final_accuracy, "world": ranks.world}
    if per_rank and ranks.world > 1 and ranks.is_writer and merge:
        _merge_rank_files(out, ranks.world, stores, sink, summary)
    sink.emit(events.RunFinished(status=overall.status, summary=summary))
    return overall


def _over_all_ranks(ranks: Ranks, mine: ExpertsResult, skipped: tuple) -> ExpertsResult:
    """Every rank's result joined (the same on every rank): completed only when all completed."""
    reports = ranks.all_gather((mine.status, list(mine.trained), dict(mine.final_accuracy)))
    status = "completed" if all(s == "completed" for s, _, _ in reports) else "cancelled"
    return ExpertsResult(status=status, trained=tuple(sorted(i for _, t, _ in reports for i in t)), skipped=skipped,
                         final_accuracy={k: v for _, _, acc in reports for k, v in acc.items()})


def _open_ranked(ranks: Ranks, out: str, per_rank: bool, stores: TrajectoryStores, model_cfg: ModelConfig,
                 layout: ModelLayout, data: RealData, dataset: dict,
                 recipe: Optional[ExpertConfig] = None) -> TrajectoryOutput:
    """This rank's store, initialised: its own file, or the shared store that rank 0
    creates and checks before the others open it (refused when its experts were trained
    with another ``recipe``)."""

    def open_initialised(url: str) -> TrajectoryOutput:
        check_data_fits(data.num_classes, data.image_shape, model_cfg)
        store = stores.open(url)
        try:
            store.initialize(model=to_dict(model_cfg), layout=layout.layout, num_params=layout.num_params,
                             dataset=redact_json(dataset))
            if recipe is not None:
                check_recipe(store, recipe)
        except BaseException:
            store.close()
            raise
        return store

    if per_rank:
        return ranks.agree(lambda: open_initialised(stores.rank_url(out, ranks.rank, ranks.world)))
    first = ranks.agree(lambda: open_initialised(out), only_writer=True)
    return ranks.agree(lambda: first if ranks.is_writer else open_initialised(out))


def _finished(store: TrajectoryOutput, ranks: Ranks, out: str, per_rank: bool, stores: TrajectoryStores,
              model_cfg: ModelConfig, layout: ModelLayout, dataset: dict) -> set:
    """Experts complete in this rank's store, and (rank 0, per-rank files) in a file an
    earlier run already merged."""
    done = set(store.expert_ids())
    if per_rank and ranks.world > 1 and ranks.is_writer and stores.exists(out):
        merged = stores.read(out)
        try:
            merged.check_compatible(to_dict(model_cfg), layout.layout, layout.num_params, dataset)
            done |= set(merged.expert_ids())
        finally:
            merged.close()
    return done


def _merge_rank_files(out: str, world: int, stores: TrajectoryStores, sink: EventSink, summary: dict) -> None:
    """Rank 0 joins the per-rank files into ``out`` when it sees them all (they are kept:
    delete them once the merged file is in place)."""
    rank_files = [stores.rank_url(out, k, world) for k in range(world)]
    absent = [f for f in rank_files if not stores.exists(f)]
    if absent:
        sink.emit(events.Warning(message=f"{', '.join(absent)} not visible from rank 0: copy the rank files "
                                         f"together and run `tesla merge-trajectories {' '.join(rank_files)} "
                                         f"{out}`"))
        return
    merged = merge_trajectory_stores(rank_files, out, stores=stores)
    summary["merged"] = {"into": out, "experts": len(merged.copied) + len(merged.skipped), "rank_files": rank_files}
