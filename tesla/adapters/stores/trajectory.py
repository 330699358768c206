"""Expert trajectory store: one schema, HDF5 or Zarr v3.

Schema (identical in both formats)::

    /                       attrs: format="tesla-trajectories", format_version=1,
                                   model (ModelConfig as dict), layout ([[name, shape], ...]),
                                   num_params, dataset (dict), created (ISO time)
    /experts/<6-digit id>/  attrs: seed, lr, epochs, test_accuracy (one per snapshot,
                                   null where not measured), train (config dict), ...,
                                   crc32 (one per snapshot), complete=True (written LAST)
        params              (epochs + 1, P) float32, one snapshot per chunk (1, P)

Why this shape: a snapshot is what distillation reads at random (expert, epoch), so one
chunk per snapshot makes every read one object on S3 or one contiguous block in HDF5,
and a trajectory can be written as it is trained (the HDF5 file is flushed after each
snapshot). The ``complete`` marker is written after the data and the checksums, so a
reader never sees an expert whose run was killed; the writer may overwrite it. Expert
ids are explicit so several ranks can write different experts into one Zarr store at
once. The per-snapshot CRC-32 catches what Zarr would otherwise hide (a deleted chunk
reads back as fill values) and any bit rot, on every load.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Optional

import attrs
import numpy as np

from .backend import Backend, as_numpy, open_backend, plain, plain_attrs
from .checksum import crc32
from .errors import StoreError
from .formats import COMPLETE, CRC, FORMAT_KEY, TRAJECTORIES

FORMAT = TRAJECTORIES.name
FORMAT_VERSION = TRAJECTORIES.version
_RESERVED = (COMPLETE, CRC, "epochs")


@attrs.frozen
class TrajectoryMeta:
    """What a trajectory store holds, from its root attributes.

    Attributes:
        model: the ModelConfig of the experts as a plain dict (empty when imported without one).
        layout: ``[[name, shape], ...]`` of the flat vector, in ``parameters()`` order.
        num_params: P, the length of every snapshot.
        dataset: the data the experts were trained on (plain dict).
        format_version: schema version of the store.
        created: ISO time the store was made.
    """

    model: dict
    layout: list
    num_params: int
    dataset: dict
    format_version: int
    created: Optional[str] = None


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
        self.finished = False

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
        b.update_attrs(self.path, {COMPLETE: True})
        b.sync(self.path)
        self.finished = True
        return self.expert_id

    def __enter__(self) -> "ExpertWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()


class TrajectoryStore:
    """Expert trajectories over a :class:`~.backend.Backend` (see the module docstring).

    Open with :func:`open_trajectory_store`. Readers see only complete experts.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._meta: Optional[TrajectoryMeta] = None
        self._complete: dict[int, dict] = {}
        root = backend.attrs("")
        fmt = root.get(FORMAT_KEY)
        if fmt is None:
            if backend.read_only or backend.groups("") or backend.arrays(""):
                backend.close()
                raise StoreError(f"{self.url}: not a tesla trajectory store (no format attribute)")
        elif fmt != FORMAT:
            backend.close()
            raise StoreError(f"{self.url}: holds {fmt!r}, not expert trajectories; pass a trajectory store")
        else:
            try:
                TRAJECTORIES.version_of(root, self.url)
            except StoreError:
                backend.close()
                raise

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
            self._meta = TrajectoryMeta(
                model=dict(root.get("model") or {}),
                layout=normalise_layout(root.get("layout") or []),
                num_params=int(root["num_params"]),
                dataset=dict(root.get("dataset") or {}),
                format_version=TRAJECTORIES.version_of(root, self.url),
                created=root.get("created"),
            )
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
        # one attribute write (one zarr.json), then the first group: a rank opening the
        # store meanwhile sees either an empty store or an initialised one, never half
        b.update_attrs(
            "",
            {
                **TRAJECTORIES.root_attrs(),
                "model": plain_attrs(model),
                "layout": layout_,
                "num_params": int(num_params),
                "dataset": plain_attrs(dataset),
                "created": created,
            },
        )
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
        names must agree where both are given.
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

    def size_bytes(self) -> int:
        return self.backend.size_bytes()

    def close(self) -> None:
        self.backend.close()

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
        """Ids of the complete experts, ascending."""
        out = []
        for i in self._all_ids():
            if i not in self._complete:
                attrs_ = self._attrs_of(i)
                if attrs_.get(COMPLETE) is not True:
                    continue
                self._complete[i] = attrs_  # complete experts never change: cache them
            out.append(i)
        return out

    def incomplete_ids(self) -> list[int]:
        """Ids of experts whose writer has not finished (killed runs, or being written)."""
        return [i for i in self._all_ids() if i not in self._complete and self._attrs_of(i).get(COMPLETE) is not True]

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
            if attrs_.get(COMPLETE) is not True:
                ids = self.expert_ids()
                have = f"{len(ids)} complete: {_ranges(ids)}" if ids else "none complete"
                raise StoreError(f"{self.url}: no complete expert {expert} ({have})")
            self._complete[expert] = attrs_
        return dict(self._complete[expert])

    def num_snapshots(self, expert: int) -> int:
        """Snapshots of an expert: epochs + 1."""
        return int(self.expert_attrs(expert)["epochs"]) + 1

    def _check(self, expert: int, epoch: int, vec: np.ndarray, crcs: list) -> np.ndarray:
        if crcs and checksum(vec) != crcs[epoch]:
            raise StoreError(
                f"{self.url}: expert {expert} snapshot {epoch} is missing or damaged (checksum mismatch);"
                " re-train or re-import this expert"
            )
        return vec

    def load(self, expert: int, epoch: int) -> np.ndarray:
        """Flat parameters (P,) float32 of ``expert`` after ``epoch`` epochs (0 = init)."""
        attrs_ = self.expert_attrs(expert)
        n = int(attrs_["epochs"]) + 1
        if not 0 <= int(epoch) < n:
            raise StoreError(f"{self.url}: expert {expert} has {n} snapshots; epoch {epoch} is out of range 0..{n - 1}")
        vec = self.backend.read(f"{expert_path(expert)}/params", int(epoch)).astype(np.float32, copy=False)
        return self._check(int(expert), int(epoch), vec, attrs_.get(CRC) or [])

    def load_trajectory(self, expert: int) -> np.ndarray:
        """All snapshots of ``expert``, (epochs + 1, P) float32."""
        attrs_ = self.expert_attrs(expert)
        traj = self.backend.read(f"{expert_path(expert)}/params").astype(np.float32, copy=False)
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
    return TrajectoryStore(open_backend(url, mode, storage_options))
