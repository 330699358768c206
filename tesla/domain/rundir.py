"""A run directory: what it holds and when a command may use it.

::

    RUN_DIR/
      config.json        the configs that made the run (RUN_CONFIG)
      events.jsonl       the event log the TUI and scripts follow (EVENTS)
      synthetic.zarr|h5  checkpoints and the final set (distillation)
      images/            pictures of the final set, real images beside them (IMAGES)

The policy is here, the file operations behind :class:`~tesla.domain.ports.RunFiles`:
a directory that already holds a run is refused unless the command resumes it, and a
resumed run must have been made with the same sections of the config that matter (the
model, the data), so two different runs never share one log or one store. A store (or a
folder inside one) is never a run directory, and a directory holding the synthetic
store of one ``--format`` is not resumed in the other.

Every refusal comes before anything is written (:func:`check_run_dir`); a command that
opens more after that (a distillation opens its store) creates the directory
(:func:`make_run_dir`) and writes ``config.json`` (:func:`record_config`) last, once
every check has passed, so a refused first attempt leaves no config behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from tesla.domain.errors import RunDirError
from tesla.domain.ports import RunFiles
from tesla.domain.urls import redact_json

RUN_CONFIG = "config.json"
EVENTS = "events.jsonl"
IMAGES = "images"


# what marks a folder as a store (Zarr v3, Zarr v2): a run directory is never one, nor inside one
STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")
# the synthetic store a run keeps in its directory, by --format
SET_NAMES = {"zarr": "synthetic.zarr", "h5": "synthetic.h5"}


def check_run_dir(files: RunFiles, run_dir: Path, config: dict, *, resume: bool,
                  compare_keys: Sequence[str] = ()) -> bool:
    """Every refusal of :func:`prepare_run_dir`, writing nothing; True when the directory
    already records a config (a run to resume).

    Raises:
        RunDirError: not a directory, a store (or inside one), a run there already
            (without ``resume``), another run's config (with ``resume``), an unreadable config.
    """
    run_dir = Path(run_dir)
    if files.kind(run_dir) == "file":
        raise RunDirError(f"{run_dir} exists and is not a directory: choose another --out")
    _refuse_store(files, run_dir)
    recorded = files.kind(run_dir / RUN_CONFIG) != "missing"
    if recorded:
        _check_recorded(files, run_dir, redact_json(config), resume=resume, compare_keys=compare_keys)
    return recorded


def check_set_format(files: RunFiles, run_dir: Path, set_name: str) -> None:
    """Refuse a run directory that holds the synthetic store of the other ``--format``:
    resuming would start over silently in a second store beside the first."""
    for fmt, name in SET_NAMES.items():
        if name != set_name and files.kind(Path(run_dir) / name) != "missing":
            raise RunDirError(f"{run_dir} holds {name}, a run in the {fmt} format: resume it with --format {fmt} "
                              "or choose another --out")


def make_run_dir(files: RunFiles, run_dir: Path) -> Path:
    """Create the directory (and its parents) and prove it can be written."""
    try:
        files.make_writable_dir(Path(run_dir))
    except OSError as e:
        raise RunDirError(f"cannot write to {run_dir} ({e.strerror or e}): choose a writable --out") from None
    return Path(run_dir)


def record_config(files: RunFiles, run_dir: Path, config: dict) -> None:
    """Write ``config.json`` (without credentials), atomically, replacing what was there
    (a resumed run whose resumable settings changed, more iterations or another lr, is
    continued with them next time): a failed write (a full disk) leaves no file and is
    one line."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        files.write_atomic(path, json.dumps(redact_json(config), indent=2, sort_keys=True))
    except OSError as e:
        why = (e.strerror or str(e)).lower()
        raise RunDirError(f"cannot write {path} ({why}): free space or choose another --out") from None


def prepare_run_dir(files: RunFiles, run_dir: Path, config: dict, *, resume: bool,
                    compare_keys: Sequence[str] = ()) -> Path:
    """Create (or reopen on ``resume``) a run directory and record its config.

    Args:
        files: the file operations.
        run_dir: the directory.
        config: the run's configs as plain JSON (written to ``config.json`` once, and
            compared, without credentials).
        resume: the command continues a run; a recorded config is then compared.
        compare_keys: top-level sections of ``config`` that must equal the recorded ones.

    Raises:
        RunDirError: see :func:`check_run_dir`; or an unwritable place.
    """
    recorded = check_run_dir(files, run_dir, config, resume=resume, compare_keys=compare_keys)
    make_run_dir(files, run_dir)
    if not recorded:
        record_config(files, run_dir, config)
    return Path(run_dir)


def _refuse_store(files: RunFiles, run_dir: Path) -> None:
    """A store, or a folder inside one, is not a run directory: its readers would meet
    config.json and events.jsonl, and a run's files would land among its objects. Nor is
    a path below a file (it cannot be made)."""
    for folder in (run_dir, *run_dir.parents):
        if folder != run_dir and files.kind(folder) == "file":
            raise RunDirError(f"cannot write to {run_dir} ({folder} is a file): choose a writable --out")
        for marker in STORE_MARKERS:
            if files.kind(folder / marker) == "file":
                where = "is a store" if folder == run_dir else f"lies inside the store {folder}"
                raise RunDirError(f"{run_dir} {where}: choose another --out for the run directory")


def read_config(files: RunFiles, run_dir: Path) -> Optional[dict]:
    """The run's recorded ``config.json`` (None when there is none: a new run).

    Raises:
        RunDirError: it cannot be read, is not JSON, or is not a JSON object.
    """
    path = Path(run_dir) / RUN_CONFIG
    if files.kind(path) == "missing":
        return None
    try:
        recorded = json.loads(files.read_text(path))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable ({e}): choose another --out") from None
    if not isinstance(recorded, dict):
        raise RunDirError(f"{path} is not a JSON object: choose another --out")
    return recorded


def _check_recorded(files: RunFiles, run_dir: Path, config: dict, *, resume: bool,
                    compare_keys: Sequence[str]) -> None:
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    old = read_config(files, run_dir) or {}
    for key in compare_keys:
        if old.get(key) != config.get(key):
            raise RunDirError(f"{run_dir} holds a run with a different {key} config: "
                              "resume with the same settings or choose another --out")
