"""What every tesla store says about itself, named once: its format, version and markers.

A store records its kind in the root attribute ``format`` and its schema version in
``format_version``; a group (an expert, a checkpoint, a set) or a prepared store is
trusted only once its ``complete`` attribute is True, written after everything it vouches
for, and carries CRC-32 checksums (:mod:`.checksum`) of its arrays (``crc32``).
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from .errors import StoreError

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
COMPLETE = "complete"
CRC = "crc32"


@attrs.frozen
class Format:
    """One kind of store: the name in its ``format`` attribute, the version this tesla writes.

    Attributes:
        name: value of the root ``format`` attribute.
        version: ``format_version`` this tesla writes (and the newest it reads).
        what: what the store holds, for messages ("expert trajectories").
    """

    name: str
    version: int
    what: str

    def root_attrs(self) -> dict:
        return {FORMAT_KEY: self.name, VERSION_KEY: self.version}

    def version_of(self, root: Mapping[str, Any], url: str) -> int:
        """The store's ``format_version`` (refused when newer than this tesla or not a number)."""
        raw = root.get(VERSION_KEY, 1)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise StoreError(f"{url}: format_version {raw!r} is not a version number: the store's root attributes"
                             " are damaged; restore the store or write a new one")
        if raw > self.version:
            raise StoreError(f"{url}: written by a newer tesla (format_version {raw}, this one reads"
                             f" {self.version}); upgrade tesla")
        return raw


TRAJECTORIES = Format("tesla-trajectories", 1, "expert trajectories")
SYNTHETIC = Format("tesla-synthetic", 1, "a synthetic set")
PREPARED = Format("tesla-prepared", 1, "a prepared image set")
