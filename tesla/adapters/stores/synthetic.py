"""Synthetic-set store: distillation checkpoints and the final set, HDF5 or Zarr v3.

Schema (identical in both formats)::

    /                          attrs: format="tesla-synthetic", format_version=1, created
    /checkpoints/<8-digit it>/ any named arrays (images, momentum buffers, RNG state as
                               uint8, ...); attrs: the caller's attrs, iteration,
                               complete=True (written LAST)
    /sets/<8-digit seq>/       images (N, C, H, W) float32 chunked per class, labels (N,)
                               int64, [soft_labels (N, K)], [label_logits (N, K)], any
                               other arrays; attrs: lr, provenance (config, trajectory
                               store url, label expert/epoch, iteration, seed,
                               class_names ...), complete=True (LAST)
        normalizer/            Normalizer.to_state(): arrays as arrays, the rest as attrs

Why: a run may be killed at any moment (preemption, Ctrl-C), and whatever it left must
read back as the last *complete* state. So nothing a reader trusts is ever half
written. HDF5 cannot do that in place, so every write builds the whole file under a
temporary name in the same directory (the newest checkpoint and the newest set, copied
over) and ``os.replace``s it: readers see the old file or the new one, never a mix, and a
temporary file left by a killed writer is ignored (and swept by the next writer). Zarr
writes a new group and marks it complete last; the two newest complete checkpoints and
the newest complete set are kept. A group is marked incomplete before it is deleted, so a
kill in the middle of a delete never leaves a half-removed group that reads as whole.
Both formats therefore read with one routine: take the newest complete group.

Every array of a group is written with its CRC-32 (attribute ``crc32``, name -> value)
and checked when read: a Zarr chunk that went missing (Zarr would return fill values),
bit rot or a hand-edited file is one :class:`StoreError` naming the group and the array,
never a silently wrong resume.
"""

from __future__ import annotations

import datetime as _dt
import glob
import os
import re
import uuid
import zlib
from typing import Any, Callable, Mapping, Optional

import numpy as np

from attrs import field, frozen

from .backend import Backend, as_numpy, copy_tree, fsync_path, is_hdf5_url, open_backend, plain, plain_attrs
from .errors import StoreError

FORMAT = "tesla-synthetic"
FORMAT_VERSION = 1
KEEP_CHECKPOINTS = 2
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SET_ARRAYS = ("images", "labels", "soft_labels", "label_logits")


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
        if not isinstance(name, str) or not _NAME.match(name) or name == "normalizer":
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


def array_crc(arr: np.ndarray) -> int:
    """CRC-32 of an array's little-endian bytes (what a group records for each array)."""
    arr = np.asarray(arr)
    return zlib.crc32(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())


def _retire(b: Backend, path: str) -> None:
    """Delete a group, first marking it incomplete: a kill mid-delete leaves no false whole."""
    if b.exists(path):
        if b.attrs(path).get("complete") is not False:
            b.update_attrs(path, {"complete": False})
            b.flush()
        b.delete(path)


def _write_group(b: Backend, path: str, arrays: Mapping[str, np.ndarray], attrs_: Mapping[str, Any],
                 normalizer_state: Optional[Mapping[str, Any]] = None) -> None:
    """Arrays, then attributes and checksums, then ``complete=True``: the marker vouches for the rest."""
    _retire(b, path)
    b.create_group(path)
    b.update_attrs(path, {"complete": False})
    chunks = _class_chunks(arrays["images"], arrays.get("labels")) if "images" in arrays else None
    crcs = {}
    for name, arr in arrays.items():
        b.create_array(f"{path}/{name}", arr.shape, arr.dtype, chunks=chunks if name == "images" else None, data=arr)
        crcs[name] = array_crc(arr)
    if normalizer_state:
        npath = f"{path}/normalizer"
        b.create_group(npath)
        scalars = {}
        for k, v in normalizer_state.items():
            if isinstance(v, np.ndarray) or hasattr(v, "detach"):
                a = as_numpy(v)
                b.create_array(f"{npath}/{k}", a.shape, a.dtype, data=a)
            else:
                scalars[k] = plain(v, f"normalizer.{k}")
        b.update_attrs(npath, scalars)
    b.update_attrs(path, {**attrs_, "crc32": crcs})
    b.sync(path)  # the arrays are on disk before the marker that vouches for them
    b.update_attrs(path, {"complete": True})
    b.sync(path)


def _complete(b: Backend, container: str) -> list[int]:
    """Numbers of the complete groups under ``container``, ascending."""
    out = []
    for name in b.groups(container):
        if name.isdigit() and b.attrs(f"{container}/{name}").get("complete") is True:
            out.append(int(name))
    return sorted(out)


def _numbers(b: Backend, container: str) -> list[int]:
    return sorted(int(n) for n in b.groups(container) if n.isdigit())


def _read_arrays(b: Backend, path: str) -> dict:
    return {name: b.read(f"{path}/{name}") for name in b.arrays(path)}


