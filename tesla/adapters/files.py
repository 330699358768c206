"""Local files for run directories: the :class:`~tesla.domain.ports.RunFiles` port.

The run-directory policy (:mod:`tesla.domain.rundir`) decides; this module only does
the file operations it asks for. ``config.json`` is written through a temporary file
in the same folder, fsynced, then renamed over the target, so a crash leaves the old
file or the new one, never half of one. A command that writes a run directory holds its
writer lock (:mod:`tesla.adapters.stores.lock`) for the job's life.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from tesla.adapters.stores.lock import Lock, lock_path
from tesla.domain.errors import RunDirError


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """``write(file)`` into a temporary file beside ``path`` (synced), then an atomic rename
    over ``path``: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write(path, lambda f: f.write(text), mode="w")


class LocalRunFiles:
    """Run-directory file operations on the local filesystem."""

    def kind(self, path: Path) -> str:
        path = Path(path)
        if path.is_dir():
            return "dir"
        return "file" if path.exists() else "missing"

    def read_text(self, path: Path) -> str:
        return Path(path).read_text()

    def make_writable_dir(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()

    def write_atomic(self, path: Path, text: str) -> None:
        atomic_write_text(Path(path), text)

    def lock(self, path: Path) -> Lock:
        """The run directory's writer lock (``.<name>.lock`` beside it): a second command
        writing the same run directory is refused naming the first one's pid."""
        what = f"the run directory {path}"
        try:
            return Lock(lock_path(str(path)), what, RunDirError,
                        "wait for it to finish or stop it (Ctrl-C checkpoints), then run this again")
        except OSError as e:
            raise RunDirError(f"cannot write to {path} ({e.strerror or e}): choose a writable --out") from None
