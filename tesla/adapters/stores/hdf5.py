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

Nor can it read damaged metadata safely: a flipped bit in an attribute's heap can send
the C library into a loop that never returns. A file written whole and never changed
again (a synthetic-set store) is therefore *sealed* (:func:`seal_metadata`): its user
block (bytes HDF5 leaves to the application) records the CRC-32 of every byte outside
the datasets' raw data, i.e. of everything HDF5 itself parses, and :func:`check_metadata`
verifies that before HDF5 opens the file. Raw data is left to the stores' per-array
checksums, so damage to one array still leaves the others readable.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from typing import Any, Mapping, Optional

import h5py
import numpy as np

from .backend import Backend, check_room, fsync_path, plain
from .errors import StoreError

_JSON = "json:"
# an empty HDF5 file (superblock, root group, its heap and B-tree) is 800 bytes; a smaller
# file that does not open was cut off while being created and holds nothing
_SMALLEST_FILE = 800
# the user block of a sealed file: the magic line, the JSON record, the record's CRC-32
USERBLOCK = 4096
_SEAL = b"tesla-hdf5-metadata-crc32\n"


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

    def __init__(self, path: str, mode: str, userblock: int = 0) -> None:
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
                extra = {"userblock_size": userblock} if mode == "w" and userblock else {}
                self.file = h5py.File(self.url, mode, **extra)
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
            # node[k], not node.get(k): a member whose header does not open is damage, which
            # get() would hide as absence (a finished expert would vanish from the listing)
            return sorted(k for k in node.keys() if isinstance(node[k], kind))

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


# --- sealed files: a checksum of HDF5's own metadata, checked before HDF5 reads it ------------

def _data_ranges(f: Any) -> list:
    """[offset, size] of every dataset's raw data (or chunk) in the file, sorted and merged."""
    ranges: list = []

    def visit(_: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            off, size = obj.id.get_offset(), obj.id.get_storage_size()
            if off is not None and size:
                ranges.append([int(off), int(size)])
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            if info.byte_offset is not None and info.size:
                ranges.append([int(info.byte_offset), int(info.size)])

    f.visititems(visit)
    merged: list = []
    for off, size in sorted(ranges):
        if merged and off <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off + size - merged[-1][0])
        else:
            merged.append([off, size])
    return merged


def _crc_outside(path: str, start: int, size: int, ranges: list) -> int:
    """CRC-32 of the bytes ``start..size`` of ``path`` that lie outside ``ranges``."""
    crc, at = 0, start
    with open(path, "rb") as fh:
        for off, length in [*ranges, [size, 0]]:
            if off > at:
                fh.seek(at)
                left = off - at
                while left:
                    piece = fh.read(min(left, 1 << 20))
                    if not piece:
                        raise StoreError(f"{path}: HDF5 file is shorter than its metadata checksum says;"
                                         " restore it or write a new store")
                    crc = zlib.crc32(piece, crc)
                    left -= len(piece)
            at = max(at, off + length)
    return crc


def seal_metadata(path: str) -> None:
    """Record the CRC-32 of everything but raw data in the user block of the (closed) file ``path``.

    The file must have been made with ``userblock=USERBLOCK`` and must not change after.
    """
    with h5py.File(path, "r", locking=False) as f:
        if f.userblock_size < USERBLOCK:
            raise StoreError(f"{path}: cannot seal an HDF5 file made without a {USERBLOCK}-byte user block")
        ranges = _data_ranges(f)
    size = os.path.getsize(path)

    def header(ranges: list) -> bytes:
        body = json.dumps({"size": size, "data": ranges, "crc32": _crc_outside(path, USERBLOCK, size, ranges)},
                          separators=(",", ":")).encode()
        return _SEAL + body + b"\n" + str(zlib.crc32(body)).encode() + b"\n"

    sealed = header(ranges)
    if len(sealed) > USERBLOCK:  # too many data blocks to list: cover the whole file instead
        sealed = header([])
    with open(path, "r+b") as fh:
        fh.write(sealed)


def check_metadata(path: str) -> bool:
    """Verify a sealed file before HDF5 reads it; False when it was never sealed.

    Raises:
        StoreError: the seal or the metadata it vouches for is damaged (one line, the path).
    """
    def damaged(problem: str) -> StoreError:
        return StoreError(f"{path}: HDF5 file is damaged ({problem}); restore it or write a new store")

    with open(path, "rb") as fh:
        if fh.read(len(_SEAL)) != _SEAL:
            return False
        block = fh.read(USERBLOCK - len(_SEAL))
    lines = block.split(b"\n", 2)
    try:
        body, stored = lines[0], int(lines[1])
        if zlib.crc32(body) != stored:
            raise ValueError("checksum mismatch")
        record = json.loads(body)
        size, ranges, crc = int(record["size"]), [[int(o), int(n)] for o, n in record["data"]], int(record["crc32"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise damaged(f"its metadata checksum record is unreadable: {exc}") from None
    if os.path.getsize(path) != size:
        raise damaged(f"{os.path.getsize(path)} bytes where {size} were written")
    if _crc_outside(path, USERBLOCK, size, ranges) != crc:
        raise damaged("its metadata does not match its checksum (checksum mismatch)")
    return True
