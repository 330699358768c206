"""The composition root: configs, paths and URLs in; wired adapters and services out.

Every entry point (CLI commands, the TUI, scripts) builds what it needs here, so the
choice of adapter for a path (HDF5 for ``.h5``, Zarr for anything else, fsspec URLs),
of device, of data loader and of event sinks is made in one place. Nothing here runs
a job; the services do.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from tesla.domain.config import ConfigError, DataConfig
from tesla.domain.errors import RunDirError

RUN_CONFIG = "config.json"
EVENTS = "events.jsonl"




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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_run_dir(run_dir: Path, config: dict, *, resume: bool, compare_keys: tuple = ()) -> Path:
    """Create (or reopen on ``resume``) a run directory and record its config.

    A directory that already holds a run is refused unless ``resume`` is set; on resume
    the recorded config must match on ``compare_keys`` (top-level sections).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / RUN_CONFIG
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory: choose another --out")
    if cfg_path.exists():
        if not resume:
            raise RunDirError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{cfg_path} is unreadable ({e}): choose another --out") from None
        for key in compare_keys:
            if old.get(key) != config.get(key):
                raise RunDirError(f"{run_dir} holds a run with a different {key} config: "
                                  "resume with the same settings or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to {run_dir} ({e.strerror}): choose a writable --out") from None
    if not cfg_path.exists():
        atomic_write_text(cfg_path, json.dumps(config, indent=2, sort_keys=True))
    return run_dir


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
