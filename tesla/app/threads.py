"""The process's CPU threads: set once at the entry point, before torch starts.

The OpenMP runtime torch uses reads its environment once, when torch is imported, so
the command-line entry (:mod:`tesla.app.cli.main`) calls :func:`prepare_process` before
anything imports torch: it sets ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` to the
defaults of :mod:`tesla.domain.threads` unless the user set them. A command's
``--threads N`` then sets torch's count through :func:`tesla.app.bootstrap.configure_threads`.
Standard library only (this runs before torch may be imported).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import MutableMapping, Optional

from tesla.domain.threads import process_environment

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, lowered by a container's CPU quota
    (cgroup v2 ``cpu.max``, e.g. ``docker --cpus 2``) when there is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cpu_max)
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota(path: Path) -> Optional[int]:
    try:
        limit, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return max(1, math.ceil(int(limit) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def prepare_process(environ: MutableMapping[str, str] = os.environ) -> dict:
    """Set the thread defaults in ``environ`` (the process environment) unless set;
    returns what was set."""
    wanted = process_environment(environ, usable_cpus())
    environ.update(wanted)
    return wanted


__all__ = ["prepare_process", "usable_cpus"]
