"""Run health: do the labels still name their classes, is the matching still moving?

Two failures end a distillation at chance accuracy while it reports success:

- **label collapse**: with teacher labels (TESLA's SLA) and a large image step, every
  synthetic image can drift until every teacher calls it the same class; the stored
  soft labels then all peak on that class (seen at 10.5 %, chance, on a 10-class set
  where hard labels reach 84 %). Measured by the *agreement*: the fraction of synthetic
  images whose label argmax (teacher softmax or learned logits) is their own class.
  Hard labels agree by construction, so they are not measured: a run with hard
  labels reports no agreement or entropy (None), and only the stall check applies.
- **stall**: the learned student lr is pushed down to its floor ``min_lr`` while the
  matching loss stays near 1: the student no longer moves towards the target and the
  images stop learning anything (seen with short experts).

Everything here is pure: the adapter hands over plain per-image argmaxes, class ids and
entropies (or probabilities); :class:`Streaks` is the only state (two counters, which
the service checkpoints so a resumed run counts on exactly), and :class:`Guard` turns
it into a :class:`Verdict` whose message says what failed and what to change.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import attrs

LR_FLOOR_SLACK = 1e-3  # the clamp sets the lr to exactly min_lr; this absorbs its float32 storage


def label_agreement(argmaxes: Sequence[int], class_ids: Sequence[int]) -> float:
    """The fraction of images whose label argmax is their own class id."""
    if len(argmaxes) != len(class_ids):
        raise ValueError(f"{len(argmaxes)} label argmaxes for {len(class_ids)} images")
    if not class_ids:
        raise ValueError("no images to measure")
    return sum(int(a) == int(c) for a, c in zip(argmaxes, class_ids)) / len(class_ids)


def dominant_class(argmaxes: Sequence[int]) -> tuple[int, float]:
    """(the class most labels name, the fraction of images whose label names it);
    ties go to the smaller class id."""
    if not argmaxes:
        raise ValueError("no images to measure")
    counts = Counter(int(a) for a in argmaxes)
    cls = min(counts, key=lambda c: (-counts[c], c))
    return cls, counts[cls] / len(argmaxes)


def entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy (nats) of one label distribution; 0 log 0 = 0."""
    total = 0.0
    for p in probabilities:
        p = float(p)
        if p < 0 or not math.isfinite(p):
            raise ValueError(f"a probability must be finite and >= 0 (got {p})")
        if p > 0:
            total -= p * math.log(p)
    return total


def mean_entropy(values: Sequence) -> float:
    """Mean label entropy (nats) from per-image entropies, or from per-image probability
    rows (each row's :func:`entropy` first)."""
    if not values:
        raise ValueError("no images to measure")
    per_image = [entropy(v) if isinstance(v, (list, tuple)) else float(v) for v in values]
    return sum(per_image) / len(per_image)


@attrs.frozen
class Health:
    """One iteration's measures, for the event, the JSON log, the progress line and the TUI.

    Attributes:
        agreement: fraction of images whose label argmax is their class.
        entropy: mean label entropy in nats (0 for hard labels; log K is uniform).
        dominant: the class most labels name.
        dominant_share: the fraction of images whose label names it.
    """

    agreement: float
    entropy: float
    dominant: int
    dominant_share: float

    @classmethod
    def measure(cls, argmaxes: Sequence[int], class_ids: Sequence[int], entropies: Sequence) -> "Health":
        """From per-image label argmaxes, class ids and entropies (or probability rows)."""
        dom, share = dominant_class(argmaxes)
        return cls(agreement=label_agreement(argmaxes, class_ids), entropy=mean_entropy(entropies),
                   dominant=dom, dominant_share=share)


@attrs.frozen
class Streaks:
    """How many iterations in a row each failure condition has held (checkpoint these)."""

    low_agreement: int = 0
    stalled: int = 0

    def to_dict(self) -> dict:
        return {"low_agreement": self.low_agreement, "stalled": self.stalled}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "Streaks":
        """From :meth:`to_dict`; a checkpoint from before run health starts at zero."""
        data = data or {}
        return cls(low_agreement=int(data.get("low_agreement", 0)), stalled=int(data.get("stalled", 0)))


