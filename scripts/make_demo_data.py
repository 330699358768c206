"""Regenerate the embedded demo set ``tesla/adapters/data/embedded/demo16.npz``.

The demo set lets ``tesla`` run end to end with no download (``--dataset demo``): all 10
CIFAR-10 classes at 16x16, 300 training and 80 test images per class. It is derived
deterministically from the CIFAR-10 subset shipped with the project:

- training images: the first 300 of each class in file order over data_batch_1..5;
- test images: the first 80 of each class in file order of test_batch;
- downsampled 32 -> 16 with area averaging (antialiased), rounded back to uint8.

Arrays are uint8 (images and labels) plus unicode class names, so the file loads with ``allow_pickle=False``.

Usage:
    python scripts/make_demo_data.py [--src /work/shared/data/cifar10-subset] [--out PATH]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 80
SIZE = 16
DEFAULT_SRC = Path("/work/shared/data/cifar10-subset")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tesla" / "adapters" / "data" / "embedded" / "demo16.npz"


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")  # the CIFAR dataset's own file format


def _folder(src: Path) -> Path:
    return src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src


def _read(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        d = _unpickle(folder / name)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _first_per_class(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if len(idx) < n:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {n}")
        keep[idx[:n]] = True
    return x[keep], y[keep]


def _downsample(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x).to(torch.float64)
    small = F.interpolate(t, size=(SIZE, SIZE), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8).numpy()


def build(src: Path) -> dict[str, np.ndarray]:
    folder = _folder(src)
    names = [str(n) for n in _unpickle(folder / "batches.meta")["label_names"]]
    train_x, train_y = _first_per_class(*_read(folder, [f"data_batch_{i}" for i in range(1, 6)]), TRAIN_PER_CLASS)
    test_x, test_y = _first_per_class(*_read(folder, ["test_batch"]), TEST_PER_CLASS)
    return {
        "train_x": _downsample(train_x),
        "train_y": train_y.astype(np.uint8),
        "test_x": _downsample(test_x),
        "test_y": test_y.astype(np.uint8),
        "class_names": np.asarray(names, dtype=np.str_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    arrays = build(args.src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB):",
          ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
