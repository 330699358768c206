"""The composition root: configs, paths and URLs in; wired adapters and services out.

Every entry point (CLI commands, the TUI, scripts) builds what it needs here, so the
choice of adapter for a path (HDF5 for ``.h5``, Zarr for anything else, fsspec URLs),
of device, of data loader, of ranks and of event sinks is made in one place. Nothing
here runs a job; the services do, on what this module hands them: for a distillation,
:class:`TorchParts` builds the student, the stores, the data, the gauges and the
evaluator of one rank, and :func:`prepare_distillation` gives them to the run set-up
(:mod:`tesla.app.services.run`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from tesla.adapters.files import LocalRunFiles, atomic_write_text  # noqa: F401 - atomic_write_text re-exported
from tesla.domain import rundir
from tesla.domain.config import ConfigError, DataConfig, DistillConfig, EvalConfig, ModelConfig
from tesla.domain.ports import DataSource, EventSink, Evaluator, Gauges, SetStore, Student, Trajectories
from tesla.domain.rundir import EVENTS, RUN_CONFIG  # noqa: F401 - re-exported: the run directory's names
from tesla.domain.urls import options_for


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is refused clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA device is available: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device: use auto, cpu or cuda[:N]") from None


def default_cache_dir() -> Path:
    """Where fitted transforms (ZCA) are cached: ``$TESLA_CACHE`` or ``~/.cache/tesla``."""
    return Path(os.environ.get("TESLA_CACHE", Path.home() / ".cache" / "tesla"))


def load_data(cfg: DataConfig, *, cache_dir: Optional[str] = None, storage_options: Optional[dict] = None) -> Any:
    """The DataSource for ``cfg`` (in memory for demo/CIFAR, on disk for prepared arrays).

    A fitted ZCA is cached under :func:`default_cache_dir` (keyed by a hash of the pixels), so the
    3072x3072 decomposition of CIFAR is done once, not by every command."""
    if cfg.name == "demo":
        from tesla.adapters.data.demo import load_demo

        return load_demo(zca=cfg.zca)
    if cfg.name in ("cifar10", "cifar100"):
        from tesla.adapters.data.cifar import load_cifar

        return load_cifar(cfg.root, name=cfg.name, zca=cfg.zca,
                          cache_dir=cache_dir or str(default_cache_dir() / "zca"))
    if cfg.name == "prepared":
        from tesla.adapters.data.prepared import open_prepared

        return open_prepared(cfg.root, storage_options=storage_options)
    raise ConfigError(f"dataset {cfg.name!r} is read through a prepared array store: run "
                      f"`tesla data prepare {cfg.root} DEST` once, then pass --dataset prepared --data DEST")


def open_trajectories(url: str, mode: str = "r", storage_options: Optional[dict] = None) -> Any:
    from tesla.adapters.stores.trajectory import open_trajectory_store

    return open_trajectory_store(str(url), mode, storage_options=storage_options)


def open_synthetic(url: str, mode: str = "r", storage_options: Optional[dict] = None) -> Any:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    return open_synthetic_store(str(url), mode, storage_options=storage_options)


def prepare_run_dir(run_dir: Path, config: dict, *, resume: bool, compare_keys: tuple = ()) -> Path:
    """:func:`tesla.domain.rundir.prepare_run_dir` on local files."""
    return rundir.prepare_run_dir(LocalRunFiles(), run_dir, config, resume=resume, compare_keys=compare_keys)


def event_sinks(run_dir: Optional[Path], *, quiet: bool = False, json_mode: bool = False, progress: bool = True,
                tensorboard: Optional[str] = None):
    """(sink, closers): the run's JSON-lines log (when ``run_dir``), the terminal display,
    and TensorBoard when asked for; ``closers`` are called when the job ends."""
    from tesla.adapters.events.jsonl import JsonlSink
    from tesla.adapters.events.progress import RichProgressSink
    from tesla.domain.ports import FanOut

    sinks, closers = [], []
    if run_dir is not None:
        log = JsonlSink(Path(run_dir) / EVENTS)
        sinks.append(log)
        closers.append(log.close)
    if progress:
        term = RichProgressSink(quiet=quiet, json_mode=json_mode)
        term.start()
        sinks.append(term)
        closers.insert(0, term.stop)
    if tensorboard:
        from tesla.adapters.events.tensorboard import TensorBoardSink

        tb = TensorBoardSink(tensorboard)
        sinks.append(tb)
        closers.append(tb.close)
    return FanOut(*sinks), closers


def check_tensorboard() -> None:
    """Refuse ``--tensorboard`` before any work when the package is missing."""
    from tesla.adapters.events.tensorboard import TensorBoardUnavailable, available

    if not available():
        raise TensorBoardUnavailable("TensorBoard is not installed: pip install tensorboard "
                                     "(or tesla-distill[tensorboard]), or drop --tensorboard")


# --- distillation -----------------------------------------------------------------------


@contextlib.contextmanager
def process_context(device: str, distributed: bool) -> Iterator[Any]:
    """This process's :class:`~tesla.adapters.torch.dist.DistContext` for the ``with``
    block: one rank of the ``torchrun`` job (``distributed``), or a plain process on
    ``device``."""
    from tesla.adapters.torch.dist import process_group, single_process

    if not distributed:
        yield single_process(resolve_device(device))
        return
    with process_group(device) as ctx:
        yield ctx


def reported_to_all_ranks(error: BaseException) -> bool:
    """An error every rank of the job knows of (rank 0 reports it; the others leave quietly)."""
    from tesla.adapters.torch.dist import is_reported

    return is_reported(error)


class RunEvaluator:
    """Scores the set during a run: fewer, shorter networks than the final protocol, and
    the random-real reference once, on the first call."""

    def __init__(self, data: DataSource, model_cfg: ModelConfig, cfg: EvalConfig, ipc: int, device: Any,
                 sink: EventSink) -> None:
        self.data, self.model_cfg, self.cfg, self.ipc = data, model_cfg, cfg, ipc
        self.device, self.sink = device, sink
        self.baseline_done = False

    def __call__(self, state: Any, iteration: int) -> None:
        from tesla.app.services.evaluate import random_real_scores, train_many

        train_many(state.images.detach(), state.current_labels(), self.data, model_cfg=self.model_cfg, cfg=self.cfg,
                   lr=state.lr_value, subject="synthetic", device=self.device, sink=self.sink, iteration=iteration)
        if not self.baseline_done:
            random_real_scores(self.data, self.ipc, model_cfg=self.model_cfg, cfg=self.cfg, device=self.device,
                               sink=self.sink, iteration=iteration)
            self.baseline_done = True


class TorchParts:
    """What one rank's distillation is made of, on torch and the stores
    (:class:`~tesla.domain.ports.DistillParts`).

    Args:
        ctx: this rank's :class:`~tesla.adapters.torch.dist.DistContext` (its device, and
            its group when there are several ranks).
        storage_options: fsspec options; they go to whichever URLs are remote.
    """

    def __init__(self, ctx: Any, storage_options: Optional[dict] = None) -> None:
        from tesla.adapters.torch.ranks import ranks_of

        self.ctx = ctx
        self.device = ctx.device
        self.ranks = ranks_of(ctx)
        self.files = LocalRunFiles()
        self.storage_options = storage_options

    def open_trajectories(self, url: str) -> Trajectories:
        return open_trajectories(url, "r", options_for(url, self.storage_options))

    def load_data(self, cfg: DataConfig) -> DataSource:
        return load_data(cfg, storage_options=options_for(cfg.root or "", self.storage_options))

    def student(self, model_cfg: ModelConfig, cfg: DistillConfig) -> Student:
        from tesla.adapters.torch.student import TorchStudent

        return TorchStudent(model_cfg, cfg, self.device)

    def gauges(self, data: DataSource, model_cfg: ModelConfig, cfg: DistillConfig) -> Gauges:
        from tesla.adapters.torch.student import TorchGauges

        decode = data.normalizer.decode if data.normalizer is not None else None
        return TorchGauges(self.device, decode, cfg.ipc, model_cfg.num_classes)

    def open_set_store(self, url: str, *, write: bool) -> SetStore:
        from tesla.adapters.stores.set_store import SyntheticSetStore

        return SyntheticSetStore(open_synthetic(url, "a" if write else "r", options_for(url, self.storage_options)))

    def evaluator(self, data: DataSource, model_cfg: ModelConfig, cfg: EvalConfig, ipc: int,
                  sink: EventSink) -> Evaluator:
        return RunEvaluator(data, model_cfg, cfg, ipc, self.device, sink)

    def export_images(self, store: Any, folder: Path) -> None:
        from tesla.adapters.stores.export import default_decode, export_png_grid

        syn = store.read_set()
        export_png_grid(syn, str(folder), decode=default_decode(syn))


def prepare_distillation(request: Any, ctx: Any = None) -> Any:
    """Check and open everything for one rank (``ctx``; None: one process on the
    request's device); the job is then ``prepared.job(sink, cancel)``.

    See :func:`tesla.app.services.run.prepare_distillation`.
    """
    from tesla.adapters.torch.dist import single_process
    from tesla.app.services.run import prepare_distillation as prepare

    if ctx is None:
        ctx = single_process(resolve_device(request.device))
    return prepare(request, TorchParts(ctx, request.storage_options))


def run_distillation(request: Any) -> Any:
    """:func:`prepare_distillation` in one process."""
    return prepare_distillation(request, None)


def distill_in_process(*, cfg: DistillConfig, model_cfg: ModelConfig, data: DataSource, trajectories: Trajectories,
                       store: Any, sink: Optional[EventSink] = None, device: Any = "cpu", cancel: Any = None,
                       resume: bool = False, run_config: Optional[dict] = None, decode: Optional[Callable] = None,
                       preview_every: int = 0, memory_every: int = 10, evaluator: Optional[Evaluator] = None,
                       eval_every: int = 0, provenance: Optional[dict] = None, ctx: Any = None) -> Any:
    """One distillation on data and stores the caller opened (scripts, the demo, tests).

    Args:
        cfg, model_cfg: the run's configs.
        data, trajectories: an open data source and trajectory store.
        store: an open :class:`~tesla.adapters.stores.synthetic.SyntheticStore` (mode ``a``).
        decode: model-space images to [0, 1]; previews are sent every ``preview_every``
            iterations when it is given.
        evaluator: ``evaluator(state, iteration)`` every ``eval_every`` iterations.
        ctx: this rank's DistContext in a ``torchrun`` job (None: one process). Ranks
            other than 0 read ``store``'s checkpoints but write nothing.

    Returns:
        the :class:`~tesla.app.services.distill.DistillResult`.
    """
    from tesla.adapters.stores.set_store import SyntheticSetStore
    from tesla.adapters.torch.ranks import ranks_of
    from tesla.adapters.torch.student import TorchGauges, TorchStudent
    from tesla.app.services import distill as service
    from tesla.app.services.run import FollowerStore
    from tesla.domain.engines import from_config

    ranks = ranks_of(ctx)
    url = store.url
    run_store: SetStore = SyntheticSetStore(store)
    if not ranks.is_writer:
        run_store = FollowerStore(lambda: SyntheticSetStore(open_synthetic(url, "r")))
    run = service.DistillRun(
        cfg=cfg, model=model_cfg, data=data, trajectories=trajectories, store=run_store,
        student=TorchStudent(model_cfg, cfg, device),
        engine=from_config(cfg, shard=ranks.shard), ranks=ranks,
        gauges=TorchGauges(device, decode, cfg.ipc, model_cfg.num_classes),
        evaluator=evaluator or service.no_evaluation,
        cadence=service.Cadence(preview_every=preview_every, memory_every=memory_every, eval_every=eval_every),
        resume=resume, run_config=run_config, provenance=provenance or {})
    return service.distill(run, sink, cancel)