@attrs.frozen
class Verdict:
    """Why a run must stop: ``kind`` is ``collapsed`` or ``stalled``; ``message`` is one
    line saying what failed and what to change."""

    kind: str
    message: str


def default_min_agreement(num_classes: int) -> float:
    """Twice chance (2 / K), at most 0.75: labels at chance name no class at all, and an
    early teacher on 1,000 classes legitimately agrees with only a few per cent."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (got {num_classes})")
    return min(2.0 / num_classes, 0.75)


@attrs.frozen
class Guard:
    """Thresholds of run health (:func:`guard_for` builds one from the config).

    Attributes:
        min_agreement: agreement below this counts towards a collapse; 0 never does.
        collapse_iterations: that many low iterations in a row are a collapse.
        stall_iterations: that many stalled iterations in a row are a stall; 0: never.
        stall_tolerance: a loss above ``1 - stall_tolerance`` is "near 1".
        min_lr: the learned lr's floor.
    """

    min_agreement: float
    collapse_iterations: int = 10
    stall_iterations: int = 100
    stall_tolerance: float = 0.05
    min_lr: float = 1e-6

    def at_floor(self, lr: float) -> bool:
        return lr <= self.min_lr * (1.0 + LR_FLOOR_SLACK)

    def observe(self, streaks: Streaks, *, agreement: Optional[float], lr: float, loss: float) -> Streaks:
        """The streaks after one more iteration with these measures.

        Args:
            agreement: None where the labels are not measured (hard labels: the class
                ids name their classes by construction), which never counts as low.
        """
        low = self.min_agreement > 0 and agreement is not None and agreement < self.min_agreement
        stalled = self.stall_iterations > 0 and self.at_floor(lr) and loss >= 1.0 - self.stall_tolerance
        return Streaks(low_agreement=streaks.low_agreement + 1 if low else 0,
                       stalled=streaks.stalled + 1 if stalled else 0)

    def verdict(self, streaks: Streaks, health: Optional[Health], *, iteration: int) -> Optional[Verdict]:
        """Whether the run must stop after ``iteration`` (1-based), and why (``health``:
        this iteration's, None where the labels are not measured)."""
        if health is not None and self.min_agreement > 0 and streaks.low_agreement >= self.collapse_iterations:
            return self._collapsed(health, f"for {streaks.low_agreement} iterations up to iteration {iteration}")
        if self.stall_iterations > 0 and streaks.stalled >= self.stall_iterations:
            return Verdict("stalled", (
                f"the run stalled: the learned lr has sat at its floor min_lr {self.min_lr:g} while the matching "
                f"loss stayed above {1.0 - self.stall_tolerance:g} for {streaks.stalled} iterations up to "
                f"iteration {iteration} (no matching progress); lower --lr-lr (it pushed the lr to its floor) "
                "or --lr-img, or use --engine exact; check that the experts move between start and target "
                "(train longer experts, or raise --expert-epochs); --stall-iterations 0 turns this check off"))
        return None

    def check_stored(self, health: Health) -> Optional[Verdict]:
        """Whether the labels about to be stored with a completed set still name their
        classes (no patience: a stored set must)."""
        if self.min_agreement > 0 and health.agreement < self.min_agreement:
            return self._collapsed(health, "in the set about to be stored")
        return None

    def _collapsed(self, health: Health, when: str) -> Verdict:
        return Verdict("collapsed", (
            f"the labels collapsed: only {health.agreement:.1%} of the synthetic images have a label whose argmax "
            f"is their own class (min_label_agreement {self.min_agreement:g}) {when}, and "
            f"{health.dominant_share:.0%} of the labels name class {health.dominant}; lower --lr-img (halve it) "
            "and resume, or start again with --labels learned-teacher or --labels hard, or with --engine exact"))


def guard_for(cfg, num_classes: int) -> Guard:
    """The guard a :class:`~tesla.domain.config.DistillConfig` asks for."""
    threshold = cfg.min_label_agreement
    if threshold is None:
        threshold = default_min_agreement(num_classes)
    return Guard(min_agreement=float(threshold), collapse_iterations=cfg.collapse_iterations,
                 stall_iterations=cfg.stall_iterations, stall_tolerance=float(cfg.stall_tolerance),
                 min_lr=float(cfg.min_lr))
