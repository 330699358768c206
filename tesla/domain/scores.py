"""DD-Ranking's scores: what a distilled set carries beyond labels and augmentation.

DD-Ranking (NUS-HPC-AI-Lab, ``pip install ddranking``; arXiv 2505.13300) ranks distilled
sets by two scores, each built from test accuracies of networks trained under paired
settings, so that neither a strong teacher (soft labels, knowledge distillation) nor
heavy augmentation can pass for informative images:

Label-Robust Score (LRS), from four accuracies:

- ``HLR = Acc(real, hard) - Acc(syn, hard)``: hard-label recovery, how far the set
  trained with hard labels stays below the whole real training set (lower is better);
- ``IOR = Acc(syn, any) - Acc(rdm, any)``: improvement over random, the set under the
  method's own evaluation (soft labels, a teacher, any loss) against randomly selected
  real images at the same images per class under *the same* evaluation;
- ``alpha = w * IOR - (1 - w) * HLR`` with ``w`` in [0, 1] (0.5 on the leaderboard);
- ``LRS = (exp(alpha) - exp(-1)) / (e - exp(-1))``.

Augmentation-Robust Score (ARS), from four more:

- ``beta = g * (Acc(syn, aug) - Acc(rdm, aug)) + (1 - g) * (Acc(syn, no aug) - Acc(rdm, no aug))``
  with ``g`` in [0, 1] (0.5 by default); the ``aug`` pair is the IOR pair;
- ``ARS = (exp(beta) - exp(-1)) / (e - exp(-1))``.

The units. DD-Ranking's documentation (README "Label-Robust Score", docs
``metrics``/introduction) says the exponential maps alpha to [0, 1] and prints the score
"x 100 %": that holds when accuracies are fractions, so alpha is in [-1, 1]. Its code
(``ddranking`` 0.2.0, ``metrics/soft_label.py``, ``hard_label.py``, ``aug_robust.py``)
applies the same formula to accuracies in *percent* (its ``accuracy`` multiplies by 100),
so alpha is in percentage points: any set whose HLR exceeds its IOR by a few points then
scores about ``-exp(-1) / (e - exp(-1)) = -0.1565``, and positive gaps blow up. Both are
offered: ``convention="documented"`` (the default) divides the percent differences by 100
before the exponential; ``convention="ddranking-0.2.0"`` reproduces the package's numbers
from percent accuracies exactly. Every accuracy given to this module is in percent, as
``tesla evaluate`` reports it; HLR, IOR and the ARS gains are returned in percentage
points either way.

Aggregation follows DD-Ranking: each evaluation round ``i`` pairs the i-th accuracy of
every setting, the score is computed per round, and the reported numbers are the mean and
the population standard deviation (``numpy.std``, ddof 0) over rounds. Because the
exponential is not linear, the mean LRS is not the LRS of the mean accuracies; the
per-round functions here are for both uses.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import attrs

from tesla.domain.errors import ConfigError

CONVENTIONS = ("documented", "ddranking-0.2.0")
DEFAULT_WEIGHT = 0.5

# The score of alpha: (e^alpha - e^-1) / (e - e^-1), 0 at alpha = -1, 1 at alpha = 1.
_LOW = math.exp(-1.0)
_SPAN = math.e - _LOW


def check_weight(name: str, w: float) -> float:
    """``w`` as a float when it is a number in [0, 1]; ConfigError naming ``name`` otherwise."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1] (got {w!r}); DD-Ranking's default is 0.5")
    return float(w)


def _unit(convention: str) -> float:
    """Percentage points per unit of the exponent: 100 (fractions) or 1 (as ddranking computes)."""
    if convention == "documented":
        return 100.0
    if convention == "ddranking-0.2.0":
        return 1.0
    raise ConfigError(f"unknown score convention {convention!r}: choose from {', '.join(CONVENTIONS)}")


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite accuracy in percent (got {value!r})")
    return float(value)


def exp_normalise(x: float) -> float:
    """``(exp(x) - exp(-1)) / (e - exp(-1))``: maps [-1, 1] onto [0, 1], increasing."""
    return (math.exp(x) - _LOW) / _SPAN


def hard_label_recovery(full_hard: float, syn_hard: float) -> float:
    """HLR = Acc(real, hard) - Acc(syn, hard), in percentage points (lower is better)."""
    return _finite("full-data accuracy", full_hard) - _finite("synthetic hard-label accuracy", syn_hard)


def improvement_over_random(syn_any: float, rdm_any: float) -> float:
    """IOR = Acc(syn, any) - Acc(rdm, any), in percentage points (higher is better)."""
    return _finite("synthetic accuracy", syn_any) - _finite("random-real accuracy", rdm_any)


def label_robust_score(hlr: float, ior: float, *, weight: float = DEFAULT_WEIGHT,
                       convention: str = "documented") -> float:
    """LRS = (exp(alpha) - exp(-1)) / (e - exp(-1)), alpha = w * IOR - (1 - w) * HLR.

    Args:
        hlr, ior: hard-label recovery and improvement over random, in percentage points.
        weight: ``w`` in [0, 1], the weight of IOR (DD-Ranking's ``lrs_lambda``).
        convention: ``documented`` (alpha from fractions; LRS in [0, 1] when both terms
            are within [-100, 100] points) or ``ddranking-0.2.0`` (alpha from percentage
            points, as the package computes it).
    """
    w = check_weight("weight", weight)
    alpha = (w * _finite("IOR", ior) - (1.0 - w) * _finite("HLR", hlr)) / _unit(convention)
    return exp_normalise(alpha)


