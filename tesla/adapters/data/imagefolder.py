"""ImageFolder trees and the Tiny-ImageNet layout, decoded to square uint8 arrays.

Two layouts of image files on disk:

* ImageFolder: ``root/train/<class>/*.jpg|png|...`` and ``root/val/<class>/...`` (or
  ``root/test/<class>/...``). Classes are the sorted sub-folder names of ``train``, and
  files are listed by torchvision's ``find_classes``/``make_dataset`` so the order
  matches ``torchvision.datasets.ImageFolder``.
* Tiny-ImageNet: ``wnids.txt``, ``words.txt`` (wnid -> names), ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``. Classes are the sorted
  wnids; the name of a class is the first synonym in ``words.txt``. The unlabelled
  ``test/`` folder is ignored; ``val`` serves as the test split.

Resizing (the one choice made here): the shorter side is resized to S with bicubic
interpolation and antialiasing, then the centre S x S is cropped (torchvision's
``Resize(S)`` + ``CenterCrop(S)``). This keeps the aspect ratio, as ImageNet evaluation
pipelines do, at the cost of the border of non-square images. An image already S x S is
left untouched, pixel for pixel.

Files are decoded lazily, a range at a time (``read(start, stop)``), so a split of any
size streams through ``tesla data prepare`` in bounded memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tesla.adapters.data.base import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderError(DataError):
    """An image tree is missing, empty or inconsistent."""


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image to RGB, shorter side to ``size`` (bicubic, antialiased), centre crop.

    Returns:
        (3, size, size) uint8.
    """
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    with Image.open(path) as im:
        img = im.convert("RGB")
    if img.size != (size, size):
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = TF.center_crop(img, [size, size])
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


class FileSplit:
    """A list of (image file, 0-based label) read a range at a time.

    Attributes:
        paths: the files, in split order.
        labels: (N,) int64.
        image_size: side S of the decoded images.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], image_size: int) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Decode images ``start:stop``.

        Returns:
            (n, 3, S, S) uint8.
        """
        out = np.empty((stop - start, 3, self.image_size, self.image_size), np.uint8)
        for i, p in enumerate(self.paths[start:stop]):
            try:
                out[i] = load_image(p, self.image_size)
            except Exception as err:  # PIL raises many types for a broken file
                raise ImageFolderError(f"{p}: cannot decode image ({err})") from None
        return out

    def fingerprint(self, root: Path) -> list:
        names = "\n".join(str(p.relative_to(root)) for p in self.paths)
        return [len(self.paths), hashlib.sha256(names.encode()).hexdigest()]

    def close(self) -> None:
        return None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS


# --- ImageFolder ----------------------------------------------------------------------

def is_imagefolder(root: str | Path) -> bool:
    train = Path(root) / "train"
    return train.is_dir() and any(d.is_dir() for d in train.iterdir())


class _FileSource:
    """What both folder layouts share once they have ``root``, ``train``, ``test`` and
    ``class_names``: a fingerprint of the files (so a resumed prepare knows its source)."""

    def fingerprint(self) -> str:
        parts = [self.train.fingerprint(self.root), self.test.fingerprint(self.root) if self.test else None,
                 self.class_names]
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def close(self) -> None:
        return None


class ImageFolderSource(_FileSource):
    """``root/train/<class>/*`` (+ ``root/val`` or ``root/test``) as train and test splits.

    Attributes:
        name: the folder's name; format: ``imagefolder``; class_names: sorted class folders;
        image_size: S; train, test: :class:`FileSplit` (test None without val/test folders).
    """

    format = "imagefolder"

    def __init__(self, root: str | Path, image_size: int = 64) -> None:
        from torchvision.datasets.folder import find_classes, make_dataset

        self.root = Path(root)
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise ImageFolderError(f"{self.root}: no train/ folder (expected root/train/<class>/*.png|jpg)")
        try:
            classes, class_to_idx = find_classes(str(train_dir))
            train = make_dataset(str(train_dir), class_to_idx, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, RuntimeError) as err:
            raise ImageFolderError(f"{train_dir}: {err}") from None
        self.class_names = list(classes)
        self.image_size = image_size
        self.name = self.root.resolve().name or "imagefolder"
        self.train = FileSplit([p for p, _ in train], [y for _, y in train], image_size)
        self.test = None
        for sub in ("val", "test"):
            test_dir = self.root / sub
            if test_dir.is_dir() and any(d.is_dir() for d in test_dir.iterdir()):
                self.test = self._test_split(test_dir, class_to_idx)
                break

    def _test_split(self, test_dir: Path, class_to_idx: dict) -> FileSplit:
        from torchvision.datasets.folder import make_dataset

        unknown = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in class_to_idx)
        if unknown:
            raise ImageFolderError(f"{test_dir}: classes not in train/: {', '.join(unknown[:5])}")
        items = make_dataset(str(test_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        return FileSplit([p for p, _ in items], [y for _, y in items], self.image_size)



# --- Tiny-ImageNet --------------------------------------------------------------------

def is_tiny_imagenet(root: str | Path) -> bool:
    root = Path(root)
    return (root / "wnids.txt").is_file() and (root / "train").is_dir()


def read_words(path: Path) -> dict[str, str]:
    """wnid -> first synonym, from ``words.txt`` lines ``wnid<TAB>name, other names``."""
    names: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, words = line.partition("\t")
            if words:
                names[wnid.strip()] = words.split(",")[0].strip()
    return names


class TinyImageNetSource(_FileSource):
    """Tiny-ImageNet-200's layout as train and test (= val) splits.

    Attributes:
        name: ``tiny-imagenet``; format: ``tiny-imagenet``; wnids: sorted class wnids;
        class_names: first synonym per wnid (the wnid when words.txt lacks it);
        image_size: S; train, test: :class:`FileSplit`.
    """

    format = "tiny-imagenet"
    name = "tiny-imagenet"

    def __init__(self, root: str | Path, image_size: int = 64) -> None:
        self.root = Path(root)
        if not is_tiny_imagenet(self.root):
            raise ImageFolderError(f"{self.root}: not a Tiny-ImageNet folder (needs wnids.txt and train/)")
        self.wnids = sorted({w.strip() for w in (self.root / "wnids.txt").read_text().split() if w.strip()})
        index = {w: i for i, w in enumerate(self.wnids)}
        words = read_words(self.root / "words.txt")
        self.class_names = [words.get(w, w) for w in self.wnids]
        self.image_size = image_size
        paths, labels = [], []
        for w in self.wnids:
            img_dir = self.root / "train" / w / "images"
            if not img_dir.is_dir():
                raise ImageFolderError(f"{img_dir}: missing (every wnid in wnids.txt needs train/<wnid>/images/)")
            files = sorted(p for p in img_dir.iterdir() if _is_image(p))
            paths += files
            labels += [index[w]] * len(files)
        self.train = FileSplit(paths, labels, image_size)
        self.test = self._val_split(index)

    def _val_split(self, index: dict) -> Optional[FileSplit]:
        ann = self.root / "val" / "val_annotations.txt"
        if not ann.is_file():
            return None
        rows = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            name, wnid = parts[0].strip(), parts[1].strip()
            if wnid not in index:
                raise ImageFolderError(f"{ann}:{n}: wnid {wnid} is not in wnids.txt")
            rows.append((name, index[wnid]))
        rows.sort()
        img_dir = self.root / "val" / "images"
        return FileSplit([img_dir / name for name, _ in rows], [y for _, y in rows], self.image_size)

