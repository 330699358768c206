"""A distillation run on disk: from a request (paths, configs) to a ready job, on one
process or on every rank of a ``torchrun`` job.

:func:`prepare_distillation` does every check and every open before any work (stores,
data, the student network, the run directory, the configs), so a bad argument fails in
a second with one line and writes nothing; it returns a :class:`PreparedRun` whose
``job(sink, cancel)`` the CLI runs under a progress bar or the TUI. What it opens and
builds it asks of a :class:`~tesla.domain.ports.DistillParts`, which the composition
root (``tesla.app.bootstrap``) implements; this module imports no framework.

The run directory holds (:mod:`tesla.domain.rundir`)::

    config.json        the configs that made the run
    events.jsonl       the event log (the TUI and scripts follow it)
    synthetic.zarr|h5  checkpoints and the final set, with provenance
    images/            pictures of the final set (un-whitened, upscaled, named, real images beside)

Ranks (``tesla`` engine). Pass 1 of an iteration is cheap and deterministic, and every
rank draws the same expert, start epoch, batches and augmentation seeds from the same
seeded RNG, so every rank runs pass 1 whole; pass 2 (one double-backward graph per
step, the expensive part) is split by step and the data gradients are summed, so every
rank applies the same update and holds the same images. Every rank opens and checks
the inputs (a failure on any rank stops all of them with one message); rank 0 alone
creates the run directory and the store, and writes checkpoints, the set, the images
and events. What the other ranks do instead is a :class:`Follower`, chosen once: a
store that reads checkpoints and writes nothing, no gauges, no evaluation, a null sink.
Cancellation is agreed (:class:`AgreedCancel`), so all ranks stop after the same
iteration and the checkpoint is consistent.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import attrs

from tesla.app.services.distill import (RESUMABLE_CHANGES, Cadence, DistillRun, check_inputs, check_resumable, distill,
                                        no_evaluation)
from tesla.domain.config import ConfigError, DataConfig, DistillConfig, EvalConfig, ModelConfig, from_dict, to_dict
from tesla.domain.data import recorded_data_config as data_config_from_store
from tesla.domain.engines import from_config
from tesla.domain.errors import DistillError, StoreError
from tesla.domain.footprint import check_fits, distill_footprint
from tesla.domain.identity import check_same_trajectories, trajectory_identity
from tesla.domain.ports import (Cancel, DataSource, DistillParts, EventSink, Evaluator, Gauges, Held, NoGauges,
                                NullSink, Ranks, RunFiles, SetStore, Student, Trajectories)
from tesla.domain.records import Checkpoint, FinalSet
from tesla.domain.resume import resumed_distill, resumed_value
from tesla.domain.rundir import (IMAGES, RUN_CONFIG, check_run_dir, check_set_format, make_run_dir, read_config,
                                 record_config)
from tesla.domain.urls import is_remote, local_path, redact_json, redact_url


@attrs.frozen
class DistillRequest:
    """A distillation as asked for.

    On ``resume`` with a run recorded in ``out`` the run's settings are used
    (:func:`resumed_request`): ``typed`` names what the user typed (DistillConfig fields,
    and ``trajectories``, ``dataset``, ``data``, ``set_name``, ``store_url``; None: all
    of it, as a script that builds the whole request means it), ``preset`` the preset
    typed; ``trajectories`` may then be None.
    """

    trajectories: Optional[str]
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
    typed: Optional[frozenset] = None
    preset: Optional[str] = None

    @property
    def set_url(self) -> str:
        return str(self.store_url) if self.store_url else str(Path(self.out) / self.set_name)


@attrs.frozen
class PreparedRun:
    job: Callable[[Any, threading.Event], Any]
    run_dir: Path
    model: ModelConfig
    data: DataConfig
    config: dict


@attrs.frozen
class Inputs:
    """What every rank opens and checks before any work."""

    trajectories: Trajectories
    model: ModelConfig
    data_cfg: DataConfig
    data: DataSource
    student: Student
    identity: Optional[dict] = None  # the trajectories' URL and fingerprint (tesla.domain.identity)


class NoLock:
    """What ranks other than 0 hold of the run directory: nothing (rank 0 locks it)."""

    def release(self) -> None:
        return None


class AgreedCancel:
    """A cancel flag that every rank reads the same: set when any rank's own flag is set.

    ``is_set`` is a collective on several ranks (one scalar all-reduce), so every rank
    must call it the same number of times; the distillation loop does (once per
    iteration, on every rank, because all ranks follow the same control flow).
    """

    def __init__(self, local: Optional[Cancel], ranks: Ranks) -> None:
        self.local = local or threading.Event()
        self.ranks = ranks

    def set(self) -> None:
        self.local.set()

    def is_set(self) -> bool:
        return self.ranks.any(self.local.is_set())


class FollowerStore:
    """The synthetic store as ranks other than 0 see it: they read the latest checkpoint
    (on ``--resume``) and write nothing (rank 0 writes).

    Args:
        open_reader: opens the store for reading (StoreError while it does not exist).
    """

    def __init__(self, open_reader: Callable[[], SetStore]) -> None:
        self.open_reader = open_reader

    def last_checkpoint(self) -> Optional[Checkpoint]:
        try:
            store = self.open_reader()
        except StoreError:
            return None
        try:
            return store.last_checkpoint()
        finally:
            store.close()

    def save_checkpoint(self, checkpoint: Checkpoint) -> str:
        return ""

    def save_set(self, final: FinalSet) -> str:
        return ""

    def close(self) -> None:
        return None


class Role(Protocol):
    """What differs between rank 0 and the other ranks of a run, chosen once."""

    store: SetStore
    run_dir: Path
    gauges: Gauges

    def sink(self, sink: Optional[EventSink]) -> EventSink:
        """Where this rank's events go."""

    def evaluator(self, inputs: Inputs, sink: EventSink) -> Evaluator:
        """What scores the set during the run on this rank."""

    def completed(self, data: Optional[DataSource] = None) -> None:
        """What this rank does after a completed run (the pictures of the set, with real
        images of ``data`` beside them)."""


