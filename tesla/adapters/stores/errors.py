"""The one error type of the stores.

Every problem a store meets on disk (missing path, damaged file, wrong format, a model
that does not fit the stored layout, a missing chunk) is raised as :class:`StoreError`
with a one-line message that names the path and says what to do, so the CLI can print it
as a single red line and exit 2. It derives from ``ValueError`` so callers that already
treat bad input as ``ValueError`` catch it too.
"""

from __future__ import annotations


class StoreError(ValueError):
    """A store cannot be read or written as asked; the message names the path and the fix."""
