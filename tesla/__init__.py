"""tesla: dataset distillation by trajectory matching at constant memory.

The public API is loaded lazily so that ``import tesla.domain`` stays free of torch:

    >>> import tesla
    >>> out = tesla.match_gradients(model, start, target, images, labels, 0.01, steps=20)
    >>> out.loss, out.images_grad.shape, out.lr_grad
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "match_gradients": "tesla.api",
    "MatchOutput": "tesla.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tesla' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
