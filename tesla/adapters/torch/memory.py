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


# --- what is free, for the size checks before a job (tesla.domain.footprint) --------------


def free_host_bytes() -> Optional[int]:
    """Bytes this process can still take on the host: the kernel's ``MemAvailable``, less
    where a cgroup (a container's memory limit) or an address-space limit (``ulimit -v``,
    less the address space the process maps already) allows less; None where none is known."""
    found = [n for n in (_address_space_left(),) if n is not None]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
    return min(found) if found else None


def _address_space_left() -> Optional[int]:
    """``RLIMIT_AS`` less this process's mapped address space (VmSize); None without a limit."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status", encoding="ascii") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, ValueError, StopIteration):
        return None
    return max(0, limit - size)


def free_device_bytes(device: DeviceLike) -> Optional[int]:
    """Bytes free on a CUDA device (the driver's free memory plus what torch's caching
    allocator holds unused); None for the CPU or when it cannot tell."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except RuntimeError:
        return None
    return int(free + max(0, cached))


class TorchFreeMemory:
    """The :class:`~tesla.domain.ports.FreeMemory` of a job on ``device``."""

    def __init__(self, device: DeviceLike = "cpu") -> None:
        self.device = str(torch.device(device) if device is not None else "cpu")

    def free_device(self) -> Optional[int]:
        return free_device_bytes(self.device) if self.device != "cpu" else None

    def free_host(self) -> Optional[int]:
        return free_host_bytes()


__all__ = ["TorchFreeMemory", "free_device_bytes", "free_host_bytes", "host_rss", "peak_rss", "memory_sample",
           "reset_peak"]
