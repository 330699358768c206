"""Label-assignment strategies: which targets the student steps train on.

TESLA's soft label assignment (SLA, NOTES §3) labels the synthetic images, every
iteration, with the softmax of the expert at the *target* epoch of that iteration:
no training and no new hyperparameter, and what makes 1,000 classes work. The others
are the paper's ablations and baselines:

- ``hard``: class ids;
- ``teacher-target``: the sampled expert at epoch s + M (SLA, the default for many classes);
- ``teacher-last``: the sampled expert at its last epoch;
- ``teacher-epoch``: the sampled expert at a fixed epoch;
- ``learned``: logits, initialised at ``LEARNED_INIT`` on the class entry and 0
  elsewhere, softmaxed in the loss and learned with their own SGD.

A strategy is pure: given the iteration's draw it says where labels come from. The
service asks the compute adapter for the teacher's softmax (in chunks) and records
which expert and epoch made the labels it stores.
"""

from __future__ import annotations

from typing import Optional

import attrs

from tesla.domain.config import LABELS

LEARNED_INIT = 10.0


@attrs.frozen
class LabelPlan:
    """Where this iteration's labels come from.

    Attributes:
        kind: ``hard`` | ``teacher`` | ``learned``.
        expert: the expert whose softmax makes the labels (teacher kinds).
        epoch: that expert's epoch (teacher kinds).
    """

    kind: str
    expert: Optional[int] = None
    epoch: Optional[int] = None

    def provenance(self) -> dict:
        """What a stored synthetic set records about its labels."""
        return {"kind": self.kind, "expert": self.expert, "epoch": self.epoch}

    @classmethod
    def from_provenance(cls, record: dict) -> "LabelPlan":
        """The plan a checkpoint or a set recorded with :meth:`provenance`."""
        return cls(record.get("kind"), expert=record.get("expert"), epoch=record.get("epoch"))

    @property
    def teacher(self) -> bool:
        """The labels are a teacher's softmax (expert ``expert`` at ``epoch``)."""
        return self.kind == "teacher"


def plan_labels(strategy: str, *, expert: int, start_epoch: int, expert_epochs: int, num_snapshots: int,
                fixed_epoch: Optional[int] = None) -> LabelPlan:
    """The label source of one iteration.

    Args:
        strategy: one of :data:`tesla.domain.config.LABELS`.
        expert, start_epoch: the iteration's draw.
        expert_epochs: M; the target epoch is ``start_epoch + M``.
        num_snapshots: snapshots of the expert (epochs + 1); the last is ``num_snapshots - 1``.
        fixed_epoch: the epoch of ``teacher-epoch``.
    """
    if strategy not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)} (got {strategy!r})")
    if strategy == "hard":
        return LabelPlan("hard")
    if strategy == "learned":
        return LabelPlan("learned")
    if strategy == "teacher-target":
        epoch = start_epoch + expert_epochs
    elif strategy == "teacher-last":
        epoch = num_snapshots - 1
    else:
        if fixed_epoch is None:
            raise ValueError("teacher-epoch labels need label_epoch")
        epoch = fixed_epoch
    if not 0 <= epoch < num_snapshots:
        raise ValueError(f"label epoch {epoch} is outside expert {expert}'s snapshots 0..{num_snapshots - 1}")
    return LabelPlan("teacher", expert=expert, epoch=epoch)
