"""Which backend a store URL gets: HDF5 (h5py) for ``.h5``/``.hdf5`` files, Zarr v3 otherwise.

Kept apart from :mod:`.backend` (the abstract interface both formats implement) so that the
interface module imports neither format, and neither format imports this chooser.
"""

from __future__ import annotations

from typing import Optional

from tesla.domain.urls import is_hdf5_url

from .backend import Backend
from .errors import StoreError


def open_backend(url: str, mode: str, storage_options: Optional[dict] = None) -> Backend:
    """The backend for ``url``: HDF5 for ``.h5``/``.hdf5``, Zarr v3 for anything else.

    Args:
        url: file path, directory path or fsspec URL (``memory://x``, ``s3://bucket/x``).
        mode: ``"r"`` (read only; the store must exist), ``"a"`` (read/write, create if
            missing) or ``"w"`` (HDF5 only: a fresh file, used for atomic rewrites).
        storage_options: fsspec options for remote Zarr URLs (credentials, endpoint).
    """
    if mode not in ("r", "a", "w"):
        raise StoreError(f"{url}: mode must be 'r' or 'a' (got {mode!r})")
    url = str(url)
    if is_hdf5_url(url):
        if storage_options:
            raise StoreError(f"{url}: storage options apply to Zarr URLs only; HDF5 stores are local files")
        from .hdf5 import H5Backend

        return H5Backend(url, mode)
    if mode == "w":
        raise StoreError(f"{url}: mode 'w' is for HDF5 files only")
    from .zarr_store import ZarrBackend

    return ZarrBackend(url, mode, storage_options)
