"""The info service: say what a store holds, as one plain-JSON summary.

A prepared real-data store (classes, images per split and per class, the statistics
recorded when it was prepared, its source), or a trajectory or synthetic-set store (the
inspector's summary as it is). Facts come from a
:class:`~tesla.domain.ports.StoreInspector` (attributes and shapes only), so this is
quick on a large store or an object store; ``tesla info`` prints the summary or, with
``--json``, emits it as it is.
"""

from __future__ import annotations

from typing import Any

from tesla.domain.ports import StoreInspector
from tesla.domain.urls import redact_json


def summarise(url: str, inspector: StoreInspector) -> dict[str, Any]:
    """The summary of the store at ``url``; its ``kind`` is ``prepared``, ``trajectories``
    or ``synthetic``. StoreError (or OSError) when there is no readable store there."""
    facts = inspector.prepared(url)
    summary = inspector.describe(url) if facts is None else prepared_summary(url, facts)
    # what a store records is shown as it is, less any credential (the URL asked for, a
    # trajectory store or data folder recorded by whoever made the store)
    return redact_json(summary)


def prepared_summary(url: str, facts: dict[str, Any]) -> dict[str, Any]:
    """A prepared store's summary from the inspector's facts."""
    attrs_ = facts["attrs"]
    counts = facts["class_counts"]
    return {"kind": "prepared", "url": url, "format_version": attrs_.get("format_version"),
            "num_classes": facts["num_classes"], "image_shape": list(facts["image_shape"]),
            "num_train": facts["num_train"], "num_test": facts["num_test"], "per_class_min": min(counts),
            "per_class_max": max(counts), "mean": attrs_.get("mean"), "std": attrs_.get("std"),
            "source": attrs_.get("source"), "size_bytes": facts["size_bytes"]}
