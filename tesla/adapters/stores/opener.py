"""Trajectory stores by URL: the :class:`~tesla.domain.ports.TrajectoryStores` port.

The experts and merge services open stores through this, never by format: HDF5 for
``.h5``/``.hdf5`` paths, Zarr for anything else (local or fsspec URLs). The storage
options (credentials, endpoints) are held here and reach remote URLs only, so a service
never handles a secret. An HDF5 file has one writer, so ranks of a distributed run
write ``<stem>.rank<k>.h5`` files next to it (:func:`rank_store_url`); a Zarr store
keeps each expert in its own objects and is shared.
"""

from __future__ import annotations

import os
from typing import Optional

from tesla.adapters.stores.trajectory import TrajectoryStore, open_trajectory_store
from tesla.domain.urls import is_hdf5_url, is_remote, local_path, options_for, rank_store_url


class TrajectoryStoreOpener:
    """Opens trajectory stores, handing ``storage_options`` to the remote ones."""

    def __init__(self, storage_options: Optional[dict] = None) -> None:
        self.storage_options = storage_options

    def exists(self, url: str) -> bool:
        """A local path that exists, or any remote URL (which opening for writing does
        not change until something is written)."""
        return is_remote(url) or os.path.exists(local_path(url))

    def open(self, url: str) -> TrajectoryStore:
        return open_trajectory_store(str(url), "a", storage_options=options_for(url, self.storage_options))

    def read(self, url: str) -> TrajectoryStore:
        return open_trajectory_store(str(url), "r", storage_options=options_for(url, self.storage_options))

    def shared(self, url: str) -> bool:
        return not is_hdf5_url(url)

    def rank_url(self, url: str, rank: int, world: int) -> str:
        return rank_store_url(url, rank, world)
