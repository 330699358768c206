"""Merging trajectory stores: every complete expert of several stores into one.

Joins the per-rank HDF5 files of a distributed ``tesla experts`` run (rank 0 does it
when it sees them all; ``tesla merge-trajectories`` does it by hand), or any stores of
the same model (HDF5 or Zarr, local or remote). Snapshots are streamed one at a time
(their checksums are verified on read and recomputed on write) and an expert is marked
complete in the destination only after its last snapshot, so an interrupted merge can
simply be run again: experts already there with the same checksum are skipped.

The stores are reached through the :class:`~tesla.domain.ports.TrajectoryStores` port.
"""

from __future__ import annotations

from typing import Optional, Sequence

import attrs

from tesla.domain import events
from tesla.domain.errors import StoreError
from tesla.domain.ports import EventSink, NullSink, TrajectoryInput, TrajectoryOutput, TrajectoryStores
from tesla.domain.urls import redact_url

# attributes the destination computes itself rather than copies
_RECOMPUTED = ("complete", "crc32", "epochs", "test_accuracy")


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


def merge_trajectory_stores(srcs: Sequence[str], dest: str, *, stores: TrajectoryStores,
                            sink: Optional[EventSink] = None) -> MergeResult:
    """Copy every complete expert of ``srcs`` into ``dest`` (created when missing), keeping ids.

    Args:
        srcs: trajectory stores to read (never modified).
        dest: the store to write; it may already hold experts.
        stores: opens them.

    Raises:
        StoreError: no source, ``dest`` among the sources, a source missing or holding
            another model/dataset, or an expert id already in ``dest`` (or an earlier
            source) with different contents.
    """
    sink = sink or NullSink()
    if not srcs:
        raise StoreError("no source stores to merge: pass at least one SRC before DEST")
    if str(dest) in {str(s) for s in srcs}:
        raise StoreError(f"{dest} is both a source and the destination: merge into a new store")
    copied: list = []
    skipped: list = []
    incomplete: list = []
    out = stores.open(str(dest))
    try:
        for src_url in srcs:
            src = stores.read(str(src_url))
            try:
                incomplete += [(str(src_url), i) for i in src.incomplete_ids()]
                _merge_one(src, str(src_url), out, str(dest), copied, skipped, sink)
            finally:
                src.close()
    finally:
        out.close()
    return MergeResult(dest=str(dest), copied=tuple(copied), skipped=tuple(skipped), incomplete=tuple(incomplete))


def _merge_one(src: TrajectoryInput, src_url: str, out: TrajectoryOutput, dest: str, copied: list, skipped: list,
               sink: EventSink) -> None:
    m = src.meta
    out.initialize(m.model, m.layout, m.num_params, m.dataset)  # refuses another model
    have = set(out.expert_ids())
    for eid in src.expert_ids():
        a = src.expert_attrs(eid)
        if eid in have:
            if out.expert_attrs(eid).get("crc32") == a.get("crc32"):
                skipped.append((src_url, eid))
                continue
            raise StoreError(f"{dest}: expert {eid} from {src_url} differs from the expert {eid} "
                             "already there: merge the stores into a new one, or leave one source out")
        copy_expert(src, out, eid, a)
        copied.append((src_url, eid))
        sink.emit(events.Checkpoint(path=f"{redact_url(dest)}#expert-{eid}", iteration=eid))


def copy_expert(src: TrajectoryInput, out: TrajectoryOutput, eid: int, attrs_: dict) -> None:
    """Stream expert ``eid`` snapshot by snapshot; complete in ``out`` only at the end."""
    keep = {k: v for k, v in attrs_.items() if k not in _RECOMPUTED}
    epochs = int(attrs_["epochs"])
    writer = out.begin_expert(eid, epochs, keep)
    for epoch in range(epochs + 1):
        writer.write(epoch, src.load(eid, epoch))  # load verifies the source checksum
    accuracy = attrs_.get("test_accuracy")
    if accuracy is not None:
        writer.set_attrs(test_accuracy=list(accuracy))
    writer.finish()

