"""Real-image sources to prepare: which layout a folder holds, and the reader for it.

``tesla data prepare`` converts Downsampled-ImageNet batches (``imagenet64``), an
ImageFolder tree (``imagefolder``) or Tiny-ImageNet (``tiny-imagenet``) into a prepared
store. :func:`detect_format` tells them apart from what the folder holds;
:class:`PrepareSourcesOnDisk` is the :class:`~tesla.domain.ports.PrepareSources` port the
prepare service works through (it also opens the
:class:`~tesla.adapters.data.prepared.PreparedWriter`, with the storage options of a
remote destination).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tesla.adapters.data.imagefolder import ImageFolderSource, TinyImageNetSource, is_imagefolder, is_tiny_imagenet
from tesla.adapters.data.imagenet64 import Imagenet64Source, is_imagenet64
from tesla.adapters.data.prepared import PreparedWriter
from tesla.adapters.torch.memory import TorchFreeMemory
from tesla.domain.errors import PrepareError
from tesla.domain.footprint import check_fits, prepare_footprint

FORMATS = ("imagenet64", "imagefolder", "tiny-imagenet")


def detect_format(src: str | Path) -> str:
    """``imagenet64`` | ``tiny-imagenet`` | ``imagefolder`` from what ``src`` holds."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such folder; SRC must be a folder of image data")
    if is_imagenet64(src):
        return "imagenet64"
    if is_tiny_imagenet(src):
        return "tiny-imagenet"
    if is_imagefolder(src):
        return "imagefolder"
    raise PrepareError(
        f"{src}: cannot tell the layout; expected train_data_batch_N.npz files (imagenet64),"
        " wnids.txt + train/ (tiny-imagenet) or train/<class>/ images (imagefolder)"
    )


def open_source(src: str | Path, fmt: Optional[str] = None, image_size: int = 64) -> Any:
    """The data adapter for ``src`` in layout ``fmt`` (detected when None)."""
    fmt = fmt or detect_format(src)
    if fmt not in FORMATS:
        raise PrepareError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if not Path(src).is_dir():
        raise PrepareError(f"{src}: no such folder; SRC must be a folder of image data")
    cls = {"imagenet64": Imagenet64Source, "imagefolder": ImageFolderSource, "tiny-imagenet": TinyImageNetSource}[fmt]
    return cls(src, image_size)


class PrepareSourcesOnDisk:
    """Sources from local folders; prepared stores at paths or URLs (``storage_options``
    for a remote Zarr destination)."""

    def __init__(self, storage_options: Optional[dict] = None) -> None:
        self.storage_options = storage_options

    def open(self, src: str | Path, fmt: Optional[str], image_size: int) -> Any:
        return open_source(src, fmt, image_size)

    def writer(self, dest: str, source: Any, *, chunk: int, block: Optional[int]) -> PreparedWriter:
        check_fits(prepare_footprint(source.image_size, chunk, block or 8 * chunk, _largest_split(source)),
                   TorchFreeMemory("cpu"))  # an absurd --image-size is refused before the store is made
        return PreparedWriter(str(dest), source, chunk=chunk, block=block, storage_options=self.storage_options)


def _largest_split(source: Any) -> int:
    """Images of the source's largest split (a sort block or a chunk holds no more)."""
    return max(len(split) for split in (source.train, getattr(source, "test", None)) if split is not None)


# --- what a `tesla run DATA` argument names -----------------------------------------------------


def find_data(data: str) -> tuple[str, str]:
    """What ``data`` is, as ``(kind, path)``: ``demo``; ``cifar10`` / ``cifar100`` (a folder
    of the Python batches); ``prepared`` (a store ``tesla data prepare`` wrote); or a
    source to prepare first, ``imagefolder`` / ``tiny-imagenet`` / ``imagenet64``. A source
    must hold held-out images (val/ or test/): the evaluation is on them.

    Raises:
        DataError: nothing there, or nothing this can read (the message says what is).
    """
    from tesla.adapters.data.cifar import find_folder
    from tesla.adapters.stores.summary import StoreInspectorOnDisk
    from tesla.domain.errors import DataError, StoreError, UserError

    if data == "demo":
        return "demo", ""
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"{data}: no such file or folder: pass demo, a CIFAR folder, an ImageFolder tree "
                        "(train/<class>/ and val/ or test/) or a store made by `tesla data prepare`")
    try:
        if StoreInspectorOnDisk().prepared(str(path)) is not None:
            return "prepared", str(path)
    except (StoreError, OSError, ValueError):
        pass  # not a store: a folder of data
    for name in ("cifar10", "cifar100"):
        try:
            find_folder(path, name)
            return name, str(path)
        except UserError:
            continue
    try:
        fmt = detect_format(path)
    except PrepareError:
        raise DataError(f"{data}: cannot tell what it holds: expected CIFAR batch files, an ImageFolder tree "
                        "(train/<class>/ and val/ or test/), Tiny-ImageNet, Downsampled-ImageNet batches or a "
                        "store made by `tesla data prepare`") from None
    if fmt == "imagefolder" and not any((path / split).is_dir() for split in ("val", "test")):
        raise DataError(f"{data}: an ImageFolder tree needs held-out images to evaluate on: add {path}/val/<class>/ "
                        f"(or test/) beside {path}/train/")
    return fmt, str(path)
