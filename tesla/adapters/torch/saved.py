"""Device-independent activation memory: bytes autograd saves for backward.

On CUDA the allocator's peak tells what an iteration costs; on a CPU there is no such
counter, and process RSS is blurred by the allocator. What grows with the number of
matching steps in ``unrolled`` (and must not in ``tesla``/``exact``) is the set of
tensors autograd keeps alive for the backward pass. :class:`SavedTensorsMeter` counts
them with ``torch.autograd.graph.saved_tensors_hooks``: every packed tensor is wrapped
in a small holder whose finaliser subtracts its bytes when the graph releases it, so
``peak`` is the largest number of bytes held for backward at any moment.

Bytes are counted per *storage*: a tensor saved by several nodes (an activation that
the ReLU and the next convolution both keep, a double-backward graph re-saving its
inputs) or several views of one storage (the layers' weights, views of one flat vector)
count once, as the memory they really hold, for as long as any save holds them.
Tensors without a plain storage (functorch's batched wrappers) are counted per save.
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
        self._refs: dict = {}  # storage key -> [saves holding it, bytes]

    def _release(self, key) -> None:
        with self._lock:
            entry = self._refs[key]
            entry[0] -= 1
            if entry[0] == 0:
                self.current -= entry[1]
                del self._refs[key]

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple:
        """(storage identity, its bytes); per save where there is no plain storage."""
        try:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr:
                return (tensor.device.type, tensor.device.index, ptr), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # batched/functional wrappers, sparse
            pass
        return ("save", id(tensor), object()), tensor.numel() * tensor.element_size()

    def _pack(self, tensor: torch.Tensor) -> _Held:
        key, nbytes = self._key(tensor)
        held = _Held(tensor)
        with self._lock:
            entry = self._refs.get(key)
            if entry is None:
                self._refs[key] = [1, nbytes]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            else:
                entry[0] += 1
        weakref.finalize(held, self._release, key)
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
