"""Import expert buffers written by the published MTT/TESLA code.

That code saves ``replay_buffer_<N>.pt``: a ``torch.save`` of a list of trajectories; a
trajectory is a list of snapshots (after init and after each epoch); a snapshot is a
list of CPU tensors in ``model.parameters()`` order. Each snapshot is flattened
(concatenation of ``reshape(-1)``, the same order :class:`FlatView` uses) and streamed
into a trajectory store, one expert per trajectory, files in order of N.

Files are loaded with ``torch.load(weights_only=True)``: a buffer is only tensors in
lists, so anything else in the pickle (which could run code) is refused, not executed.
Every file is checked whole (shapes, finite values) before the store is opened, so a
refused import writes nothing; a trajectory already in the store is skipped by its
snapshot checksums, so importing the same buffers twice does not double the experts.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch

from .errors import StoreError
from .formats import CRC
from .trajectory import TrajectoryStore, checksum, normalise_layout, open_trajectory_store

_BUFFER = re.compile(r"^replay_buffer_(\d+)\.pt$")


def buffer_files(src_dir: str) -> list[str]:
    """``replay_buffer_<N>.pt`` files of ``src_dir``, sorted by N."""
    if not os.path.isdir(src_dir):
        raise StoreError(f"{src_dir}: not a folder; pass the folder holding replay_buffer_<N>.pt files")
    found = []
    for name in os.listdir(src_dir):
        m = _BUFFER.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(src_dir, name)))
    if not found:
        raise StoreError(f"{src_dir}: no replay_buffer_<N>.pt files here; pass the MTT buffer folder")
    return [p for _, p in sorted(found)]


def load_buffer(path: str) -> list:
    """One buffer file as a list of trajectories, loaded with ``weights_only=True``."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise StoreError(
            f"{path}: refused to load: it is not plain tensors in lists ({_why(exc)});"
            " an MTT buffer is lists of tensors; re-save it that way if you trust its source"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise StoreError(f"{path}: cannot read this buffer file ({type(exc).__name__}: {exc}); is it damaged?") from exc
    if not isinstance(data, (list, tuple)):
        raise StoreError(f"{path}: holds a {type(data).__name__}, not a list of trajectories")
    return list(data)