@attrs.frozen
class Writer:
    """Rank 0 (or the only process): it writes, shows and evaluates."""

    parts: DistillParts
    store: SetStore
    run_dir: Path
    gauges: Gauges
    req: DistillRequest

    def sink(self, sink: Optional[EventSink]) -> EventSink:
        return sink or NullSink()

    def evaluator(self, inputs: Inputs, sink: EventSink) -> Evaluator:
        """Fewer, shorter networks than the final protocol, beside random real images."""
        if not self.req.eval_every:
            return no_evaluation
        cfg = EvalConfig(num_models=self.req.eval_models, epochs=self.req.eval_epochs)
        return self.parts.evaluator(inputs.data, inputs.model, cfg, self.req.cfg.ipc, sink)

    def completed(self, data: Optional[DataSource] = None) -> None:
        self.parts.export_images(self.store, Path(self.run_dir) / IMAGES, data)


@attrs.frozen
class Follower:
    """Any other rank: it computes its share and the same update, and nothing else."""

    store: SetStore
    run_dir: Path
    gauges: Gauges = NoGauges()

    def sink(self, sink: Optional[EventSink]) -> EventSink:
        return NullSink()

    def evaluator(self, inputs: Inputs, sink: EventSink) -> Evaluator:
        return no_evaluation  # the others wait for rank 0 in the next collective

    def completed(self, data: Optional[DataSource] = None) -> None:
        return None


def resumed_request(req: DistillRequest, files: RunFiles) -> DistillRequest:
    """The request as it runs: on ``--resume`` of a run recorded in ``req.out``, the run's
    settings (``config.json``) with the typed resumable changes (:mod:`tesla.domain.resume`);
    otherwise the request as it is, which must name the trajectories."""
    recorded = read_config(files, Path(req.out)) if req.resume else None
    if recorded is None:
        if req.trajectories is None:
            where = f"{req.out} holds no run to resume (no {RUN_CONFIG}): " if req.resume else ""
            raise DistillError(f"{where}pass --trajectories (-t), the trajectory store made by `tesla experts`")
        return req
    typed = req.typed
    given = (lambda name: getattr(req, name)) if typed is None else (
        lambda name: getattr(req, name) if name in typed else None)
    distill_fields = None if typed is None else {k for k in typed if k in DISTILL_FIELDS}
    cfg = from_dict(DistillConfig, resumed_distill(recorded.get("distill", {}), to_dict(req.cfg), distill_fields,
                                                   resumable=RESUMABLE_CHANGES, preset=req.preset))
    data = recorded.get("data") or {}
    # experts given from another place resume when they are the same experts: the recorded
    # identity (fingerprint) is checked against the store once it is open
    trajectories = resumed_value("--trajectories", recorded.get("trajectories"), given("trajectories"),
                                 same=_same_place(recorded.get("trajectories"), given("trajectories"))
                                 or bool(recorded.get("trajectory_identity")))
    if trajectories is None:
        raise DistillError(f"{req.out}/{RUN_CONFIG} records no trajectory store: pass --trajectories (-t)")
    store_url = resumed_value("--store", recorded.get("store"), given("store_url"),
                              same=_same_place(recorded.get("store"), given("store_url")))
    # a typed --format that is not the run's is refused by the run directory's check
    # (check_set_format: it names the format to resume with)
    set_name = given("set_name") or recorded.get("set") or _existing_set(files, Path(req.out))
    return attrs.evolve(req, cfg=cfg, trajectories=trajectories, store_url=store_url,
                        set_name=set_name or req.set_name,
                        dataset=resumed_value("--dataset", data.get("name"), given("dataset")),
                        data=resumed_value("--data", data.get("root"), given("data"),
                                           same=_same_place(data.get("root"), given("data"))))


