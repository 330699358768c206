"""CIFAR-10 / CIFAR-100 from the official "python version" pickles.

We read the dataset's own files (``cifar-10-batches-py/data_batch_1..5, test_batch,
batches.meta``; ``cifar-100-python/train, test, meta``) with ``pickle.load(f,
encoding="latin1")`` rather than through torchvision, whose loader insists on the md5
sums of the full download and so refuses subsets and re-packed copies. The files are
the trusted dataset format; nothing else is unpickled.

Images are scaled to [0, 1] and mapped to model space by a :class:`Normalizer`: the
standard CIFAR mean/std, or with ``zca=True`` kornia's ZCA whitening (eps 0.1) fitted
once on the training images (docs/MATHS.md §7). The fitted ZCA is a 3072x3072 transform; it is
cached as ``cache_dir/zca-<hash>.npz`` where the hash covers the training pixels and
eps, so a changed data set never reuses a stale transform.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tesla.adapters.data.base import DataError, ImageSet, encode_uint8
from tesla.adapters.data.safe_pickle import UnsafePickle, load_arrays
from tesla.adapters.torch.normalize import Normalizer

ZCA_EPS = 0.1

# The values the field uses (DC/DSA/MTT/TESLA code), not recomputed per subset, so
# numbers stay comparable with published ones.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}


def _expected(name: str) -> str:
    lay = _LAYOUT[name]
    files = ", ".join(lay["train"] + lay["test"] + [lay["meta"]])
    return f"{lay['folder']}/ with {files} (the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html)"


def find_folder(root: str | Path, name: str = "cifar10") -> Path:
    """The folder holding the batch files: ``root/<cifar folder>`` or ``root`` itself."""
    if name not in _LAYOUT:
        raise DataError(f"unknown CIFAR name {name!r}: use 'cifar10' or 'cifar100'")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (expected it to contain {_expected(name)})")
    lay = _LAYOUT[name]
    for candidate in (root / lay["folder"], root):
        if (candidate / lay["meta"]).is_file() or (candidate / lay["train"][0]).is_file():
            return candidate
    raise DataError(f"no {name} batch files in {root}: expected {_expected(name)}")


def _unpickle(path: Path, name: str) -> dict:
    if not path.is_file():
        raise DataError(f"missing {name} file: {path} (expected {_expected(name)})")
    try:
        obj = load_arrays(path)  # never plain pickle.load: a data folder is not trusted input
    except UnsafePickle as e:
        raise DataError(f"{path}: {e}; a {name} batch file holds only arrays, lists and strings: "
                        "replace the file with the official one") from None
    except Exception as e:  # truncated, damaged, or not a pickle at all
        raise DataError(f"{path}: not a readable {name} batch file ({type(e).__name__}: {e}): "
                        "replace it with the official one") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a {name} batch file holds a dict (got {type(obj).__name__}): "
                        "replace it with the official one")
    return obj


def _entry(d: dict, key: str, path: Path, name: str):
    if key not in d:
        raise DataError(f"{path}: no {key!r} entry in this {name} file: replace it with the official one")
    return d[key]


def _read_split(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    lay = _LAYOUT[name]
    xs, ys = [], []
    for fname in lay[split]:
        d = _unpickle(folder / fname, name)
        data = np.asarray(_entry(d, "data", folder / fname, name), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{folder / fname}: 'data' must be (N, 3072) uint8, got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(_entry(d, lay["labels"], folder / fname, name), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _first_per_class(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of each class in file order (a deterministic small subset)."""
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        keep[np.flatnonzero(y == c)[:n]] = True
    return x[keep], y[keep]


def zca_cache_path(cache_dir: str | Path, train_uint8: np.ndarray, eps: float = ZCA_EPS) -> Path:
    """Where the ZCA fitted on these exact training pixels is cached."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(train_uint8).tobytes())
    h.update(repr((train_uint8.shape, float(eps))).encode())
    return Path(cache_dir) / f"zca-{h.hexdigest()[:16]}.npz"


def fit_or_load_zca(train_uint8: np.ndarray, cache_dir: Optional[str | Path], eps: float = ZCA_EPS) -> Normalizer:
    """A ZCA normaliser for these training images, read from the cache when present."""
    path = zca_cache_path(cache_dir, train_uint8, eps) if cache_dir is not None else None
    if path is not None and path.is_file():
        return Normalizer.load(path)
    x01 = torch.from_numpy(train_uint8).to(torch.float32).div_(255.0)
    normalizer = Normalizer.fit_zca(x01, eps=eps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so a killed process never leaves half a cache.
        tmp = path.with_name(path.stem + ".tmp.npz")
        normalizer.save(tmp)
        tmp.replace(path)
    return normalizer


def load_cifar(
    root: str | Path,
    name: str = "cifar10",
    zca: bool = False,
    cache_dir: Optional[str | Path] = None,
    *,
    limit_per_class: Optional[int] = None,
) -> ImageSet:
    """Load CIFAR-10 or CIFAR-100 into memory, in model space.

    Args:
        root: the folder containing ``cifar-10-batches-py`` / ``cifar-100-python``, or
            that folder itself.
        name: ``cifar10`` or ``cifar100`` (100 fine labels).
        zca: ZCA-whiten (fitted on the training images) instead of mean/std.
        cache_dir: where a fitted ZCA is cached and reused (None: fit every time).
        limit_per_class: keep only the first n images of each class in train and test
            (tests and benchmarks; None keeps everything).

    Returns:
        An :class:`ImageSet` with images (N, 3, 32, 32) float32 on the CPU.

    Raises:
        DataError: the folder or a batch file is missing, naming the path and the layout.
    """
    folder = find_folder(root, name)
    lay = _LAYOUT[name]
    meta = _unpickle(folder / lay["meta"], name)
    class_names = [str(n) for n in _entry(meta, lay["names"], folder / lay["meta"], name)]
    train_x, train_y = _read_split(folder, name, "train")
    test_x, test_y = _read_split(folder, name, "test")
    if limit_per_class is not None:
        train_x, train_y = _first_per_class(train_x, train_y, limit_per_class)
        test_x, test_y = _first_per_class(test_x, test_y, limit_per_class)

    if zca:
        normalizer = fit_or_load_zca(train_x, cache_dir)
    else:
        mean, std = STATS[name]
        normalizer = Normalizer(mean=mean, std=std)

    return ImageSet(
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=(3, 32, 32),
        normalizer=normalizer,
        train_x=encode_uint8(train_x, normalizer),
        train_y=torch.from_numpy(train_y),
        test_x=encode_uint8(test_x, normalizer),
        test_y=torch.from_numpy(test_y),
    )
