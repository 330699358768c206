"""Store URLs: which are remote, which options reach them, and what may be recorded.

Credentials and endpoints travel as fsspec storage options to the stores only; every
URL written to ``config.json``, provenance or events passes through :func:`redact_url`
first, so a secret in a URL's user info or query never lands in a record.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Optional


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
