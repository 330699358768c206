"""Which experts a distillation was made from, and the refusal to continue it with others.

A checkpoint holds the set, the learned lr and the run's RNG state, and continuing it is
only the same run when the iterations after it draw from the same experts: a
``--resume`` pointed at another trajectory store (or the same store after experts were
added, retrained or deleted) would otherwise go on silently, mixing two runs in one set.
So the run records the identity of its trajectories, the store's URL without
credentials (for the reader) and its fingerprint (a digest of the experts' ids and
snapshot checksums, :meth:`~tesla.domain.ports.Trajectories.fingerprint`, for the
check), in ``config.json`` and in every checkpoint, and a resume compares fingerprints.
The URL is not compared: a store that was moved or copied holds the same experts.

Checkpoints written before this record was kept carry none and resume as they did.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from tesla.domain.errors import DistillError
from tesla.domain.urls import redact_url


def trajectory_identity(url: str, fingerprint: str, experts: int) -> dict:
    """What a run records of its trajectories: ``{"url", "fingerprint", "experts"}``."""
    return {"url": redact_url(url), "fingerprint": str(fingerprint), "experts": int(experts)}


def check_same_trajectories(recorded: Optional[Any], now: Optional[Mapping]) -> None:
    """Refuse (DistillError) a resume whose trajectories are not those the checkpoint was
    made from; nothing to compare (an older checkpoint, no identity given) passes."""
    if not now or not isinstance(recorded, Mapping) or "fingerprint" not in recorded:
        return
    if recorded["fingerprint"] == now["fingerprint"]:
        return
    raise DistillError(
        f"the checkpoint was made from the experts of {recorded.get('url')} ({recorded.get('experts')} experts, "
        f"fingerprint {recorded['fingerprint']}) but {now['url']} holds other experts ({now['experts']} experts, "
        f"fingerprint {now['fingerprint']}): resume with the trajectory store the run started with, or choose "
        "another --out")


__all__ = ["check_same_trajectories", "trajectory_identity"]
