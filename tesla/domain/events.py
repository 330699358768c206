"""Events: the contract between a running job and whoever watches it.

Services publish these frozen records to an :class:`~tesla.domain.ports.EventSink`
and know nothing of terminals, files or plots. Each record turns into one JSON object
(``to_json``) with ``type``, ``time``, ``schema`` and its fields, and back
(``from_json``), so the JSON-lines log, the TUI and scripts share one vocabulary. A
reader meeting an unknown ``type`` (a newer writer) gets an :class:`UnknownEvent` and
can say what it skipped.
"""

from __future__ import annotations

import time as _time
from typing import Any, Optional

import attr
import attrs

SCHEMA = 1


def _now() -> float:
    return _time.time()


@attrs.frozen
class RunStarted:
    """A job began. ``job`` is experts | distill | evaluate | prepare | bench."""

    job: str
    config: dict
    run_dir: Optional[str] = None
    total: Optional[int] = None  # iterations / epochs / items the job will do
    time: float = attrs.field(factory=_now)
    type: str = "run_started"


@attrs.frozen
class Iteration:
    """One distillation iteration finished.

    Run health (:mod:`tesla.domain.health`; absent from logs written before it, which
    read with the defaults): ``agreement`` is the fraction of synthetic images whose
    label argmax is their own class and ``label_entropy`` the mean label entropy in nats,
    both None for hard labels (not measured: class ids name their classes);
    ``low_agreement`` and ``stalled`` count the iterations in a row that the labels have
    been below ``min_label_agreement`` and that the run has looked stalled.
    """

    iteration: int
    total: int
    loss: float
    lr: float
    expert: int
    start_epoch: int
    seconds: float
    grad_norm: Optional[float] = None
    agreement: Optional[float] = None
    label_entropy: Optional[float] = None
    low_agreement: int = 0
    stalled: int = 0
    time: float = attrs.field(factory=_now)
    type: str = "iteration"


@attrs.frozen
class Epoch:
    """One epoch of expert (or evaluation) training finished."""

    expert: int
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    test_acc: Optional[float]
    seconds: float
    time: float = attrs.field(factory=_now)
    type: str = "epoch"


@attrs.frozen
class Memory:
    """A memory sample, bytes. Device figures are None on CPU."""

    device_allocated: Optional[int]
    device_peak: Optional[int]
    host_rss: int
    iteration: Optional[int] = None
    time: float = attrs.field(factory=_now)
    type: str = "memory"


@attrs.frozen
class Evaluation:
    """Accuracy of networks trained on a set: mean and std (percent) over ``n`` networks.

    ``subject`` says what was trained on: ``synthetic``, ``random-real`` (same IPC) or
    ``full-real``, with a variant after a space where the evaluation trains the same
    subject more than one way (``synthetic hard``, ``random-real no-aug``).
    ``protocol`` names how the networks were trained (``mtt``, ``relabel``; None in logs
    written before it was recorded).
    """

    model: str
    subject: str
    mean: float
    std: float
    n: int
    iteration: Optional[int] = None
    accuracies: tuple = attrs.field(default=(), converter=tuple)
    protocol: Optional[str] = None
    time: float = attrs.field(factory=_now)
    type: str = "evaluation"


@attrs.frozen
class Checkpoint:
    """A checkpoint (or a finished expert) was written completely."""

    path: str
    iteration: int
    time: float = attrs.field(factory=_now)
    type: str = "checkpoint"


@attrs.frozen
class Preview:
    """A small grid of the current synthetic images: ``pixels`` is (rows, cols, 3) uint8
    as nested lists, a few images per class, already un-whitened."""

    iteration: int
    pixels: list
    per_class: int
    time: float = attrs.field(factory=_now)
    type: str = "preview"


@attrs.frozen
class Progress:
    """Generic progress of a long step (data preparation, benchmarks, soft labels)."""

    label: str
    done: int
    total: Optional[int]
    time: float = attrs.field(factory=_now)
    type: str = "progress"


@attrs.frozen
class Warning:  # noqa: A001 - an event name, not the builtin
    message: str
    iteration: Optional[int] = None
    time: float = attrs.field(factory=_now)
    type: str = "warning"


@attrs.frozen
class Error:
    message: str
    iteration: Optional[int] = None
    time: float = attrs.field(factory=_now)
    type: str = "error"


@attrs.frozen
class RunFinished:
    """A job ended. ``status`` is completed | cancelled | failed."""

    status: str
    summary: dict = attrs.field(factory=dict)
    time: float = attrs.field(factory=_now)
    type: str = "run_finished"


@attrs.frozen
class UnknownEvent:
    """A record of a type this version does not know (written by a newer version)."""

    data: dict
    type: str = "unknown"


EVENT_TYPES: dict[str, type] = {
    cls.__attrs_attrs__.type.default: cls  # type: ignore[attr-defined]
    for cls in (RunStarted, Iteration, Epoch, Memory, Evaluation, Checkpoint, Preview,
                Progress, Warning, Error, RunFinished)
}


def to_json(event: Any) -> dict:
    """JSON-ready dict of an event, with the schema version."""
    data = attr.asdict(event, retain_collection_types=False)
    data["schema"] = SCHEMA
    return data


def from_json(data: dict) -> Any:
    """Event record from :func:`to_json` output; unknown types and fields are tolerated."""
    cls = EVENT_TYPES.get(data.get("type", ""))
    if cls is None:
        return UnknownEvent(data=dict(data))
    names = {a.name for a in attrs.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
