"""The one error type of the stores.

Every problem a store meets on disk (missing path, damaged file, wrong format, a model
that does not fit the stored layout, a missing chunk) is raised as :class:`StoreError`
with a one-line message that names the path and says what to do, so the CLI can print it
as a single red line and exit 2. It is defined in the domain (a :class:`UserError`), so
services can catch it without importing an adapter. :class:`DiskFull` is the one kind
the stores tell apart (a full disk is not damage: free space and run again).
"""

from __future__ import annotations


from tesla.domain.errors import StoreError

__all__ = ["StoreError", "DiskFull"]


class DiskFull(StoreError):
    """The disk (or quota) holding a store is full; what was written before is kept."""
