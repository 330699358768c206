"""Device-independent activation memory: bytes autograd saves for backward.

On CUDA the allocator's peak tells what an iteration costs; on a CPU there is no such
counter, and process RSS is blurred by the allocator. What grows with the number of
matching steps in ``unrolled`` (and must not in ``tesla``/``exact``) is the set of
tensors autograd keeps alive for the backward pass. :class:`SavedTensorsMeter` counts
them with ``torch.autograd.graph.saved_tensors_hooks``: every packed tensor is wrapped
in a small holder whose finaliser subtracts its bytes when the graph releases it, so
``peak`` is the largest number of bytes held for backward at any moment.

Storage shared by several saved tensors is counted once per save (an upper bound,
the same for every engine), which is what makes the figure comparable across them.
"""

from __future__ import annotations

import threading
import weakref

import torch


class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedTensorsMeter:
    """Context manager measuring current and peak bytes saved for backward.

    Example:
        >>> with SavedTensorsMeter() as meter:
        ...     loss = f(x); loss.backward()
        >>> meter.peak
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._ctx = None

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.current -= nbytes

    def _pack(self, tensor: torch.Tensor) -> _Held:
        nbytes = tensor.numel() * tensor.element_size()
        held = _Held(tensor)
        with self._lock:
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        weakref.finalize(held, self._release, nbytes)
        return held

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def __enter__(self) -> "SavedTensorsMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        self._ctx = None