def _why(exc: BaseException) -> str:
    """The informative line of torch's long weights-only error (``Unsupported global ...``)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = " ".join(text.split()).split(". ")[0].strip(" .")
    return reason[:200] if reason else type(exc).__name__


def _snapshot_shapes(snapshot: Any, where: str) -> list[list[int]]:
    if not isinstance(snapshot, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in snapshot):
        raise StoreError(f"{where}: a snapshot must be a list of tensors in parameters() order")
    return [list(t.shape) for t in snapshot]


def model_layout(model: Mapping[str, Any]) -> list:
    """``[[name, shape], ...]`` of the model a ModelConfig dict describes."""
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model
    from tesla.domain.config import ModelConfig, from_dict

    return normalise_layout(FlatView(build_model(from_dict(ModelConfig, dict(model)))).layout)


def import_mtt(
    src_dir: str,
    store: Union[TrajectoryStore, str],
    model: Optional[Mapping[str, Any]] = None,
    *,
    dataset: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[dict] = None,
    on_expert: Optional[Callable[[int, str, int], None]] = None,
    on_skip: Optional[Callable[[int, str, int], None]] = None,
) -> list[int]:
    """Import every trajectory of ``src_dir``'s buffer files into ``store``.

    Every file is read and checked first (lists of tensors, one layout throughout, the
    model's shapes, finite numbers); only then is the store opened and written, so a bad
    file anywhere leaves the store as it was. A trajectory the store already holds (the
    same snapshot checksums: importing the same buffers twice) is skipped, not doubled.

    Args:
        src_dir: folder with ``replay_buffer_<N>.pt`` files.
        store: an open :class:`TrajectoryStore` (mode ``"a"``) or a URL to open.
        model: ModelConfig as a dict (or a ModelConfig); when given, the snapshot shapes
            must match its layout and its parameter names are recorded; else the names
            are ``p0, p1, ...``.
        dataset: what the experts were trained on (e.g. ``{"name": "cifar10", "zca": True}``).
        storage_options: fsspec options when ``store`` is a remote URL.
        on_expert: called with (expert id, source file, index in file) after each expert.
        on_skip: called with (the id it has in the store, source file, index in file) for
            each trajectory the store already holds.

    Returns:
        Ids of the imported experts, in file order (skipped ones not included).

    Raises:
        StoreError: no buffers, a file that is not lists of tensors, shapes that do not
            fit the model or the store, NaN or infinite values.
    """
    if model is not None and not isinstance(model, Mapping):
        import attrs

        model = attrs.asdict(model, retain_collection_types=False)
    files = buffer_files(src_dir)
    layout, checked = _check_files(files, model)  # nothing is opened for writing before this passes
    num_params = sum(int(np.prod(s)) for _, s in layout)
    own = isinstance(store, str)
    st = open_trajectory_store(store, "a", storage_options=storage_options) if own else store
    ids: list[int] = []
    try:
        st.initialize(dict(model or {}), layout, num_params, dict(dataset or {"source": os.path.abspath(src_dir)}))
        held = {tuple(st.expert_attrs(i).get(CRC) or ()): i for i in st.expert_ids()}
        for path in files:
            fname = os.path.basename(path)
            for j, trajectory in enumerate(load_buffer(path)):
                crcs = checked[(path, j)]
                if crcs in held:
                    if on_skip is not None:
                        on_skip(held[crcs], fname, j)
                    continue
                attrs_ = {"source": fname, "index": j, "imported": "mtt", "seed": None, "lr": None}
                with st.begin_expert(None, len(trajectory) - 1, attrs_) as w:
                    for e, snapshot in enumerate(trajectory):
                        w.write(e, _flat(snapshot))
                held[crcs] = w.expert_id
                ids.append(w.expert_id)
                if on_expert is not None:
                    on_expert(w.expert_id, fname, j)
    finally:
        if own:
            st.close()
    return ids


def _flat(snapshot: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in snapshot])


def _check_files(files: list[str], model: Optional[Mapping[str, Any]]) -> tuple[list, dict]:
    """Read every buffer once and check it: (layout, {(file, index): snapshot checksums}).

    Raises:
        StoreError: naming the file, trajectory and snapshot of the first problem.
    """
    layout: Optional[list] = None
    checked: dict = {}
    for path in files:
        for j, trajectory in enumerate(load_buffer(path)):
            where = f"{path}: trajectory {j}"
            if not isinstance(trajectory, (list, tuple)) or not trajectory:
                raise StoreError(f"{where}: must be a non-empty list of snapshots")
            if layout is None:
                layout = _layout_for(_snapshot_shapes(trajectory[0], where), model, path)
            crcs = []
            for e, snapshot in enumerate(trajectory):
                if _snapshot_shapes(snapshot, f"{where} snapshot {e}") != [s for _, s in layout]:
                    raise StoreError(f"{where} snapshot {e}: tensor shapes differ from the first snapshot's")
                flat = _flat(snapshot)
                if not bool(torch.isfinite(flat).all()):
                    raise StoreError(f"{where} snapshot {e}: holds NaN or infinite values; an expert must be finite"
                                     " to be matched (leave this buffer out or re-train it)")
                crcs.append(checksum(flat.numpy()))
            checked[(path, j)] = tuple(crcs)
    if layout is None:
        raise StoreError(f"{os.path.dirname(files[0])}: the buffer files hold no trajectory")
    return layout, checked


def _layout_for(shapes: list, model: Optional[Mapping[str, Any]], path: str) -> list:
    if model is None:
        return [[f"p{i}", s] for i, s in enumerate(shapes)]
    layout = model_layout(model)
    if [s for _, s in layout] != shapes:
        raise StoreError(
            f"{path}: snapshots have {len(shapes)} tensors of shapes {shapes[:4]}... but the model has"
            f" {len(layout)} of shapes {[s for _, s in layout][:4]}...; pass the model the buffer was trained with"
        )
    return layout
