"""What every tesla store says about itself, named once: its format, version and markers.

A store records its kind in the root attribute ``format`` and its schema version in
``format_version``; a group (an expert, a checkpoint, a set) or a prepared store is
trusted only once its ``complete`` attribute is True, written after everything it vouches
for, and carries CRC-32 checksums (:mod:`.checksum`) of its arrays (``crc32``) and of its
own attributes (``attrs_crc32``). The marker and the attribute digest are written
together and the digest covers the marker, so a damaged marker (a flipped key name, a
false ``complete``) is caught as damage instead of reading as "unfinished": a group that
has a digest but is not marked complete is damaged (:func:`marked_complete`).

Version 2 of each format (this tesla writes it) checksums everything a reader relies on -
every array, every index, every attribute set a reader acts on - and a checksum that is
missing where version 2 puts one is damage, not a reason to skip the check. Version 1
stores (written before) still read, under the rules they were written with: a checksum
is checked where present.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs

from .checksum import attrs_crc
from .errors import StoreError

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
COMPLETE = "complete"
CRC = "crc32"
ATTRS_CRC = "attrs_crc32"
# the first version whose every array, index and attribute set is checksummed
CHECKSUMMED_VERSION = 2


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


TRAJECTORIES = Format("tesla-trajectories", 2, "expert trajectories")
SYNTHETIC = Format("tesla-synthetic", 2, "a synthetic set")
PREPARED = Format("tesla-prepared", 2, "a prepared image set")


def checksummed(version: int) -> bool:
    """Whether a store of ``version`` must carry every checksum (a missing one is damage)."""
    return version >= CHECKSUMMED_VERSION


def missing_checksum(url: str, what: str, fix: str) -> StoreError:
    """The error for a version-2 node without the checksum it must carry."""
    return StoreError(f"{url}: no checksum for {what}, although its store format writes one: the store is damaged"
                      f" or was edited; {fix}")


def completion(attrs_now: Mapping[str, Any]) -> dict:
    """The attributes that mark a group complete: ``complete=True`` and the digest of every
    attribute of the group with the marker set (``attrs_now`` as read back from the store)."""
    final = {k: v for k, v in attrs_now.items() if k != ATTRS_CRC}
    final[COMPLETE] = True
    return {COMPLETE: True, ATTRS_CRC: attrs_crc(final)}


# what a group that is being deleted is marked with: unfinished, and no digest vouching for it
RETIRED = {COMPLETE: False, ATTRS_CRC: None}


def marked_complete(attrs_: Mapping[str, Any], where: str, fix: str) -> bool:
    """Whether a group's attributes say it is complete.

    Raises:
        StoreError: the group has an attribute digest but no ``complete=True`` - a marker
            that was damaged, since tesla writes the two together.
    """
    if attrs_.get(COMPLETE) is True:
        return True
    if attrs_.get(ATTRS_CRC) is not None:
        raise StoreError(f"{where}: its completion marker is damaged (checksummed attributes without"
                         f" complete=True); {fix}")
    return False


def verified_attrs(attrs_: Mapping[str, Any], strict: bool, where: str, fix: str) -> dict:
    """A complete group's attributes without the digest, checked against it (marker included).

    ``strict``: a version-2 store, where a missing digest is damage.
    """
    out = dict(attrs_)
    digest: Optional[int] = out.pop(ATTRS_CRC, None)
    if digest is None and strict:
        raise missing_checksum(where, "the attributes", fix)
    if digest is not None and digest != attrs_crc(out):
        raise StoreError(f"{where}: the attributes do not match their checksum: the store is damaged or was"
                         f" edited; {fix}")
    return out