DISTILL_FIELDS = frozenset(a.name for a in attrs.fields(DistillConfig))
SET_FILES = ("synthetic.zarr", "synthetic.h5")


def _existing_set(files: RunFiles, out: Path) -> Optional[str]:
    """The synthetic store an older run directory holds (its config did not name it)."""
    found = [name for name in SET_FILES if files.kind(out / name) != "missing"]
    return found[0] if len(found) == 1 else None


def _same_place(recorded: Optional[str], given: Optional[str]) -> bool:
    """``given`` names the recorded store or folder: the same URL once its credentials
    are left out (the record never holds them), or one local path spelt two ways."""
    if recorded is None or given is None:
        return False
    if redact_url(given) == recorded:
        return True
    if is_remote(recorded) or is_remote(given):
        return False
    return os.path.normpath(os.path.abspath(local_path(recorded))) == os.path.normpath(
        os.path.abspath(local_path(given)))


def open_inputs(req: DistillRequest, parts: DistillParts) -> Inputs:
    """Open the trajectories and the data, build the student, and check that they fit."""
    cfg = req.cfg
    if parts.ranks.shard[1] > 1 and cfg.engine != "tesla":
        raise DistillError(f"engine {cfg.engine!r} cannot split its steps across processes: use --engine tesla")
    trajectories = parts.open_trajectories(req.trajectories)
    model_cfg = from_dict(ModelConfig, dict(trajectories.meta.model))
    data_cfg = data_config_from_store(trajectories.meta.dataset, req.dataset, req.data)
    data = parts.load_data(data_cfg)
    check_fits(distill_footprint(cfg, model_cfg, trajectories.meta.num_params), parts.memory)  # before allocating
    student = parts.student(model_cfg, cfg)
    experts = check_inputs(cfg, model_cfg, data, trajectories, student.num_params)
    identity = trajectory_identity(req.trajectories, trajectories.fingerprint(), len(experts))
    return Inputs(trajectories=trajectories, model=model_cfg, data_cfg=data_cfg, data=data, student=student,
                  identity=identity)


def run_config(req: DistillRequest, inputs: Inputs, world: int) -> dict:
    """What ``config.json`` and ``RunStarted`` record (URLs without credentials)."""
    config = {"distill": to_dict(req.cfg), "model": to_dict(inputs.model), "data": to_dict(inputs.data_cfg),
              "trajectories": redact_url(req.trajectories)}
    if req.store_url:
        config["store"] = redact_url(req.set_url)
    else:
        config["set"] = req.set_name
    if inputs.identity:
        config["trajectory_identity"] = dict(inputs.identity)
    if world > 1:
        config["distributed"] = {"world": world}
    return config


def provenance(req: DistillRequest, inputs: Inputs) -> dict:
    """What the finished set records about where it came from."""
    normalizer = inputs.data.normalizer
    return redact_json({"trajectories": redact_url(req.trajectories), "dataset": to_dict(inputs.data_cfg),
                        "class_names": list(inputs.data.class_names or []),
                        "normalizer_state": normalizer.to_state() if normalizer is not None else None})


