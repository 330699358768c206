"""Zarr v3 backend: a local directory (``LocalStore``) or any fsspec URL (``FsspecStore``).

Zarr keeps every group's metadata in its own ``zarr.json`` and every chunk in its own
object, so several processes may write *different* groups of one store at once (ranks
writing different experts) without a lock: nothing they write overlaps. Remote URLs
(``s3://``, ``gs://``, ``memory://`` ...) go through fsspec with ``storage_options``.

Zarr returns the fill value for a chunk that is missing; the stores detect that with
per-snapshot checksums rather than trusting the backend. Every zarr or codec error
(a chunk that does not decode, a ``zarr.json`` that does not parse) becomes one
:class:`StoreError` line (:meth:`~.backend.Backend.guard`); local writes are atomic
(each object is written under a temporary name and renamed), so a full disk leaves the
objects written before intact.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional

import numpy as np
import zarr
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

from .backend import Backend, fsync_path, plain_attrs
from .errors import StoreError

# LocalStore writes each object as "<name>.partial" and renames it, and a new group's
# folder exists a moment before its zarr.json; another writer listing a group in that
# instant sees a half-made member and zarr warns. Harmless: listings skip it.
warnings.filterwarnings(
    "ignore", message=r"Object at .* is not recognized as a component of a Zarr hierarchy", category=UserWarning
)


def _local_path(url: str) -> Optional[str]:
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" not in url:
        return url
    return None


class ZarrBackend(Backend):
    """A Zarr v3 hierarchy opened for reading (``r``) or read/write (``a``)."""

    def __init__(self, url: str, mode: str, storage_options: Optional[dict] = None) -> None:
        self.url = str(url)
        self.read_only = mode == "r"
        self.storage_options = dict(storage_options or {})
        local = _local_path(self.url)
        self.local_root = local
        if local is not None:
            if self.storage_options:
                raise StoreError(f"{self.url}: storage options apply to remote URLs only (s3://, gs://, ...)")
            # one listing decides (another writer may be creating the store right now;
            # ".partial" entries are its writes in flight)
            entries = [n for n in os.listdir(local) if not n.endswith(".partial")] if os.path.isdir(local) else []
            has_meta = "zarr.json" in entries
            if mode == "r" and not has_meta:
                what = "is not a Zarr store (no zarr.json)" if os.path.exists(local) else "does not exist"
                raise StoreError(f"{self.url}: no store here ({what}); check the path")
            if mode == "a" and not has_meta and entries:
                raise StoreError(f"{self.url}: exists and is not a Zarr store; pick a new path")
            store: Any = LocalStore(local, read_only=self.read_only)
        else:
            try:
                store = FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=self.read_only)
            except Exception as exc:  # unknown protocol, missing s3fs, bad credentials ...
                raise StoreError(f"{self.url}: cannot open ({type(exc).__name__}: {exc})") from exc
        try:
            try:
                self.root = zarr.open_group(store=store, mode="r" if self.read_only else "a")
            except ContainsGroupError:  # another writer created the root meanwhile: open that
                self.root = zarr.open_group(store=store, mode="a")
        except Exception as exc:  # GroupNotFoundError, FileNotFoundError, bad JSON ...
            raise StoreError(f"{self.url}: no readable Zarr store here ({type(exc).__name__}: {exc})") from exc

    def sync(self, path: str = "") -> None:
        """``fsync`` every file and folder of the group at ``path`` and the folders above it.

        A local store only (the objects of a remote one are durable when written). The
        folders are synced too: a renamed chunk is durable only once its folder is.
        """
        if self.read_only or self.local_root is None:
            return
        top = os.path.join(self.local_root, *[p for p in path.split("/") if p])
        if not os.path.exists(top):
            return
        with self.guard(path, writing=True):
            for folder, _, files in os.walk(top, topdown=False):
                for name in files:
                    fsync_path(os.path.join(folder, name))
                fsync_path(folder)
            parent = top
            while os.path.abspath(parent) != os.path.abspath(self.local_root):
                parent = os.path.dirname(parent)
                fsync_path(parent)

    def _node(self, path: str) -> Any:
        if path in ("", "/"):
            return self.root
        with self.guard(path):
            return self.root[path]

    def attrs(self, path: str = "") -> dict:
        with self.guard(path):
            return dict(self._node(path).attrs)

    def update_attrs(self, path: str, values: Mapping[str, Any]) -> None:
        self.check_writable()
        values = plain_attrs(values)
        # one metadata write for all keys (attrs.update would write zarr.json once per key,
        # and a concurrent reader could see the first key without the others)
        with self.guard(path, writing=True):
            self._node(path).update_attributes(values)

    def exists(self, path: str) -> bool:
        if path in ("", "/"):
            return True
        with self.guard(path):
            try:
                self.root[path]
                return True
            except KeyError:
                return False

    def groups(self, path: str = "") -> list[str]:
        if not self.exists(path):
            return []
        with self.guard(path):
            return sorted(self._node(path).group_keys())

    def arrays(self, path: str = "") -> list[str]:
        if not self.exists(path):
            return []
        with self.guard(path):
            return sorted(self._node(path).array_keys())

    def create_group(self, path: str) -> None:
        self.check_writable()
        node = self.root
        with self.guard(path, writing=True):
            for part in [p for p in path.split("/") if p]:
                try:
                    node = node.require_group(part)
                except ContainsGroupError:  # another writer created it between check and create
                    node = node[part]

    def _parent(self, path: str) -> tuple[Any, str]:
        parent, _, name = path.rpartition("/")
        if parent:
            self.create_group(parent)
        return (self._node(parent) if parent else self.root), name

    def delete(self, path: str) -> None:
        self.check_writable()
        if not self.exists(path):
            return
        parent, name = self._parent(path)
        with self.guard(path, writing=True):
            del parent[name]

    def create_array(
        self, path: str, shape: tuple, dtype: Any, chunks: Optional[tuple] = None, data: Optional[np.ndarray] = None
    ) -> None:
        self.check_writable()
        parent, name = self._parent(path)
        with self.guard(path, writing=True):
            arr = parent.create_array(
                name, shape=tuple(shape), dtype=np.dtype(dtype), chunks=tuple(chunks) if chunks else "auto",
                overwrite=True,
            )
            if data is not None and arr.size:
                arr[...] = data

    def write(self, path: str, index: Any, value: np.ndarray) -> None:
        self.check_writable()
        node = self._node(path)
        with self.guard(path, writing=True):
            node[index] = value

    def read(self, path: str, index: Any = Ellipsis) -> np.ndarray:
        node = self._node(path)
        with self.guard(path):
            if node.shape == ():
                return np.asarray(node[...])
            return np.asarray(node[index])

    def shape(self, path: str) -> tuple:
        node = self._node(path)
        with self.guard(path):
            return tuple(node.shape)

    def chunks(self, path: str) -> Optional[tuple]:
        node = self._node(path)
        with self.guard(path):
            return tuple(node.chunks)

    def size_bytes(self) -> int:
        if self.local_root is not None:
            total = 0
            for folder, _, files in os.walk(self.local_root):
                for f in files:
                    total += os.path.getsize(os.path.join(folder, f))
            return total
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return int(fs.du(path, total=True))
