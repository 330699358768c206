"""Downsampled ImageNet (Chrabaszcz et al. 2017) readers: ImageNet 64x64 and its 32/16 px kin.

The release ships the training set as ten batch files ``train_data_batch_1 .. 10`` and the
validation set as ``val_data``, each a dict with ``data`` (N, 3*S*S) uint8, rows in CHW
order (all red, then green, then blue), and ``labels``, 1-based class numbers (1..1000,
in the order of ``map_clsloc.txt``). Two encodings exist:

* ``.npz`` (``Imagenet64_train_npz/train_data_batch_N.npz``): labels read with
  ``np.load(allow_pickle=False)``. Pixels are read by rows straight out of the zip member:
  positioned reads when the member is stored uncompressed, streamed through the zip
  decompressor otherwise, so a 1.5 GB batch file never has to sit in memory whole
  (nor be memory-mapped: mapped pages would stay resident while the file is open).
* the older pickled dicts (no suffix): unpickled through a *restricted* unpickler that
  resolves only numpy's array-reconstruction globals. Anything else in the pickle (an
  arbitrary class or callable) is refused with a clear error instead of being run, so a
  hostile file cannot execute code. These files are read one at a time, whole.

Labels are returned 0-based (int64). The side S is inferred from the row width, so the
32 and 16 px releases read the same way. :class:`Imagenet64Source` presents the files as
the two splits that ``tesla data prepare`` consumes, opening one batch file at a time.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import attrs
import numpy as np

from tesla.adapters.data.base import DataError
from tesla.adapters.data.safe_pickle import UnsafePickle, load_arrays

TRAIN_DIRS = ("", "Imagenet64_train_npz", "Imagenet64_train", "Imagenet32_train_npz", "Imagenet32_train")
VAL_DIRS = ("", "Imagenet64_val_npz", "Imagenet64_val", "Imagenet32_val_npz", "Imagenet32_val")
_BATCH_RE = re.compile(r"^train_data_batch_(\d+)(\.npz)?$")
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the zip format's local file header


class Imagenet64Error(DataError):
    """A Downsampled-ImageNet file is missing, malformed or unsafe to read."""


def _load_pickled_batch(path: Path) -> dict:
    try:
        obj = load_arrays(path)
    except UnsafePickle as err:
        raise Imagenet64Error(
            f"{path}: pickle holds more than plain arrays ({err}); use the .npz release of Downsampled ImageNet"
        ) from None
    except Exception as err:  # truncated or not a pickle at all
        raise Imagenet64Error(f"{path}: cannot read as an npz or a pickled batch ({err})") from None
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise Imagenet64Error(f"{path}: expected a dict with 'data' and 'labels'")
    data = np.asarray(obj["data"])
    if data.dtype != np.uint8:
        raise Imagenet64Error(f"{path}: 'data' must be uint8 (got {data.dtype})")
    return {"data": data, "labels": np.asarray(obj["labels"])}


# --- row access to one array inside an .npz ---------------------------------------------

class _NpzRows:
    """Rows of the 2-D ``data`` array inside an .npz, without loading the array whole.

    A stored (uncompressed) member is read with plain positioned reads from the zip file
    (``readinto`` a fresh array: no memory map, whose touched pages would stay resident
    and count against the process for the life of the file); a deflated one is read
    through ``ZipFile.open`` and ``seek`` (cheap going forward, which is how the batches
    are consumed).
    """

    def __init__(self, path: Path, member: str = "data") -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path)
        try:
            info = self._zip.getinfo(member + ".npy")
        except KeyError:
            self._zip.close()
            raise Imagenet64Error(f"{path}: no '{member}' array in the npz") from None
        self._stream = self._zip.open(info)
        shape, fortran, dtype = _read_npy_header(self._stream, path)
        if dtype != np.uint8 or len(shape) != 2 or fortran:
            self.close()
            raise Imagenet64Error(f"{path}: 'data' must be a C-ordered (N, 3*S*S) uint8 array")
        self.shape = shape
        self._data_start = self._stream.tell()
        self._row_bytes = shape[1]
        self._raw = None  # the zip file itself, for direct reads of a stored member
        if info.compress_type == zipfile.ZIP_STORED:
            self._raw = open(path, "rb")
            self._raw_start = _member_offset(path, info) + self._data_start

    @property
    def direct(self) -> bool:
        """Whether rows are read straight from the file (stored member) or decompressed."""
        return self._raw is not None

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` ((n, 3*S*S) uint8, C-contiguous) with rows ``start:start+n``."""
        view = memoryview(out).cast("B")
        if self._raw is not None:
            self._raw.seek(self._raw_start + start * self._row_bytes)
            got = self._raw.readinto(view)
        else:
            want = self._data_start + start * self._row_bytes
            if self._stream.tell() != want:
                self._stream.seek(want)
            got = 0
            while got < len(view):  # ZipExtFile.readinto may return short counts
                n = self._stream.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != len(view):
            raise Imagenet64Error(f"{self.path}: truncated 'data' array")

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        self._stream.close()
        self._zip.close()


