"""Writer locks: one process at a time writes a store (or an expert, or a run directory).

Two writers of one store do not corrupt each other loudly; they silently drop each
other's work (an HDF5 file rebuilt by both, an unfinished expert deleted by a second
``tesla experts`` while the first still writes it). So a writer takes an exclusive
``fcntl.flock`` on a lock file first, and a second writer is refused at once with one
line naming the holder's process id. The kernel drops a flock when its holder exits, even
by ``kill -9``, so no stale lock survives a crash: the lock *file* stays (an empty hidden
file), the lock does not. Readers never lock. The holder's pid comes from the kernel's
table of locks (``/proc/locks``), so taking a lock never writes to the lock file: a run
that is refused after locking leaves the folder exactly as it found it.

The guarantee is between processes: within one process a lock is taken once and shared
by every handle that asks for it (counted, released with the last one), so a handle the
program forgot to close cannot lock the process out of its own store - the kernel's
flock belongs to an open file, so the table of held locks below makes it per process.

Lock files live beside what they guard - ``.<name>.lock`` next to ``<name>`` - so a store
directory holds only store objects. flock works on local filesystems and on NFSv4 (Linux
maps it to a POSIX lock there); on platforms without ``fcntl`` (Windows) locking is
skipped. Remote object stores (``s3://`` ...) cannot be locked this way: their writers
must be kept apart by the user or, in distributed runs, by disjoint expert ids.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import Iterator, Optional

from .errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# the locks this process holds: real path of the lock file -> [descriptor, handles]. It
# mirrors a kernel resource of the process (its flocks), so it is per process by nature.
_HELD: dict = {}
_HELD_GUARD = threading.Lock()


def lock_path(target: str, suffix: str = "lock") -> str:
    """``<folder>/.<name>.<suffix>`` for ``target`` (a file or directory path)."""
    folder, base = os.path.split(os.path.abspath(str(target).rstrip("/")))
    return os.path.join(folder, f".{base}.{suffix}")


def local_path(url: str) -> Optional[str]:
    """The local filesystem path of ``url`` (a plain path or ``file://``), None for remote URLs."""
    url = str(url)
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if "://" in url else url


class Lock:
    """An exclusive flock held on a lock file until :meth:`release` (or the process ends).

    Args:
        path: the lock file (created if missing; its folder too).
        what: what the lock guards, for the message ("store /x/t.zarr", "expert 3 of ...").
        error: the error type raised when another process holds it (a ``UserError``).
        fix: what the user should do, appended to the message.

    Raises:
        error: another process holds the lock; the message names its pid.
    """

    def __init__(self, path: str, what: str, error: type = StoreError,
                 fix: str = "wait for it to finish or stop it, then run this again") -> None:
        self.path = path
        self._key: Optional[str] = None
        if fcntl is None:  # pragma: no cover - no flock on this platform
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        key = os.path.realpath(path)
        with _HELD_GUARD:
            if key in _HELD:  # this process holds it already: share it
                _HELD[key][1] += 1
                self._key = key
                return
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {holder}" if holder else "another process"
                raise error(f"{what} is being written by {who} (lock {path}); {fix}") from None
            _HELD[key] = [fd, 1]
            self._key = key

    @property
    def held(self) -> bool:
        return self._key is not None

    def release(self) -> None:
        """Let go of the lock; the last handle of the process drops it (the file stays)."""
        if self._key is None:
            return
        key, self._key = self._key, None
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
        fd = entry[0]
        # unlock explicitly: a forked child (a data-loader worker) shares the descriptor
        with contextlib.suppress(Exception):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock goes with its object, as with its process
        self.release()


def _holder_pid(fd: int) -> Optional[int]:
    """The pid holding a flock on the file of ``fd``, from ``/proc/locks`` (None elsewhere).

    A line there reads ``1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF``
    (major and minor in hex); lines with ``->`` are waiters, not holders.
    """
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or "->" in line:
            continue
        try:
            major, minor, inode = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None


@contextlib.contextmanager
def exclusive(path: str, what: str, error: type = StoreError,
              fix: str = "wait for it to finish or stop it, then run this again") -> Iterator[Lock]:
    """Hold the writer lock of ``path`` for the ``with`` block.

    ``path`` is what is guarded (a run directory, a store); the lock file is
    :func:`lock_path` of it. Another process asking for it meanwhile gets ``error`` naming
    this one's pid; within this process it is shared (see the module docstring).

    Example:
        >>> with exclusive(run_dir, f"run directory {run_dir}", RunDirError):  # doctest: +SKIP
        ...     run(...)
    """
    lock = Lock(lock_path(path), what, error, fix)
    try:
        yield lock
    finally:
        lock.release()


def store_lock(url: str, what: Optional[str] = None) -> Optional[Lock]:
    """The writer lock of the store at ``url`` (None for remote URLs, which cannot be locked)."""
    local = local_path(url)
    if local is None:
        return None
    return Lock(lock_path(local), what or f"{url}: the store", StoreError,
                "one writer per store: wait for it to finish or stop it, or write to another path")
