"""Plain values that cross the ports: what a trajectory store describes, what a synthetic
store keeps.

They are the vocabulary of :mod:`tesla.domain.ports` beside the opaque vectors and
arrays the adapters hand around: frozen, free of any framework, so a service and a
hand-written fake of a store speak the same types.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs

Array = Any  # an array as a store reads or writes it (numpy in the adapters), opaque here


@attrs.frozen
class TrajectoryMeta:
    """What a trajectory store holds, from its root attributes.

    Attributes:
        model: the ModelConfig of the experts as a plain dict (empty when imported without one).
        layout: ``[[name, shape], ...]`` of the flat vector, in ``parameters()`` order.
        num_params: P, the length of every snapshot.
        dataset: the data the experts were trained on (plain dict).
        format_version: schema version of the store.
        created: ISO time the store was made.
    """

    model: dict
    layout: list
    num_params: int
    dataset: dict
    format_version: int
    created: Optional[str] = None


@attrs.frozen
class Checkpoint:
    """Everything a distillation needs to continue exactly where it stopped.

    Attributes:
        iteration: the iterations done when the state was taken.
        arrays: named arrays (images, lr, label logits, momentum buffers ...), as the
            student hands them out and takes them back.
        attrs: plain JSON values (the configs, the run's RNG state, the label source).
    """

    iteration: int
    arrays: Mapping[str, Array]
    attrs: Mapping[str, Any]


@attrs.frozen
class FinalSet:
    """A finished synthetic set and its provenance.

    Attributes:
        arrays: ``images`` (N, C, H, W), ``labels`` (N,), ``lr`` and, where the run made
            them, ``soft_labels`` (N, K) and ``label_logits`` (N, K).
        attrs: provenance (configs, label source, iteration, seed, class names, the
            trajectory store, the data's normaliser state ...).
    """

    arrays: Mapping[str, Array]
    attrs: Mapping[str, Any]
