"""HDF5 backend (h5py): one file holds the whole store.

Scalars (numbers, strings, booleans) are stored as native HDF5 attributes so other
tools read them as they are; lists, dicts and None are stored as a string ``json:...``
(HDF5 attributes have no nested type) and decoded back, so attributes read the same as
from Zarr. Any h5py/HDF5 failure on open or read (truncated file, bad superblock, not an
HDF5 file, an attribute whose JSON does not parse) becomes a :class:`StoreError` naming
the path and saying it is damaged.

Readers open the file without HDF5's file lock so ``tesla info`` or a monitor can look at
a trajectory file while an expert run appends to it; an HDF5 store has a single writer.

A new file is made whole under a temporary name and linked into place, so a writer
killed in its first milliseconds leaves either no file or an empty valid one, never the
bare 96-byte superblock HDF5 writes first. A file too small to be an HDF5 file with a
group in it that does not open (left by an older tesla) holds nothing and is made anew
by a writer.

HDF5 cannot recover from a failed write of its own metadata (after a full disk it may
abort the process when the file is closed), so every write first checks there is room
for its bytes plus :data:`~.backend.ROOM_MARGIN` (:func:`~.backend.check_room`).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Mapping, Optional

import h5py
import numpy as np

from .backend import Backend, check_room, fsync_path, plain
from .errors import StoreError

_JSON = "json:"
# an empty HDF5 file (superblock, root group, its heap and B-tree) is 800 bytes; a smaller
# file that does not open was cut off while being created and holds nothing
_SMALLEST_FILE = 800


def _encode(value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and not value.startswith(_JSON):
        return value
    return _JSON + json.dumps(value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return json.loads(value[len(_JSON):]) if value.startswith(_JSON) else value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class H5Backend(Backend):
    """An HDF5 file opened for reading (``r``), appending (``a``) or fresh writing (``w``)."""

    def __init__(self, path: str, mode: str) -> None:
        self.url = str(path)
        self.read_only = mode == "r"
        if mode == "r" and not os.path.exists(self.url):
            raise StoreError(f"{self.url}: no such store (file not found); check the path")
        if mode != "r":
            parent = os.path.dirname(os.path.abspath(self.url))
            os.makedirs(parent, exist_ok=True)
        if mode == "a" and (not os.path.exists(self.url) or self._unfinished()):
            self._create_empty()
        try:
            if mode == "r":
                try:
                    self.file = h5py.File(self.url, "r", locking=False)
                except (TypeError, ValueError):  # HDF5 built without the locking switch
                    self.file = h5py.File(self.url, "r")
            else:
                check_room(self.url, 0)
                self.file = h5py.File(self.url, mode)
        except StoreError:
            raise
        except Exception as exc:
            raise self._damaged(exc) from exc

    def _unfinished(self) -> bool:
        """A file cut off while being created: smaller than an empty HDF5 file, and unopenable."""
        try:
            if os.path.getsize(self.url) >= _SMALLEST_FILE:
                return False
            h5py.File(self.url, "r", locking=False).close()
            return False
        except Exception:
            return os.path.isfile(self.url)

    def _create_empty(self) -> None:
        """An empty HDF5 file at the path, made under a temporary name and moved in whole."""
        folder, base = os.path.split(os.path.abspath(self.url))
        check_room(folder, _SMALLEST_FILE)
        tmp = os.path.join(folder, f".{base}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            h5py.File(tmp, "w").close()
            fsync_path(tmp)
            if os.path.exists(self.url):  # an unfinished file: replace it
                os.replace(tmp, self.url)
            else:
                try:  # link: a writer that made the file meanwhile keeps its own
                    os.link(tmp, self.url)
                except FileExistsError:
                    pass
            fsync_path(folder)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _damaged(self, exc: BaseException) -> StoreError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreError(
            f"{self.url}: HDF5 file is damaged or not an HDF5 file ({detail}); restore it or write a new store"
        )

    def _guard(self, what: str = "", writing: bool = False, nbytes: int = 0):  # type: ignore[no-untyped-def]
        if writing:
            check_room(self.url, nbytes)
        return self.guard(what, writing)

    def _node(self, path: str) -> Any:
        return self.file["/"] if path in ("", "/") else self.file[path]

    def attrs(self, path: str = "") -> dict:
        with self._guard(path):
            return {k: _decode(v) for k, v in self._node(path).attrs.items()}

    def update_attrs(self, path: str, values: Mapping[str, Any]) -> None:
        self.check_writable()
        encoded = {k: _encode(plain(v, k)) for k, v in values.items()}
        size = sum(len(v) if isinstance(v, str) else 8 for v in encoded.values())
        with self._guard(path, writing=True, nbytes=size):
            node = self._node(path)
            for k, v in encoded.items():
                node.attrs[k] = v

    def exists(self, path: str) -> bool:
        with self._guard(path):
            return path in ("", "/") or path in self.file

    def _children(self, path: str, kind: type) -> list[str]:
        with self._guard(path):
            if not self.exists(path):
                return []
            node = self._node(path)
            return sorted(k for k in node.keys() if isinstance(node.get(k, getlink=False), kind))

    def groups(self, path: str = "") -> list[str]:
        return self._children(path, h5py.Group)

    def arrays(self, path: str = "") -> list[str]:
        return self._children(path, h5py.Dataset)

    def create_group(self, path: str) -> None:
        self.check_writable()
        if path in ("", "/"):
            return
        with self._guard(path, writing=True):
            self.file.require_group(path)

    def delete(self, path: str) -> None:
        self.check_writable()
        with self._guard(path, writing=True):
            if path in self.file:
                del self.file[path]

    def create_array(
        self, path: str, shape: tuple, dtype: Any, chunks: Optional[tuple] = None, data: Optional[np.ndarray] = None
    ) -> None:
        self.check_writable()
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if data is not None else 0
        with self._guard(path, writing=True, nbytes=nbytes):
            if path in self.file:
                del self.file[path]
            if len(shape) == 0 or 0 in tuple(shape):
                chunks = None  # HDF5 cannot chunk scalars or empty arrays
            self.file.create_dataset(path, shape=tuple(shape), dtype=dtype, chunks=chunks, data=data)

    def write(self, path: str, index: Any, value: np.ndarray) -> None:
        self.check_writable()
        with self._guard(path, writing=True, nbytes=np.asarray(value).nbytes):
            self.file[path][index] = value

    def read(self, path: str, index: Any = Ellipsis) -> np.ndarray:
        with self._guard(path):
            ds = self.file[path]
            if ds.shape == ():
                return np.asarray(ds[()])
            return np.asarray(ds[index])

    def shape(self, path: str) -> tuple:
        with self._guard(path):
            return tuple(self.file[path].shape)

    def chunks(self, path: str) -> Optional[tuple]:
        with self._guard(path):
            c = self.file[path].chunks
            return tuple(c) if c is not None else None

    def flush(self) -> None:
        if not self.read_only:
            with self._guard(writing=True):
                self.file.flush()

    def sync(self, path: str = "") -> None:
        """Flush, then ``fsync`` the whole file (HDF5 keeps one file for every group)."""
        if self.read_only:
            return
        self.flush()
        with self.guard(writing=True):
            fsync_path(self.url)

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: S110 - a file that cannot close has nothing left to save
            pass

    def size_bytes(self) -> int:
        return os.path.getsize(self.url)
