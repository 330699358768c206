"""Reading the pickled batch files of CIFAR and Downsampled-ImageNet without running code.

The official CIFAR-10/100 batches (and the older Downsampled-ImageNet release) are Python
pickles of dicts holding numpy arrays, lists, numbers and strings. ``pickle.load`` on such a
file runs whatever its author put in it (a ``__reduce__`` naming ``os.system`` is enough), and a
data folder is not trusted input: it may be downloaded, shared on a cluster, or named by a store
someone else made. :class:`ArrayOnlyUnpickler` resolves only numpy's array-reconstruction
globals; any other global in the pickle is refused before it is imported, so reading a file can
build data and nothing else.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

# the globals a pickled numpy array (of either numpy 1.x or 2.x) needs, and nothing else
SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(text, "latin1"):
    # a pure data transform (the codec is looked up by name among the encodings)
    ("_codecs", "encode"),
})


class UnsafePickle(pickle.UnpicklingError):
    """The pickle names a global outside :data:`SAFE_GLOBALS` (it could run code)."""


class ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, numbers, strings, bytes and numpy arrays.

    ``find_class`` is the one place a pickle reaches code; admitting numpy's reconstruction
    functions alone makes loading unable to call anything else.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle hook
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickle(f"refusing to unpickle global {module}.{name}")


def load_arrays(path: Path | str) -> Any:
    """Unpickle ``path`` with :class:`ArrayOnlyUnpickler` (``latin1`` for Python 2 pickles).

    Raises:
        UnsafePickle: the file names a global other than numpy's array reconstruction.
        pickle.UnpicklingError, EOFError, ValueError, ...: a damaged or non-pickle file
            (callers turn these into their one-line data errors).
    """
    with open(path, "rb") as f:
        return ArrayOnlyUnpickler(f, encoding="latin1").load()
