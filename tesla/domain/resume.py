"""Resuming a run from what it recorded: the recorded settings, with the typed changes.

A run directory's ``config.json`` holds every setting that made the run (the
distillation config, the model, the data, the trajectory store, the synthetic store).
``tesla distill -o RUN --resume`` takes them from there, so a run is continued by naming
it, not by typing its options again. What the user typed on the resuming command line
is then of two kinds:

* a *resumable* change (the run length, the checkpoint cadence, the usual fixes of a
  run that misbehaves: learning rates, clipping, the divergence stop; the service's
  ``RESUMABLE_CHANGES``) replaces the recorded value;
* any other setting must equal the recorded one; one that differs is refused with one
  line naming the option, both values and the fix.

Options not typed take the recorded value, never a default or a preset's value. A typed
``--preset`` must agree with the run on the settings it fixes that are not resumable,
and changes nothing else. Pure: plain dicts in and out; the run set-up reads and writes
the files (:mod:`tesla.app.services.run`).
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Optional

from tesla.domain.errors import DistillError
from tesla.domain.urls import redact_text

FIX = "resume with the run's settings (leave the option out) or choose a new --out"


def option_name(field: str) -> str:
    """The command-line option of a config field: ``syn_steps`` -> ``--syn-steps``."""
    return "--" + field.replace("_", "-")


def resumed_distill(recorded: Mapping[str, Any], requested: Mapping[str, Any], typed: Optional[Collection[str]], *,
                    resumable: Collection[str], preset: Optional[str] = None) -> dict:
    """The distillation settings of a resumed run.

    Args:
        recorded: the run's recorded distillation config (``config.json``'s ``distill``).
        requested: the config the command line built (typed values, and defaults or the
            preset's values for the rest).
        typed: the fields the user typed (None: all of them, as a script that builds
            the whole config means it).
        resumable: the fields a resumed run may change.
        preset: the preset the user typed (its values in ``requested`` are checked
            against the run for the fields not resumable), or None.

    Returns:
        the settings: recorded values, typed resumable changes applied; fields the run
        did not record (a newer version's) take the requested value.

    Raises:
        DistillError: a typed (or preset) value of a setting that is not resumable
            differs from the recorded one.
    """
    merged = dict(requested)
    typed = set(requested) if typed is None else set(typed)
    for field, old in recorded.items():
        if field in typed:
            new = requested.get(field, old)
            if field not in resumable and new != old:
                raise DistillError(redact_text(f"{option_name(field)} {new}: the run was made with different {field} "
                                               f"({old}, recorded in config.json), which cannot change on --resume: "
                                               f"{FIX}"))
            merged[field] = new
        elif preset is not None and field not in resumable and field in requested and requested[field] != old:
            raise DistillError(f"--preset {preset} sets {field} {requested[field]} but the run was made with "
                               f"{old}: resume without --preset or choose a new --out")
        else:
            merged[field] = old
    return merged


def resumed_value(name: str, recorded: Optional[str], given: Optional[str], *, same: bool = False) -> Optional[str]:
    """A recorded setting that is not a config field (the trajectory store, the data
    folder, the synthetic store): the recorded one unless given, and a given one only
    when it names the same thing (``same``: the caller's comparison, e.g. of resolved
    paths)."""
    if given is None:
        return recorded
    if recorded is None or given == recorded or same:
        return given
    raise DistillError(redact_text(f"{name} {given}: the run was made with {recorded} (recorded in config.json): "
                                   f"{FIX}"))


__all__ = ["option_name", "resumed_distill", "resumed_value"]
