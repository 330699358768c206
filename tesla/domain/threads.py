"""How many CPU threads a job uses, and how idle threads wait: the policy, in one place.

A shared machine (other jobs, other users, a CI box with two cores) is the common case
for a CPU run. Two settings decide whether a job crawls there:

* the thread count: torch's default is every core, and threads beyond the cores a
  process may actually use (its CPU affinity, a container's CPU quota) only queue for
  them. The default here is the ``TESLA_THREADS`` or ``OMP_NUM_THREADS`` the user set,
  else the CPUs this process may use, at most :data:`MAX_DEFAULT_THREADS` (more rarely
  pays for networks this size; ``--threads`` asks for more), shared among the ranks of
  a ``torchrun`` job on one host;
* the OpenMP wait policy: by default an OpenMP thread that finishes its share of a
  parallel region spins, waiting for the next, instead of sleeping. With every core
  busy, a spinning thread holds a core another thread (of this job or another) needs:
  on a loaded 2-core machine one distillation iteration of the demo took 46 s instead
  of 0.6 s with two threads (``scripts/measure_threads.py``; the figures are in the
  README). ``PASSIVE`` makes waiting threads sleep; the CLI sets it before torch starts
  its threads unless the user set ``OMP_WAIT_POLICY``.

Pure: the environment and the CPU count come in as values.
"""

from __future__ import annotations

from typing import Mapping, Optional

from tesla.domain.errors import ConfigError

MAX_DEFAULT_THREADS = 8
WAIT_POLICY = "PASSIVE"
THREAD_VARS = ("TESLA_THREADS", "OMP_NUM_THREADS")


def _count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r} is not a thread count: set it to an integer >= 1 or unset it")
    return value


def default_threads(environ: Mapping[str, str], cpus: int) -> int:
    """The thread count when ``--threads`` is not given (module docstring).

    Args:
        environ: the process environment (``TESLA_THREADS``, ``OMP_NUM_THREADS``,
            ``LOCAL_WORLD_SIZE`` of a torchrun job).
        cpus: the CPUs this process may use.
    """
    for name in THREAD_VARS:
        if environ.get(name, "").strip():
            return _count(name, environ[name].strip())
    ranks_here = 1
    if environ.get("LOCAL_WORLD_SIZE", "").strip().isdigit():
        ranks_here = max(1, int(environ["LOCAL_WORLD_SIZE"]))
    return max(1, min(MAX_DEFAULT_THREADS, max(1, cpus) // ranks_here))


def threads_for(requested: Optional[int], environ: Mapping[str, str], cpus: int) -> int:
    """``requested`` (``--threads N``) when given, else :func:`default_threads`."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"--threads must be an integer >= 1 (got {requested!r})")
        return requested
    return default_threads(environ, cpus)


def process_environment(environ: Mapping[str, str], cpus: int) -> dict:
    """The variables to set before torch (and its OpenMP runtime) starts: the wait
    policy, and the default thread count, each unless the user set it."""
    out = {}
    if not environ.get("OMP_WAIT_POLICY"):
        out["OMP_WAIT_POLICY"] = WAIT_POLICY
    if not environ.get("OMP_NUM_THREADS"):
        out["OMP_NUM_THREADS"] = str(default_threads(environ, cpus))
    return out


__all__ = ["MAX_DEFAULT_THREADS", "WAIT_POLICY", "default_threads", "process_environment", "threads_for"]
