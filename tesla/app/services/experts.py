"""The expert service: train E teacher networks and stream their trajectories to a store.

The published "buffer" step (NOTES §4): for each expert, a freshly initialised network
(seeded by ``seed + i``) is trained on the real data and its flat parameters are
written after init and after every epoch, with the test accuracy. Each expert is
written through the store's streaming writer and marked complete only when its last
snapshot is in, so an interrupted run loses at most the expert in progress; running
again with ``resume`` skips the complete ones and redoes that one from its seed, which
gives the same trajectory (training is deterministic for a seed on CPU).

``ids`` lets several processes (torchrun ranks) train disjoint experts into one Zarr
store.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

import attrs
import torch

from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.parallel import train_experts_parallel
from tesla.adapters.torch.training import TrainingStopped
from tesla.domain import events
from tesla.domain.config import ExpertConfig, ModelConfig, to_dict
from tesla.domain.errors import ExpertsError
from tesla.domain.ports import EventSink, NullSink




@attrs.frozen
class ExpertsResult:
    status: str  # completed | cancelled
    trained: tuple
    skipped: tuple
    final_accuracy: dict


def train_experts(*, model_cfg: ModelConfig, expert_cfg: ExpertConfig, data: Any, store: Any, dataset: dict,
                  sink: EventSink | None = None, device: torch.device | str = "cpu",
                  cancel: threading.Event | None = None, ids: Optional[Sequence[int]] = None,
                  run_config: Optional[dict] = None, announce: bool = True) -> ExpertsResult:
    """Train ``expert_cfg.num_experts`` experts (ids 0..E-1, or ``ids``) into ``store``.

    Complete experts already in the store are skipped (that is how a run resumes).
    """
    sink = sink or NullSink()
    if data.num_classes != model_cfg.num_classes:
        raise ExpertsError(f"the data has {data.num_classes} classes but the model outputs {model_cfg.num_classes}")
    probe = build_model(model_cfg, seed=0)
    view = FlatView(probe)
    store.initialize(model=to_dict(model_cfg), layout=view.layout, num_params=view.num_params, dataset=dataset)
    wanted = list(range(expert_cfg.num_experts)) if ids is None else list(ids)
    done = set(store.expert_ids())
    todo = [i for i in wanted if i not in done]
    if announce:
        sink.emit(events.RunStarted(job="experts", config=run_config or {"experts": to_dict(expert_cfg),
                                                                          "model": to_dict(model_cfg)},
                                    total=len(todo) * expert_cfg.epochs))
    from tesla.adapters.torch.augment import DSA

    augment = DSA() if expert_cfg.dsa else None
    accuracy: dict = {}
    trained = []
    status = "completed"
    from tesla.domain.urls import redact_url

    group_size = expert_cfg.parallel
    for first in range(0, len(todo), group_size):
        if cancel is not None and cancel.is_set():
            status = "cancelled"
            break
        group = todo[first:first + group_size]
        seeds = [expert_cfg.seed + i for i in group]
        writers = [store.begin_expert(i, expert_cfg.epochs, {"seed": sd, "lr": expert_cfg.lr,
                                                              "train_config": to_dict(expert_cfg)})
                   for i, sd in zip(group, seeds)]

        def snapshot_to(writer):
            return lambda e, flat, acc: writer.write(e, flat, test_accuracy=acc)

        def epoch_event(expert_id):
            def emit(epoch, epochs, train_loss, train_acc, test_acc, seconds):
                sink.emit(events.Epoch(expert=expert_id, epoch=epoch, epochs=epochs, train_loss=train_loss,
                                       train_acc=train_acc, test_acc=test_acc, seconds=seconds))
            return emit

        try:
            # the group trains together (vmap) where that is faster, i.e. on CUDA; each member
            # draws exactly what it would alone, so the trajectories are the same
            histories = train_experts_parallel(
                [build_model(model_cfg, seed=sd) for sd in seeds], data, expert_cfg, seeds=seeds, device=device,
                augment=augment, on_snapshot=[snapshot_to(w) for w in writers],
                on_epoch=[epoch_event(i) for i in group],
                should_stop=(cancel.is_set if cancel is not None else None))
        except TrainingStopped:
            status = "cancelled"
            sink.emit(events.Warning(message=f"expert(s) {', '.join(map(str, group))} stopped before their last "
                                             "epoch; they will be trained again from their seeds on --resume"))
            break
        for expert_id, writer, history in zip(group, writers, histories):
            writer.finish()
            trained.append(expert_id)
            accuracy[expert_id] = history[-1]
            sink.emit(events.Checkpoint(path=f"{redact_url(store.url)}#expert-{expert_id}", iteration=expert_id))
    if announce:
        sink.emit(events.RunFinished(status=status, summary={"trained": trained, "skipped": sorted(done & set(wanted)),
                                                             "final_accuracy": accuracy}))
    return ExpertsResult(status=status, trained=tuple(trained), skipped=tuple(sorted(done & set(wanted))),
                         final_accuracy=accuracy)
