"""Label-assignment strategies: which targets the student steps train on.

TESLA's soft label assignment (SLA, ``docs/MATHS.md``) labels the synthetic images,
every iteration, with the softmax of the expert at the *target* epoch of that
iteration: no training and no new hyperparameter, and what makes 1,000 classes work.
The others are the paper's ablations and baselines, and DATM's learned soft labels:

- ``hard``: class ids;
- ``teacher-target``: the sampled expert at epoch s + M (SLA, the default for many classes);
- ``teacher-last``: the sampled expert at its last epoch;
- ``teacher-epoch``: the sampled expert at a fixed epoch;
- ``learned``: logits, initialised at ``LEARNED_INIT`` on the class entry and 0
  elsewhere, softmaxed in the loss and learned with their own SGD;
- ``learned-teacher`` (DATM, ICLR 2024): logits learned the same way, but initialised
  from the experts' own logits on the initial real images, and those images chosen
  among the ones the expert classifies correctly, so every label starts on its class
  with the expert's view of what the image also resembles.

A :class:`LabelStrategy` is chosen once from the config (:func:`labels_for`) and then
says, every iteration, where that iteration's labels come from (:meth:`LabelStrategy.plan`)
and, once at the start, how the learned logits begin (:meth:`LabelStrategy.init_plan`).
The service asks the compute adapter for the tensors (teacher softmax or logits, in
chunks) and records which expert and epoch made the labels it stores.

What DATM does to initialise (its ``samples_predicted_correctly`` init, read for
behaviour): every class's real images are scanned in a random order through the first
expert at ``Label_Model_Timestamp`` (default -1, the expert's *last* snapshot), keeping
the first IPC it classifies correctly; the label logits of each chosen image are then the
mean of the logits of every expert (at that same epoch) that classifies it correctly.
We do the same with the complete experts of the store: the chooser is the first
expert, the candidates a random draw of ``candidates(ipc)`` real images per class (where
too few are correct the rest are filled, in draw order, with ones it gets wrong, and
the provenance says how many were correct), and :func:`consensus_weights` gives the
per-image weights of the averaging. The epoch defaults to the last snapshot as in DATM:
the most accurate teacher, so the chosen images are typical of their class and the
logits the most informed; it does not depend on which start epochs the run draws.
``label_epoch`` chooses another.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs

from tesla.domain.config import LABELS, ConfigError

LEARNED_INIT = 10.0
CANDIDATES_PER_IMAGE = 4  # real images drawn per synthetic image for learned-teacher's choice


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

    @property
    def measured(self) -> bool:
        """Run health measures these labels (:mod:`tesla.domain.health`): a teacher's
        softmax or learned logits can drift off their classes; class ids cannot."""
        return self.kind != "hard"


@attrs.frozen
class LabelInit:
    """How learned logits begin: from the class ids, or from the experts' logits.

    Attributes:
        source: ``class`` (``LEARNED_INIT`` on the class entry) | ``experts`` (DATM).
        chooser: ``experts`` only: the expert whose correct predictions choose the
            initial real images.
        experts: ``experts`` only: the experts whose logits are averaged (over those
            that classify each image correctly; :func:`consensus_weights`).
        epoch: ``experts`` only: their epoch; None means each expert's last snapshot.
    """

    source: str
    chooser: Optional[int] = None
    experts: tuple = ()
    epoch: Optional[int] = None

    def epoch_of(self, num_snapshots: int) -> int:
        """The snapshot used for an expert with ``num_snapshots`` snapshots (epochs + 1)."""
        epoch = num_snapshots - 1 if self.epoch is None else self.epoch
        if not 0 <= epoch < num_snapshots:
            raise ConfigError(f"label_epoch {epoch} is outside the experts' snapshots 0..{num_snapshots - 1}: "
                             "choose a smaller --label-epoch")
        return epoch

    def provenance(self, *, epoch: Optional[int] = None, correct: Optional[int] = None,
                   images: Optional[int] = None) -> dict:
        """What the stored set records about its initial logits.

        Args:
            epoch: the snapshot actually used (resolved from ``num_snapshots``).
            correct, images: of the chosen initial images, how many the chooser
                classified correctly, out of how many.
        """
        out: dict = {"source": self.source}
        if self.source == "experts":
            out.update(chooser=self.chooser, experts=list(self.experts),
                       epoch=self.epoch if epoch is None else epoch, correct=correct, images=images)
        return out


@attrs.frozen
class LabelStrategy:
    """A label strategy as a value: what the loop needs to know, chosen once.

    Attributes:
        name: the config name (:data:`tesla.domain.config.LABELS`).
        learned: the labels are logits trained with ``lr_label`` (kept in the state and
            checkpointed) rather than made afresh every iteration.
        init: how learned logits begin: ``class`` | ``experts`` | None (not learned).
        fixed_epoch: ``teacher-epoch``'s epoch, or ``learned-teacher``'s init epoch
            (None there: the last snapshot).
    """

    name: str
    learned: bool = False
    init: Optional[str] = None
    fixed_epoch: Optional[int] = None

    @property
    def chooses_images(self) -> bool:
        """The initial real images are chosen by an expert's correct predictions."""
        return self.init == "experts"

    def plan(self, *, expert: int, start_epoch: int, expert_epochs: int, num_snapshots: int) -> LabelPlan:
        """The label source of one iteration (see :func:`plan_labels`)."""
        return plan_labels(self.name, expert=expert, start_epoch=start_epoch, expert_epochs=expert_epochs,
                           num_snapshots=num_snapshots, fixed_epoch=self.fixed_epoch)

    def init_plan(self, expert_ids: Sequence[int]) -> Optional[LabelInit]:
        """How the learned logits begin (None for the strategies that learn nothing).

        Args:
            expert_ids: the complete experts of the store; the first chooses the images,
                all of them vote on the logits (DATM averages every expert it has).
        """
        if not self.learned:
            return None
        if self.init == "class":
            return LabelInit("class")
        ids = sorted(int(e) for e in expert_ids)
        if not ids:
            raise ValueError("no complete expert in the trajectory store: train experts first (tesla experts)")
        return LabelInit("experts", chooser=ids[0], experts=tuple(ids), epoch=self.fixed_epoch)

    def candidates(self, ipc: int) -> int:
        """Real images to draw per class for the chooser (``ipc`` when nothing is chosen)."""
        return ipc * CANDIDATES_PER_IMAGE if self.chooses_images else ipc


