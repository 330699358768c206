"""Ports: the small protocols through which the pure domain reaches the outside world.

The domain holds the maths of trajectory matching but never a tensor library: it asks
a :class:`Compute` for everything that needs a network and treats what it gets back
(``Vec``, ``Images``) as opaque values supporting ``+``, ``-`` and scalar ``*``.
Adapters implement these protocols (``tesla.adapters``); ``tesla.app.bootstrap``
wires them together. Fakes in ``tests/unit`` implement them too.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable

import attrs

Vec = Any  # a flat parameter vector, opaque to the domain
Images = Any  # a batch of images, opaque to the domain


@attrs.frozen
class Step:
    """What one student step used, recorded in pass 1 and replayed exactly in pass 2.

    Attributes:
        index: position of the step in the iteration (0 .. N-1).
        batch: indices of the synthetic images of this step.
        aug_seed: seed from which the compute draws (and records) this step's
            augmentation parameters; None for no augmentation.
    """

    index: int
    batch: tuple
    aug_seed: Optional[int] = None


@attrs.frozen
class VJP:
    """Result of :meth:`Compute.vjp` for one step at weights ``w`` and cotangent ``v``.

    Attributes:
        data: opaque gradient of ``v . g(w)`` w.r.t. the step's synthetic data (images
            and, where learned, label logits); hand it back to ``Compute.accumulate``.
        hvp: ``d(v . g(w))/dw = H(w) v`` when asked for (``wrt_weights=True``), else None.
        dot: the scalar ``v . g(w)``.
        grad: ``g(w)`` itself, no graph attached, where the compute has it (it computes it
            on the way): the first-order pass 2 then walks the student's trajectory again,
            ``w_{i+1} = w_i - alpha g_i``, instead of storing every ``w_i``. None: the
            engine asks ``grad`` for it (one more forward and backward).
    """

    data: Any
    hvp: Optional[Vec]
    dot: float
    grad: Optional[Vec] = None


@runtime_checkable
class Compute(Protocol):
    """The network maths one distillation iteration needs, bound to the synthetic set
    (images, labels) and the model for that iteration."""

    def grad(self, w: Vec, step: Step) -> Vec:
        """g = grad_w CE(f(w, aug(X[batch])), Y[batch]); no graph is kept."""

    def vjp(self, w: Vec, step: Step, v: Vec, *, wrt_weights: bool) -> VJP:
        """Gradient of ``v . g(w)`` w.r.t. the step's data (and w); one graph, freed on return."""

    def dot(self, a: Vec, b: Vec) -> float:
        """Inner product of two vectors."""

    # Optional: ``vjp_many(ws, steps, v) -> list[VJP]`` computes several independent
    # first-order VJPs at once (batched pass 2); engines use it when present.
    # Optional: ``keep(w) -> Vec`` stores a pass-1 weight vector for pass 2 (e.g. in host
    # memory); ``grad``/``vjp`` then accept what ``keep`` returned.

    def accumulate(self, step: Step, data_grad: Any, scale: float) -> None:
        """Add ``scale * data_grad`` into the running gradient of the synthetic data."""

    def data_grad(self) -> tuple[Images, Any]:
        """The accumulated gradient: (images, label logits or None)."""

    def unrolled(self, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> tuple[float, float]:
        """Reference: autograd through all steps. Accumulates the data gradient and
        returns (loss, dL/dalpha)."""


class TrajectoryStore(Protocol):
    """Expert trajectories: per expert an (epochs+1, P) array of flat parameters."""

    def expert_ids(self) -> list[int]:
        """Ids of the complete experts."""

    def num_snapshots(self, expert: int) -> int:
        """Snapshots of an expert (epochs + 1)."""

    def load(self, expert: int, epoch: int) -> Any:
        """Flat parameters of an expert after ``epoch`` epochs (0 = init), (P,) float32."""


class SyntheticStore(Protocol):
    """Synthetic sets and distillation checkpoints."""

    def write_checkpoint(self, iteration: int, arrays: dict, attrs: dict) -> str:
        """Write a complete checkpoint atomically; returns where."""

    def latest_checkpoint(self) -> Optional[tuple[int, dict, dict]]:
        """(iteration, arrays, attrs) of the last complete checkpoint, or None."""


class DataSource(Protocol):
    """Real images: class-balanced sampling, training batches and the test set."""

    num_classes: int
    image_shape: tuple

    def sample_class(self, c: int, n: int, seed: int) -> Images:
        """``n`` random real images of class ``c`` (without replacement where possible)."""

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[Images, Any]]:
        """One epoch of shuffled (images, labels) training batches."""

    def test_batches(self, batch_size: int) -> Iterator[tuple[Images, Any]]:
        """The test set in batches."""


class EventSink(Protocol):
    """Receives the frozen records of :mod:`tesla.domain.events`."""

    def emit(self, event: Any) -> None: ...


class NullSink:
    """The do-nothing default sink."""

    def emit(self, event: Any) -> None:  # noqa: D401 - protocol method
        return None


class FanOut:
    """Sends every event to several sinks, in order."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, event: Any) -> None:
        for sink in self.sinks:
            sink.emit(event)


class ListSink:
    """Keeps every event in a list (tests, summaries)."""

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def of(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]


# === ports of the experts, evaluation, bench, prepare and info services (below this line) ===
