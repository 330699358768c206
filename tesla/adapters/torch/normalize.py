"""Map images between display space [0, 1] and model space, and back.

A run works in *model space*: per-channel mean/std normalisation (ImageNet, CIFAR without
ZCA), or ZCA whitening of [0, 1] images (CIFAR in MTT/TESLA, docs/MATHS.md §7) with
:class:`kornia.enhance.ZCAWhitening` (``eps=0.1``, fitted on the whole training set, no
mean/std afterwards). Distilled images live in model space too, so showing or exporting
them needs the inverse: :meth:`Normalizer.decode` (inverse ZCA or un-normalise, clamped
to [0, 1]), the thing users of the published code ask for.

A fitted ZCA is a 3072x3072 matrix pair for CIFAR: expensive enough to cache and
important enough to keep with a synthetic set, so :meth:`Normalizer.to_state` gives plain
arrays, lists and strings (stores write them; no pickle anywhere) and
:meth:`Normalizer.save`/:meth:`Normalizer.load` keep them in an ``.npz`` read with
``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from kornia.enhance import ZCAWhitening, linear_transform

ZCA_EPS = 0.1
KINDS = ("identity", "meanstd", "zca")


def _as_str(value: Any) -> str:
    """A string stored as str, a 0-d numpy unicode array (npz) or bytes (some stores)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _as_str(value.item())
    return str(value)


def _as_floats(value: Any) -> list[float]:
    return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


