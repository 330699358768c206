"""Where stores live: the string policy of paths and fsspec URLs, in one place.

A store is a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...).
Which format a URL names, whether storage options (credentials, endpoints) apply to
it, where each rank of a distributed run writes, and how a URL is shown in records are
decisions about strings only; every layer asks here rather than repeating the rule.

Secrets: storage options go to the stores only; every URL written to ``config.json``,
provenance or events passes through :func:`redact_url`.
"""

from __future__ import annotations

import urllib.parse
from pathlib import PurePath
from typing import Any, Optional

HDF5_SUFFIXES = (".h5", ".hdf5")


def is_hdf5_url(url: str) -> bool:
    """True when ``url`` names an HDF5 file (``.h5`` / ``.hdf5`` suffix); Zarr otherwise."""
    return str(url).lower().rstrip("/").endswith(HDF5_SUFFIXES)


def is_remote(url: str) -> bool:
    """An fsspec URL other than ``file://`` (storage options apply to these only)."""
    url = str(url)
    return "://" in url and not url.startswith("file://")


def options_for(url: str, storage_options: Optional[dict]) -> Optional[dict]:
    """``storage_options`` for a remote URL, None for a local path (where stores refuse them)."""
    return dict(storage_options) if storage_options and is_remote(url) else None


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file://`` dropped)."""
    return str(url).removeprefix("file://")


def redact_url(url: Any) -> str:
    """``url`` without user info or query (``s3://key:secret@b/x?token=t`` -> ``s3://***@b/x``),
    for what is written to config.json, provenance and events."""
    text = str(url)
    if "://" not in text:
        return text
    parts = urllib.parse.urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def rank_store_url(url: str, rank: int, world: int) -> str:
    """Where rank ``rank`` writes experts: its own ``<stem>.rank<k>.h5`` for HDF5 when
    ``world > 1``, else ``url`` (Zarr is shared)."""
    if world == 1 or not is_hdf5_url(url):
        return str(url)
    path = PurePath(url)
    return str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
