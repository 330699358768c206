"""An evaluation's record in a synthetic set's provenance, through the store's own API.

``tesla evaluate --scores`` (or ``--record``) keeps what it measured with the set: the
protocol, the settings, every row and DD-Ranking's scores, appended to the set's
``evaluations`` attribute (a list, oldest first). The set is read and written back whole
with :meth:`SyntheticStore.read_set` and :meth:`SyntheticStore.write_set`, so the record
is written exactly like every other provenance attribute (atomically, with the group's
checksums), the arrays are unchanged, and no format of the store's own is touched.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping, Optional

from .synthetic import SyntheticStore

KEY = "evaluations"


def record_evaluation(store: SyntheticStore, record: Mapping[str, Any], *, time: Optional[str] = None) -> str:
    """Append ``record`` (plain JSON) with its UTC ``time`` to the set's ``evaluations``;
    returns where the set now is. The store must be open for writing."""
    syn = store.read_set()
    arrays: dict[str, Any] = {"images": syn.images, "labels": syn.labels, **syn.arrays}
    if syn.soft_labels is not None:
        arrays["soft_labels"] = syn.soft_labels
    if syn.label_logits is not None:
        arrays["label_logits"] = syn.label_logits
    attrs_ = dict(syn.attrs)
    if syn.lr is not None:
        attrs_["lr"] = syn.lr
    stamp = time or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs_[KEY] = [*(attrs_.get(KEY) or []), {"time": stamp, **record}]
    return store.write_set(arrays, attrs_, normalizer_state=syn.normalizer_state or None)
