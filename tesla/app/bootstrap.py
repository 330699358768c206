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
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch

from tesla.adapters.files import LocalRunFiles, atomic_write_text  # noqa: F401 - atomic_write_text re-exported
from tesla.domain import rundir
from tesla.domain.config import ConfigError, DataConfig, DistillConfig, EvalConfig, ModelConfig
from tesla.domain.ports import DataSource, EventSink, Evaluator, Gauges, SetStore, Student, Trajectories
from tesla.domain.rundir import EVENTS, RUN_CONFIG  # noqa: F401 - re-exported: the run directory's names
from tesla.domain.urls import options_for

if TYPE_CHECKING:
    from tesla.app.services.evaluate import EvaluateRequest, PreparedEvaluation
    from tesla.app.services.experts import ExpertsPorts, ExpertsRequest, ExpertsResult, PreparedExperts
    from tesla.app.services.merge import MergeResult


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is refused clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA device is available: use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device: use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):  # meta holds no data, mps and the rest are untested
        raise ConfigError(f"device {name!r} cannot run a job: use auto, cpu or cuda[:N]")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA device(s): use cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


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


def prepare_run_dir(run_dir: Path, config: dict, *, resume: bool, compare_keys: tuple = (),
                    check_only: bool = False) -> Path:
    """:func:`tesla.domain.rundir.prepare_run_dir` on local files (only its refusals,
    :func:`~tesla.domain.rundir.check_run_dir`, with ``check_only``)."""
    if check_only:
        rundir.check_run_dir(LocalRunFiles(), run_dir, config, resume=resume, compare_keys=compare_keys)
        return Path(run_dir)
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
        log = JsonlSink(Path(run_dir) / EVENTS, on_error=warn)
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


def free_memory(device: Any = "cpu") -> Any:
    """What the machine has free for a job on ``device`` (the size checks before a job)."""
    from tesla.adapters.torch.memory import TorchFreeMemory

    return TorchFreeMemory(device)


def warn(message: str) -> None:
    """One yellow ``warning:`` line on stderr (what a job says once and goes on)."""
    from rich.console import Console
    from rich.markup import escape

    from tesla.domain.urls import redact_text

    Console(stderr=True).print(f"[yellow]warning:[/] {escape(redact_text(message))}", highlight=False,
                               soft_wrap=True)


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


# --- experts, evaluation and merging: the services with their adapters -----------------------
# Each ``*_ports`` builds the adapters a service works through; the functions after them
# are the services with those ports bound, for the CLI, the TUI, the demo and scripts.


def experts_ports(device: Any = "cpu", storage_options: Optional[dict] = None) -> "ExpertsPorts":
    """Torch training on ``device``, HDF5/Zarr stores, the data loaders, run directories."""
    import functools

    from tesla.adapters.stores.opener import TrajectoryStoreOpener
    from tesla.adapters.torch.trainers import TorchExpertTraining
    from tesla.app.services.experts import ExpertsPorts

    return ExpertsPorts(load_data=functools.partial(load_data, storage_options=storage_options),
                        stores=TrajectoryStoreOpener(storage_options), training=TorchExpertTraining(device),
                        run_dirs=prepare_run_dir, memory=free_memory(device))


def prepare_experts(request: "ExpertsRequest", *, device: str = "auto", storage_options: Optional[dict] = None,
                    ctx: Any = None, sink: Optional[EventSink] = None) -> "PreparedExperts":
    """:func:`tesla.app.services.experts.prepare_experts` on torch (one process on
    ``device``, or the torchrun rank ``ctx``, a DistContext, on its own device) and the
    real stores; the set-up's steps are said on ``sink``."""
    from tesla.adapters.torch.ranks import ranks_of
    from tesla.app.services.experts import prepare_experts as prepare

    dev = ctx.device if ctx is not None else resolve_device(device)
    return prepare(request, experts_ports(dev, storage_options), None if ctx is None else ranks_of(ctx), sink=sink)


