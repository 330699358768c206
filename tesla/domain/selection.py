"""PAD's parameter selection: match only the deepest parameters.

PAD (Li et al., 2024, "Prioritize Alignment in Dataset Distillation") observes that the
shallow layers' parameters carry low-level information that the synthetic images should
not be pushed to imitate, and masks them out of the matching. With S the projection on
the selected entries (a diagonal 0/1 matrix, S = S^T = S^2) the objective becomes

    D = ||S (start - target)||^2,      L = ||S (w_N - target)||^2 / D

and, since S is linear, every gradient formula of :mod:`tesla.domain.matching` keeps
its shape with the cotangent restricted: the adjoint starts at
lambda_N = (2/D) S (w_N - target) (the Hessian chain then carries it through every
parameter, as it should: the student still trains all of them), the first-order
cotangent is v = S (2/D)(alpha (target - start) + alpha^2 G), and the lr gradient is
-(2/D) S(w_N - target) . G.

The flat parameter vector lists the tensors in ``model.parameters()`` order, input side
first, so "the deepest parameters" are a suffix of it: a :class:`Selection` is just the
flat index where the suffix begins, and the compute restricts a vector to it with
``compute.select(vec, start)`` (the entries before ``start`` set to zero).

Which suffix: :func:`deepest` keeps whole layers, the shortest suffix of whole layers
holding at least ``fraction`` of all parameters (a layer is the tensors of one module,
e.g. a convolution's weight and bias; they are never split). What PAD's published code
does, read for behaviour: its configs carry a ``depth_ratio`` (0.25-0.5 on CIFAR) that the
code never reads, and the matching instead drops, every iteration, the ``loss_ratio``
fraction of single entries with the smallest squared error ``(w_N - target)^2`` (which
the paper argues are mostly shallow). That entry-wise, per-iteration mask changes the
objective every iteration and is not a slice of the model; the layer mask described in
the paper and README ("mask out shallow-layer parameters") is what is implemented here,
with ``match_fraction = 1 - depth_ratio``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import attrs


@attrs.frozen
class Selection:
    """The matched slice of the flat parameter vector: entries ``start`` .. P - 1.

    Attributes:
        start: flat index where the selected (deepest) parameters begin.
        total: P, the number of parameters (for reporting; None if unknown).
    """

    start: int
    total: Optional[int] = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"the selection's start must be an integer >= 0 (got {self.start!r})")
        if self.total is not None and not self.start < self.total:
            raise ValueError(f"the selection's start {self.start} leaves nothing of {self.total} parameters")

    @property
    def size(self) -> Optional[int]:
        """How many parameters are matched."""
        return None if self.total is None else self.total - self.start

    def restrict(self, compute, vec):
        """``vec`` with the unselected entries set to zero (through the compute)."""
        return compute.select(vec, self.start)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def deepest(layout: Sequence[tuple[str, Sequence[int]]], fraction: float) -> Optional[Selection]:
    """The shortest suffix of whole layers holding at least ``fraction`` of the parameters.

    Args:
        layout: ``[(name, shape), ...]`` in flat-vector order (``FlatView.layout``, also
            what trajectory stores record); tensors of one module (same name up to the
            last dot) form one layer and are kept or dropped together.
        fraction: in (0, 1]; 1 selects everything.

    Returns:
        None when everything is selected (fraction 1, or the cut falls at 0: the plain
        objective, computed as without selection), else the :class:`Selection`.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"match_fraction must be in (0, 1] (got {fraction!r})")
    if not layout:
        raise ValueError("the model has no parameters to select from")
    sizes = [_numel(shape) for _, shape in layout]
    total = sum(sizes)
    if fraction >= 1:
        return None
    # layer boundaries: flat offsets where a new module's tensors begin
    starts: list[int] = []
    offset = 0
    previous = None
    for (name, _), n in zip(layout, sizes):
        if _module(name) != previous:
            starts.append(offset)
            previous = _module(name)
        offset += n
    need = fraction * total
    for start in reversed(starts):  # from the deepest layer up, until enough is kept
        if total - start >= need:
            return None if start == 0 else Selection(start=start, total=total)
    return None
