"""Gradient engines as values: chosen once from the config, then called every iteration.

An engine is a small frozen value holding its own settings (a first-order pass 2 in
chunks or split across ranks, an exact adjoint that remakes its weights) and a
``__call__`` that runs one iteration through :mod:`tesla.domain.matching`. The config ->
engine mapping lives here and nowhere else: the distillation service, the benchmarks and
the public API all build their engine with :func:`engine_for` (or :func:`from_config`),
so a new engine option is one field here, not three copies of a kwargs table.

PAD's parameter selection (``match_fraction``) is a setting of the engine like the
others: :func:`from_config` turns the fraction into a
:class:`~tesla.domain.selection.Selection` from the model's layout, once.

The engines themselves (their maths, memory and exactness) are described in
:mod:`tesla.domain.matching` and ``docs/MATHS.md``.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import attrs

from tesla.domain import matching
from tesla.domain.errors import ConfigError
from tesla.domain.matching import Matched
from tesla.domain.ports import Compute, Step, Vec
from tesla.domain.selection import Selection, deepest

NAMES = matching.ENGINES  # ("tesla", "exact", "unrolled")


class Engine(Protocol):
    """One trajectory-matching iteration: loss, lr gradient, data gradient (in the compute)."""

    name: str

    def __call__(self, compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> Matched:
        ...


def _check(alpha: float, steps: Sequence[Step]) -> None:
    if not steps:
        raise ValueError("at least one student step is needed (steps >= 1)")
    if not alpha > 0.0:
        raise ValueError(f"the student lr must be > 0 (got {alpha})")


@attrs.frozen
class FirstOrder:
    """TESLA's first-order gradient (``tesla``).

    Attributes:
        chunk: pass-2 steps computed together (batched VJPs); 1 streams them one at a time.
        shard: (rank, world): this process's share of pass 2 in a distributed run.
        selection: match only the deepest parameters (PAD); None: all of them.
    """

    chunk: int = 1
    shard: tuple = (0, 1)
    selection: Optional[Selection] = None
    name: str = attrs.field(default="tesla", init=False)

    def __call__(self, compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> Matched:
        _check(alpha, steps)
        return matching.first_order(compute, start, target, alpha, steps, shard=tuple(self.shard), chunk=self.chunk,
                                    selection=self.selection)


@attrs.frozen
class Exact:
    """The reverse-mode adjoint (``exact``).

    Attributes:
        remake_weights: keep every ceil(sqrt N)-th student weight vector and remake the
            others in the backward sweep (about 2 sqrt(N) vectors instead of N).
        segment: an explicit segment length (overrides ``remake_weights``); None: all kept.
        selection: match only the deepest parameters (PAD); None: all of them.
    """

    remake_weights: bool = False
    segment: Optional[int] = None
    selection: Optional[Selection] = None
    name: str = attrs.field(default="exact", init=False)

    def segment_for(self, steps: int) -> Optional[int]:
        if self.segment is not None:
            return self.segment
        return matching.sqrt_segment(steps) if self.remake_weights else None

    def __call__(self, compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> Matched:
        _check(alpha, steps)
        return matching.exact(compute, start, target, alpha, steps, segment=self.segment_for(len(steps)),
                              selection=self.selection)


@attrs.frozen
class Unrolled:
    """MTT's reference: autograd through every step (``unrolled``)."""

    name: str = attrs.field(default="unrolled", init=False)

    def __call__(self, compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> Matched:
        _check(alpha, steps)
        return matching.unrolled(compute, start, target, alpha, steps)


def engine_for(name: str, *, chunk: int = 1, remake_weights: bool = False, segment: Optional[int] = None,
               shard: tuple = (0, 1), selection: Optional[Selection] = None) -> Engine:
    """The engine called ``name`` with its settings; options that do not apply are refused."""
    if name not in NAMES:
        raise ConfigError(f"engine must be one of {', '.join(NAMES)} (got {name!r})")
    world = shard[1]
    if name != "tesla" and world > 1:
        raise ConfigError(f"engine {name!r} cannot split its steps across processes: use --engine tesla")
    if name != "exact" and (remake_weights or segment is not None):
        raise ConfigError(f"remaking weights applies to engine 'exact' only (got {name!r})")
    if name == "unrolled" and selection is not None:
        raise ConfigError("parameter selection (match_fraction < 1) needs engine 'exact' or 'tesla', not "
                          "'unrolled': use --engine exact (the same gradient as unrolled)")
    if name == "tesla":
        return FirstOrder(chunk=chunk, shard=tuple(shard), selection=selection)
    if name == "exact":
        return Exact(remake_weights=remake_weights, segment=segment, selection=selection)
    return Unrolled()


def from_config(cfg: "DistillConfigLike", *, shard: tuple = (0, 1), layout: Optional[Sequence] = None) -> Engine:
    """The engine a :class:`~tesla.domain.config.DistillConfig` asks for (the one mapping).

    Args:
        shard: (rank, world) of a distributed pass 2.
        layout: the student's ``[(name, shape), ...]`` in flat order (``FlatView.layout``);
            needed only when ``match_fraction`` < 1, to place the selection at whole layers.
    """
    chunk = cfg.second_pass_chunk if cfg.engine == "tesla" else 1
    fraction = getattr(cfg, "match_fraction", 1.0)
    selection = None
    if fraction < 1.0:
        if layout is None:
            raise ValueError("match_fraction < 1 needs the model's parameter layout to place the selection")
        selection = deepest(layout, fraction)
    return engine_for(cfg.engine, chunk=chunk, remake_weights=cfg.remake_weights, shard=shard, selection=selection)


class DistillConfigLike(Protocol):
    engine: str
    second_pass_chunk: int
    remake_weights: bool
    match_fraction: float


def match(compute: Compute, start: Vec, target: Vec, alpha: float, steps: Sequence[Step], engine: str = "tesla",
          **options: object) -> Matched:
    """One iteration of the engine called ``engine`` with its options (``chunk``, ``shard``,
    ``segment``, ``remake_weights``, ``selection``): :func:`engine_for` then a call."""
    return engine_for(engine, **options)(compute, start, target, alpha, steps)  # type: ignore[arg-type]
