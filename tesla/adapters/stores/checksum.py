"""The one checksum of every tesla store: CRC-32 of little-endian bytes.

Each store records a CRC-32 beside what a reader relies on (an expert's snapshots, the
arrays of a checkpoint or a set, a prepared store's image chunks and its indexes) and
checks it on read. That catches what a backend would otherwise hide - a Zarr chunk that
went missing reads back as fill values, a flipped bit reads as a wrong number - and turns
it into one :class:`StoreError`. CRC-32 guards against accidents (bit rot, truncation,
a lost object, a hand edit), not against someone forging a store: anyone can recompute it.

Arrays are hashed as their little-endian bytes in C order, so a value is the same on any
machine and for either storage format; attributes as canonical JSON (sorted keys, no
spaces), which both formats read back to the same values.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterable, Mapping

import numpy as np


def crc32(arr: Any) -> int:
    """CRC-32 of an array's little-endian bytes in C order (its dtype kept)."""
    arr = np.asarray(arr)
    return zlib.crc32(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())


def attrs_crc(attrs: Mapping[str, Any], skip: Iterable[str] = ()) -> int:
    """CRC-32 of ``attrs`` (plain JSON values) as canonical JSON, leaving out the keys in ``skip``."""
    left_out = set(skip)
    kept = {k: v for k, v in attrs.items() if k not in left_out}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return zlib.crc32(text.encode("ascii"))
