"""Memory figures for :class:`tesla.domain.events.Memory` samples.

TESLA's claim is *constant* memory in the number of student steps, so runs sample
memory as they go and the TUI plots it: device memory held by tensors (allocated) and
its high-water mark (peak) from the CUDA caching allocator, plus the process's resident
set on the host. Device figures are None on CPU, where the allocator keeps no such
statistics and host RSS is the honest figure.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Union

import torch

from tesla.domain import events as ev

DeviceLike = Union[str, torch.device, None]


def _statm_rss() -> Optional[int]:
    """Resident set from /proc/self/statm (Linux): pages * page size, cheap and current."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss``).

    Linux reports kilobytes, macOS bytes; Windows (no ``resource``) falls back to psutil's
    peak working set, then to the current RSS.
    """
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            info = psutil.Process().memory_info()
            return int(getattr(info, "peak_wset", info.rss))
        except ImportError:
            return host_rss()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def host_rss() -> int:
    """Current resident set size of this process in bytes.

    /proc/self/statm where it exists, else psutil, else the peak (``ru_maxrss``) as an
    upper bound.
    """
    rss = _statm_rss()
    if rss is not None:
        return rss
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return peak_rss()


def release_host_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); False where unavailable.

    glibc keeps the top of a heap that tensors freed; after a failed (out-of-memory)
    iteration that is gigabytes still mapped, which would count against an address-space
    limit and make the next, smaller iteration fail too.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False


def _cuda_device(device: DeviceLike) -> Optional[torch.device]:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return dev


def reset_peak(device: DeviceLike) -> None:
    """Start a new device high-water mark (e.g. after setup, before the first iteration)."""
    dev = _cuda_device(device)
    if dev is not None:
        torch.cuda.reset_peak_memory_stats(dev)


def memory_sample(device: DeviceLike, iteration: Optional[int] = None) -> ev.Memory:
    """A :class:`~tesla.domain.events.Memory` event for ``device`` now.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        iteration: the run's step the sample belongs to.

    Returns:
        Memory with ``device_allocated``/``device_peak`` from
        ``torch.cuda.memory_allocated``/``max_memory_allocated`` (bytes) on CUDA, None on
        any other device, and ``host_rss`` in bytes.
    """
    dev = _cuda_device(device)
    allocated = peak = None
    if dev is not None:
        allocated = int(torch.cuda.memory_allocated(dev))
        peak = int(torch.cuda.max_memory_allocated(dev))
    return ev.Memory(device_allocated=allocated, device_peak=peak, host_rss=host_rss(), iteration=iteration)


__all__ = ["host_rss", "peak_rss", "memory_sample", "reset_peak"]