def _read_checked(b: Backend, path: str, attrs_: Mapping[str, Any], fix: str) -> dict:
    """The arrays of a complete group, each checked against its recorded CRC-32."""
    arrays = _read_arrays(b, path)
    crcs = attrs_.get("crc32") or {}  # groups written before checksums: nothing to check
    for name, crc in crcs.items():
        if name not in arrays:
            raise StoreError(f"{b.url}#{path}: array {name!r} is missing; {fix}")
        if array_crc(arrays[name]) != crc:
            raise StoreError(f"{b.url}#{path}: array {name!r} is damaged or has missing chunks "
                             f"(checksum mismatch); {fix}")
    return arrays


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
        self.hdf5 = is_hdf5_url(self.url)
        self._zarr: Optional[Backend] = None
        if self.hdf5:
            if storage_options:
                raise StoreError(f"{url}: storage options apply to Zarr URLs only; HDF5 stores are local files")
            if os.path.exists(self.url) or self.read_only:
                with self._reader() as b:
                    self._check_format(b)
            if not self.read_only:
                self._sweep_temporaries()
        else:
            self._zarr = open_backend(self.url, mode, storage_options)
            self._check_format(self._zarr)
            if not self.read_only and self._zarr.attrs("").get("format") is None:
                self._zarr.update_attrs("", self._root_attrs())

    # --- format plumbing --------------------------------------------------------------

    @staticmethod
    def _root_attrs() -> dict:
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "created": created}

    def _check_format(self, b: Backend) -> None:
        root = b.attrs("")
        fmt = root.get("format")
        if fmt is None and (b.read_only or b.groups("") or b.arrays("")):
            raise StoreError(f"{self.url}: not a tesla synthetic-set store (no format attribute)")
        if fmt is not None and fmt != FORMAT:
            raise StoreError(f"{self.url}: holds {fmt!r}, not a synthetic set; pass a synthetic-set store")
        if fmt is not None and int(root.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: written by a newer tesla (format_version {root.get('format_version')},"
                f" this one reads {FORMAT_VERSION}); upgrade tesla"
            )

    def _temp_pattern(self) -> str:
        folder, base = os.path.split(os.path.abspath(self.url))
        return os.path.join(folder, f".{base}.tmp-*")

    def _sweep_temporaries(self) -> None:
        """Remove temporary files left by killed writers (a store has one writer)."""
        for path in glob.glob(self._temp_pattern()):
            try:
                os.remove(path)
            except OSError:
                pass

    class _Reader:
        def __init__(self, store: "SyntheticStore") -> None:
            self.store = store
            self.backend: Optional[Backend] = None

        def __enter__(self) -> Backend:
            if self.store._zarr is not None:
                return self.store._zarr
            if not os.path.exists(self.store.url):
                raise StoreError(f"{self.store.url}: no such store (file not found); check the path")
            # HDF5 files are replaced whole by writers: open the newest one for each read
            self.backend = open_backend(self.store.url, "r")
            return self.backend

        def __exit__(self, *exc: Any) -> None:
            if self.backend is not None:
                self.backend.close()

    def _reader(self) -> "SyntheticStore._Reader":
        return SyntheticStore._Reader(self)

    def _rewrite_hdf5(self, build: Callable[[Backend, Optional[Backend]], None]) -> None:
        """Build the whole file under a temporary name next to it, then ``os.replace`` it."""
        folder, base = os.path.split(os.path.abspath(self.url))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        old = open_backend(self.url, "r") if os.path.exists(self.url) else None
        try:
            from .hdf5 import H5Backend

            new = H5Backend(tmp, "w")
            try:
                root = old.attrs("") if old is not None and old.attrs("").get("format") else self._root_attrs()
                new.update_attrs("", root)
                build(new, old)
                new.flush()
            finally:
                new.close()
            fsync_path(tmp)  # the data is on disk before the name points at it
            if old is not None:
                old.close()
                old = None
            os.replace(tmp, self.url)
            fsync_path(folder)  # and the new name is on disk too
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        finally:
            if old is not None:
                old.close()

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
        arrays_ = _check_names(arrays, self.url)
        attrs_ = {**plain_attrs(attrs), "iteration": it}
        path = f"checkpoints/{it:08d}"
        if self._zarr is not None:
            b = self._zarr
            _write_group(b, path, arrays_, attrs_)
            keep = set(_complete(b, "checkpoints")[-KEEP_CHECKPOINTS:])
            for n in _numbers(b, "checkpoints"):
                # older complete ones and leftovers of killed writers (a store has one writer)
                if n not in keep:
                    _retire(b, f"checkpoints/{n:08d}")
        else:
            def build(new: Backend, old: Optional[Backend]) -> None:
                if old is not None:
                    sets = _complete(old, "sets")
                    if sets:
                        copy_tree(old, new, f"sets/{sets[-1]:08d}")
                _write_group(new, path, arrays_, attrs_)

            self._rewrite_hdf5(build)
        return f"{self.url}#{path}"

    def checkpoints(self) -> list[int]:
        """Iterations of the complete checkpoints, ascending."""
        if self.hdf5 and not os.path.exists(self.url):
            return []
        with self._reader() as b:
            return _complete(b, "checkpoints")

    def latest_checkpoint(self) -> Optional[tuple[int, dict, dict]]:
        """(iteration, arrays, attrs) of the newest complete checkpoint, or None."""
        if self.hdf5 and not os.path.exists(self.url):
            return None
        with self._reader() as b:
            complete = _complete(b, "checkpoints")
            if not complete:
                return None
            path = f"checkpoints/{complete[-1]:08d}"
            attrs_ = b.attrs(path)
            fix = "delete that checkpoint group to resume from the one before, or start a new run"
            arrays = _read_checked(b, path, attrs_, fix)
            for name, arr in arrays.items():  # a checkpoint is only ever written from a good state
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    raise StoreError(f"{b.url}#{path}: array {name!r} holds NaN or inf; {fix}")
            for key in ("complete", "crc32"):
                attrs_.pop(key, None)
            it = int(attrs_.pop("iteration", complete[-1]))
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
        attrs_ = plain_attrs(attrs_)
        if self._zarr is not None:
            b = self._zarr
            seq = (_numbers(b, "sets") or [-1])[-1] + 1
            _write_group(b, f"sets/{seq:08d}", arrays_, attrs_, norm)
            for n in _numbers(b, "sets"):
                if n != seq:
                    _retire(b, f"sets/{n:08d}")
        else:
            seq_box = []

            def build(new: Backend, old: Optional[Backend]) -> None:
                seq = 0
                if old is not None:
                    seq = (_numbers(old, "sets") or [-1])[-1] + 1
                    ckpts = _complete(old, "checkpoints")
                    if ckpts:
                        copy_tree(old, new, f"checkpoints/{ckpts[-1]:08d}")
                seq_box.append(seq)
                _write_group(new, f"sets/{seq:08d}", arrays_, attrs_, norm)

            self._rewrite_hdf5(build)
            seq = seq_box[0]
        return f"{self.url}#sets/{seq:08d}"

    def has_set(self) -> bool:
        """Whether a complete set is stored."""
        if self.hdf5 and not os.path.exists(self.url):
            return False
        with self._reader() as b:
            return bool(_complete(b, "sets"))

    def read_set(self) -> SyntheticSet:
        """The newest complete set.

        Raises:
            StoreError: no complete set in the store.
        """
        if self.hdf5 and not os.path.exists(self.url) and not self.read_only:
            raise StoreError(f"{self.url}: holds no finished synthetic set yet (a run writes it at the end)")
        with self._reader() as b:
            complete = _complete(b, "sets")
            if not complete:
                raise StoreError(f"{self.url}: holds no finished synthetic set yet (a run writes it at the end)")
            path = f"sets/{complete[-1]:08d}"
            attrs_ = b.attrs(path)
            arrays_ = _read_checked(b, path, attrs_, "restore the store or distil the set again "
                                                     "(`tesla distill --resume` rewrites it from the last checkpoint)")
            for key in ("complete", "crc32"):
                attrs_.pop(key, None)
            norm: dict = {}
            if b.exists(f"{path}/normalizer"):
                norm.update(b.attrs(f"{path}/normalizer"))
                norm.update(_read_arrays(b, f"{path}/normalizer"))
        lr = attrs_.pop("lr", None)
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
        if self.hdf5 and not os.path.exists(self.url):
            return {"checkpoints": [], "set": None}
        with self._reader() as b:
            out: dict = {"format_version": b.attrs("").get("format_version"), "created": b.attrs("").get("created")}
            out["checkpoints"] = _complete(b, "checkpoints")
            sets = _complete(b, "sets")
            if not sets:
                out["set"] = None
                return out
            path = f"sets/{sets[-1]:08d}"
            attrs_ = b.attrs(path)
            attrs_.pop("complete", None)
            attrs_.pop("crc32", None)
            names = b.arrays(path)
            labels = b.read(f"{path}/labels")
            n_cls = len(np.unique(labels)) if labels.size else 0
            shape = b.shape(f"{path}/images")
            kind = "learned" if "label_logits" in names else "soft" if "soft_labels" in names else "hard"
            out["set"] = {
                "images": list(shape),
                "ipc": shape[0] // n_cls if n_cls else 0,
                "classes": n_cls,
                "labels": kind,
                "lr": attrs_.pop("lr", None),
                "normalizer": sorted([*b.attrs(f"{path}/normalizer"), *b.arrays(f"{path}/normalizer")]),
                "arrays": names,
                "provenance": attrs_,
            }
        return out

    def size_bytes(self) -> int:
        if self._zarr is not None:
            return self._zarr.size_bytes()
        return os.path.getsize(self.url) if os.path.exists(self.url) else 0

    def close(self) -> None:
        if self._zarr is not None:
            self._zarr.close()

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
