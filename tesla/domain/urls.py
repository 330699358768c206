"""Where stores live: the string policy of paths and fsspec URLs, in one place.

A store is a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...).
Which format a URL names, whether storage options (credentials, endpoints) apply to
it, where each rank of a distributed run writes, and how a URL is shown in records are
decisions about strings only; every layer asks here rather than repeating the rule.

Secrets: storage options go to the stores only. A URL may carry credentials of its own
(``s3://KEY:SECRET@bucket/x``, ``memory://user:pw@b/x``, ``https://h/x?token=T``); they
are removed where text leaves the process or is kept, never at each call site: the event
log and the terminal display, the CLI's error line, ``config.json``, the attributes the
services write into stores, and ``tesla info`` pass their text through
:func:`redact_text` (or :func:`redact_json` for plain JSON values), which rewrites every
URL in it with :func:`redact_url`. What a library says about a URL it was given (a
store's repr inside an exception, without the scheme) is caught by the same function's
second pass over ``user:password@`` and ``?key=value``, and by the secrets the CLI
knows it was given (:func:`url_secrets`).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import PurePath
from typing import Any, Iterable, Optional

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
    for what is written to config.json, provenance and events. A fragment
    (``...#checkpoints/3``, how events name a part of a store) is kept."""
    text = str(url)
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. an unbalanced "[" in the host: keep only what cannot be secret
        return text.split("://", 1)[0] + "://" + REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))


REDACTED = "***"
# a URL inside text: a scheme, then anything up to a space, a quote, a bracket or a comma
# (so a URL inside JSON, a Python repr or rich markup ends where its string does)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`\\()\[\]{},]+")
# what a library prints of a URL it was handed, scheme dropped: "/user:pw@bucket/x"
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])[^\s/@:\"'<>`\\()\[\]{},]+:[^\s/@\"'<>`\\()\[\]{},]+@")
# a query after a path, scheme dropped: "/b/x.zarr?token=T&sig=S"
_QUERY_VALUE = re.compile(r"(?<=[^\s\"'])([?&][A-Za-z_][A-Za-z0-9_.\-]*=)[^&\s\"'<>`\\()\[\]{},#]+")
# storage-option keys whose values are credentials (case-insensitive substrings)
_SECRET_KEYS = ("key", "secret", "token", "pass", "cred", "auth", "sig", "sas", "session")
_MIN_SECRET = 4  # shorter strings are not hunted in free text (they would mangle it)


def redact_text(text: Any, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`), any ``user:pw@`` or
    ``?key=value`` a library printed without the URL's scheme blanked, and each of
    ``secrets`` (of 4 characters or more) replaced by ``***``.

    Example: ``"cannot open s3://K:S@b/x (FsspecStore /K:S@b/x)"`` ->
    ``"cannot open s3://***@b/x (FsspecStore /***@b/x)"``.
    """
    text = str(text)
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if "@" in text:
        text = _USERINFO.sub(REDACTED + "@", text)
    if "=" in text:
        text = _QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_json(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A plain JSON value (dicts, lists, strings, numbers) with :func:`redact_text`
    applied to every string in it, keys included: what ``config.json`` and store
    attributes record."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(k, secrets) if isinstance(k, str) else k: redact_json(v, secrets)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_json(v, secrets) for v in value)
    return value


def url_secrets(text: Any) -> list[str]:
    """The credentials of every URL in ``text``: passwords, user names and query values
    (for :func:`redact_text`'s ``secrets`` where a library may echo them without the URL)."""
    found: list[str] = []
    for m in _URL_IN_TEXT.finditer(str(text)):
        try:
            parts = urllib.parse.urlsplit(m.group(0))
        except ValueError:
            continue
        if "@" in parts.netloc:
            user = parts.netloc.rsplit("@", 1)[0]
            found += [p for p in user.split(":", 1) if p]
        found += [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=False)]
    return sorted({s for f in found for s in (f, urllib.parse.unquote(f))})


def option_secrets(options: Optional[dict]) -> list[str]:
    """The values of storage options whose keys name credentials (``key``, ``secret``,
    ``token``, ``password`` ...), as strings, nested dicts included."""
    found: list[str] = []
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            found += option_secrets(v)
        elif any(word in str(k).lower() for word in _SECRET_KEYS) and v is not None:
            found.append(str(v))
    return found


def without_redacted_userinfo(url: str) -> str:
    """A recorded URL whose credentials were redacted (``s3://***@b/x``) as a URL without
    any (``s3://b/x``): opened with ``--storage-option`` credentials, not with ``***``."""
    return str(url).replace("://" + REDACTED + "@", "://", 1)


def rank_store_url(url: str, rank: int, world: int) -> str:
    """Where rank ``rank`` writes experts: its own ``<stem>.rank<k>.h5`` for HDF5 when
    ``world > 1``, else ``url`` (Zarr is shared)."""
    if world == 1 or not is_hdf5_url(url):
        return str(url)
    path = PurePath(url)
    return str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