def _read_npy_header(fp, path: Path) -> tuple:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(fp)
    raise Imagenet64Error(f"{path}: unsupported .npy version {version}")


def _member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset in the zip file where a stored member's content begins."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len


# --- one batch file -------------------------------------------------------------------

def side_from_width(width: int, path: object = "") -> int:
    """Image side S from a row width 3*S*S."""
    side = int(round(math.sqrt(width / 3)))
    if 3 * side * side != width:
        raise Imagenet64Error(f"{path}: row width {width} is not 3*S*S for a square RGB image")
    return side


def read_labels(path: str | Path) -> np.ndarray:
    """0-based int64 labels of one batch file (reads only the small ``labels`` array).

    Returns:
        (N,) int64.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with np.load(path, allow_pickle=False) as npz:
            if "labels" not in npz:
                raise Imagenet64Error(f"{path}: no 'labels' array in the npz")
            labels = np.asarray(npz["labels"])
    else:
        labels = _load_pickled_batch(path)["labels"]
    return _zero_based(labels, path)


def _zero_based(labels: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu":
        raise Imagenet64Error(f"{path}: 'labels' must be integers (got {labels.dtype})")
    if labels.size and labels.min() < 1:
        raise Imagenet64Error(f"{path}: labels must be 1-based (found {labels.min()})")
    return labels.astype(np.int64) - 1


class BatchFile:
    """One Downsampled-ImageNet batch file, read by rows.

    Attributes:
        path: the file.
        labels: (N,) int64, 0-based.
        image_size: side S of the stored images.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise Imagenet64Error(f"{self.path}: no such batch file")
        self._rows: Optional[_NpzRows] = None
        self._whole: Optional[np.ndarray] = None
        if zipfile.is_zipfile(self.path):
            self.labels = read_labels(self.path)
            self._rows = _NpzRows(self.path)
            n, width = self._rows.shape
        else:
            batch = _load_pickled_batch(self.path)
            self.labels = _zero_based(batch["labels"], self.path)
            self._whole = batch["data"]
            if self._whole.ndim != 2:
                raise Imagenet64Error(f"{self.path}: 'data' must be (N, 3*S*S)")
            n, width = self._whole.shape
        if n != len(self.labels):
            raise Imagenet64Error(f"{self.path}: {n} images but {len(self.labels)} labels")
        self.image_size = side_from_width(width, self.path)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` of the file.

        Returns:
            (n, 3, S, S) uint8.
        """
        s = self.image_size
        out = np.empty((stop - start, 3, s, s), np.uint8)
        self.read_into(start, out)
        return out

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` ((n, 3, S, S) uint8, C-contiguous) with images ``start:start+n``."""
        if self._rows is not None:
            self._rows.read_into(start, out.reshape(len(out), -1))
        else:
            out.reshape(len(out), -1)[:] = self._whole[start:start + len(out)]

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
        self._rows, self._whole = None, None

    def __enter__(self) -> "BatchFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_batches(paths: Sequence[str | Path], chunk: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every image of the given batch files in order, ``chunk`` at a time, one file open at a time.

    Yields:
        (x (n, 3, S, S) uint8, y (n,) int64 0-based), n <= chunk.
    """
    for path in paths:
        with BatchFile(path) as batch:
            for start in range(0, len(batch), chunk):
                stop = min(len(batch), start + chunk)
                yield batch.read(start, stop), batch.labels[start:stop]


# --- the release as two splits ---------------------------------------------------------

@attrs.frozen
class Imagenet64Files:
    """Where the batch files of a Downsampled-ImageNet release are."""

    train: tuple
    val: Optional[Path]
    class_map: Optional[Path]


def find_imagenet64(root: str | Path) -> Imagenet64Files:
    """Locate ``train_data_batch_N[.npz]`` (numeric order), ``val_data[.npz]`` and
    ``map_clsloc.txt`` under ``root`` or its usual sub-folders."""
    root = Path(root)
    train: dict[int, Path] = {}
    for sub in TRAIN_DIRS:
        d = root / sub
        if d.is_dir():
            for p in d.iterdir():
                m = _BATCH_RE.match(p.name)
                if m and p.is_file():
                    train.setdefault(int(m.group(1)), p)
    if not train:
        raise Imagenet64Error(f"{root}: no train_data_batch_N(.npz) files found")
    val = _first_file(root, VAL_DIRS, ("val_data.npz", "val_data"))
    class_map = _first_file(root, ("",) + TRAIN_DIRS[1:], ("map_clsloc.txt",))
    return Imagenet64Files(train=tuple(train[k] for k in sorted(train)), val=val, class_map=class_map)


