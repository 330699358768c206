"""Expert trajectory store: one schema, HDF5 or Zarr v3.

Schema (identical in both formats)::

    /                       attrs: format="tesla-trajectories", format_version=2,
                                   model (ModelConfig as dict), layout ([[name, shape], ...]),
                                   num_params, dataset (dict), created (ISO time)
    /experts/<6-digit id>/  attrs: seed, lr, epochs, test_accuracy (one per snapshot,
                                   null where not measured), train (config dict), ...,
                                   crc32 (one per snapshot), attrs_crc32 (of the other
                                   attributes), complete=True (written LAST)
        params              (epochs + 1, P) float32, one snapshot per chunk (1, P)

Why this shape: a snapshot is what distillation reads at random (expert, epoch), so one
chunk per snapshot makes every read one object on S3 or one contiguous block in HDF5,
and a trajectory can be written as it is trained (the HDF5 file is flushed after each
snapshot). The ``complete`` marker is written after the data and the checksums, so a
reader never sees an expert whose run was killed; the writer may overwrite it. Expert
ids are explicit so several ranks can write different experts into one Zarr store at
once. The per-snapshot CRC-32 catches what Zarr would otherwise hide (a deleted chunk
reads back as fill values) and any bit rot, on every load.

Damage is refused, never read: in a version-2 store an expert without its checksums is
damaged (version 1 read them where present), the expert's attributes are checked
against ``attrs_crc32`` (a flipped epoch count or accuracy is caught), and the params
array must have the shape the attributes and the root say. The root attributes check
each other (the layout must add up to ``num_params``); the model a reader builds is
checked against the layout by the reader.

Writers: an HDF5 file has one writer, which holds the store's lock (:mod:`.lock`) while
open. A Zarr store may have several - the ranks of a distributed run write different
experts into one store - so each expert is locked while it is written instead: a second
process asking for an expert that is being written is refused (naming the writer's pid)
rather than deleting it as "unfinished". Remote stores cannot be locked.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Any, Mapping, Optional

import numpy as np

from tesla.domain.records import TrajectoryMeta  # the domain's value, re-exported here

from tesla.domain.experts import data_mismatch
from .backend import Backend, as_numpy, is_hdf5_url, plain, plain_attrs
from .backends import open_backend
from .checksum import attrs_crc, crc32
from .errors import StoreError
from .formats import (ATTRS_CRC, COMPLETE, CRC, FORMAT_KEY, TRAJECTORIES, checksummed, completion, marked_complete,
                      missing_checksum, verified_attrs)
from .lock import Lock, local_path, lock_path, store_lock

FORMAT = TRAJECTORIES.name
FORMAT_VERSION = TRAJECTORIES.version
_RESERVED = (COMPLETE, CRC, ATTRS_CRC, "epochs")
_RETRAIN = "re-train or re-import this expert (delete its group to have `tesla experts` train it again)"


def checksum(vec: np.ndarray) -> int:
    """CRC-32 of a snapshot as float32 (:func:`.checksum.crc32`)."""
    return crc32(np.asarray(vec, dtype=np.float32))


def expert_path(expert: int) -> str:
    return f"experts/{int(expert):06d}"


def normalise_layout(layout: Any) -> list:
    """``[[name, [dims]], ...]`` from any sequence of (name, shape) pairs."""
    try:
        return [[str(name), [int(d) for d in shape]] for name, shape in layout]
    except (TypeError, ValueError) as exc:
        raise StoreError(f"layout must be a list of (name, shape) pairs ({exc})") from exc


def layout_size(layout: list) -> int:
    return sum(math.prod(shape) for _, shape in layout)


def describe_model(model: Mapping[str, Any], num_params: int) -> str:
    """One-line description of a model dict and its parameter count."""
    if not model:
        return f"an unnamed model with {num_params:,} parameters"
    head = model.get("arch", "model")
    rest = " ".join(f"{k}={v}" for k, v in model.items() if k != "arch")
    return f"{head} {rest} ({num_params:,} parameters)".replace("  ", " ")


class ExpertWriter:
    """Streams one expert's snapshots into the store; :meth:`finish` marks it complete.

    Use as a context manager: a clean exit finishes the expert, an exception leaves it
    incomplete (invisible to readers, overwritten by the next writer of that id).

    Example:
        >>> with store.begin_expert(None, epochs=2, attrs={"seed": 0, "lr": 0.01}) as w:
        ...     for epoch in range(3):
        ...         w.write(epoch, flat_params, test_accuracy=None)
    """

    def __init__(self, store: "TrajectoryStore", expert_id: int, epochs: int, attrs_: Mapping[str, Any]) -> None:
        b = store.backend
        b.check_writable()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise StoreError(f"epochs must be an integer >= 0 (got {epochs!r})")
        bad = sorted(set(attrs_) & set(_RESERVED))
        if bad:
            raise StoreError(f"expert attributes {bad} are set by the store; leave them out")
        self.store = store
        self.expert_id = int(expert_id)
        self.epochs = epochs
        self.num_params = store.meta.num_params
        self.path = expert_path(self.expert_id)
        self.finished = False
        # before looking at the group: a live writer of this expert keeps it
        self._lock = store._expert_lock(self.expert_id)
        if self._lock is not None:
            store._writers.add(self)
        try:
            self._start(b, attrs_)
        except BaseException:
            self._release()
            raise

    def _start(self, b: Backend, attrs_: Mapping[str, Any]) -> None:
        store, epochs = self.store, self.epochs
        if b.exists(self.path):
            if b.attrs(self.path).get(COMPLETE) is True:
                raise StoreError(
                    f"{store.url}: expert {self.expert_id} is complete already;"
                    f" choose another id (next free: {store.next_id()})"
                )
            b.delete(self.path)  # an incomplete expert of a killed run: start it again
        b.create_group(self.path)
        self._acc: list = [None] * (epochs + 1)
        self._crc: list = [None] * (epochs + 1)
        b.update_attrs(self.path, {**plain_attrs(attrs_), "epochs": epochs, "test_accuracy": self._acc, COMPLETE: False})
        b.create_array(f"{self.path}/params", (epochs + 1, self.num_params), np.float32, chunks=(1, self.num_params))
        b.flush()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self.store._writers.discard(self)
            self._lock = None

    def write(self, epoch: int, vec: Any, test_accuracy: Optional[float] = None) -> None:
        """Store snapshot ``epoch`` (0 = initialisation) of the expert.

        Args:
            epoch: 0 .. epochs.
            vec: flat parameters (P,) float32, numpy or a torch tensor.
            test_accuracy: test accuracy (%) at this snapshot, if measured.
        """
        if not 0 <= int(epoch) <= self.epochs:
            raise StoreError(f"expert {self.expert_id}: epoch {epoch} is out of range 0..{self.epochs}")
        arr = as_numpy(vec, np.float32).reshape(-1)
        if arr.shape[0] != self.num_params:
            raise StoreError(
                f"expert {self.expert_id}: snapshot has {arr.shape[0]} values but the store holds {self.num_params}"
            )
        self.store.backend.write(f"{self.path}/params", int(epoch), arr)
        self.store.backend.flush()
        self._crc[int(epoch)] = checksum(arr)
        if test_accuracy is not None:
            self._acc[int(epoch)] = plain(test_accuracy)

    def set_attrs(self, **values: Any) -> None:
        """Add or change attributes of the expert (``test_accuracy`` replaces the list)."""
        bad = sorted(set(values) & set(_RESERVED))
        if bad:
            raise StoreError(f"expert attributes {bad} are set by the store; leave them out")
        if "test_accuracy" in values:
            acc = list(values.pop("test_accuracy"))
            if len(acc) != self.epochs + 1:
                raise StoreError(f"test_accuracy needs {self.epochs + 1} entries (got {len(acc)})")
            self._acc = [plain(a) for a in acc]
        self.store.backend.update_attrs(self.path, {**values, "test_accuracy": self._acc})
        self.store.backend.flush()

    def finish(self) -> int:
        """Write accuracies and checksums, then ``complete=True`` last; returns the id."""
        if self.finished:
            return self.expert_id
        missing = [e for e, c in enumerate(self._crc) if c is None]
        if missing:
            raise StoreError(f"expert {self.expert_id}: snapshots {missing} were not written; cannot finish it")
        b = self.store.backend
        b.update_attrs(self.path, {"test_accuracy": self._acc, CRC: self._crc})
        b.sync(self.path)  # the snapshots are on disk before the marker that vouches for them
        # the marker and the digest of the attributes (as a reader reads them back) that covers it
        b.update_attrs(self.path, completion(b.attrs(self.path)))
        b.sync(self.path)
        self.finished = True
        self._release()
        return self.expert_id

    def __enter__(self) -> "ExpertWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._release()  # left incomplete: the next writer of this id starts it again


class TrajectoryStore:
    """Expert trajectories over a :class:`~.backend.Backend` (see the module docstring).

    Open with :func:`open_trajectory_store`. Readers see only complete experts.
    """

    def __init__(self, backend: Backend, lock: Optional[Lock] = None) -> None:
        self.backend = backend
        self._lock = lock  # the whole store's (HDF5 writers); Zarr writers lock each expert
        self._writers: set = set()
        self._meta: Optional[TrajectoryMeta] = None
        self._complete: dict[int, dict] = {}
        self._shapes_ok: set = set()
        try:
            self._check_root(backend.attrs(""))
        except BaseException:
            self.close()
            raise

    def _check_root(self, root: Mapping[str, Any]) -> None:
        fmt = root.get(FORMAT_KEY)
        b = self.backend
        if fmt is None:
            if b.read_only or b.groups("") or b.arrays(""):
                raise StoreError(f"{self.url}: not a tesla trajectory store (no format attribute)")
        elif fmt != FORMAT:
            raise StoreError(f"{self.url}: holds {fmt!r}, not expert trajectories; pass a trajectory store")
        else:
            TRAJECTORIES.version_of(root, self.url)

    def _check_root_digest(self, root: dict) -> None:
        """The root attributes (the model, its parameter layout, the dataset) against their digest."""
        digest = root.pop(ATTRS_CRC, None)
        version = TRAJECTORIES.version_of(root, self.url)
        fix = "restore the store from a copy or train the experts into a new one"
        if digest is None and checksummed(version):
            raise missing_checksum(self.url, "the root attributes", fix)
        if digest is not None and digest != attrs_crc(root):
            raise StoreError(f"{self.url}: the root attributes (the model, its parameter layout, the dataset) do"
                             f" not match their checksum: the store is damaged or was edited; {fix}")

    def _expert_lock(self, expert: int) -> Optional[Lock]:
        """The lock of one expert of a local Zarr store (None where the store lock covers it)."""
        local = local_path(self.url)
        if self._lock is not None or local is None or is_hdf5_url(self.url):
            return None
        path = os.path.join(lock_path(local, "locks"), f"expert-{expert:06d}.lock")
        return Lock(path, f"{self.url}: expert {expert}", StoreError,
                    "two runs are training the same expert: let the other finish, or stop it and run this again")

    # --- store level ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def initialized(self) -> bool:
        return self._meta is not None or self.backend.attrs("").get(FORMAT_KEY) == FORMAT

    @property
    def meta(self) -> TrajectoryMeta:
        """Model, layout, P and dataset of the store (refuses an uninitialised store)."""
        if self._meta is None:
            root = self.backend.attrs("")
            if root.get(FORMAT_KEY) != FORMAT:
                raise StoreError(f"{self.url}: store is empty; train or import experts into it first")
            self._check_root_digest(root)
            try:
                meta = TrajectoryMeta(
                    model=dict(root.get("model") or {}),
                    layout=normalise_layout(root.get("layout") or []),
                    num_params=int(root["num_params"]),
                    dataset=dict(root.get("dataset") or {}),
                    format_version=TRAJECTORIES.version_of(root, self.url),
                    created=root.get("created"),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"{self.url}: the root attributes are damaged ({type(exc).__name__}: {exc});"
                                 " restore the store from a copy or train the experts again") from exc
            if layout_size(meta.layout) != meta.num_params:
                raise StoreError(f"{self.url}: the root attributes are damaged (the layout holds"
                                 f" {layout_size(meta.layout)} parameters but num_params is {meta.num_params});"
                                 " restore the store from a copy or train the experts again")
            self._meta = meta
        return self._meta

    def initialize(self, model: Mapping[str, Any], layout: Any, num_params: int, dataset: Mapping[str, Any]) -> None:
        """Record what the store holds (new store) or check that it fits (existing one).

        Raises:
            StoreError: the store holds another model, layout or dataset.
        """
        layout_ = normalise_layout(layout)
        if layout_size(layout_) != int(num_params):
            raise StoreError(f"layout holds {layout_size(layout_)} values but num_params is {num_params}")
        if self.initialized:
            self.check_compatible(model, layout_, num_params, dataset)
            return
        b = self.backend
        b.check_writable()
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        root = {
            **TRAJECTORIES.root_attrs(),
            "model": plain_attrs(model),
            "layout": layout_,
            "num_params": int(num_params),
            "dataset": plain_attrs(dataset),
            "created": created,
        }
        # one attribute write (one zarr.json), then the first group: a rank opening the
        # store meanwhile sees either an empty store or an initialised one, never half
        b.update_attrs("", {**root, ATTRS_CRC: attrs_crc(root)})
        b.create_group("experts")
        b.flush()

    def check_compatible(
        self,
        model: Optional[Mapping[str, Any]],
        layout: Any = None,
        num_params: Optional[int] = None,
        dataset: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Refuse (StoreError) when the stored experts do not fit the requested model.

        Shapes and P must be equal; model fields present on both sides must agree; an
        imported store without a model accepts any model of the same shapes. Dataset
        names, ZCA and image sizes must agree where both are given.
        """
        m = self.meta
        model = plain_attrs(model or {})
        layout_ = normalise_layout(layout) if layout is not None else m.layout
        p = int(num_params) if num_params is not None else layout_size(layout_)
        differs = p != m.num_params or [s for _, s in layout_] != [s for _, s in m.layout]
        differs = differs or any(k in m.model and m.model[k] != v for k, v in model.items())
        if differs:
            raise StoreError(
                f"{self.url}: store holds {describe_model(m.model, m.num_params)} but the requested model is"
                f" {describe_model(model, p)}; use a new store path"
            )
        have, want = m.dataset.get("name"), (dataset or {}).get("name")
        if have and want and have != want:
            raise StoreError(
                f"{self.url}: store holds experts trained on {have!r} but the requested dataset is {want!r};"
                " use a new store path"
            )
        differs = data_mismatch(m.dataset, dict(dataset or {}))  # ZCA or not, the image size
        if differs:
            raise StoreError(f"{self.url}: store holds experts trained on other data ({differs} asked for now);"
                             " use the same data settings or a new store path")

    def size_bytes(self) -> int:
        return self.backend.size_bytes()

    def close(self) -> None:
        self.backend.close()
        for writer in list(self._writers):
            writer._release()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- experts ----------------------------------------------------------------------

    def _all_ids(self) -> list[int]:
        return sorted(int(n) for n in self.backend.groups("experts") if n.isdigit())

    def _attrs_of(self, expert: int) -> dict:
        return self.backend.attrs(expert_path(expert))

    def expert_ids(self) -> list[int]:
        """Ids of the complete experts, ascending (each one's attributes checked)."""
        out = []
        for i in self._all_ids():
            if i not in self._complete:
                attrs_ = self._attrs_of(i)
                if not self._marked(i, attrs_):
                    continue
                self._complete[i] = self._verified(i, attrs_)  # complete experts never change: cache them
            out.append(i)
        return out

    def _verified(self, expert: int, attrs_: dict) -> dict:
        """A complete expert's attributes, checked against their digest and the params array.

        Raises:
            StoreError: a checksum missing (version 2), a digest that does not match, or an
                epoch count or checksum list of the wrong kind (the params shape is checked
                on the first load).
        """
        def damaged(problem: str) -> StoreError:
            return StoreError(f"{self.url}: expert {expert} is damaged ({problem}); {_RETRAIN}")

        version = self.meta.format_version
        attrs_ = verified_attrs(attrs_, checksummed(version), f"{self.url}: expert {expert}", _RETRAIN)
        epochs = attrs_.get("epochs")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise damaged(f"epochs is {epochs!r}")
        crcs = attrs_.get(CRC)
        if crcs is None and checksummed(version):
            raise missing_checksum(self.url, f"expert {expert}'s snapshots", _RETRAIN)
        if crcs is not None and (not isinstance(crcs, list) or len(crcs) != epochs + 1
                                 or not all(isinstance(c, int) and not isinstance(c, bool) for c in crcs)):
            raise damaged(f"it records {epochs + 1} snapshots but its checksums are {crcs!r:.80}")
        return attrs_

    def _params(self, expert: int, attrs_: Mapping[str, Any]) -> str:
        """Path of an expert's params, its shape checked once against its attributes and P."""
        path = f"{expert_path(expert)}/params"
        if expert not in self._shapes_ok:  # on first load, not when listing: one metadata read less each
            want = (int(attrs_["epochs"]) + 1, self.meta.num_params)
            shape = self.backend.shape(path)
            if shape != want:
                raise StoreError(f"{self.url}: expert {expert} is damaged (params has shape {shape}, not {want});"
                                 f" {_RETRAIN}")
            self._shapes_ok.add(expert)
        return path

    def incomplete_ids(self) -> list[int]:
        """Ids of experts whose writer has not finished (killed runs, or being written)."""
        return [i for i in self._all_ids() if i not in self._complete and not self._marked(i, self._attrs_of(i))]

    def _marked(self, expert: int, attrs_: dict) -> bool:
        return marked_complete(attrs_, f"{self.url}: expert {expert}", _RETRAIN)

    def next_id(self) -> int:
        """One above the highest id present (complete or not); 0 for an empty store."""
        ids = self._all_ids()
        return ids[-1] + 1 if ids else 0

    def expert_attrs(self, expert: int) -> dict:
        """Attributes of a complete expert (seed, lr, epochs, test_accuracy, ...)."""
        expert = int(expert)
        if expert not in self._complete:
            path = expert_path(expert)
            attrs_ = self.backend.attrs(path) if self.backend.exists(path) else {}
            if not self._marked(expert, attrs_):
                ids = self.expert_ids()
                have = f"{len(ids)} complete: {_ranges(ids)}" if ids else "none complete"
                raise StoreError(f"{self.url}: no complete expert {expert} ({have})")
            self._complete[expert] = self._verified(expert, attrs_)
        return dict(self._complete[expert])

    def num_snapshots(self, expert: int) -> int:
        """Snapshots of an expert: epochs + 1."""
        return int(self.expert_attrs(expert)["epochs"]) + 1

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of P and, per complete expert, its id, epochs and snapshot
        checksums: a resumed distillation checks it uses the experts it started with. A
        copy of the store has the same one; a store with another expert does not. (A
        version-1 store without checksums is told apart by ids and epochs only.)"""
        import hashlib
        import json

        experts = [[i, self.expert_attrs(i).get("epochs"), self.expert_attrs(i).get(CRC)] for i in self.expert_ids()]
        text = json.dumps([self.meta.num_params, experts], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _check(self, expert: int, epoch: int, vec: np.ndarray, crcs: list) -> np.ndarray:
        if crcs and checksum(vec) != crcs[epoch]:  # no crcs: a version-1 expert written without them
            raise StoreError(
                f"{self.url}: expert {expert} snapshot {epoch} is missing or damaged (checksum mismatch);"
                f" {_RETRAIN}"
            )
        return vec

    def load(self, expert: int, epoch: int) -> np.ndarray:
        """Flat parameters (P,) float32 of ``expert`` after ``epoch`` epochs (0 = init)."""
        attrs_ = self.expert_attrs(expert)
        n = int(attrs_["epochs"]) + 1
        if not 0 <= int(epoch) < n:
            raise StoreError(f"{self.url}: expert {expert} has {n} snapshots; epoch {epoch} is out of range 0..{n - 1}")
        vec = self.backend.read(self._params(int(expert), attrs_), int(epoch)).astype(np.float32, copy=False)
        return self._check(int(expert), int(epoch), vec, attrs_.get(CRC) or [])

    def load_trajectory(self, expert: int) -> np.ndarray:
        """All snapshots of ``expert``, (epochs + 1, P) float32."""
        attrs_ = self.expert_attrs(expert)
        traj = self.backend.read(self._params(int(expert), attrs_)).astype(np.float32, copy=False)
        crcs = attrs_.get(CRC) or []
        for e in range(traj.shape[0]):
            self._check(int(expert), e, traj[e], crcs)
        return traj

    def begin_expert(self, expert_id: Optional[int], epochs: int, attrs: Optional[Mapping[str, Any]] = None) -> ExpertWriter:
        """Start writing an expert of ``epochs + 1`` snapshots.

        Args:
            expert_id: explicit id (ranks writing one Zarr store each take their own), or
                None for :meth:`next_id`. An incomplete expert of that id is overwritten;
                a complete one is refused.
            epochs: training epochs (snapshots = epochs + 1).
            attrs: seed, lr, train config ... (plain JSON values).
        """
        eid = self.next_id() if expert_id is None else int(expert_id)
        if eid < 0:
            raise StoreError(f"expert id must be >= 0 (got {eid})")
        return ExpertWriter(self, eid, epochs, dict(attrs or {}))

    def add_expert(
        self, trajectory: Any, attrs: Optional[Mapping[str, Any]] = None, expert_id: Optional[int] = None
    ) -> int:
        """Write a whole trajectory (E+1, P) as one complete expert; returns its id.

        ``attrs`` may carry ``test_accuracy`` (one per snapshot).
        """
        traj = as_numpy(trajectory, np.float32)
        if traj.ndim != 2:
            raise StoreError(f"a trajectory must be (snapshots, P); got shape {tuple(traj.shape)}")
        attrs = dict(attrs or {})
        acc = attrs.pop("test_accuracy", None)
        with self.begin_expert(expert_id, traj.shape[0] - 1, attrs) as w:
            for e in range(traj.shape[0]):
                w.write(e, traj[e])
            if acc is not None:
                w.set_attrs(test_accuracy=acc)
        return w.expert_id


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(parts)


def open_trajectory_store(url: str, mode: str = "r", *, storage_options: Optional[dict] = None) -> TrajectoryStore:
    """Open the expert store at ``url``.

    Args:
        url: ``*.h5``/``*.hdf5`` for an HDF5 file; anything else is Zarr v3 (a local
            directory or an fsspec URL such as ``s3://bucket/experts.zarr``).
        mode: ``"r"`` to read (the store must exist), ``"a"`` to add experts (created if missing).
        storage_options: fsspec options for remote URLs.

    Raises:
        StoreError: missing, damaged or foreign store.
    """
    # an HDF5 file has one writer: lock it before it is opened (or created)
    lock = store_lock(url) if mode != "r" and is_hdf5_url(url) else None
    try:
        backend = open_backend(url, mode, storage_options)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return TrajectoryStore(backend, lock)
