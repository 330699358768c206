"""In-memory real images: the :class:`~tesla.domain.ports.DataSource` for sets that fit in RAM.

CIFAR-10/100 (50k images of 3x32x32) and the embedded demo set are small enough to
hold as one float32 tensor each for train and test, already in *model space* (mean/std
normalised or ZCA-whitened by the set's :class:`Normalizer`). Everything a run needs
from real data then reduces to indexing those tensors:

- ``sample_class`` gives the random real images that initialise a synthetic set;
- ``train_batches`` gives one shuffled epoch for expert training;
- ``test_batches`` gives the test set, in order, for every accuracy we report.

Tensors stay on the CPU; loops move each batch to their device, so one ``ImageSet``
serves CPU and CUDA runs alike. All randomness comes from ``torch.Generator`` objects
seeded by the caller's ``seed``: the same seed gives the same images and batches, and
nothing touches the global RNG.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import attrs
import torch

if TYPE_CHECKING:  # the normaliser lives with the torch adapters; only its type is needed here
    from tesla.adapters.torch.normalize import Normalizer


from tesla.domain.errors import DataError  # noqa: E402  (the domain's; re-exported here)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _check_split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    if x.dim() != 4:
        raise DataError(f"{name}_x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{name}_y must be (N,) with N = {x.shape[0]}, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{name}_y holds labels outside [0, {num_classes}): {int(y.min())}..{int(y.max())}")


@attrs.frozen(eq=False)
class ImageSet:
    """A labelled image set held in memory, in model space.

    Attributes:
        name: dataset name (``cifar10``, ``demo``, ...).
        num_classes: number of classes K.
        class_names: K human-readable names.
        image_shape: (C, H, W).
        normalizer: maps [0, 1] images to model space and back (``encode``/``decode``).
        train_x: (N, C, H, W) float32 training images in model space, CPU.
        train_y: (N,) int64 class ids.
        test_x: (M, C, H, W) float32 test images in model space, CPU.
        test_y: (M,) int64 class ids.

    Example:
        >>> data = load_cifar("/data")                       # doctest: +SKIP
        >>> x0 = data.sample_class(3, 10, seed=0)            # (10, 3, 32, 32)
        >>> for x, y in data.train_batches(256, seed=1): ...
    """

    name: str
    num_classes: int
    class_names: list
    image_shape: tuple = attrs.field(converter=tuple)
    normalizer: "Normalizer"
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # Per-class index of the training set, built on first use (a private cache: the set
    # itself never changes, so caching inside a frozen object is safe).
    _cache: dict = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_split("train", self.train_x, self.train_y, self.num_classes)
        _check_split("test", self.test_x, self.test_y, self.num_classes)
        if tuple(self.train_x.shape[1:]) != self.image_shape or tuple(self.test_x.shape[1:]) != self.image_shape:
            raise DataError(
                f"image_shape {self.image_shape} does not match train {tuple(self.train_x.shape[1:])}"
                f" / test {tuple(self.test_x.shape[1:])}"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{len(self.class_names)} class names given for {self.num_classes} classes")

    # --- sizes -------------------------------------------------------------------------

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    # --- per-class access --------------------------------------------------------------

    def class_indices(self) -> list[torch.Tensor]:
        """Indices of the training images of each class: K LongTensors, in file order (cached)."""
        if "indices" not in self._cache:
            order = torch.argsort(self.train_y, stable=True)
            counts = torch.bincount(self.train_y, minlength=self.num_classes).tolist()
            self._cache["indices"] = list(torch.split(order, counts))
        return self._cache["indices"]

    def _pick(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        if not 0 <= c < self.num_classes:
            raise DataError(f"class {c} is out of range: this set has classes 0..{self.num_classes - 1}")
        if n < 0:
            raise DataError(f"cannot sample a negative number of images ({n})")
        pool = self.class_indices()[c]
        if pool.numel() == 0:
            raise DataError(f"class {c} ({self.class_names[c]!r}) has no training images")
        if n <= pool.numel():
            return pool[torch.randperm(pool.numel(), generator=generator)[:n]]
        # More images asked for than the class holds: take every image once, then draw the
        # rest with replacement, so the set is as diverse as the class allows.
        extra = torch.randint(pool.numel(), (n - pool.numel(),), generator=generator)
        return torch.cat([pool[torch.randperm(pool.numel(), generator=generator)], pool[extra]])

    def sample_class(self, c: int, n: int, seed: int) -> torch.Tensor:
        """``n`` random training images of class ``c``, (n, C, H, W) in model space.

        Drawn without replacement when the class holds at least ``n`` images; the same
        ``seed`` always gives the same images. The result is a copy (safe to optimise).
        """
        return self.train_x[self._pick(c, n, _generator(seed))].clone()

    def subset_per_class(self, n: int, seed: int) -> "ImageSet":
        """A new set with ``n`` random training images of every class (same test set).

        Used for the random-real baseline: train on it with the evaluation protocol.
        Images are grouped by class (class 0 first).
        """
        generator = _generator(seed)
        idx = torch.cat([self._pick(c, n, generator) for c in range(self.num_classes)])
        return attrs.evolve(self, name=f"{self.name}-{n}pc", train_x=self.train_x[idx].clone(), train_y=self.train_y[idx].clone())

    # --- batches ----------------------------------------------------------------------

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (x (B, C, H, W), y (B,)) batches; the last may be smaller."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1 (got {batch_size})")
        order = torch.randperm(self.num_train, generator=_generator(seed))
        for chunk in torch.split(order, batch_size):
            yield self.train_x[chunk], self.train_y[chunk]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in file order as (x (B, C, H, W), y (B,)) batches."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1 (got {batch_size})")
        for start in range(0, self.num_test, batch_size):
            yield self.test_x[start : start + batch_size], self.test_y[start : start + batch_size]


def encode_uint8(images: Any, normalizer: "Normalizer", chunk: int = 10_000) -> torch.Tensor:
    """uint8 images (N, C, H, W) to float32 model space through ``normalizer``, in chunks.

    Chunks bound the peak memory of the float copies (50k CIFAR images are 600 MB as float32).
    """
    x = torch.as_tensor(images)
    out = torch.empty(x.shape, dtype=torch.float32)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float32).div_(255.0)
        out[start : start + chunk] = normalizer.encode(part)
    return out


def channel_stats(images: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1]."""
    x = torch.as_tensor(images).to(torch.float64).div_(255.0)
    dims = (0, 2, 3)
    return x.mean(dim=dims).tolist(), x.std(dim=dims).tolist()