def augmentation_robust_score(aug_gain: float, naug_gain: float, *, weight: float = DEFAULT_WEIGHT,
                              convention: str = "documented") -> float:
    """ARS = (exp(beta) - exp(-1)) / (e - exp(-1)), beta = g * aug_gain + (1 - g) * naug_gain.

    Args:
        aug_gain: Acc(syn, aug) - Acc(rdm, aug), in percentage points.
        naug_gain: Acc(syn, no aug) - Acc(rdm, no aug), in percentage points.
        weight: ``g`` in [0, 1] (DD-Ranking's ``ars_lambda``).
        convention: as in :func:`label_robust_score`.
    """
    g = check_weight("weight", weight)
    beta = (g * _finite("augmented gain", aug_gain) + (1.0 - g) * _finite("unaugmented gain", naug_gain))
    return exp_normalise(beta / _unit(convention))


@attrs.frozen
class Stat:
    """Mean and population standard deviation over evaluation rounds (DD-Ranking's report)."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        vals = tuple(float(v) for v in values)
        return cls(mean=statistics.fmean(vals), std=statistics.pstdev(vals), values=vals)


@attrs.frozen
class LabelRobustness:
    """HLR, IOR and LRS over rounds; HLR and IOR in percentage points, LRS a fraction."""

    hlr: Stat
    ior: Stat
    lrs: Stat
    weight: float
    convention: str


@attrs.frozen
class AugmentationRobustness:
    """The two gains (percentage points) and ARS (a fraction) over rounds."""

    aug_gain: Stat
    naug_gain: Stat
    ars: Stat
    weight: float
    convention: str


def _rounds(named: dict[str, Sequence[float]], broadcast: tuple[str, ...] = ()) -> tuple[int, dict[str, list]]:
    """Per-round lists of equal length; names in ``broadcast`` may hold one value for all
    rounds (DD-Ranking uses a cached full-data accuracy that way)."""
    lists = {k: [float(x) for x in v] for k, v in named.items()}
    for k, v in lists.items():
        if not v:
            raise ConfigError(f"no {k} accuracies: every setting needs at least one evaluation round")
    n = max(len(v) for v in lists.values())
    for k, v in lists.items():
        if len(v) == 1 and k in broadcast:
            lists[k] = v * n
        elif len(v) != n:
            raise ConfigError(f"{k} has {len(v)} rounds but others have {n}: each round pairs one accuracy "
                              f"of every setting, so pass the same number")
    return n, lists


def label_robust_scores(full_hard: Sequence[float], syn_hard: Sequence[float], syn_any: Sequence[float],
                        rdm_any: Sequence[float], *, weight: float = DEFAULT_WEIGHT,
                        convention: str = "documented") -> LabelRobustness:
    """HLR, IOR and LRS per round, then mean and population std, as DD-Ranking reports them.

    Args:
        full_hard: Acc(real, hard) per round (one value is used for every round).
        syn_hard: Acc(syn, hard) per round.
        syn_any: Acc(syn, any): the set under its own evaluation (for a hard-label set,
            the hard-label accuracy again, as ``LabelRobustScoreHard`` does).
        rdm_any: Acc(rdm, any): random real images, same images per class, same evaluation.
        weight, convention: as in :func:`label_robust_score`.
    """
    n, r = _rounds({"full-data": full_hard, "synthetic hard-label": syn_hard, "synthetic": syn_any,
                    "random-real": rdm_any}, broadcast=("full-data",))
    hlr = [hard_label_recovery(r["full-data"][i], r["synthetic hard-label"][i]) for i in range(n)]
    ior = [improvement_over_random(r["synthetic"][i], r["random-real"][i]) for i in range(n)]
    lrs = [label_robust_score(h, o, weight=weight, convention=convention) for h, o in zip(hlr, ior)]
    return LabelRobustness(hlr=Stat.of(hlr), ior=Stat.of(ior), lrs=Stat.of(lrs), weight=float(weight),
                           convention=convention)


def augmentation_robust_scores(syn_aug: Sequence[float], rdm_aug: Sequence[float], syn_naug: Sequence[float],
                               rdm_naug: Sequence[float], *, weight: float = DEFAULT_WEIGHT,
                               convention: str = "documented") -> AugmentationRobustness:
    """The two gains and ARS per round, then mean and population std, as DD-Ranking reports them.

    Args:
        syn_aug, rdm_aug: the set and random real images under the evaluation with its
            augmentation (the IOR pair).
        syn_naug, rdm_naug: the same two trained again without augmentation.
        weight, convention: as in :func:`augmentation_robust_score`.
    """
    n, r = _rounds({"synthetic augmented": syn_aug, "random-real augmented": rdm_aug,
                    "synthetic unaugmented": syn_naug, "random-real unaugmented": rdm_naug})
    aug = [_finite("synthetic accuracy", a) - _finite("random-real accuracy", b)
           for a, b in zip(r["synthetic augmented"], r["random-real augmented"])]
    naug = [_finite("synthetic accuracy", a) - _finite("random-real accuracy", b)
            for a, b in zip(r["synthetic unaugmented"], r["random-real unaugmented"])]
    ars = [augmentation_robust_score(a, b, weight=weight, convention=convention) for a, b in zip(aug, naug)]
    return AugmentationRobustness(aug_gain=Stat.of(aug), naug_gain=Stat.of(naug), ars=Stat.of(ars),
                                  weight=float(weight), convention=convention)