def check_request(req: DistillRequest) -> None:
    """Refuse, before anything is opened, the request values the configs do not hold
    (ConfigError naming the option): the cadences, and the evaluation networks of a run
    that evaluates as it goes."""
    for option, value in (("--preview-every", req.preview_every), ("--eval-every", req.eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{option} must be an integer >= 0 (0: never), got {value!r}")
    if req.eval_every:
        EvalConfig(num_models=req.eval_models, epochs=req.eval_epochs)  # its validators name the field


def open_output(req: DistillRequest, parts: DistillParts, config: dict,
                identity: Optional[dict] = None) -> tuple[Path, SetStore, Held]:
    """The run directory, its writer lock (held until the job ends) and the synthetic
    store (rank 0). Every refusal comes before anything is written: the directory's
    (a file, a store, a run there without ``--resume``, another run's config, the other
    ``--format``), then a second process on the same directory (the lock, naming its
    pid), then the store's (checkpoints without ``--resume``; with it, other settings or
    other trajectories). ``config.json`` is written last, so a refused first attempt
    leaves none; a ``--store`` elsewhere is checked before the directory is made."""
    files, run_dir = parts.files, Path(req.out)
    check_run_dir(files, run_dir, config, resume=req.resume, compare_keys=("model", "data"))
    if not req.store_url:
        check_set_format(files, run_dir, req.set_name)
    lock = files.lock(run_dir)
    try:
        if not req.store_url:
            make_run_dir(files, run_dir)
        store = parts.open_set_store(req.set_url, write=True)
        try:
            _check_store(req, store, identity)
        except BaseException:
            store.close()
            raise
        if req.store_url:
            make_run_dir(files, run_dir)
        if files.kind(run_dir / RUN_CONFIG) == "missing" or (req.resume and _config_changed(files, run_dir, config)):
            record_config(files, run_dir, config)  # on --resume: what a later --resume continues with
    except BaseException:
        lock.release()
        raise
    return run_dir, store, lock


def _config_changed(files: RunFiles, run_dir: Path, config: dict) -> bool:
    """Whether ``config`` (as it would be written: redacted, through JSON) differs from
    the recorded one; an unchanged record is not rewritten (a resume on a full disk then
    writes nothing before its first checkpoint)."""
    return read_config(files, run_dir) != json.loads(json.dumps(redact_json(config)))


def _check_store(req: DistillRequest, store: SetStore, identity: Optional[dict]) -> None:
    """A store that already holds checkpoints is refused without ``--resume``, and with it
    when they were made with other settings or from other trajectories."""
    last = store.last_checkpoint()
    if last is None:
        return
    if not req.resume:
        raise DistillError(f"{redact_url(req.set_url)} already holds checkpoints: pass --resume or choose another "
                           + ("--store" if req.store_url else "--out"))
    check_resumable(req.cfg, last.attrs)  # before any work or log line
    check_same_trajectories(last.attrs.get("trajectories"), identity)


def prepare_distillation(req: DistillRequest, parts: DistillParts) -> PreparedRun:
    """Check and open everything for this rank; the job is then ``prepared.job(sink, cancel)``.

    Args:
        req: the request (paths or URLs, configs, evaluation and preview cadence).
        parts: the composition root's builders for this rank (its ranks, device and
            storage options).
    """
    ranks = parts.ranks
    req = ranks.agree(lambda: resumed_request(req, parts.files))
    check_request(req)
    inputs = ranks.agree(lambda: open_inputs(req, parts))
    config = run_config(req, inputs, ranks.shard[1])
    opened = ranks.agree(lambda: open_output(req, parts, config, inputs.identity), only_writer=True)
    lock: Held = NoLock()
    if ranks.is_writer:
        run_dir, store, lock = opened
        role: Role = Writer(parts=parts, store=store, run_dir=Path(run_dir),
                           gauges=parts.gauges(inputs.data, inputs.model, req.cfg), req=req)
    else:
        role = Follower(store=FollowerStore(lambda: parts.open_set_store(req.set_url, write=False)),
                        run_dir=Path(req.out))
    engine = from_config(req.cfg, shard=ranks.shard, layout=inputs.student.layout)  # PAD cuts at the student's layers
    cadence = Cadence(preview_every=req.preview_every, memory_every=10, eval_every=req.eval_every)
    found = provenance(req, inputs)

    def job(sink: Optional[EventSink], cancel: Optional[Cancel]) -> Any:
        sink = role.sink(sink)
        run = DistillRun(cfg=req.cfg, model=inputs.model, data=inputs.data, trajectories=inputs.trajectories,
                         store=role.store, student=inputs.student, engine=engine, ranks=ranks, gauges=role.gauges,
                         evaluator=role.evaluator(inputs, sink), cadence=cadence, resume=req.resume,
                         run_config=config, provenance=found, trajectory_identity=inputs.identity)
        result = distill(run, sink, AgreedCancel(cancel, ranks))
        if result.status == "completed":
            role.completed(inputs.data)
        return result

    def locked_job(sink: Optional[EventSink], cancel: Optional[Cancel]) -> Any:
        try:  # the run directory stays locked until the job ends, however it ends
            return job(sink, cancel)
        finally:
            lock.release()

    return PreparedRun(job=locked_job, run_dir=role.run_dir, model=inputs.model, data=inputs.data_cfg, config=config)


__all__ = [
    "AgreedCancel", "DistillRequest", "Follower", "FollowerStore", "PreparedRun", "Writer", "data_config_from_store",
    "prepare_distillation", "resumed_request",
]