def train_experts(*, device: Any = "cpu", **kwargs: Any) -> "ExpertsResult":
    """:func:`tesla.app.services.experts.train_experts` training with torch on ``device``."""
    from tesla.adapters.torch.trainers import TorchExpertTraining
    from tesla.app.services.experts import train_experts as train

    return train(training=TorchExpertTraining(device), **kwargs)


def distributed_experts(*, ctx: Any, storage_options: Optional[dict] = None, **kwargs: Any) -> "ExpertsResult":
    """:func:`tesla.app.services.experts.distributed_experts` for the rank ``ctx`` (a
    :class:`~tesla.adapters.torch.dist.DistContext`), training on its device."""
    from tesla.app.services.experts import distributed_experts as run

    from tesla.adapters.torch.ranks import ranks_of

    ports = experts_ports(ctx.device, storage_options)
    return run(ranks=ranks_of(ctx), stores=ports.stores, training=ports.training, **kwargs)


def merge_trajectory_stores(srcs: Any, dest: str, *, storage_options: Optional[dict] = None,
                            sink: Any = None) -> "MergeResult":
    """:func:`tesla.app.services.merge.merge_trajectory_stores` on the real stores."""
    from tesla.adapters.stores.opener import TrajectoryStoreOpener
    from tesla.app.services.merge import merge_trajectory_stores as merge

    return merge(srcs, dest, stores=TrajectoryStoreOpener(storage_options), sink=sink)


def reported_to_all_ranks(error: BaseException) -> bool:
    """Every rank knows of ``error`` (rank 0 reports it; the others may leave quietly)."""
    from tesla.adapters.torch.dist import is_reported

    return is_reported(error)