def _first_file(root: Path, subs: Sequence[str], names: Sequence[str]) -> Optional[Path]:
    for sub in subs:
        for name in names:
            p = root / sub / name
            if p.is_file():
                return p
    return None


def is_imagenet64(root: str | Path) -> bool:
    try:
        find_imagenet64(root)
        return True
    except Imagenet64Error:
        return False


def read_class_map(path: Path) -> dict[int, str]:
    """0-based class -> name from ``map_clsloc.txt`` lines ``wnid index name``."""
    names: dict[int, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit():
            names[int(parts[1]) - 1] = parts[2]
    return names


class BatchSplit:
    """Several batch files seen as one split: labels up front, images read by range.

    Only the file holding the current range stays open, so memory holds one file's
    metadata plus the rows asked for (a whole file only for the pickled release).
    """

    def __init__(self, paths: Sequence[Path], image_size: Optional[int] = None) -> None:
        self.paths = tuple(Path(p) for p in paths)
        labels = [read_labels(p) for p in self.paths]
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._starts = np.cumsum([0] + [len(x) for x in labels])
        self._open: Optional[tuple[int, BatchFile]] = None
        self.native_size = self._file(0).image_size if self.paths else image_size
        self.image_size = image_size or self.native_size

    def __len__(self) -> int:
        return len(self.labels)

    def _file(self, i: int) -> BatchFile:
        if self._open is None or self._open[0] != i:
            self.close()
            self._open = (i, BatchFile(self.paths[i]))
        return self._open[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` of the split at ``image_size``.

        Returns:
            (n, 3, image_size, image_size) uint8.
        """
        s = self.native_size
        out = np.empty((stop - start, 3, s, s), np.uint8)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        at = start
        while at < stop:
            f = self._file(i)
            if f.image_size != s:
                raise Imagenet64Error(f"{f.path}: images of {f.image_size} px among {s} px files")
            hi = min(stop, int(self._starts[i + 1]))
            f.read_into(at - int(self._starts[i]), out[at - start:hi - start])
            at = hi
            i += 1
        return resize_uint8(out, self.image_size)

    def fingerprint(self) -> list:
        return [[p.name, p.stat().st_size] for p in self.paths]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
    """Resize (n, 3, s, s) uint8 images to ``size`` (bilinear with antialiasing; a no-op
    when the side already matches)."""
    if x.shape[-1] == size or len(x) == 0:
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()


class Imagenet64Source:
    """A Downsampled-ImageNet release as the source of ``tesla data prepare``.

    Attributes:
        name: ``imagenet64`` (or ``imagenet32``/... after the native side).
        format: ``imagenet64``.
        class_names: from ``map_clsloc.txt`` when present, else ``class_0000``...
        image_size: side of the images handed out.
        train, test: :class:`BatchSplit` (test is None without ``val_data``).
    """

    format = "imagenet64"

    def __init__(self, root: str | Path, image_size: Optional[int] = None) -> None:
        files = find_imagenet64(root)
        self.root = Path(root)
        self.train = BatchSplit(files.train, image_size)
        self.test = BatchSplit([files.val], self.train.image_size) if files.val else None
        self.image_size = self.train.image_size
        self.name = f"imagenet{self.train.native_size}"
        top = int(self.train.labels.max()) + 1 if len(self.train) else 0
        if self.test is not None and len(self.test):
            top = max(top, int(self.test.labels.max()) + 1)
        names = read_class_map(files.class_map) if files.class_map else {}
        k = max(top, len(names))
        width = len(str(max(k - 1, 0)))
        self.class_names = [names.get(i, f"class_{i:0{width}d}") for i in range(k)]

    def fingerprint(self) -> str:
        parts = [self.train.fingerprint(), self.test.fingerprint() if self.test else None, self.class_names]
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def close(self) -> None:
        self.train.close()
        if self.test is not None:
            self.test.close()


def write_npz_batch(path: str | Path, data: np.ndarray, labels_1based: Sequence[int], compressed: bool = False) -> None:
    """Write one batch in the release's .npz layout (tests, small exports).

    Args:
        data: (N, 3, S, S) or (N, 3*S*S) uint8.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(len(data), -1)
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as f:
        save(f, data=data, labels=np.asarray(labels_1based, dtype=np.int64))

