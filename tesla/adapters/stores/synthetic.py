"""Synthetic-set store: distillation checkpoints and the final set, HDF5 or Zarr v3.

Schema (identical in both formats)::

    /                          attrs: format="tesla-synthetic", format_version=2, created
    /checkpoints/<8-digit it>/ any named arrays (images, momentum buffers, RNG state as
                               uint8, ...); attrs: the caller's attrs, iteration, crc32,
                               attrs_crc32, complete=True (written LAST)
    /sets/<8-digit seq>/       images (N, C, H, W) float32 chunked per class, labels (N,)
                               int64, [soft_labels (N, K)], [label_logits (N, K)], any
                               other arrays; attrs: lr, provenance (config, trajectory
                               store url, label expert/epoch, iteration, seed,
                               class_names ...), crc32, attrs_crc32, complete=True (LAST)
        normalizer/            Normalizer.to_state(): arrays as arrays, the rest as attrs
                               (and their attrs_crc32)

Why: a run may be killed at any moment (preemption, Ctrl-C), and whatever it left must
read back as the last *complete* state, so nothing a reader trusts is ever half written.
How a group gets there is the one thing the formats do differently, so it is one commit
strategy per format, chosen when the store is opened (:class:`_ZarrCommits`,
:class:`_H5Commits`); everything else is written once. Zarr writes a new group and marks
it complete last, keeping the two newest complete checkpoints and the newest complete
set; a group is marked incomplete before it is deleted, so a kill in the middle of a
delete never leaves a half-removed group that reads as whole. HDF5 cannot do that in
place, so every commit builds the whole file under a temporary name in the same
directory (the newest group of the other kind copied over) and ``os.replace``s it:
readers see the old file or the new one, never a mix. Both read with one routine: take
the newest complete group.

Every array of a group (the normaliser's too) is written with its CRC-32 (attribute
``crc32``, name -> value), and the group's attributes with the CRC-32 of their JSON
(``attrs_crc32``), all checked when read: a Zarr chunk that went missing (Zarr would
return fill values), bit rot or a hand-edited file is one :class:`StoreError` naming the
group and the array, never a silently wrong resume. In a version-2 store a missing
checksum, or an array no checksum names, is damage too; version-1 stores (written before)
are checked where they carry checksums.

One writer per store: a writer holds the store's lock (:mod:`.lock`) while it is open, so
a second ``distill`` on the same output is refused naming the first one's pid (and the
HDF5 writer may sweep temporary files, which can then only be a dead writer's).
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import glob
import os
import re
import uuid
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional

import numpy as np

from attrs import field, frozen

from .backend import Backend, as_numpy, copy_tree, fsync_path, is_hdf5_url, no_space, plain, plain_attrs
from .backends import open_backend
from .checksum import attrs_crc, crc32
from .errors import DiskFull, StoreError
from .formats import (ATTRS_CRC, COMPLETE, CRC, FORMAT_KEY, RETIRED, SYNTHETIC, VERSION_KEY, checksummed,
                      completion, marked_complete, missing_checksum, verified_attrs)
from .lock import store_lock

FORMAT = SYNTHETIC.name
FORMAT_VERSION = SYNTHETIC.version
KEEP_CHECKPOINTS = 2
CHECKPOINTS, SETS = "checkpoints", "sets"
CONTAINERS = (CHECKPOINTS, SETS)
NORMALIZER = "normalizer"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@frozen(eq=False)
class SyntheticSet:
    """A distilled set read back from a store.

    Attributes:
        images: (N, C, H, W) float32, in model space (normalised or ZCA-whitened).
        labels: (N,) int64 class ids.
        soft_labels: (N, K) float32 probabilities, or None for hard labels.
        label_logits: (N, K) float32 learned label logits, or None.
        lr: the learned student learning rate, or None.
        normalizer_state: ``Normalizer.to_state()`` of the data (empty if not stored).
        attrs: provenance (config, trajectory store, label expert/epoch, iteration, seed,
            class_names, ...).
        arrays: any further named arrays stored with the set.
    """

    images: np.ndarray
    labels: np.ndarray
    soft_labels: Optional[np.ndarray] = None
    label_logits: Optional[np.ndarray] = None
    lr: Optional[float] = None
    normalizer_state: dict = field(factory=dict)
    attrs: dict = field(factory=dict)
    arrays: dict = field(factory=dict)

    @property
    def num_classes(self) -> int:
        if self.soft_labels is not None:
            return int(self.soft_labels.shape[1])
        names = self.attrs.get("class_names")
        return len(names) if names else int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def ipc(self) -> int:
        """Images per class (of the classes present)."""
        n_cls = len(np.unique(self.labels)) if self.labels.size else 0
        return int(self.images.shape[0] // n_cls) if n_cls else 0

    @property
    def labels_kind(self) -> str:
        if self.label_logits is not None:
            return "learned"
        return "soft" if self.soft_labels is not None else "hard"


def _check_names(arrays: Mapping[str, Any], where: str) -> dict:
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == NORMALIZER:
            raise StoreError(
                f"{where}: array name {name!r} is not allowed; use letters, digits, '_', '.', '-' (not 'normalizer')"
            )
        out[name] = as_numpy(value)
    return out


def _class_chunks(images: np.ndarray, labels: Optional[np.ndarray]) -> Optional[tuple]:
    """One chunk per class when the set is class-sorted with equal counts (the usual layout)."""
    if labels is None or images.ndim != 4 or labels.shape[:1] != images.shape[:1] or not labels.size:
        return None
    counts = np.bincount(labels.astype(np.int64) - labels.min())
    counts = counts[counts > 0]
    if np.all(np.diff(labels) >= 0) and np.all(counts == counts[0]):
        return (int(counts[0]),) + tuple(images.shape[1:])
    return None


def _retire(b: Backend, path: str) -> None:
    """Delete a group, first marking it incomplete: a kill mid-delete leaves no false whole."""
    if b.exists(path):
        if b.attrs(path).get(COMPLETE) is not False:
            b.update_attrs(path, RETIRED)
            b.flush()
        b.delete(path)


def _write_group(b: Backend, path: str, group: "_Group") -> None:
    """Arrays, then attributes and checksums, then ``complete=True``: the marker vouches for the rest."""
    arrays = group.arrays
    _retire(b, path)
    b.create_group(path)
    b.update_attrs(path, {COMPLETE: False})
    chunks = _class_chunks(arrays["images"], arrays.get("labels")) if "images" in arrays else None
    crcs = {}
    for name, arr in arrays.items():
        b.create_array(f"{path}/{name}", arr.shape, arr.dtype, chunks=chunks if name == "images" else None, data=arr)
        crcs[name] = crc32(arr)
    if group.normalizer_state:
        npath = f"{path}/{NORMALIZER}"
        b.create_group(npath)
        scalars = {}
        for k, v in group.normalizer_state.items():
            if isinstance(v, np.ndarray) or hasattr(v, "detach"):
                a = as_numpy(v)
                b.create_array(f"{npath}/{k}", a.shape, a.dtype, data=a)
                crcs[f"{NORMALIZER}/{k}"] = crc32(a)
            else:
                scalars[k] = plain(v, f"{NORMALIZER}.{k}")
        b.update_attrs(npath, scalars)
        b.update_attrs(npath, {ATTRS_CRC: attrs_crc(b.attrs(npath))})
    b.update_attrs(path, {**group.attrs, CRC: crcs})
    b.sync(path)  # the arrays are on disk before the marker that vouches for them
    b.update_attrs(path, completion(b.attrs(path)))  # the marker and the digest that covers it
    b.sync(path)


def _complete(b: Backend, container: str) -> list[int]:
    """Numbers of the complete groups under ``container``, ascending."""
    out = []
    for name in b.groups(container):
        path = f"{container}/{name}"
        if name.isdigit() and marked_complete(b.attrs(path), f"{b.url}#{path}",
                                              f"delete the group {path} (the run keeps the others)"):
            out.append(int(name))
    return sorted(out)


def _numbers(b: Backend, container: str) -> list[int]:
    return sorted(int(n) for n in b.groups(container) if n.isdigit())


def _read_arrays(b: Backend, path: str, skip: tuple = ()) -> dict:
    return {name: b.read(f"{path}/{name}") for name in b.arrays(path) if name not in skip}


def _read_group(b: Backend, path: str, fix: str, skip: tuple = ()) -> tuple[dict, dict, dict]:
    """(attributes, arrays, normaliser state) of a complete group, each checked.

    The attributes against ``attrs_crc32``, every array (the normaliser's too) against
    its CRC-32. In a version-2 store every one of them must carry its checksum and every
    array must be one the checksums name; a version-1 group is checked where it has them.
    Arrays named in ``skip`` are neither read nor checked (``summary`` leaves the images).

    Raises:
        StoreError: naming the group, the array or attribute set, and ``fix``.
    """
    where = f"{b.url}#{path}"
    strict = checksummed(_root(b)[1])
    attrs_ = _checked_attrs(b, path, strict, fix)
    crcs = attrs_.pop(CRC, None)
    if crcs is None and strict:
        raise missing_checksum(where, "the group's arrays", fix)
    if crcs is not None and not isinstance(crcs, dict):
        raise StoreError(f"{where}: its array checksums are damaged ({crcs!r:.60}); {fix}")
    crcs = crcs or {}  # a version-1 group written before checksums: nothing to check
    arrays = _read_arrays(b, path, skip)
    norm: dict = {}
    if b.exists(f"{path}/{NORMALIZER}"):
        norm.update(_checked_attrs(b, f"{path}/{NORMALIZER}", strict, fix))
        for name, arr in _read_arrays(b, f"{path}/{NORMALIZER}").items():
            norm[name] = arrays[f"{NORMALIZER}/{name}"] = arr
    for name, crc in crcs.items():
        if name in skip:
            continue
        if name not in arrays:
            raise StoreError(f"{where}: array {name!r} is missing; {fix}")
        if crc32(arrays[name]) != crc:
            raise StoreError(f"{where}: array {name!r} is damaged or has missing chunks (checksum mismatch); {fix}")
    unchecked = sorted(set(arrays) - set(crcs))
    if strict and unchecked:
        raise missing_checksum(where, f"array {unchecked[0]!r}", fix)
    return attrs_, {k: v for k, v in arrays.items() if not k.startswith(f"{NORMALIZER}/")}, norm


def _checked_attrs(b: Backend, path: str, strict: bool, fix: str) -> dict:
    """The attributes of ``path`` without the marker, checked against their digest."""
    attrs_ = verified_attrs(b.attrs(path), strict, f"{b.url}#{path}", fix)
    attrs_.pop(COMPLETE, None)
    return attrs_


def _root(b: Backend) -> tuple[dict, int]:
    """(root attributes, format version), the attributes checked against their digest."""
    root = b.attrs("")
    version = SYNTHETIC.version_of(root, b.url)
    root = verified_attrs(root, checksummed(version), f"{b.url} (root)",
                          "restore the store from a copy or distil into a new one")
    return root, version


_SET_FIX = "restore the store or distil the set again (`tesla distill --resume` rewrites it from the last checkpoint)"


def _check_set(where: str, arrays: Mapping[str, np.ndarray]) -> None:
    """The shapes a set must have: images (N, C, H, W), labels (N,) ids, soft labels (N, K)."""
    images, labels = arrays.get("images"), arrays.get("labels")
    if images is None or labels is None:
        raise StoreError(f"{where}: the set has no {'images' if images is None else 'labels'} array; {_SET_FIX}")
    if images.ndim != 4 or labels.ndim != 1 or labels.shape[0] != images.shape[0] \
            or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"{where}: images {images.shape} and labels {labels.shape} {labels.dtype} do not form a set;"
                         f" {_SET_FIX}")
    for key in ("soft_labels", "label_logits"):
        if key in arrays and (arrays[key].ndim != 2 or arrays[key].shape[0] != images.shape[0]):
            raise StoreError(f"{where}: {key} has shape {arrays[key].shape}, not (N, K) with N = {images.shape[0]};"
                             f" {_SET_FIX}")


# --- one commit strategy per format, chosen when the store is opened ---------------------

@frozen(eq=False)
class _Group:
    """What one commit writes: named arrays, attributes and an optional normaliser state."""

    arrays: dict
    attrs: dict
    normalizer_state: Optional[Mapping[str, Any]] = None


def _group_path(container: str, number: int) -> str:
    return f"{container}/{number:08d}"


def _next_number(b: Optional[Backend], container: str) -> int:
    """One above the highest group number in ``container`` (complete or not); 0 when none."""
    return ((_numbers(b, container) if b is not None else []) or [-1])[-1] + 1


class _Commits(abc.ABC):
    """How a complete group reaches the store, for one storage format.

    ``commit`` writes a group under ``container`` (``checkpoints`` or ``sets``) so that
    readers see it whole or not at all, and drops the groups no longer kept;
    ``reading`` gives the backend to read (None while an HDF5 store has no file yet).
    """

    url: str

    @abc.abstractmethod
    def reading(self) -> ContextManager[Optional[Backend]]:
        """The backend to read from, for the length of the ``with`` block."""

    @abc.abstractmethod
    def commit(self, container: str, number: Optional[int], group: _Group) -> int:
        """Write ``group`` as ``container/<number>`` (None: the next number); returns the number."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """Bytes the store takes."""

    def close(self) -> None:
        """Release the store."""


class _ZarrCommits(_Commits):
    """Zarr: each group is new objects, marked complete last; older groups are retired.

    Every chunk and every ``zarr.json`` is its own object, so a new group never touches
    what readers are reading. The two newest complete checkpoints are kept (a damaged
    newest one leaves the one before to resume from) and the newest complete set.
    """

    KEEP = {CHECKPOINTS: KEEP_CHECKPOINTS, SETS: 1}

    def __init__(self, url: str, mode: str, storage_options: Optional[dict], root_attrs: Callable[[], dict]) -> None:
        self.url = url
        self.backend = open_backend(url, mode, storage_options)
        try:
            _check_format(self.backend, url)
            if not self.backend.read_only and self.backend.attrs("").get(FORMAT_KEY) is None:
                self.backend.update_attrs("", root_attrs())
        except BaseException:
            self.backend.close()
            raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[Optional[Backend]]:
        yield self.backend

    def commit(self, container: str, number: Optional[int], group: _Group) -> int:
        b = self.backend
        n = _next_number(b, container) if number is None else number
        _write_group(b, _group_path(container, n), group)
        keep = set(_complete(b, container)[-self.KEEP[container]:])
        for m in _numbers(b, container):
            if m not in keep:  # older complete groups, and leftovers of killed writers
                _retire(b, _group_path(container, m))
        return n

    def size_bytes(self) -> int:
        return self.backend.size_bytes()

    def close(self) -> None:
        self.backend.close()


class _H5Commits(_Commits):
    """HDF5: every commit rebuilds the whole file under a temporary name and renames it.

    HDF5 cannot add a group atomically in place, so the new file holds the new group and
    the newest complete group of the other container (copied over), and ``os.replace``
    swaps it in: readers, who open the file afresh for each read, see the old file or the
    new one. A temporary file left by a killed writer is never read, and the next writer
    sweeps it (a store has one writer).
    """

    def __init__(self, url: str, mode: str, root_attrs: Callable[[], dict]) -> None:
        self.url = url
        self.read_only = mode == "r"
        self._root_attrs = root_attrs
        if self.read_only or os.path.exists(url):
            with self.reading() as b:
                _check_format(b, url)
        if not self.read_only:
            self._sweep_temporaries()

    def _temp_pattern(self) -> str:
        folder, base = os.path.split(os.path.abspath(self.url))
        return os.path.join(folder, f".{base}.tmp-*")

    def _sweep_temporaries(self) -> None:
        for path in glob.glob(self._temp_pattern()):
            try:
                os.remove(path)
            except OSError:
                pass

    @contextlib.contextmanager
    def reading(self) -> Iterator[Optional[Backend]]:
        if not os.path.exists(self.url):
            if self.read_only:
                raise StoreError(f"{self.url}: no such store (file not found); check the path")
            yield None  # nothing committed yet
            return
        b = self._open_checked()
        try:
            yield b
        finally:
            b.close()

    def _open_checked(self) -> Backend:
        """The newest file (writers replace it whole), its metadata checked before HDF5 reads it."""
        from .hdf5 import check_metadata

        for _ in range(3):
            try:
                before = os.stat(self.url).st_ino
                sealed = check_metadata(self.url)
            except OSError as exc:
                raise StoreError(f"{self.url}: cannot read ({exc.strerror or exc}); check the path") from exc
            b = open_backend(self.url, "r")
            if os.stat(self.url).st_ino == before:
                break
            b.close()  # replaced by the writer between the check and the open: check the new one
        try:
            if not sealed and checksummed(SYNTHETIC.version_of(b.attrs(""), self.url)):
                raise missing_checksum(self.url, "the HDF5 file's metadata (its user block)",
                                       "restore the store from a copy or distil into a new one")
        except BaseException:
            b.close()
            raise
        return b

    def commit(self, container: str, number: Optional[int], group: _Group) -> int:
        chosen: list = []

        def build(new: Backend, old: Optional[Backend]) -> None:
            n = _next_number(old, container) if number is None else number
            if old is not None:
                for other in CONTAINERS:
                    newest = _complete(old, other)[-1:] if other != container else []
                    for m in newest:
                        copy_tree(old, new, _group_path(other, m))
            _write_group(new, _group_path(container, n), group)
            chosen.append(n)

        self._rewrite(build)
        return chosen[0]

    def _rewrite(self, build: Callable[[Backend, Optional[Backend]], None]) -> None:
        """Build the whole file under a temporary name next to it, then ``os.replace`` it."""
        from .hdf5 import USERBLOCK, H5Backend, seal_metadata

        folder, base = os.path.split(os.path.abspath(self.url))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        old = self._open_checked() if os.path.exists(self.url) else None
        try:
            new = H5Backend(tmp, "w", userblock=USERBLOCK)
            try:
                root = old.attrs("") if old is not None and old.attrs("").get(FORMAT_KEY) else self._root_attrs()
                new.update_attrs("", root)
                build(new, old)
                new.flush()
            finally:
                new.close()
            seal_metadata(tmp)
            fsync_path(tmp)  # the data is on disk before the name points at it
            if old is not None:
                old.close()
                old = None
            os.replace(tmp, self.url)
            fsync_path(folder)  # and the new name is on disk too
        except BaseException as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(exc, DiskFull):  # name the store, not its temporary file
                raise no_space(self.url) from exc
            raise
        finally:
            if old is not None:
                old.close()

    def size_bytes(self) -> int:
        return os.path.getsize(self.url) if os.path.exists(self.url) else 0


def _open_commits(url: str, mode: str, storage_options: Optional[dict]) -> _Commits:
    """The commit strategy of the store at ``url``: HDF5 by suffix, Zarr otherwise."""
    if is_hdf5_url(url):
        if storage_options:
            raise StoreError(f"{url}: storage options apply to Zarr URLs only; HDF5 stores are local files")
        return _H5Commits(url, mode, _root_attrs)
    return _ZarrCommits(url, mode, storage_options, _root_attrs)


def _root_attrs() -> dict:
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    root = {**SYNTHETIC.root_attrs(), "created": created}
    return {**root, ATTRS_CRC: attrs_crc(root)}


def _check_format(b: Backend, url: str) -> None:
    root = b.attrs("")
    fmt = root.get(FORMAT_KEY)
    if fmt is None and (b.read_only or b.groups("") or b.arrays("")):
        raise StoreError(f"{url}: not a tesla synthetic-set store (no format attribute)")
    if fmt is not None and fmt != SYNTHETIC.name:
        raise StoreError(f"{url}: holds {fmt!r}, not a synthetic set; pass a synthetic-set store")
    if fmt is not None:
        _root(b)


# --- the store ----------------------------------------------------------------------------

class SyntheticStore:
    """Checkpoints and the final set of one distillation run (see the module docstring).

    Open with :func:`open_synthetic_store`. One writer per store; any number of readers.
    """

    def __init__(self, url: str, mode: str, storage_options: Optional[dict] = None) -> None:
        if mode not in ("r", "a"):
            raise StoreError(f"{url}: mode must be 'r' or 'a' (got {mode!r})")
        self.url = str(url)
        self.mode = mode
        self.read_only = mode == "r"
        self._lock = store_lock(self.url) if not self.read_only else None  # one writer per store
        try:
            self._commits = _open_commits(self.url, mode, storage_options)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.url}: store is open read-only; open it with mode='a' to write")

    # --- checkpoints ------------------------------------------------------------------

    def write_checkpoint(self, iteration: int, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> str:
        """Write a complete checkpoint atomically; returns where (``url#checkpoints/<it>``).

        Args:
            iteration: distillation iteration the state belongs to.
            arrays: any named arrays (numpy or torch): images, label logits, momentum
                buffers, RNG states as uint8 ...
            attrs: plain JSON values (lr, rng seeds, config ...).
        """
        self._check_writable()
        it = int(iteration)
        if it < 0:
            raise StoreError(f"iteration must be >= 0 (got {iteration})")
        group = _Group(_check_names(arrays, self.url), {**plain_attrs(attrs), "iteration": it})
        self._commits.commit(CHECKPOINTS, it, group)
        return f"{self.url}#{_group_path(CHECKPOINTS, it)}"

    def checkpoints(self) -> list[int]:
        """Iterations of the complete checkpoints, ascending."""
        with self._commits.reading() as b:
            return _complete(b, CHECKPOINTS) if b is not None else []

    def latest_checkpoint(self) -> Optional[tuple[int, dict, dict]]:
        """(iteration, arrays, attrs) of the newest complete checkpoint, or None."""
        with self._commits.reading() as b:
            complete = _complete(b, CHECKPOINTS) if b is not None else []
            if not complete:
                return None
            path = _group_path(CHECKPOINTS, complete[-1])
            fix = "delete that checkpoint group to resume from the one before, or start a new run"
            attrs_, arrays, _ = _read_group(b, path, fix)
            for name, arr in arrays.items():  # a checkpoint is only ever written from a good state
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    raise StoreError(f"{b.url}#{path}: array {name!r} holds NaN or inf; {fix}")
            it = attrs_.pop("iteration", complete[-1])
            if isinstance(it, bool) or not isinstance(it, int) or it != complete[-1]:
                raise StoreError(f"{b.url}#{path}: records iteration {it!r}, not {complete[-1]}; {fix}")
            return it, arrays, attrs_

    # --- the set ----------------------------------------------------------------------

    def write_set(
        self, arrays: Mapping[str, Any], attrs: Mapping[str, Any], *, normalizer_state: Optional[Mapping[str, Any]] = None
    ) -> str:
        """Write the final (or best) set atomically; returns where.

        Args:
            arrays: ``images`` (N, C, H, W), ``labels`` (N,) class ids, optional
                ``soft_labels`` (N, K) and ``label_logits`` (N, K), any other named arrays.
            attrs: ``lr`` (the learned student lr) and provenance: config, trajectory
                store url, label_expert, label_epoch, iteration, seed, class_names ...
                ``normalizer_state`` may be passed here too.
            normalizer_state: ``Normalizer.to_state()`` of the data, so the set can be
                shown (un-whitened) and evaluated without the original dataset.
        """
        self._check_writable()
        arrays_ = _check_names(arrays, self.url)
        attrs_ = dict(attrs)
        norm = normalizer_state if normalizer_state is not None else attrs_.pop("normalizer_state", None)
        attrs_.pop("normalizer_state", None)
        for key in ("images", "labels"):
            if key not in arrays_:
                raise StoreError(f"{self.url}: a set needs an array {key!r}")
        images = arrays_["images"].astype(np.float32, copy=False)
        labels = arrays_["labels"]
        if images.ndim != 4 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise StoreError(
                f"{self.url}: images must be (N, C, H, W) and labels (N,); got {images.shape} and {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise StoreError(f"{self.url}: labels must be integer class ids (got {labels.dtype}); pass soft_labels too")
        arrays_["images"], arrays_["labels"] = images, labels.astype(np.int64, copy=False)
        for key in ("soft_labels", "label_logits"):
            if key in arrays_:
                a = arrays_[key].astype(np.float32, copy=False)
                if a.ndim != 2 or a.shape[0] != images.shape[0]:
                    raise StoreError(f"{self.url}: {key} must be (N, K) with N = {images.shape[0]}; got {a.shape}")
                arrays_[key] = a
        if "lr" in arrays_ and "lr" not in attrs_:
            attrs_["lr"] = float(np.asarray(arrays_.pop("lr")).reshape(-1)[0])
        arrays_.pop("lr", None)
        seq = self._commits.commit(SETS, None, _Group(arrays_, plain_attrs(attrs_), norm))
        return f"{self.url}#{_group_path(SETS, seq)}"

    def has_set(self) -> bool:
        """Whether a complete set is stored."""
        with self._commits.reading() as b:
            return b is not None and bool(_complete(b, SETS))

    def read_set(self) -> SyntheticSet:
        """The newest complete set.

        Raises:
            StoreError: no complete set in the store.
        """
        with self._commits.reading() as b:
            complete = _complete(b, SETS) if b is not None else []
            if not complete:
                raise StoreError(f"{self.url}: holds no finished synthetic set yet (a run writes it at the end)")
            path = _group_path(SETS, complete[-1])
            attrs_, arrays_, norm = _read_group(b, path, _SET_FIX)
            _check_set(f"{b.url}#{path}", arrays_)
        lr = attrs_.pop("lr", None)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise StoreError(f"{self.url}#{path}: lr is {lr!r}, not a number; {_SET_FIX}")
        return SyntheticSet(
            images=arrays_.pop("images"),
            labels=arrays_.pop("labels"),
            soft_labels=arrays_.pop("soft_labels", None),
            label_logits=arrays_.pop("label_logits", None),
            lr=float(lr) if lr is not None else None,
            normalizer_state=norm,
            attrs=attrs_,
            arrays=arrays_,
        )

    def summary(self) -> dict:
        """What the store holds, without reading the image arrays (for ``tesla info``)."""
        with self._commits.reading() as b:
            if b is None:
                return {"checkpoints": [], "set": None}
            root, _ = _root(b)
            out: dict = {"format_version": root.get(VERSION_KEY), "created": root.get("created")}
            out["checkpoints"] = _complete(b, CHECKPOINTS)
            sets = _complete(b, SETS)
            if not sets:
                out["set"] = None
                return out
            path = _group_path(SETS, sets[-1])
            attrs_, arrays_, norm = _read_group(b, path, _SET_FIX, skip=("images",))
            names = b.arrays(path)
            if "images" not in names or "labels" not in arrays_:
                raise StoreError(f"{b.url}#{path}: the set has no images or labels; {_SET_FIX}")
            labels = arrays_["labels"]
            n_cls = len(np.unique(labels)) if labels.size else 0
            shape = b.shape(f"{path}/images")
            kind = "learned" if "label_logits" in names else "soft" if "soft_labels" in names else "hard"
            out["set"] = {
                "images": list(shape),
                "ipc": shape[0] // n_cls if n_cls else 0,
                "classes": n_cls,
                "labels": kind,
                "lr": attrs_.pop("lr", None),
                "normalizer": sorted(norm),
                "normalizer_values": _small_values(norm),  # what `tesla info` prints: values, not names
                "arrays": names,
                "provenance": attrs_,
            }
        return out

    def size_bytes(self) -> int:
        return self._commits.size_bytes()

    def close(self) -> None:
        self._commits.close()
        self._release()

    def __enter__(self) -> "SyntheticStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_synthetic_store(url: str, mode: str = "r", *, storage_options: Optional[dict] = None) -> SyntheticStore:
    """Open the synthetic-set store at ``url`` (``*.h5``/``*.hdf5``: HDF5; else Zarr v3).

    Args:
        url: file, directory or fsspec URL.
        mode: ``"r"`` to read (must exist) or ``"a"`` to write checkpoints and sets.
        storage_options: fsspec options for remote Zarr URLs.
    """
    return SyntheticStore(url, mode, storage_options)


def _small_values(state: Mapping[str, Any], most: int = 16) -> dict:
    """A normaliser's state for a summary: its small values as plain JSON (kind, mean,
    std, eps) and ``{"shape": [...]}`` for each big array (the ZCA matrices)."""
    out: dict = {}
    for key, value in state.items():
        if isinstance(value, bytes):
            value = value.decode()
        arr = np.asarray(value)
        if isinstance(value, str) or arr.ndim == 0:
            out[key] = value if isinstance(value, str) else arr.item()
        elif arr.ndim == 1 and arr.size <= most:
            out[key] = arr.tolist()
        else:
            out[key] = {"shape": list(arr.shape)}
    return out