class RunEvaluator:
    """Scores the set during a run: fewer, shorter networks than the final protocol, and
    the random-real reference once, on the first call."""

    def __init__(self, data: DataSource, model_cfg: ModelConfig, cfg: EvalConfig, ipc: int, device: Any,
                 sink: EventSink, micro_batch: Optional[int] = None) -> None:
        self.data, self.model_cfg, self.cfg, self.ipc = data, model_cfg, cfg, ipc
        self.device, self.sink = device, sink
        self.micro_batch = micro_batch  # the run's (its memory budget's): evaluation stays within it
        self.baseline_done = False

    def __call__(self, state: Any, iteration: int) -> None:
        from tesla.app.services.evaluate import random_real_scores, train_many

        training = evaluation_training(self.device, micro_batch=self.micro_batch)
        train_many(state.images.detach(), state.current_labels(), self.data, model_cfg=self.model_cfg, cfg=self.cfg,
                   lr=state.lr_value, subject="synthetic", training=training, sink=self.sink, iteration=iteration)
        if not self.baseline_done:
            random_real_scores(self.data, self.ipc, model_cfg=self.model_cfg, cfg=self.cfg, training=training,
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
        self.memory = free_memory(ctx.device)
        self.micro_batch: Optional[int] = None  # set when the student is built (its memory plan)

    def open_trajectories(self, url: str) -> Trajectories:
        return open_trajectories(url, "r", options_for(url, self.storage_options))

    def load_data(self, cfg: DataConfig) -> DataSource:
        return load_data(cfg, storage_options=options_for(cfg.root or "", self.storage_options))

    def student(self, model_cfg: ModelConfig, cfg: DistillConfig) -> Student:
        from tesla.adapters.torch.student import TorchStudent

        student = TorchStudent(model_cfg, cfg, self.device)
        self.micro_batch = student.memory.micro_batch  # the in-run evaluation keeps to it
        return student

    def gauges(self, data: DataSource, model_cfg: ModelConfig, cfg: DistillConfig) -> Gauges:
        from tesla.adapters.torch.student import TorchGauges

        decode = data.normalizer.decode if data.normalizer is not None else None
        return TorchGauges(self.device, decode, cfg.ipc, model_cfg.num_classes)

    def open_set_store(self, url: str, *, write: bool) -> SetStore:
        from tesla.adapters.stores.set_store import SyntheticSetStore

        return SyntheticSetStore(open_synthetic(url, "a" if write else "r", options_for(url, self.storage_options)))

    def evaluator(self, data: DataSource, model_cfg: ModelConfig, cfg: EvalConfig, ipc: int,
                  sink: EventSink) -> Evaluator:
        return RunEvaluator(data, model_cfg, cfg, ipc, self.device, sink, self.micro_batch)

    def export_images(self, store: Any, folder: Path, data: Optional[DataSource] = None) -> None:
        _export_images(store.read_set(), folder, data)


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
    student = TorchStudent(model_cfg, cfg, device)
    run = service.DistillRun(
        cfg=cfg, model=model_cfg, data=data, trajectories=trajectories, store=run_store,
        student=student,
        engine=from_config(cfg, shard=ranks.shard, layout=student.layout), ranks=ranks,
        gauges=TorchGauges(device, decode, cfg.ipc, model_cfg.num_classes),
        evaluator=evaluator or service.no_evaluation,
        cadence=service.Cadence(preview_every=preview_every, memory_every=memory_every, eval_every=eval_every),
        resume=resume, run_config=run_config, provenance=provenance or {})
    return service.distill(run, sink, cancel)


def evaluation_training(device: Any = "cpu", parallel: Optional[int] = None, micro_batch: Optional[int] = None) -> Any:
    """The evaluation networks' training on torch and ``device`` (groups of ``parallel``,
    batches in pieces of ``micro_batch``)."""
    from tesla.adapters.torch.trainers import TorchEvaluationTraining

    return TorchEvaluationTraining(device, parallel, micro_batch)


def record_evaluation(url: str, record: dict, storage_options: Optional[dict] = None) -> None:
    """Append an evaluation's record to the provenance of the set at ``url``."""
    from tesla.adapters.stores.evaluations import record_evaluation as record_in

    with open_synthetic(url, "a", options_for(url, storage_options)) as store:
        record_in(store, record)


def prepare_evaluation(request: "EvaluateRequest", *, device: str = "auto", storage_options: Optional[dict] = None,
                       parallel: Optional[int] = None, cache_dir: Optional[str] = None,
                       micro_batch: Optional[int] = None) -> "PreparedEvaluation":
    """:func:`tesla.app.services.evaluate.prepare_evaluation` on torch and the real stores:
    relabel teachers from trajectory stores or trained on the real data and cached under
    ``cache_dir`` (default ``default_cache_dir()/teachers``)."""
    import functools

    from tesla.adapters.torch.teachers import TorchTeachers
    from tesla.adapters.torch.trainers import TorchRelabelTraining
    from tesla.app.services.evaluate import EvaluatePorts
    from tesla.app.services.evaluate import prepare_evaluation as prepare

    dev = resolve_device(device)

    def read_set(url: str) -> Any:
        return open_synthetic(url, "r", storage_options).read_set()

    def open_store(url: str) -> Any:
        return open_trajectories(url, "r", options_for(url, storage_options))

    teachers = TorchTeachers(dev, cache_dir or default_cache_dir() / "teachers", open_store)
    return prepare(request, EvaluatePorts(
        read_set=read_set, training=evaluation_training(dev, parallel, micro_batch),
        load_data=functools.partial(load_data, storage_options=storage_options),
        relabel=TorchRelabelTraining(dev), teachers=teachers,
        record=functools.partial(record_evaluation, storage_options=storage_options)))


def evaluate_set(images: Any, labels: Any, learned_lr: Optional[float], data: Any, *, device: Any = "cpu",
                 **kwargs: Any) -> list:
    """:func:`tesla.app.services.evaluate.evaluate_set` training with torch on ``device``."""
    from tesla.app.services.evaluate import evaluate_set as evaluate

    return evaluate(images, labels, learned_lr, data, training=evaluation_training(device), **kwargs)


def _demo_distill(device: Any) -> Any:
    """The demo's distillation stage: a run directory like any ``tesla distill`` makes
    (config.json, synthetic.zarr, the pictures with real images beside them; resumed when
    there, so ``tesla distill -o demo-run/run --resume`` continues it), previews for the
    display."""

    def stage(cfg: Any, model: Any, data: Any, trajectories: str, run_dir: Path, sink: Any, cancel: Any) -> tuple:
        from tesla.adapters.torch.dist import single_process
        from tesla.app.services.run import DistillRequest
        from tesla.app.services.run import prepare_distillation as prepare

        request = DistillRequest(trajectories=trajectories, out=run_dir, cfg=cfg, dataset="demo", resume=True,
                                 preview_every=20)
        prepared = prepare(request, TorchParts(single_process(resolve_device(str(device)))))
        if prepared.model != model:
            raise ConfigError(f"{trajectories} holds experts of another model than the demo's: remove it")
        result = prepared.job(sink, cancel)
        syn = open_synthetic(request.set_url, "r").read_set() if result.status == "completed" else None
        return result, syn

    return stage


REAL_SAMPLE_SEED = 0  # the real images shown beside a set: the same ones every time


def _export_images(syn: Any, folder: Path, data: Optional[DataSource] = None) -> None:
    """The set's pictures (:func:`~tesla.adapters.stores.export.export_png_grid`), with
    real images of each class from ``data`` beside the distilled ones when given."""
    from tesla.adapters.stores.export import default_decode, export_png_grid

    real = None if data is None else (lambda c, n: data.sample_class(c, n, REAL_SAMPLE_SEED))
    names = list(data.class_names) if data is not None and data.class_names else None
    export_png_grid(syn, str(folder), decode=default_decode(syn), real=real, class_names=names)


def run_demo(out: Path, *, device: Any = "cpu", **kwargs: Any) -> Any:
    """:func:`tesla.app.services.demo.run_demo` on torch and ``device``, stores under ``out``."""
    from tesla.adapters.stores.opener import TrajectoryStoreOpener
    from tesla.adapters.torch.trainers import TorchExpertTraining
    from tesla.app.services.demo import DemoPorts
    from tesla.app.services.demo import run_demo as run

    from tesla.adapters.results_chart import plot_results

    ports = DemoPorts(load_data=load_data, stores=TrajectoryStoreOpener(), experts=TorchExpertTraining(device),
                      distill=_demo_distill(device), evaluation=evaluation_training(device),
                      results_chart=plot_results, files=LocalRunFiles())
    return run(out, ports=ports, **kwargs)


# --- benchmarks ---------------------------------------------------------------------------------


def bench_settings(*, model: Any, ipc: int, batch_syn: Optional[int], dsa: bool, chunk: int, seed: int, device: str,
                   threads: Optional[int], micro_batch: Optional[int] = None, set_on: str = "device") -> Any:
    """The benchmark's problem on the resolved ``device``, checked (BenchError names the option)."""
    from tesla.domain.bench import BenchSettings

    return BenchSettings(model=model, ipc=ipc, batch_syn=batch_syn, dsa=dsa, chunk=chunk, seed=seed,
                         device=str(resolve_device(device)), threads=threads, micro_batch=micro_batch,
                         set_on=set_on).check()


def memory_bench(settings: Any, *, in_process: bool = False, max_rss_gb: Optional[float] = None,
                 child_timeout: Optional[float] = None, **kwargs: Any) -> Any:
    """:func:`tesla.app.services.bench.memory_bench` measured on torch (a child process per
    CPU point unless ``in_process``)."""
    from tesla.adapters.torch.bench import TorchMemoryProbe
    from tesla.app.services.bench import memory_bench as bench

    probe = TorchMemoryProbe(in_process=in_process, max_rss_gb=max_rss_gb, child_timeout=child_timeout)
    return bench(settings, probe=probe, **kwargs)


def memory_report(result: Any, out: Path) -> dict:
    """``memory.csv`` and the matplotlib ``memory.png`` in ``out``."""
    from tesla.adapters.plots import plot_memory
    from tesla.app.services.bench import memory_report as report

    return report(result, out, plot_memory)


def speed_bench(settings: Any, **kwargs: Any) -> Any:
    """:func:`tesla.app.services.bench.speed_bench` timed on torch."""
    from tesla.adapters.torch.bench import TorchSpeedProbe
    from tesla.app.services.bench import speed_bench as bench

    return bench(settings, probe=TorchSpeedProbe(), **kwargs)


def speed_report(result: Any, out: Path) -> dict:
    """``speed.csv`` and the matplotlib ``speed.png`` in ``out``."""
    from tesla.adapters.plots import plot_speed
    from tesla.app.services.bench import speed_report as report

    return report(result, out, plot_speed)


def bench_budget_micro_batch(settings: Any, budget: int) -> int:
    """The micro-batch ``budget`` bytes of saved activations hold on the benchmark's network."""
    from tesla.adapters.torch.bench import budget_micro_batch

    return budget_micro_batch(settings, budget)


# --- prepared real data -------------------------------------------------------------------------


def prepare(src: Any, dest: str, *, storage_options: Optional[dict] = None, **kwargs: Any) -> Any:
    """:func:`tesla.app.services.prepare.prepare` from local image folders into a store at
    ``dest`` (``storage_options`` for a remote Zarr destination)."""
    from tesla.adapters.data.sources import PrepareSourcesOnDisk
    from tesla.app.services.prepare import prepare as run

    return run(src, dest, sources=PrepareSourcesOnDisk(storage_options), **kwargs)


def progress_bar_sinks(*, quiet: bool = False, json_mode: bool = False) -> tuple:
    """(sink, closers) for a job that reports Progress events only: one rich bar (elapsed,
    ETA) unless ``quiet``, and every event as a JSON line with ``json_mode``."""
    from tesla.adapters.events.progress import ProgressBarSink, RichProgressSink
    from tesla.domain.ports import FanOut

    bar = ProgressBarSink(quiet=quiet or json_mode)
    bar.start()
    sinks = [bar] + ([RichProgressSink(json_mode=True)] if json_mode else [])
    return FanOut(*sinks), [bar.stop]


def store_inspector(storage_options: Optional[dict] = None) -> Any:
    """Reads what a store holds (``tesla info``), from paths or fsspec URLs."""
    from tesla.adapters.stores.summary import StoreInspectorOnDisk

    return StoreInspectorOnDisk(storage_options)


# --- exports and imports of stores -------------------------------------------------------------


def export_set(url: str, out: Path, *, storage_options: Optional[dict] = None, **kwargs: Any) -> list:
    """:func:`tesla.app.services.export.export_set` from the real store (torch ``.pt``
    files, the pictures in OUT/images/)."""
    from tesla.adapters.stores.export import SetExportOnDisk
    from tesla.app.services.export import export_set as export

    return export(url, out, read_set=lambda u: open_synthetic(u, "r", storage_options).read_set(),
                  exporter=SetExportOnDisk(), **kwargs)


def import_mtt(src_dir: str, url: str, model: Optional[dict], **kwargs: Any) -> list:
    """Published MTT/TESLA expert buffers into a trajectory store (``tesla import-mtt``)."""
    from tesla.adapters.stores.mtt import import_mtt as run

    return run(src_dir, url, model, **kwargs)


# --- the quality bench (recipes distilled and evaluated on one set of experts) ------------------


def _recipe_distill(device: Any) -> Any:
    """A recipe's distillation stage: the distillation service on ``device`` into
    ``run_dir/synthetic.zarr`` (resumed when there), its events also in ``run_dir/events.jsonl``."""

    def stage(cfg: Any, model: Any, data: Any, trajectories: str, run_dir: Path, sink: Any, cancel: Any) -> tuple:
        from tesla.adapters.events.jsonl import JsonlSink
        from tesla.domain.ports import FanOut
        from tesla.domain.urls import redact_url

        run_dir.mkdir(parents=True, exist_ok=True)
        store = open_synthetic(str(run_dir / "synthetic.zarr"), "a")
        log = JsonlSink(run_dir / EVENTS)
        normalizer = data.normalizer
        try:
            with open_trajectories(trajectories, "r") as experts:
                provenance = {"dataset": dict(experts.meta.dataset), "trajectories": redact_url(trajectories),
                              "class_names": list(data.class_names or []),
                              "normalizer_state": normalizer.to_state() if normalizer is not None else None}
                result = distill_in_process(cfg=cfg, model_cfg=model, data=data, trajectories=experts, store=store,
                                            sink=FanOut(sink, log), device=device, cancel=cancel, resume=True,
                                            provenance=provenance)
        finally:
            log.close()
        return result, (store.read_set() if result.status == "completed" else None)

    return stage


def prepare_quality(request: Any, *, device: str = "auto", threads: Optional[int] = None,
                    storage_options: Optional[dict] = None) -> Any:
    """:func:`tesla.app.services.quality.prepare_quality` on torch (``threads`` CPU
    threads when given) and the real stores."""
    import functools

    from tesla.adapters.stores.opener import TrajectoryStoreOpener
    from tesla.app.services.quality import QualityPorts
    from tesla.app.services.quality import prepare_quality as prepare

    configure_threads(threads)
    dev = resolve_device(device)
    ports = QualityPorts(stores=TrajectoryStoreOpener(storage_options),
                         load_data=functools.partial(load_data, storage_options=storage_options),
                         distill=_recipe_distill(dev), training=evaluation_training(dev))
    return prepare(request, ports)


def quality_report(result: Any, out: Path) -> dict:
    """``quality.csv`` and the matplotlib ``quality.png`` in ``out``."""
    from tesla.adapters.plots import plot_quality
    from tesla.app.services.quality import quality_report as report

    return report(result, out, plot_quality)


# --- the process's CPU threads ------------------------------------------------------------------


def configure_threads(threads: Optional[int]) -> int:
    """torch's CPU threads for this process (intra- and inter-op): ``threads`` (a
    command's ``--threads``) when given; otherwise the count the entry point gave torch
    through the environment before it started (:mod:`tesla.app.threads`), left as it is.
    Returns the count in use."""
    from tesla.app.threads import usable_cpus
    from tesla.domain.threads import threads_for

    if threads is None:
        return torch.get_num_threads()
    n = threads_for(threads, os.environ, usable_cpus())
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # fixed once inter-op work has started (a second job in this process)
        pass
    return n


# --- a whole run from one's own data (``tesla run``) ------------------------------------------------


def prepare_pipeline(request: Any, *, device: str = "auto", sink: Optional[EventSink] = None,
                     cancel: Any = None) -> Any:
    """:func:`tesla.app.services.pipeline.prepare_pipeline` on torch and ``device``, the
    data finder and preparation of :mod:`tesla.adapters.data.sources`, the stores, and
    the results chart."""
    from tesla.adapters.data.sources import find_data
    from tesla.adapters.results_chart import plot_results
    from tesla.adapters.torch.dist import single_process
    from tesla.adapters.torch.speed import TorchSpeed
    from tesla.app.services import pipeline

    dev = resolve_device(device)

    def prepare_data(src: str, dest: str, *, fmt: Optional[str], image_size: int, sink: EventSink,
                     should_stop: Callable[[], bool]) -> Any:
        return prepare(src, dest, fmt=fmt, image_size=image_size, sink=sink, should_stop=should_stop)

    ports = pipeline.PipelinePorts(
        find_data=find_data, prepare_data=prepare_data, load_data=load_data, speed=TorchSpeed(dev),
        experts=experts_ports(dev), distill=TorchParts(single_process(dev)), evaluation=evaluation_training(dev),
        read_set=lambda url: open_synthetic(url, "r").read_set(), files=LocalRunFiles(), results_chart=plot_results,
        gpu=dev.type == "cuda")
    return pipeline.prepare_pipeline(request, ports, sink, cancel)
