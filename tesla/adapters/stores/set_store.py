"""The :class:`~tesla.domain.ports.SetStore` port over a :class:`~.synthetic.SyntheticStore`.

The distillation service speaks in the domain's records (a
:class:`~tesla.domain.records.Checkpoint`, a :class:`~tesla.domain.records.FinalSet`);
the store speaks in named arrays and attributes, HDF5 or Zarr. This adapter is the
whole translation, so the store's own interface (used by ``tesla info``, the exports,
the tests) stays as it is.
"""

from __future__ import annotations

from typing import Optional

from tesla.domain.records import Checkpoint, FinalSet

from .synthetic import SyntheticSet, SyntheticStore


class SyntheticSetStore:
    """An open synthetic store as the distillation's set store.

    Args:
        store: the open store (mode ``a`` to write, ``r`` to read checkpoints only).
    """

    def __init__(self, store: SyntheticStore) -> None:
        self.store = store

    @property
    def url(self) -> str:
        return self.store.url

    def last_checkpoint(self) -> Optional[Checkpoint]:
        found = self.store.latest_checkpoint()
        if found is None:
            return None
        iteration, arrays, attrs_ = found
        return Checkpoint(iteration=iteration, arrays=arrays, attrs=attrs_)

    def save_checkpoint(self, checkpoint: Checkpoint) -> str:
        return self.store.write_checkpoint(checkpoint.iteration, dict(checkpoint.arrays), dict(checkpoint.attrs))

    def save_set(self, final: FinalSet) -> str:
        return self.store.write_set(dict(final.arrays), dict(final.attrs))

    def read_set(self) -> SyntheticSet:
        """The finished set, as the exports read it."""
        return self.store.read_set()

    def close(self) -> None:
        self.store.close()