class Normalizer:
    """Model-space encoding of [0, 1] images: mean/std, ZCA, or identity.

    Args:
        mean, std: per-channel statistics (both or neither).
        zca: a fitted :class:`kornia.enhance.ZCAWhitening` with ``compute_inv=True``
            (see :meth:`fit_zca`); images are then only whitened, no mean/std.

    With neither, encoding is the identity (images stay in [0, 1]).

    Example:
        >>> norm = Normalizer.fit_zca(train01)          # (N, 3, 32, 32) in [0, 1]
        >>> x = norm.encode(batch01)                     # model space
        >>> shown = norm.decode(x)                       # back in [0, 1]
    """

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 zca: Optional[ZCAWhitening] = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("Normalizer needs both mean and std (or neither)")
        if zca is not None and mean is not None:
            raise ValueError("ZCA images are only scaled to [0, 1]: pass zca or mean/std, not both")
        if zca is not None:
            if not zca.fitted:
                raise ValueError("the ZCA transform is not fitted: use Normalizer.fit_zca(images)")
            if zca.transform_inv is None or zca.transform_inv.numel() == 0:
                raise ValueError("the ZCA transform has no inverse: fit it with compute_inv=True")
        self.mean: Optional[tuple[float, ...]] = None if mean is None else tuple(float(m) for m in mean)
        self.std: Optional[tuple[float, ...]] = None if std is None else tuple(float(s) for s in std)
        if self.std is not None:
            if len(self.std) != len(self.mean or ()):
                raise ValueError(f"mean has {len(self.mean or ())} channels but std has {len(self.std)}")
            if any(not s > 0 for s in self.std):
                raise ValueError(f"std must be > 0 in every channel (got {list(self.std)})")
        self.zca = zca
        # Per (device, dtype) copies of the ZCA tensors: encode/decode may run on a GPU
        # while the fitted transform is kept on the CPU.
        self._zca_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def kind(self) -> str:
        """``identity``, ``meanstd`` or ``zca``."""
        if self.zca is not None:
            return "zca"
        return "identity" if self.mean is None else "meanstd"

    def __repr__(self) -> str:
        if self.kind == "zca":
            return f"Normalizer(zca: {self.zca.transform_matrix.shape[0]} features, eps={self.zca.eps})"
        if self.kind == "meanstd":
            return f"Normalizer(mean={list(self.mean)}, std={list(self.std)})"
        return "Normalizer(identity)"

    # --- fitting -------------------------------------------------------------------------

    @classmethod
    def fit_zca(cls, x01_train: torch.Tensor, eps: float = ZCA_EPS) -> "Normalizer":
        """Fit kornia's ZCA (with its inverse) on training images scaled to [0, 1].

        Args:
            x01_train: :math:`(N, C, H, W)` floating images in [0, 1], N >= 2.
            eps: added to the covariance eigenvalues (0.1 in MTT/TESLA).
        """
        if not torch.is_floating_point(x01_train):
            raise ValueError(f"fit_zca needs float images in [0, 1] (got dtype {x01_train.dtype}): divide by 255 first")
        if x01_train.dim() != 4 or x01_train.shape[0] < 2:
            raise ValueError(f"fit_zca needs images shaped (N, C, H, W) with N >= 2 (got {tuple(x01_train.shape)})")
        lo, hi = float(x01_train.min()), float(x01_train.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"fit_zca needs images scaled to [0, 1] (values span {lo:.3g} .. {hi:.3g})")
        zca = ZCAWhitening(eps=float(eps), compute_inv=True).fit(x01_train)
        return cls(zca=zca)

    # --- mapping -------------------------------------------------------------------------

    def _zca_tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mean, T, T_inv, mean_inv) on x's device and dtype."""
        key = (x.device, x.dtype)
        cached = self._zca_cache.get(key)
        if cached is None:
            z = self.zca
            mean, t, t_inv = (v.to(device=x.device, dtype=x.dtype) for v in
                              (z.mean_vector, z.transform_matrix, z.transform_inv))
            # kornia's inverse_transform: x_white @ T_inv + mean, written as a linear transform
            # with the offset -mean @ T (T @ T_inv = I).
            cached = (mean, t, t_inv, -mean.mm(t))
            self._zca_cache[key] = cached
        return cached

    def _check_zca_shape(self, x: torch.Tensor) -> None:
        d = self.zca.transform_matrix.shape[0]
        if x.dim() < 2 or x[0].numel() != d:
            raise ValueError(f"the ZCA was fitted on images of {d} values; got a batch shaped {tuple(x.shape)}")

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != len(self.mean):
            raise ValueError(f"mean/std have {len(self.mean)} channels; got a batch shaped {tuple(x.shape)}")
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return m, s

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Display space [0, 1] to model space.

        Shape:
            - x01: :math:`(B, C, H, W)` in [0, 1]
            - output: :math:`(B, C, H, W)`
        """
        if self.kind == "zca":
            self._check_zca_shape(x01)
            mean, t, _, _ = self._zca_tensors(x01)
            return linear_transform(x01, t, mean, 0)
        if self.kind == "meanstd":
            m, s = self._stats(x01)
            return (x01 - m) / s
        return x01

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space back to display space (inverse ZCA or un-normalise), clamped to [0, 1].

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, C, H, W)` in [0, 1]
        """
        if self.kind == "zca":
            self._check_zca_shape(x)
            _, _, t_inv, mean_inv = self._zca_tensors(x)
            out = linear_transform(x, t_inv, mean_inv, 0)
        elif self.kind == "meanstd":
            m, s = self._stats(x)
            out = x * s + m
        else:
            out = x
        return out.clamp(0.0, 1.0)

    # --- state ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain state: ``kind`` (str), ``mean``/``std`` (lists) or the ZCA arrays
        ``zca_mean`` (D,), ``zca_matrix`` (D, D), ``zca_inverse`` (D, D) as float32 numpy
        and ``zca_eps`` (a one-element list)."""
        state: dict[str, Any] = {"kind": self.kind}
        if self.kind == "meanstd":
            state["mean"] = list(self.mean)
            state["std"] = list(self.std)
        elif self.kind == "zca":
            z = self.zca
            as_np = lambda t: t.detach().to("cpu", torch.float32).numpy().copy()  # noqa: E731
            state["zca_mean"] = as_np(z.mean_vector).reshape(-1)
            state["zca_matrix"] = as_np(z.transform_matrix)
            state["zca_inverse"] = as_np(z.transform_inv)
            state["zca_eps"] = [float(z.eps)]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Normalizer":
        """Rebuild from :meth:`to_state` output (lists or arrays; str or 0-d arrays)."""
        if "kind" not in state:
            raise ValueError("normaliser state has no 'kind': it was not written by Normalizer.to_state")
        kind = _as_str(state["kind"])
        if kind == "identity":
            return cls()
        if kind == "meanstd":
            return cls(mean=_as_floats(state["mean"]), std=_as_floats(state["std"]))
        if kind == "zca":
            missing = [k for k in ("zca_mean", "zca_matrix", "zca_inverse") if k not in state]
            if missing:
                raise ValueError(f"ZCA normaliser state lacks {', '.join(missing)}: refit the ZCA")
            mean = torch.as_tensor(np.asarray(state["zca_mean"], dtype=np.float32)).reshape(1, -1)
            matrix = torch.as_tensor(np.asarray(state["zca_matrix"], dtype=np.float32))
            inverse = torch.as_tensor(np.asarray(state["zca_inverse"], dtype=np.float32))
            d = mean.shape[1]
            if matrix.shape != (d, d) or inverse.shape != (d, d):
                raise ValueError(f"ZCA normaliser state is inconsistent (mean {d} values, matrix "
                                 f"{tuple(matrix.shape)}, inverse {tuple(inverse.shape)}): refit the ZCA")
            eps = _as_floats(state.get("zca_eps", [ZCA_EPS]))[0]
            zca = ZCAWhitening(eps=eps, compute_inv=True)
            # kornia keeps the fit in buffers; loading them into an unfitted module fits it.
            zca.load_state_dict({"mean_vector": mean, "transform_matrix": matrix, "transform_inv": inverse})
            return cls(zca=zca)
        raise ValueError(f"unknown normaliser kind {kind!r}: expected one of {', '.join(KINDS)}")

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_state` to ``path`` as an ``.npz`` (exactly that path; no pickle)."""
        arrays = {k: np.asarray(v) for k, v in self.to_state().items()}
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Normalizer":
        """Read a normaliser written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read normaliser cache {path}: {exc}; delete it to refit") from exc
        return cls.from_state(state)
