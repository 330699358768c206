"""The guard of a distillation: when to stop a run whose numbers went wrong, and what to say.

Two checks per iteration. Before the update: the loss, the image gradient and the lr
gradient must be finite, the set itself must still be finite, and the loss must not
exceed ``max_loss`` (it is normalised to start near 1, so a loss in the thousands is a
run that diverged without reaching NaN yet). After the update: the set must still be
finite. Whatever fails becomes a :class:`Stop`: what went wrong, at which iteration,
which state is kept, and the fix.

Which state is good decides what is kept: when only this iteration's numbers are bad,
the state before it is good and is checkpointed as it stops (``kept`` = the iterations
done). When the set was already bad, the loss diverged (the images that gave it are
not a good state either) or the update itself overflowed, nothing of this iteration is
kept: the store's last checkpoint stays the good state (``kept`` is None until the
service has looked it up).
"""

from __future__ import annotations

import math
from typing import Optional

import attrs


@attrs.frozen
class Stop:
    """Why a run stops before its end.

    Attributes:
        what: what went wrong (``the loss``, ``the image gradient``, ``the images after
            the update`` ...).
        iteration: the failing iteration as the user counts it (1-based).
        loss: that iteration's matching loss.
        diverged: finite but above ``max_loss`` (not NaN/inf).
        max_loss: the limit that was passed (for the message).
        kept: the iterations done in the state that is kept; None: the store's last
            checkpoint (to be looked up).
    """

    what: str
    iteration: int
    loss: float
    diverged: bool = False
    max_loss: float = math.inf
    kept: Optional[int] = None

    @property
    def checkpoint_now(self) -> bool:
        """The state before this iteration is good: checkpoint it as the run stops."""
        return self.kept is not None

    @property
    def fix(self) -> str:
        more = ", or raise --max-loss" if self.diverged else ""
        return f"lower --lr-img or --lr-lr (or set --max-grad-norm{more}) and continue with --resume"

    def message(self) -> str:
        """One line: what, when, which state is kept, and the fix."""
        if self.diverged:
            what = (f"the matching loss {self.loss:.4g} at iteration {self.iteration} is above max_loss "
                    f"{self.max_loss:g} (the run diverged)")
        else:
            what = f"{self.what} became NaN/inf at iteration {self.iteration} (loss {self.loss})"
        return f"{what}; the last good state (after iteration {self.kept}) is kept in the checkpoint: {self.fix}"


def before_update(done: int, loss: float, lr_grad: float, *, grad_finite: bool, state_problem: Optional[str],
                  max_loss: float) -> Optional[Stop]:
    """The check of an iteration's results before they change the set.

    Args:
        done: iterations done before this one.
        loss, lr_grad: the engine's scalars.
        grad_finite: whether the image gradient is finite.
        state_problem: what of the set is not finite (None: all of it is).
        max_loss: the divergence limit (``inf``: never).
    """
    what = None
    if not math.isfinite(loss):
        what = "the loss"
    elif not grad_finite:
        what = "the image gradient"
    elif not math.isfinite(lr_grad):
        what = "the lr gradient"
    kept: Optional[int] = done
    if state_problem is not None:  # NaN data or a bad resumed state: nothing of this run is good
        what, kept = f"the {state_problem} (before any update of this run)", None
    if what is not None:
        return Stop(what=what, iteration=done + 1, loss=loss, kept=kept)
    if loss > max_loss:
        return Stop(what="the loss", iteration=done + 1, loss=loss, diverged=True, max_loss=max_loss)
    return None


def after_update(done: int, loss: float, *, state_problem: Optional[str]) -> Optional[Stop]:
    """The check of the set after the update (an overflowing step)."""
    if state_problem is None:
        return None
    return Stop(what=f"the {state_problem} after the update", iteration=done + 1, loss=loss)
