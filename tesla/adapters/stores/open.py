"""Open any tesla store by what it holds, and describe it (``tesla info``).

A store says what it is in its root ``format`` attribute; :func:`store_kind` reads only
that, and :func:`describe_store` gathers a plain-JSON summary (no image or parameter
arrays are read) that the CLI prints as a table or as JSON.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from . import synthetic as _syn
from . import trajectory as _traj
from .backends import open_backend
from .errors import StoreError
from .formats import FORMAT_KEY


def store_kind(url: str, storage_options: Optional[dict] = None) -> str:
    """``"trajectories"`` or ``"synthetic"``; StoreError for anything else."""
    b = open_backend(url, "r", storage_options)
    try:
        fmt = b.attrs("").get(FORMAT_KEY)
    finally:
        b.close()
    if fmt == _traj.FORMAT:
        return "trajectories"
    if fmt == _syn.FORMAT:
        return "synthetic"
    what = f"format {fmt!r}" if fmt else "no format attribute"
    raise StoreError(f"{url}: not a tesla store ({what}); pass a trajectory or synthetic-set store")


def open_store(
    url: str, storage_options: Optional[dict] = None
) -> Union[_traj.TrajectoryStore, _syn.SyntheticStore]:
    """Open ``url`` read-only as whichever store it is."""
    if store_kind(url, storage_options) == "trajectories":
        return _traj.open_trajectory_store(url, "r", storage_options=storage_options)
    return _syn.open_synthetic_store(url, "r", storage_options=storage_options)


def describe_store(url: str, storage_options: Optional[dict] = None) -> dict[str, Any]:
    """Plain-JSON summary of the store at ``url``.

    Trajectories: kind, format_version, model, dataset, num_params, layout size, experts
    (id, epochs, final test accuracy, seed), incomplete ids, size. Synthetic sets:
    kind, format_version, checkpoints, set (images shape, ipc, labels kind, lr,
    provenance), size.
    """
    store = open_store(url, storage_options)
    try:
        if isinstance(store, _traj.TrajectoryStore):
            m = store.meta
            experts = []
            for i in store.expert_ids():
                a = store.expert_attrs(i)
                acc = a.get("test_accuracy") or []
                final = next((x for x in reversed(acc) if x is not None), None)
                experts.append({"id": i, "epochs": a.get("epochs"), "final_accuracy": final, "seed": a.get("seed")})
            return {
                "kind": "trajectories",
                "url": url,
                "format_version": m.format_version,
                "created": m.created,
                "model": m.model,
                "dataset": m.dataset,
                "num_params": m.num_params,
                "tensors": len(m.layout),
                "experts": experts,
                "incomplete": store.incomplete_ids(),
                "size_bytes": store.size_bytes(),
            }
        summary = store.summary()
        return {"kind": "synthetic", "url": url, **summary, "size_bytes": store.size_bytes()}
    finally:
        store.close()
