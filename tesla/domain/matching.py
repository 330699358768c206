"""The trajectory-matching objective and three ways to differentiate it.

One iteration (docs/MATHS.md §1): starting at an expert's snapshot ``start`` the student takes N
SGD steps on synthetic batches, ``w_{i+1} = w_i - alpha * g_i``, and the loss is

    L = ||w_N - target||^2 / D,      D = ||start - target||^2.

We need dL/dX (the synthetic data: images and, where learned, label logits) and
dL/dalpha. The three engines below differ only in how they get them:

``unrolled``
    MTT's reference: autograd through all N steps. Exact; the compute keeps every
    step's graph alive, so memory grows linearly in N. Supplied whole by the compute
    port (it is the oracle the others are tested against).

``first_order`` (``tesla``)
    What TESLA's code computes (the paper's Eq. 6). Writing ``w_N = start - alpha G``
    with ``G = sum g_i`` and holding every ``w_i`` fixed, each g_i depends on X only
    through its own batch, so

        dL/dX += vjp_X(g_i at w_i, v),   v = (2/D) (alpha (target - start) + alpha^2 G)
        dL/dalpha = (2/D) (w_N - target) . (-G)

    Pass 1 runs the steps with plain gradients (no double-backward graph) and keeps only
    G and w_N; pass 2 starts again from ``start`` and recomputes one step's graph at a
    time, which yields g_i on the way, so it walks the same trajectory again
    (w_{i+1} = w_i - alpha g_i) instead of storing it: memory is constant in N, the
    weights included (the published code keeps all N + 1 of them). The chunked and
    sharded variants of pass 2 need their w_i out of order, so they keep them. Unlike
    the published code the image gradient keeps its factor 2. It drops the Hessian
    chain (X[b_i] moving w_j for j > i), so it is not the exact gradient.

``exact``
    Reverse-mode adjoint over the stored w_i (not in any published code):
    lambda_N = (2/D)(w_N - target); for i = N-1 .. 0, one VJP of (lambda_{i+1} . g_i)
    at w_i gives the data gradient (times -alpha), the Hessian-vector product
    H_i lambda_{i+1}, and the scalar lambda_{i+1} . g_i:

        dL/dX     += -alpha * d(lambda_{i+1} . g_i)/dX
        dL/dalpha += -(lambda_{i+1} . g_i)
        lambda_i   = lambda_{i+1} - alpha * H_i lambda_{i+1}

    Equal to ``unrolled`` up to rounding, at the activation memory of ``first_order``
    plus N stored parameter vectors, or, with ``segment`` (checkpointing the weights
    themselves: every k-th kept, the others remade segment by segment in the backward
    sweep), about 2 sqrt(N) of them for one more ``grad`` per step.

Parameter selection (PAD, :mod:`tesla.domain.selection`): every engine takes an optional
``selection``; with it, distance, loss and the starting cotangent are over the selected
slice, ``D = ||S(start - target)||^2``, ``L = ||S(w_N - target)||^2 / D``,
``lambda_N = (2/D) S(w_N - target)``, the first-order ``v`` is restricted likewise, and
the rest of each engine is unchanged. The compute restricts vectors with
``select(vec, start)``; without a selection it is never called, so the plain objective
is computed exactly as before. ``unrolled`` (the compute's own autograd loss) takes none.

Everything here works on opaque vectors through :class:`~tesla.domain.ports.Compute`;
the data gradient is accumulated inside the compute (``accumulate``/``data_grad``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import attrs

from tesla.domain.ports import BatchedVJP, Compute, KeepsWeights, Step, Vec
from tesla.domain.selection import Selection

ENGINES = ("tesla", "exact", "unrolled")


@attrs.frozen
class Matched:
    """Scalars of one iteration; the data gradient stays in the compute.

    Attributes:
        loss: ||w_N - target||^2 / ||start - target||^2.
        lr_grad: dL/dalpha.
        distance: D = ||start - target||^2.
        final: w_N (opaque vector), for diagnostics and the next stage.
    """

    loss: float
    lr_grad: float
    distance: float
    final: Optional[Vec] = None


def _restrict(compute: Compute, vec: Vec, selection: Optional[Selection]) -> Vec:
    return vec if selection is None else selection.restrict(compute, vec)


def _distance(compute: Compute, start: Vec, target: Vec, selection: Optional[Selection] = None) -> float:
    diff = _restrict(compute, start - target, selection)
    d = compute.dot(diff, diff)
    if not d > 0.0:
        if selection is not None:
            raise ValueError("the selected (deepest) parameters are identical at start and target: "
                             "raise match_fraction or use a larger expert_epochs")
        raise ValueError("start and target parameters are identical (||start - target|| = 0): "
                         "use expert_epochs >= 1 and a trajectory whose snapshots differ")
    return d


def _keeper(compute: Compute):
    """How pass-1 weights are stored: by the compute where it keeps them itself, else as they are."""
    return compute.keep if isinstance(compute, KeepsWeights) else (lambda w: w)


def _forward(compute: Compute, start: Vec, alpha: float, steps: Sequence[Step],
             every: Optional[int] = 1) -> tuple[dict, Vec, Vec]:
    """Pass 1: the student steps with plain gradients.

    Returns the kept weights ``{i: w_i}`` for every ``i % every == 0`` (none when
    ``every`` is None; through ``compute.keep`` when the compute has it, e.g. copies in
    host memory so device memory does not grow with N), G = sum g_i, and w_N.
    """
    keep = _keeper(compute)
    kept: dict = {}
    w = start
    total = None
    for i, step in enumerate(steps):
        if every is not None and i % every == 0:
            kept[i] = keep(w)
        g = compute.grad(w, step)
        w = w - alpha * g
        total = g if total is None else total + g
    return kept, total, w


def first_order(compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step],
                *, shard: tuple[int, int] = (0, 1), chunk: int = 1,
                selection: Optional[Selection] = None) -> Matched:
    """TESLA's first-order gradient (module docstring) with the correct factor 2.

    Args:
        shard: (rank, world): this process accumulates the data gradient of the steps
            with ``index % world == rank`` only (distributed pass 2; the caller sums the
            data gradients over ranks). Loss and lr gradient are the same on every rank.
        chunk: pass-2 steps handed to ``compute.vjp_many`` together (they are
            independent once pass 1 is done); 1, or a compute without ``vjp_many``,
            means one at a time. Memory grows with ``chunk``, never with the steps.
        selection: match only this slice of the parameters (module docstring).
    """
    rank, world = shard
    distance = _distance(compute, start, target, selection)
    many = compute.vjp_many if chunk > 1 and isinstance(compute, BatchedVJP) else None
    streaming = world == 1 and many is None
    kept, total, final = _forward(compute, start, alpha, steps, every=None if streaming else 1)
    residual = _restrict(compute, final - target, selection)
    loss = compute.dot(residual, residual) / distance
    lr_grad = -(2.0 / distance) * compute.dot(residual, total)
    # v = (2/D)(alpha (target - start) + alpha^2 G) = -alpha * (2/D)(w_N - target)
    v = _restrict(compute, (2.0 / distance) * (alpha * (target - start) + (alpha * alpha) * total), selection)
    if streaming:  # walk the trajectory again; every w_i but the current one is garbage
        w = start
        for step in steps:
            out = compute.vjp(w, step, v, wrt_weights=False)
            compute.accumulate(step, out.data, 1.0)
            g = out.grad if out.grad is not None else compute.grad(w, step)
            del out
            w = w - alpha * g
        return Matched(loss=loss, lr_grad=lr_grad, distance=distance, final=final)
    mine = [(kept[i], step) for i, step in enumerate(steps) if step.index % world == rank]
    for i in range(0, len(mine), chunk if many is not None else 1):
        group = mine[i:i + chunk] if many is not None else mine[i:i + 1]
        if many is not None and len(group) > 1:
            outs = many([w for w, _ in group], [s for _, s in group], v)
        else:
            outs = [compute.vjp(group[0][0], group[0][1], v, wrt_weights=False)]
        for (_, step), out in zip(group, outs):
            compute.accumulate(step, out.data, 1.0)
    return Matched(loss=loss, lr_grad=lr_grad, distance=distance, final=final)


def exact(compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step],
          *, segment: Optional[int] = None, selection: Optional[Selection] = None) -> Matched:
    """The exact gradient by the reverse-mode adjoint (module docstring).

    Args:
        segment: None (or 1) keeps every w_i of pass 1: N vectors. k > 1 keeps only
            w_0, w_k, w_2k, ... and, walking the segments backwards, remakes each
            segment's weights from its first one just before its adjoint steps: at most
            N/k + k vectors (about 2 sqrt(N) at :func:`sqrt_segment`) for one more
            ``grad`` per step. The numbers are the same either way.
        selection: match only this slice of the parameters (module docstring).
    """
    if segment is not None and segment < 1:
        raise ValueError(f"segment must be >= 1 (got {segment})")
    distance = _distance(compute, start, target, selection)
    n, k = len(steps), segment or 1
    keep = _keeper(compute)
    marks, _, final = _forward(compute, start, alpha, steps, every=k)  # the first weights of every segment
    residual = _restrict(compute, final - target, selection)
    loss = compute.dot(residual, residual) / distance
    lam = (2.0 / distance) * residual
    lr_grad = 0.0
    for first in reversed(range(0, n, k)):
        last = min(first + k, n)
        ws = [marks.pop(first)]
        for i in range(first, last - 1):  # remake w_{first+1} .. w_{last-1}
            ws.append(keep(ws[-1] - alpha * compute.grad(ws[-1], steps[i])))
        for i in range(last - 1, first - 1, -1):
            out = compute.vjp(ws[i - first], steps[i], lam, wrt_weights=True)
            compute.accumulate(steps[i], out.data, -alpha)
            lr_grad -= out.dot
            lam = lam - alpha * out.hvp
            ws[i - first] = None  # w_i is no longer needed: free it as we go
    return Matched(loss=loss, lr_grad=lr_grad, distance=distance, final=final)


def sqrt_segment(steps: int) -> int:
    """ceil(sqrt(N)): the segment of :func:`exact` that keeps the fewest weight vectors."""
    return math.isqrt(steps - 1) + 1 if steps > 1 else 1


def unrolled(compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step],
             *, selection: Optional[Selection] = None) -> Matched:
    """MTT's reference: autograd through every step, supplied whole by the compute.

    The compute's loss is over every parameter, so a ``selection`` is refused (use
    ``exact``: the same gradient, to rounding, over any slice)."""
    if selection is not None:
        raise ValueError("parameter selection (match_fraction < 1) needs engine 'exact' or 'tesla', not "
                         "'unrolled': use --engine exact (the same gradient as unrolled)")
    distance = _distance(compute, start, target)
    loss, lr_grad = compute.unrolled(start, target, alpha, steps)
    return Matched(loss=loss, lr_grad=lr_grad, distance=distance, final=None)
