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
model, the data), so two different runs never share one log or one store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tesla.domain.errors import RunDirError
from tesla.domain.ports import RunFiles

RUN_CONFIG = "config.json"
EVENTS = "events.jsonl"
IMAGES = "images"


def prepare_run_dir(files: RunFiles, run_dir: Path, config: dict, *, resume: bool,
                    compare_keys: Sequence[str] = ()) -> Path:
    """Create (or reopen on ``resume``) a run directory and record its config.

    Args:
        files: the file operations.
        run_dir: the directory.
        config: the run's configs as plain JSON (written to ``config.json`` once).
        resume: the command continues a run; a recorded config is then compared.
        compare_keys: top-level sections of ``config`` that must equal the recorded ones.

    Raises:
        RunDirError: not a directory, a run there already (without ``resume``), another
            run's config (with ``resume``), an unreadable config or an unwritable place.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / RUN_CONFIG
    if files.kind(run_dir) == "file":
        raise RunDirError(f"{run_dir} exists and is not a directory: choose another --out")
    recorded = files.kind(cfg_path) != "missing"
    if recorded:
        _check_recorded(files, run_dir, config, resume=resume, compare_keys=compare_keys)
    try:
        files.make_writable_dir(run_dir)
    except OSError as e:
        raise RunDirError(f"cannot write to {run_dir} ({e.strerror}): choose a writable --out") from None
    if not recorded:
        files.write_atomic(cfg_path, json.dumps(config, indent=2, sort_keys=True))
    return run_dir


def _check_recorded(files: RunFiles, run_dir: Path, config: dict, *, resume: bool,
                    compare_keys: Sequence[str]) -> None:
    cfg_path = run_dir / RUN_CONFIG
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    try:
        old = json.loads(files.read_text(cfg_path))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{cfg_path} is unreadable ({e}): choose another --out") from None
    for key in compare_keys:
        if old.get(key) != config.get(key):
            raise RunDirError(f"{run_dir} holds a run with a different {key} config: "
                              "resume with the same settings or choose another --out")


def record_config(files: RunFiles, run_dir: Path, config: dict) -> None:
    """Record ``config`` as the run's, replacing what was there: a resumed run whose
    resumable settings changed (more iterations, another lr) is continued with them next
    time."""
    files.write_atomic(Path(run_dir) / RUN_CONFIG, json.dumps(config, indent=2, sort_keys=True))
