"""The ``prepare`` service: convert real images once into a class-sorted on-disk store.

``prepare(src, dest, sources=...)`` opens the source (Downsampled-ImageNet batches, an
ImageFolder tree, Tiny-ImageNet: the :class:`~tesla.domain.ports.PrepareSources` port
detects the layout) and drives the prepared store's writer task by task. Between tasks it
publishes :class:`~tesla.domain.events.Progress` events (done / total over the whole job,
so a watcher can show an ETA) and asks ``should_stop``; stopping, a crash or Ctrl-C all
leave a store that the same call resumes, and the resumed store equals an uninterrupted
one array for array. The CLI (``tesla data prepare``) and the TUI only call this.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import attrs

from tesla.domain import events as ev
from tesla.domain.errors import PrepareError
from tesla.domain.ports import EventSink, ImageSourceInfo, NullSink, PreparedOutput, PrepareSources
from tesla.domain.urls import redact_url

__all__ = ["PrepareError", "PreparedSummary", "prepare"]


@attrs.frozen
class PreparedSummary:
    """What a ``prepare`` call did.

    Attributes:
        dest: the store written. source: the source folder. format: its detected layout.
        complete: the store is finished (False when stopped early: re-run to resume).
        resumed: an earlier unfinished run was continued. already_complete: nothing to do.
        tasks_done / tasks_total: work units finished (including earlier runs) / in all.
        mean, std: per-channel statistics of the training images in [0, 1] (when complete).
    """

    dest: str
    source: str
    format: str
    num_classes: int
    num_train: int
    num_test: int
    image_size: int
    complete: bool
    resumed: bool = False
    already_complete: bool = False
    tasks_done: int = 0
    tasks_total: int = 0
    seconds: float = 0.0
    mean: tuple = attrs.field(default=(), converter=tuple)
    std: tuple = attrs.field(default=(), converter=tuple)


def prepare(
    src: str | Path,
    dest: str,
    *,
    sources: PrepareSources,
    fmt: Optional[str] = None,
    image_size: int = 64,
    chunk: int = 1024,
    sink: Optional[EventSink] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    block: Optional[int] = None,
) -> PreparedSummary:
    """Convert ``src`` into a prepared store at ``dest`` (or resume / confirm one).

    Args:
        src: source folder. dest: ``.h5``/``.hdf5`` file, Zarr directory or fsspec URL.
        sources: opens the source and the destination store.
        fmt: ``imagenet64`` | ``imagefolder`` | ``tiny-imagenet``; detected when None.
        image_size: side S of the stored images. chunk: images per chunk along N.
        sink: receives RunStarted, Progress (per task), RunFinished (and Error on failure).
        should_stop: asked between tasks; True stops cleanly (re-run to resume).
        block: images per in-memory sort (default ``8 * chunk``): bounds the peak memory.

    Returns:
        :class:`PreparedSummary` (``complete`` False when stopped early).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise PrepareError(f"image_size must be an integer >= 1 (got {image_size!r})")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise PrepareError(f"chunk must be an integer >= 1 (got {chunk!r})")
    sink = sink or NullSink()
    should_stop = should_stop or (lambda: False)
    started = time.monotonic()
    source = sources.open(src, fmt, image_size)
    try:
        writer = sources.writer(str(dest), source, chunk=chunk, block=block)
        try:
            return _drive(writer, source, str(src), str(dest), sink, should_stop, started)
        finally:
            writer.close()
    finally:
        source.close()


def _drive(writer: PreparedOutput, source: ImageSourceInfo, src: str, dest: str, sink: EventSink,
           should_stop: Callable[[], bool], started: float) -> PreparedSummary:
    tasks = writer.tasks()
    done = sum(writer.is_done(t) for t in tasks)
    config = {"src": os.path.abspath(src) if "://" not in src else src, "dest": dest,
              "format": source.format, **{k: writer.plan[k] for k in ("image_size", "chunk", "block")}}
    sink.emit(ev.RunStarted(job="prepare", config=config, total=len(tasks)))
    # Where the job stands before any work (non-zero when resuming): watchers start from here.
    sink.emit(ev.Progress(label="prepare", done=done, total=len(tasks)))

    def summary(complete: bool, info: Optional[dict] = None) -> PreparedSummary:
        info = info or {}
        return PreparedSummary(
            dest=redact_url(dest), source=redact_url(writer.plan["source"]), format=source.format, num_classes=writer.num_classes,
            num_train=writer.plan["counts"]["train"], num_test=writer.plan["counts"]["test"],
            image_size=writer.plan["image_size"],
            complete=complete, resumed=writer.resumed, already_complete=writer.already_complete, tasks_done=done,
            tasks_total=len(tasks), seconds=time.monotonic() - started,
            mean=info.get("mean", ()), std=info.get("std", ()),
        )

    try:
        for task in tasks:
            if writer.is_done(task):
                continue
            if should_stop():
                result = summary(False)
                sink.emit(ev.RunFinished(status="cancelled", summary=attrs.asdict(result)))
                return result
            writer.run(task)
            done += 1
            sink.emit(ev.Progress(label=task.label, done=done, total=len(tasks)))
        result = summary(True, writer.finalize())
    except BaseException as exc:  # a crash or Ctrl-C: say so, leave the store resumable
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        sink.emit(ev.Error(message=f"prepare stopped: {type(exc).__name__}: {exc}; re-run to resume"))
        sink.emit(ev.RunFinished(status=status, summary={"dest": dest, "tasks_done": done, "tasks_total": len(tasks)}))
        raise
    sink.emit(ev.RunFinished(status="completed", summary=attrs.asdict(result)))
    return result
