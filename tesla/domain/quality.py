"""Recipes for ``tesla bench quality``: named sets of overrides of a distillation config.

A recipe is what an ablation table calls a row: a name and the
:class:`~tesla.domain.config.DistillConfig` fields it changes (engine, labels, sampling,
the image EMA, parameter selection, or any other field), applied to one base config so
that every row shares the experts, the seeds and everything it does not name. On the
command line a recipe is ``name:key=value,key=value`` (``--recipe``, repeated); a bare
``name`` is one of :data:`BUILTIN`. Values are read as JSON scalars would be (``none``,
``true``/``false``, integers, decimals), anything else is text; the config then checks
them, and a refusal names the recipe.

The built-in list (:data:`BUILTIN`) is the issue's ablation: the TESLA baseline (first-
order gradient, hard labels, uniform start epochs, no average, every parameter matched),
each lever alone, and the levers together, DATM-style. Each built-in recipe sets every
lever it is compared on explicitly, so a base config that turns one on (a preset with
teacher labels) cannot leak into the baseline. The numbers of the built-ins are those of
the published configs, scaled to short runs where the published value presumes a long one
(an EMA decay of 0.99: an average over about 100 iterations, where FTD's 0.999 spans a
10,000-iteration run).

Pure: no framework, no files; the service (:mod:`tesla.app.services.quality`) runs them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs

from tesla.domain.config import DistillConfig
from tesla.domain.errors import ConfigError

BASELINE = "tesla"

# the levers a built-in recipe sets, at their paper values (the TESLA baseline)
_PAPER = (("engine", "tesla"), ("labels", "hard"), ("sampling", "uniform"), ("ema_decay", None),
          ("match_fraction", 1.0))


def parse_value(text: str) -> Any:
    """A recipe value: ``none``/``null`` -> None, ``true``/``false`` -> bool, then int, then
    float, else the text itself."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _field(key: str) -> str:
    name = key.strip().replace("-", "_")
    known = {a.name for a in attrs.fields(DistillConfig)}
    if name not in known:
        raise ConfigError(f"recipe key {key!r} is not a distillation setting: use one of "
                          f"{', '.join(sorted(known))}")
    return name


@attrs.frozen
class Recipe:
    """One row of the ablation.

    Attributes:
        name: how the table names it (letters, digits, ``-``, ``_``, ``+``, ``.``).
        overrides: ``(field, value)`` pairs applied to the base config, in order.
        note: what the row stands for (built-ins), for the table and the CSV.
    """

    name: str
    overrides: tuple = attrs.field(default=(), converter=tuple)
    note: str = ""

    def __attrs_post_init__(self) -> None:
        ok = self.name and all(ch.isalnum() or ch in "-_+." for ch in self.name)
        if not ok:
            raise ConfigError(f"recipe name {self.name!r} must be letters, digits, '-', '_', '+' or '.': "
                              "e.g. --recipe ema:ema_decay=0.99")

    def apply(self, base: DistillConfig) -> DistillConfig:
        """``base`` with this recipe's overrides (ConfigError naming the recipe when refused)."""
        try:
            return attrs.evolve(base, **dict(self.overrides))
        except ConfigError as err:
            raise ConfigError(f"recipe {self.name!r}: {err}") from None
        except TypeError as err:  # an unknown field slipped past parse (a built recipe)
            raise ConfigError(f"recipe {self.name!r}: {err}") from None

    def changes(self) -> dict:
        """The overrides as they apply (a later value of a field wins)."""
        return dict(self.overrides)

    def describe(self) -> str:
        """``key=value, ...`` of the changes; a built-in's levers left at the paper's values
        are not repeated (``paper levers`` for the baseline itself)."""
        changes = self.changes()
        if builtin(self.name) == self:
            changes = {k: v for k, v in changes.items() if dict(_PAPER).get(k, object()) != v}
            if not changes:
                return "paper levers"
        if not changes:
            return "-"
        return ", ".join(f"{k}={'none' if v is None else v}" for k, v in changes.items())


