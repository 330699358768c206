"""The :class:`~tesla.domain.ports.Ranks` port over ``torch.distributed``.

A thin face of :class:`~tesla.adapters.torch.dist.DistContext` for the services: the
shard of pass 2 this rank computes, whether it writes, an in-place sum of a tensor
over the ranks, an agreed boolean (one scalar all-reduce: how every rank learns that
any rank was asked to stop), and :meth:`agree` (run a step and stop every rank if any
failed). A plain run uses the domain's :class:`~tesla.domain.ports.SingleProcess`
instead; :func:`ranks_of` picks one or the other, once.
"""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

import torch

from tesla.adapters.torch.dist import DistContext
from tesla.domain.ports import Ranks, SingleProcess

T = TypeVar("T")


class TorchRanks:
    """The ranks of a ``torchrun`` job, through ``ctx``'s process group."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world(self) -> int:
        return self.ctx.world

    @property
    def shard(self) -> tuple[int, int]:
        return self.ctx.shard

    def all_gather(self, obj: object) -> list:
        return self.ctx.all_gather_object(obj)

    @property
    def is_writer(self) -> bool:
        return self.ctx.is_writer

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.ctx.all_reduce_sum_(value)

    def any(self, flag: bool) -> bool:
        if self.ctx.world == 1:
            return bool(flag)
        total = torch.tensor([1.0 if flag else 0.0])
        self.ctx.all_reduce_sum_(total)
        return bool(total.item() > 0)

    def agree(self, fn: Callable[[], T], *, only_writer: bool = False) -> Optional[T]:
        return self.ctx.agree(fn, only_writer=only_writer)


def ranks_of(ctx: Optional[DistContext]) -> Ranks:
    """:class:`TorchRanks` for a job of several processes, else the single-process null object."""
    if ctx is None or ctx.world == 1:
        return SingleProcess()
    return TorchRanks(ctx)
