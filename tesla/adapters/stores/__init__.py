"""Stores for expert trajectories and synthetic sets: one schema, HDF5 or Zarr v3.

``open_trajectory_store`` / ``open_synthetic_store`` pick the format from the URL
(``*.h5``/``*.hdf5``: HDF5; anything else: Zarr, local or any fsspec URL). Every store
problem is a :class:`StoreError` with a one-line message (:class:`DiskFull` for a full
disk). Writers lock what they write (:mod:`.lock`, also the helper for run directories).
Exports and the MTT importer (which need torch) live in :mod:`.export` and :mod:`.mtt`.
"""

from .errors import DiskFull, StoreError
from .open import describe_store, open_store, store_kind
from .synthetic import SyntheticSet, SyntheticStore, open_synthetic_store
from .trajectory import ExpertWriter, TrajectoryMeta, TrajectoryStore, open_trajectory_store

__all__ = [
    "StoreError",
    "DiskFull",
    "ExpertWriter",
    "TrajectoryMeta",
    "TrajectoryStore",
    "open_trajectory_store",
    "SyntheticSet",
    "SyntheticStore",
    "open_synthetic_store",
    "describe_store",
    "open_store",
    "store_kind",
]
