"""What a store holds, read from its attributes and shapes: the StoreInspector port.

``tesla info`` asks this adapter for facts (never the parameter or image arrays, so it
is quick on a large or remote store): :meth:`StoreInspectorOnDisk.prepared` for a
prepared real-data store (``tesla data prepare``), :meth:`~StoreInspectorOnDisk.describe`
for trajectory and synthetic-set stores (:func:`~tesla.adapters.stores.open.describe_store`).
The info service turns the facts into the summary it prints.
"""

from __future__ import annotations

from typing import Any, Optional

from tesla.adapters.stores.backends import open_backend
from tesla.adapters.stores.open import describe_store

PREPARED = "tesla-prepared"  # the format attribute of a prepared real-data store


class StoreInspectorOnDisk:
    """Inspects stores at paths or fsspec URLs (``storage_options`` for the remote ones)."""

    def __init__(self, storage_options: Optional[dict] = None) -> None:
        self.storage_options = storage_options

    def prepared(self, url: str) -> Optional[dict[str, Any]]:
        b = open_backend(url, "r", self.storage_options)
        try:
            attrs_ = b.attrs("")
            if attrs_.get("format") != PREPARED:
                return None
            size = b.size_bytes()
        finally:
            b.close()
        from tesla.adapters.data.prepared import open_prepared

        with open_prepared(url, storage_options=self.storage_options) as data:
            return {"attrs": attrs_, "num_classes": data.num_classes, "image_shape": tuple(data.image_shape),
                    "num_train": data.num_train, "num_test": data.num_test,
                    "class_counts": [len(ix) for ix in data.class_indices()], "size_bytes": size}

    def describe(self, url: str) -> dict[str, Any]:
        return describe_store(url, self.storage_options)