def labels_for(cfg) -> LabelStrategy:
    """The strategy a :class:`~tesla.domain.config.DistillConfig` asks for (the one mapping)."""
    name = cfg.labels
    if name not in LABELS:
        raise ConfigError(f"labels must be one of {', '.join(LABELS)} (got {name!r})")
    if name == "learned":
        return LabelStrategy(name, learned=True, init="class")
    if name == "learned-teacher":
        return LabelStrategy(name, learned=True, init="experts", fixed_epoch=cfg.label_epoch)
    if name == "teacher-epoch":
        if cfg.label_epoch is None:
            raise ConfigError("label_epoch is required when labels is 'teacher-epoch': pass --label-epoch E")
        return LabelStrategy(name, fixed_epoch=cfg.label_epoch)
    return LabelStrategy(name)


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
    if strategy in ("learned", "learned-teacher"):
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


def choose_correct(predictions: Sequence[int], cls: int, n: int) -> tuple[list[int], int]:
    """Which of a class's candidate real images become its initial synthetic images.

    Args:
        predictions: the chooser expert's argmax for each candidate, in draw order.
        cls: the candidates' class.
        n: images wanted (the IPC).

    Returns:
        (indices into ``predictions``, how many of them are correct): the first ``n``
        candidates predicted as ``cls``, in draw order (DATM's rule); where fewer are
        correct, the remaining places go to the first wrongly predicted ones.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if len(predictions) < n:
        raise ValueError(f"{len(predictions)} candidate images cannot give {n} (draw more candidates)")
    correct = [i for i, p in enumerate(predictions) if int(p) == cls]
    chosen = correct[:n]
    if len(chosen) < n:
        chosen += [i for i, p in enumerate(predictions) if int(p) != cls][:n - len(chosen)]
    return chosen, min(len(correct), n)


def consensus_weights(predictions: Sequence[Sequence[int]], class_ids: Sequence[int]) -> list[list[float]]:
    """Per-expert, per-image weights of DATM's averaged initial logits.

    Args:
        predictions: ``predictions[e][i]``: expert ``e``'s argmax for image ``i``.
        class_ids: image ``i``'s class.

    Returns:
        ``w[e][i]``: ``1 / k_i`` for each of the ``k_i`` experts that classify image ``i``
        correctly and 0 for the others, so ``sum_e w[e][i] logits_e[i]`` is the mean of
        the correct experts' logits (DATM). An image no expert gets right (possible
        only where :func:`choose_correct` had to fill) takes the plain mean of all of
        them, where DATM would divide by zero.
    """
    if not predictions:
        raise ValueError("at least one expert is needed")
    n = len(class_ids)
    if any(len(p) != n for p in predictions):
        raise ValueError("every expert needs one prediction per image")
    weights = [[0.0] * n for _ in predictions]
    for i, c in enumerate(class_ids):
        right = [e for e, p in enumerate(predictions) if int(p[i]) == int(c)]
        voters = right or list(range(len(predictions)))
        for e in voters:
            weights[e][i] = 1.0 / len(voters)
    return weights


def choose_initial(predictions: Sequence[int], *, per_class: int, num_classes: int,
                   ipc: int) -> tuple[list[int], int]:
    """``learned-teacher``'s initial images from a pool drawn class by class.

    Args:
        predictions: the chooser's argmax for each pool image; the pool holds
            ``per_class`` images of class 0, then of class 1, ...
        per_class: candidates per class (:meth:`LabelStrategy.candidates`).
        num_classes: K.
        ipc: images wanted per class.

    Returns:
        (indices into the pool, ``ipc`` per class, class by class; how many of them the
        chooser classifies correctly), by :func:`choose_correct` within each class.
    """
    if len(predictions) != per_class * num_classes:
        raise ValueError(f"{len(predictions)} predictions for a pool of {num_classes} x {per_class} images")
    chosen: list[int] = []
    correct = 0
    for c in range(num_classes):
        offset = c * per_class
        picked, right = choose_correct(predictions[offset:offset + per_class], c, ipc)
        chosen += [offset + i for i in picked]
        correct += right
    return chosen, correct


@attrs.frozen
class TeacherStart:
    """``learned-teacher``'s initial set, decided by the service, built by the student
    (:meth:`tesla.domain.ports.Student.initial`).

    Attributes:
        pool: the candidate real images (opaque), ``per_class`` of each class, class by class.
        chosen: indices into ``pool`` of the initial images, ``ipc`` per class, class by class.
        teachers: the voting experts' weight vectors (opaque), in ``LabelInit.experts`` order.
        weights: ``weights[e][i]``: expert ``e``'s weight in image ``i``'s initial logits
            (:func:`consensus_weights`); the logits are ``sum_e weights[e][i] logits_e(x_i)``.
    """

    pool: Any
    chosen: tuple = attrs.field(converter=tuple)
    teachers: tuple = attrs.field(converter=tuple)
    weights: tuple = attrs.field(converter=lambda w: tuple(tuple(float(x) for x in row) for row in w))