BUILTIN: tuple[Recipe, ...] = (
    Recipe(BASELINE, _PAPER, "TESLA: first-order gradient, hard labels, uniform start epochs"),
    Recipe("exact", _PAPER + (("engine", "exact"),), "the exact (adjoint) gradient instead of TESLA's"),
    Recipe("teacher-target", _PAPER + (("labels", "teacher-target"),), "TESLA's soft labels (SLA)"),
    Recipe("learned-teacher", _PAPER + (("labels", "learned-teacher"), ("label_momentum", 0.9)),
           "DATM's labels: experts' logits on correctly classified images, learned"),
    Recipe("window", _PAPER + (("sampling", "window"),), "DATM's widening start-epoch window"),
    Recipe("ema", _PAPER + (("ema_decay", 0.99),), "FTD's moving average of the images"),
    Recipe("pad", _PAPER + (("match_fraction", 0.75),), "PAD: match the deepest 3/4 of the parameters"),
    Recipe("datm", _PAPER + (("labels", "learned-teacher"), ("label_momentum", 0.9), ("sampling", "window")),
           "learned-teacher + window"),
    Recipe("datm+ema", _PAPER + (("labels", "learned-teacher"), ("label_momentum", 0.9), ("sampling", "window"),
                                 ("ema_decay", 0.99)), "learned-teacher + window + EMA"),
    Recipe("all", _PAPER + (("labels", "learned-teacher"), ("label_momentum", 0.9), ("sampling", "window"),
                            ("ema_decay", 0.99), ("match_fraction", 0.75)), "learned-teacher + window + EMA + PAD"),
)


def builtin(name: str) -> Optional[Recipe]:
    return next((r for r in BUILTIN if r.name == name), None)


def parse_recipe(text: str) -> Recipe:
    """``name`` (a built-in) or ``name:key=value,key=value`` (ConfigError saying what is wrong)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep:
        found = builtin(name)
        if found is None:
            raise ConfigError(f"--recipe {text!r} is neither a built-in recipe ({', '.join(r.name for r in BUILTIN)}) "
                              "nor name:key=value,...: e.g. --recipe ema:ema_decay=0.99")
        return found
    overrides = []
    for item in (p for p in rest.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--recipe {text!r}: {item!r} is not key=value: e.g. --recipe ema:ema_decay=0.99")
        overrides.append((_field(key), parse_value(value)))
    return Recipe(name, tuple(overrides))


def parse_overrides(text: str) -> tuple:
    """``key=value,key=value`` (the base config's overrides) as ``(field, value)`` pairs."""
    return parse_recipe(f"base:{text}").overrides


def check_recipes(recipes: Sequence[Recipe], base: DistillConfig, baseline: str) -> list[DistillConfig]:
    """Every recipe's config (refusals name the recipe); names must be unique and the
    baseline among them."""
    if not recipes:
        raise ConfigError("no recipe to compare: pass --recipe NAME[:key=value,...] (or none for the built-ins)")
    names = [r.name for r in recipes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"recipe name(s) {', '.join(twice)} given twice: give every --recipe its own name")
    if baseline not in names:
        raise ConfigError(f"the baseline {baseline!r} is not among the recipes ({', '.join(names)}): "
                          f"add --recipe {baseline} or pass --baseline NAME")
    return [r.apply(base) for r in recipes]


@attrs.frozen
class TableRow:
    """One printed row: a recipe on one evaluation architecture."""

    recipe: str
    changes: str
    status: str
    model: str
    mean: Optional[float]
    std: Optional[float]
    n: int
    real_mean: Optional[float]
    real_std: Optional[float]
    vs_real: Optional[float]
    vs_baseline: Optional[float]
    agreement: Optional[float]
    reason: Optional[str]
    accuracies: tuple


__all__ = ["BASELINE", "BUILTIN", "Recipe", "TableRow", "builtin", "check_recipes", "parse_overrides", "parse_recipe",
           "parse_value"]
