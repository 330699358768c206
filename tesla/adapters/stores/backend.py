"""The small storage abstraction under both stores: groups, attributes and arrays by path.

The trajectory and synthetic stores hold one schema in two formats: HDF5 (one file,
good for a laptop or a shared POSIX filesystem) and Zarr v3 (a directory of chunk
objects, good for object stores and for several writers at once). Their logic is
written once, against :class:`Backend`; :mod:`.hdf5` and :mod:`.zarr_store` only map
these few operations onto h5py and zarr. Paths are ``/``-separated and relative to the
root (``""`` is the root group).

Attributes are plain JSON values in both formats (numbers, strings, booleans, None,
lists, dicts): :func:`plain` converts numpy scalars and tuples on the way in, so a value
reads back the same whichever format stored it.

Every library error met while touching a store - a zstd frame that does not decode, a
``zarr.json`` that is not JSON, an HDF5 B-tree that points nowhere, an index beyond an
edited shape - leaves a backend as one :class:`StoreError` line naming the store and
the node (:meth:`Backend.guard`), never a traceback. A full disk is its own line
(:func:`no_space`): it says to free space, not that the store is damaged.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import math
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from tesla.domain.urls import is_hdf5_url  # noqa: F401 - the one rule, re-exported for the stores

from .errors import DiskFull, StoreError


def plain(value: Any, key: str = "value") -> Any:
    """``value`` as plain JSON data (numpy scalars -> Python, tuples -> lists).

    NaN and infinities become None: JSON has no spelling for them and a missing
    measurement (e.g. test accuracy) is what they mean in our attributes.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), key)
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, key) for v in value]
    raise StoreError(
        f"attribute {key!r} has a value of type {type(value).__name__} that a store cannot hold;"
        " pass plain JSON values (numbers, strings, lists, dicts)"
    )


def plain_attrs(attrs: Mapping[str, Any]) -> dict:
    """Every value of ``attrs`` through :func:`plain`."""
    return {str(k): plain(v, str(k)) for k, v in attrs.items()}


def as_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A CPU numpy copy-or-view of ``x`` (numpy array, torch tensor or sequence)."""
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# bytes kept free beyond what a write needs, for the metadata that goes with it (HDF5
# B-tree nodes and object headers, zarr.json files): HDF5 must never meet a full disk
# itself, since it cannot recover from a failed metadata write (it aborts the process)
ROOM_MARGIN = 1 << 20


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full; HDF5 only says so in its text."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28," in text or "Disk quota exceeded" in text


def no_space(where: str) -> DiskFull:
    """The one line for a full disk: what was written before stays."""
    return DiskFull(f"no space left on {where}: free space or choose another location"
                      " (what was written before is kept)")


def check_room(path: str, nbytes: int) -> None:
    """Refuse (``no_space``) before writing ``nbytes`` to ``path`` when the disk cannot take them.

    Checks the nearest existing folder of ``path`` with ``statvfs``; a platform or a
    filesystem without it is not checked.
    """
    folder = os.path.abspath(path)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):
        return
    if st.f_bavail * st.f_frsize < int(nbytes) + ROOM_MARGIN:
        raise no_space(path)


def _detail(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    first = first[:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def fsync_path(path: str) -> None:
    """fsync a file (errors raise: the data may not be on disk) or a folder (best effort).

    fsync reaches a file's pages through any descriptor, so this works on a file another
    handle (h5py's) wrote. Folders cannot be opened on Windows, and some filesystems refuse
    fsync on them; a folder is then skipped.
    """
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


class Backend(abc.ABC):
    """Groups, attributes and arrays of one store, addressed by ``/``-separated path."""

    url: str
    read_only: bool

    @abc.abstractmethod
    def attrs(self, path: str = "") -> dict:
        """Attributes of the group or array at ``path`` as plain JSON values."""

    @abc.abstractmethod
    def update_attrs(self, path: str, values: Mapping[str, Any]) -> None:
        """Set (merge) attributes of the node at ``path``."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a group or array exists at ``path``."""

    @abc.abstractmethod
    def groups(self, path: str = "") -> list[str]:
        """Names of the child groups of ``path`` (empty when it does not exist)."""

    @abc.abstractmethod
    def arrays(self, path: str = "") -> list[str]:
        """Names of the child arrays of ``path`` (empty when it does not exist)."""

    @abc.abstractmethod
    def create_group(self, path: str) -> None:
        """Create the group at ``path`` and its parents (no-op when it exists)."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove the group or array at ``path`` with everything under it."""

    @abc.abstractmethod
    def create_array(
        self, path: str, shape: tuple, dtype: Any, chunks: Optional[tuple] = None, data: Optional[np.ndarray] = None
    ) -> None:
        """Create (replacing any) array at ``path``; fill it with ``data`` when given."""

    @abc.abstractmethod
    def write(self, path: str, index: Any, value: np.ndarray) -> None:
        """``array[index] = value`` for the array at ``path``."""

    @abc.abstractmethod
    def read(self, path: str, index: Any = Ellipsis) -> np.ndarray:
        """``array[index]`` of the array at ``path`` as numpy."""

    @abc.abstractmethod
    def shape(self, path: str) -> tuple:
        """Shape of the array at ``path``."""

    @abc.abstractmethod
    def chunks(self, path: str) -> Optional[tuple]:
        """Chunk shape of the array at ``path`` (None when stored contiguously)."""

    def flush(self) -> None:
        """Push buffered writes to storage (HDF5); a no-op where writes are immediate."""

    def sync(self, path: str = "") -> None:
        """Make what was written under ``path`` durable (``fsync``), not just handed to the OS.

        Called before and after a completion marker, so a power loss cannot leave a marker
        that vouches for data still in the page cache. Flushes where there is nothing
        local to sync (object stores, whose writes are durable when they return).
        """
        self.flush()

    def close(self) -> None:
        """Release the file or connection."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """Bytes the store takes on its storage."""

    def check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.url}: store is open read-only; open it with mode='a' to write")

    @contextlib.contextmanager
    def guard(self, what: str = "", writing: bool = False) -> Iterator[None]:
        """Turn any library error inside the block into one :class:`StoreError` line.

        ``what`` names the node (``experts/000001/params``); ``writing`` picks the message
        (a failed write is not a damaged store). A full disk is :func:`no_space`.
        """
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if is_no_space(exc):
                raise no_space(self.url) from exc
            raise self.failed(what, exc, writing) from exc

    def failed(self, what: str, exc: BaseException, writing: bool = False) -> StoreError:
        """The one-line error for ``exc`` met while reading (or writing) ``what``."""
        node = f"#{what.strip('/')}" if what.strip("/") else ""
        if writing:
            return StoreError(f"{self.url}{node}: cannot write ({_detail(exc)}); check the path and its permissions")
        return StoreError(f"{self.url}{node}: unreadable ({_detail(exc)}): the store is damaged or was edited;"
                          " restore it from a copy or write it again")


def copy_tree(src: Backend, dst: Backend, path: str) -> None:
    """Copy the group at ``path`` (arrays, attributes, subgroups) from ``src`` to ``dst``.

    One array in memory at a time; attributes are written last so a ``complete``
    marker copied along still comes after the data it vouches for.
    """
    dst.create_group(path)
    for name in src.arrays(path):
        p = f"{path}/{name}"
        data = src.read(p)
        dst.create_array(p, data.shape, data.dtype, chunks=src.chunks(p), data=data)
        dst.update_attrs(p, src.attrs(p))
    for name in src.groups(path):
        copy_tree(src, dst, f"{path}/{name}")
    dst.update_attrs(path, src.attrs(path))
