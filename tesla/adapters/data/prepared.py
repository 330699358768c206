"""Prepared image stores: real images converted once into on-disk uint8 arrays, sorted by class.

ImageNet-1K at 64 px is 1.28 M images (15.7 GB as uint8): too big to hold in RAM, and
too slow to decode from JPEG every epoch. ``tesla data prepare`` converts a source
(Downsampled-ImageNet batches, an ImageFolder tree, Tiny-ImageNet) once into a store -
Zarr v3 (directory or fsspec URL) or HDF5 (``.h5``), by suffix, through the stores'
:func:`~tesla.adapters.stores.backends.open_backend` - laid out as::

    train/images         (N, 3, S, S) uint8, chunked along N (``chunk`` images a chunk)
    train/labels         (N,) int64, 0-based, sorted by class
    train/class_offsets  (K+1,) int64: class k is rows offsets[k]:offsets[k+1]
    train/chunk_crc32    (ceil(N / chunk),) int64: CRC-32 of each images chunk's bytes,
                         checked on every read (a lost or altered chunk is an error, not zeros)
    test/...             the same for the test split (possibly empty)
    attrs: format="tesla-prepared", format_version=2, name, source, source_format,
           num_classes, class_names, image_size, mean, std (per channel, [0, 1] space),
           num_train, num_test, chunk, plan (source fingerprint and settings, checked
           by a re-run), crc32 (of every labels, class_offsets and chunk_crc32 array),
           attrs_crc32 (of these attributes); ``complete`` = True written last.

**Damage is refused, not read.** A reader checks, when it opens a version-2 store, the
attributes against ``attrs_crc32``, the indexes against ``crc32`` and their shapes
against the attributes, and that every images chunk has its CRC (a store marked
complete over missing chunks is refused, not read as zeros); then each images chunk
against its CRC as it is read. Version-1 stores (written before) are checked where they
carry checksums, and their indexes for shape and order. A writer holds the destination's
lock (:mod:`~tesla.adapters.stores.lock`), so a second prepare into it is refused.

**Writing (PreparedWriter): an external merge sort with bounded memory.** Sorting by
class cannot scatter images straight into their class ranges: source order mixes the
classes, so every source chunk would rewrite hundreds of compressed destination chunks.
Instead, per split:

1. *sort* tasks: the source is cut into blocks of ``block`` images; each block is read,
   stably sorted by label in memory, and written to a side store ``DEST.work`` (a Zarr
   directory, removed at the end) as a sorted *run*; a per-channel histogram of its
   pixel values (exact integers) is kept for the mean/std.
2. *merge* tasks: each destination chunk of the class-sorted order is assembled from the
   runs. Within class k, images come block by block, each block's images in source order,
   so the result equals a stable sort of the whole split. The runs are read through a
   cache of one small tile (``tile`` images) per block; cursors only move forward, so
   every tile is read once.

Peak memory: about one block while sorting (the sorted rows are gathered and written a
few tiles at a time), one destination chunk plus ``blocks * tile`` images while merging
(``tile`` = max(16, chunk / blocks), so about one chunk). With the defaults on ImageNet-1K
64 px (chunk 1024, block 8192) that is ~100 MB and ~30 MB. Disk: the runs double the
space until the end.

**Resuming.** Every task writes its data, then its done-marker (arrays in ``DEST.work``).
A re-run with the same source and settings skips the tasks marked done and redoes at
most the one that was cut off; every task writes exactly the same bytes whatever ran
before, and the mean/std come from exact integer histograms, so an interrupted-then-
resumed run gives the same store as an uninterrupted one. The plan (source fingerprint,
sizes, settings) is recorded in the work store; a different plan is refused.

**Reading (open_prepared -> PreparedImages)**: the same methods as the in-memory
:class:`~tesla.adapters.data.base.ImageSet` (``sample_class``, ``train_batches``,
``test_batches``, ``class_indices``...), reading only what is asked for, and returning
float32 model-space tensors through a mean/std :class:`Normalizer`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Iterator, Optional, Protocol, Sequence

import attrs
import numpy as np

from tesla.adapters.stores.backend import Backend, check_room, is_hdf5_url
from tesla.adapters.stores.backends import open_backend
from tesla.adapters.stores.checksum import attrs_crc, crc32
from tesla.adapters.stores.errors import StoreError
from tesla.adapters.stores.formats import (ATTRS_CRC, COMPLETE, CRC, FORMAT_KEY, PREPARED, checksummed,
                                           missing_checksum)
from tesla.adapters.stores.lock import local_path, store_lock

FORMAT = PREPARED.name
FORMAT_VERSION = PREPARED.version
SPLITS = ("train", "test")
INDEXES = ("labels", "class_offsets", "chunk_crc32")  # the arrays beside the images, checksummed at finalize
_REDO = "prepare it again with `tesla data prepare` into a new path"
MIN_TILE = 16  # run tiles smaller than this make too many tiny chunk objects


# --- what a source must offer -----------------------------------------------------------

class SplitReader(Protocol):
    """One split of a source: all labels up front, images read by range."""

    labels: np.ndarray  # (N,) int64, 0-based, in source order

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` in source order, (n, 3, S, S) uint8."""


class ImageSource(Protocol):
    """A source ``tesla data prepare`` can convert (imagenet64, imagefolder, tiny-imagenet)."""

    name: str
    format: str
    class_names: list
    image_size: int
    train: SplitReader
    test: Optional[SplitReader]

    def fingerprint(self) -> str:
        """A digest of the source's file list (names, sizes) and classes: a resume check."""

    def close(self) -> None: ...


class _EmptySplit:
    labels = np.zeros(0, np.int64)

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - never called
        raise IndexError("empty split")


# --- store plumbing -------------------------------------------------------------------

def work_url(url: str) -> str:
    """Where the runs and done-markers of an unfinished prepare live: ``DEST.work`` (Zarr)."""
    return str(url).rstrip("/") + ".work"


def remove_store(url: str, storage_options: Optional[dict] = None) -> None:
    """Delete a Zarr directory or fsspec prefix (no error when absent)."""
    url = str(url)
    if "://" not in url or url.startswith("file://"):
        shutil.rmtree(url.removeprefix("file://"), ignore_errors=True)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def chunk_crc(x: np.ndarray) -> int:
    """CRC-32 of a uint8 images chunk's bytes (C order), as stored in ``chunk_crc32``."""
    return crc32(np.asarray(x, dtype=np.uint8))


def _native(backend: Backend, path: str) -> Any:
    """The h5py dataset / zarr array at ``path``: hot loops slice it without per-call lookups."""
    return backend.file[path] if hasattr(backend, "file") else backend.root[path]


def _exists(url: str, storage_options: Optional[dict]) -> bool:
    try:
        open_backend(url, "r", storage_options).close()
        return True
    except StoreError:
        return False


@attrs.frozen
class Task:
    """One resumable unit of work: sort block ``index`` or merge destination chunk ``index``."""

    split: str
    phase: str  # "sort" | "merge"
    index: int

    @property
    def label(self) -> str:
        return f"{self.split}: {'sorting blocks' if self.phase == 'sort' else 'writing class-sorted chunks'}"


def _where(root: Any) -> str:
    """A source location as recorded in the store: absolute for local paths."""
    root = str(root)
    return root if "://" in root else os.path.abspath(root)


@attrs.frozen(eq=False)
class _SplitPlan:
    """Everything about one split that follows from its labels and the settings."""

    n: int
    block: int
    chunk: int
    tile: int
    block_counts: np.ndarray  # (B, K) images of class k in block b
    seg_dest: np.ndarray  # (M,) start of each non-empty (class, block) segment in sorted order
    seg_len: np.ndarray  # (M,)
    seg_run: np.ndarray  # (M,) its start inside the runs array
    seg_block: np.ndarray  # (M,)
    offsets: np.ndarray  # (K+1,)

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block)

    @property
    def num_chunks(self) -> int:
        return -(-self.n // self.chunk)

    @classmethod
    def build(cls, labels: np.ndarray, k: int, block: int, chunk: int) -> "_SplitPlan":
        n = len(labels)
        nb = -(-n // block)
        counts = np.zeros((nb, k), np.int64)
        for b in range(nb):
            counts[b] = np.bincount(labels[b * block:(b + 1) * block], minlength=k)
        offsets = np.concatenate([[0], np.cumsum(counts.sum(0))]).astype(np.int64)
        # (class, block) segments in sorted order: class-major, then block.
        seg_len = counts.T.reshape(-1)
        seg_dest = np.concatenate([[0], np.cumsum(seg_len)[:-1]]) if seg_len.size else seg_len
        within = np.cumsum(counts, axis=1) - counts  # start of class k inside block b's run
        seg_run = (within + (np.arange(nb) * block)[:, None]).T.reshape(-1)
        seg_block = np.tile(np.arange(nb), k)
        keep = seg_len > 0
        tile = max(MIN_TILE, chunk // max(nb, 1))
        tile = min(tile, max(block, 1))
        return cls(n=n, block=block, chunk=chunk, tile=tile, block_counts=counts, seg_dest=seg_dest[keep],
                   seg_len=seg_len[keep], seg_run=seg_run[keep], seg_block=seg_block[keep], offsets=offsets)


class _RunCache:
    """One tile per block of the runs array; reads within a block only move forward."""

    def __init__(self, runs: Any, tile: int) -> None:
        self.runs, self.tile, self._tiles = runs, tile, {}

    def read(self, block: int, start: int, stop: int) -> np.ndarray:
        parts = []
        while start < stop:
            t = start // self.tile
            cached = self._tiles.get(block)
            if cached is None or cached[0] != t:
                cached = (t, np.asarray(self.runs[t * self.tile:(t + 1) * self.tile]))
                self._tiles[block] = cached
            hi = min(stop, (t + 1) * self.tile)
            parts.append(cached[1][start - t * self.tile:hi - t * self.tile])
            start = hi
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _histogram(x: np.ndarray, step: int = 64) -> np.ndarray:
    """Per-channel counts of each pixel value, (C, 256) int64, in slices (bincount widens to int64)."""
    hist = np.zeros((x.shape[1], 256), np.int64)
    for i in range(0, len(x), step):
        for c in range(x.shape[1]):
            hist[c] += np.bincount(x[i:i + step, c].reshape(-1), minlength=256)
    return hist


def stats_from_histogram(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in [0, 1] space from (C, 256) value counts."""
    v = np.arange(256, dtype=np.int64)
    n = hist.sum(1)
    s1, s2 = hist @ v, hist @ (v * v)  # exact integers
    mean = s1 / (255.0 * n)
    var = np.maximum(s2 / (255.0**2 * n) - mean**2, 0.0)
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var)]


# --- writer ---------------------------------------------------------------------------

class PreparedWriter:
    """Builds (or resumes building) a prepared store from an :class:`ImageSource`.

    Drive it with :meth:`tasks` / :meth:`is_done` / :meth:`run`, then :meth:`finalize`
    (the service :func:`tesla.app.services.prepare.prepare` does, with events and a
    stop check between tasks).

    Args:
        url: destination (``.h5``/``.hdf5`` -> HDF5; else Zarr directory or fsspec URL).
        source: the images to convert.
        chunk: images per destination chunk along N.
        block: images per sorted run (default ``8 * chunk``): peak memory of the sort phase.
        storage_options: fsspec options for remote Zarr URLs.

    Attributes:
        already_complete: ``url`` already holds this very prepared set; nothing to do.
        resumed: an unfinished prepare of the same plan was found and is continued.
    """

    def __init__(self, url: str, source: ImageSource, *, chunk: int = 1024, block: Optional[int] = None,
                 storage_options: Optional[dict] = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 (got {chunk})")
        block = block or 8 * chunk
        if block < 1:
            raise ValueError(f"block must be >= 1 (got {block})")
        self.url, self.source, self.chunk = str(url), source, chunk
        self.storage_options = storage_options
        self.work_url = work_url(self.url)
        self._work_options = None if is_hdf5_url(self.url) else storage_options
        self.num_classes = len(source.class_names)
        self.readers = {"train": source.train, "test": source.test if source.test is not None else _EmptySplit()}
        if len(self.readers["train"].labels) == 0:
            raise ValueError(f"{self.url}: the source has no training images")
        for split, reader in self.readers.items():
            lab = reader.labels
            if len(lab) and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"{split} labels fall outside 0..{self.num_classes - 1}")
        self.plans = {s: _SplitPlan.build(r.labels, self.num_classes, block, chunk) for s, r in self.readers.items()}
        self.plan = {
            "source": _where(getattr(source, "root", "")),
            "fingerprint": source.fingerprint(),
            "source_format": source.format,
            "image_size": int(source.image_size),
            "chunk": chunk,
            "block": block,
            "num_classes": self.num_classes,
            "counts": {s: p.n for s, p in self.plans.items()},
        }
        self.already_complete = False
        self.resumed = False
        self._caches: dict[str, _RunCache] = {}
        self.dest: Optional[Backend] = None
        self.work: Optional[Backend] = None
        self._lock = store_lock(self.url)  # one prepare per destination
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening / resuming

    def _open(self) -> None:
        self.dest = open_backend(self.url, "a", self.storage_options)
        attrs_ = self.dest.attrs()
        if attrs_ and attrs_.get(FORMAT_KEY) != FORMAT:
            self.dest.close()
            raise StoreError(f"{self.url}: holds something other than a prepared image set; pick a new DEST")
        if attrs_.get(COMPLETE):
            if attrs_.get("plan") != self.plan:
                self.dest.close()
                raise StoreError(
                    f"{self.url}: already holds a complete prepared set from other data or settings;"
                    " pick a new DEST or delete it first"
                )
            self.already_complete = True
            remove_store(self.work_url, self._work_options)  # left over from a cut-off cleanup
            return
        if _exists(self.work_url, self._work_options):
            self.work = open_backend(self.work_url, "a", self._work_options)
            recorded = self.work.attrs().get("plan")
            if recorded is None:  # cut off while creating the stores: start afresh
                self.work.close()
                self.work = None
                self._create()
                return
            if recorded != self.plan:
                self.close()
                raise StoreError(
                    f"{self.url}: an unfinished prepare from other data or settings is here; re-run it with"
                    f" the same SRC and options, or delete {self.url} and {self.work_url}"
                )
            self.resumed = True
            return
        self._create()

    def _create(self) -> None:
        s = self.plan["image_size"]
        self.dest.update_attrs("", {**PREPARED.root_attrs(), COMPLETE: False})
        for split, p in self.plans.items():
            self.dest.create_array(f"{split}/images", (p.n, 3, s, s), np.uint8,
                                   chunks=(max(1, min(p.chunk, p.n)), 3, s, s))
            labels = np.repeat(np.arange(self.num_classes, dtype=np.int64), np.diff(p.offsets))
            self.dest.create_array(f"{split}/labels", (p.n,), np.int64, chunks=(max(1, min(p.n, 1 << 20)),),
                                   data=labels)
            self.dest.create_array(f"{split}/class_offsets", p.offsets.shape, np.int64, chunks=p.offsets.shape,
                                   data=p.offsets)
            nc = max(p.num_chunks, 1)
            self.dest.create_array(f"{split}/chunk_crc32", (nc,), np.int64, chunks=(nc,),
                                   data=np.full(nc, -1, np.int64))
        self.dest.flush()
        remove_store(self.work_url, self._work_options)
        self.work = open_backend(self.work_url, "a", self._work_options)
        for split, p in self.plans.items():
            self.work.create_array(f"{split}/runs", (p.n, 3, s, s), np.uint8,
                                   chunks=(max(1, min(p.tile, p.n)), 3, s, s))
            nb, nc = max(p.num_blocks, 1), max(p.num_chunks, 1)
            self.work.create_array(f"{split}/sort_done", (nb,), np.uint8, chunks=(nb,), data=np.zeros(nb, np.uint8))
            self.work.create_array(f"{split}/merge_done", (nc,), np.uint8, chunks=(nc,), data=np.zeros(nc, np.uint8))
            self.work.create_array(f"{split}/hist", (nb, 3, 256), np.int64, chunks=(1, 3, 256),
                                   data=np.zeros((nb, 3, 256), np.int64))
        # The plan goes in last: a work store without it is an aborted start, made anew.
        self.work.update_attrs("", {"plan": self.plan})

    # -- tasks

    def tasks(self) -> list[Task]:
        """All tasks in the order they must run (done ones included)."""
        out = []
        for split in SPLITS:
            p = self.plans[split]
            out += [Task(split, "sort", b) for b in range(p.num_blocks)]
            out += [Task(split, "merge", j) for j in range(p.num_chunks)]
        return out

    def is_done(self, task: Task) -> bool:
        if self.already_complete:
            return True
        return bool(self.work.read(f"{task.split}/{task.phase}_done", task.index))

    def run(self, task: Task) -> None:
        """Do one task and mark it done (data first, marker second)."""
        with self.dest.guard(f"{task.split}/images", writing=True):  # a full disk: one line
            (self._sort if task.phase == "sort" else self._merge)(task.split, task.index)
        # An HDF5 DEST buffers writes inside the process: flush before the marker, or a
        # kill -9 leaves a chunk marked done whose pixels never reached the file.
        self.dest.flush()
        self.work.write(f"{task.split}/{task.phase}_done", task.index, np.uint8(1))

    def _room(self, url: str, nbytes: int) -> None:
        """Refuse before HDF5 (or any local store) meets a full disk: it cannot recover from one."""
        local = local_path(url)
        if local is not None:
            check_room(local, nbytes)

    def _sort(self, split: str, b: int) -> None:
        p = self.plans[split]
        lo, hi = b * p.block, min(p.n, (b + 1) * p.block)
        x = self.readers[split].read(lo, hi)
        s = self.plan["image_size"]
        if x.shape != (hi - lo, 3, s, s) or x.dtype != np.uint8:
            raise ValueError(f"{split} block {b}: source gave {x.shape} {x.dtype}, expected {(hi - lo, 3, s, s)} uint8")
        order = np.argsort(self.readers[split].labels[lo:hi], kind="stable")
        self._room(self.work_url, x.nbytes)
        runs = _native(self.work, f"{split}/runs")
        # Gather the sorted rows a few tiles at a time: no second block-sized copy.
        step = p.tile * max(1, 64 // p.tile)
        for a in range(0, hi - lo, step):
            runs[lo + a:lo + min(a + step, hi - lo)] = x[order[a:a + step]]
        if split == "train":  # the mean/std describe the training images
            self.work.write(f"{split}/hist", b, _histogram(x))

    def _merge(self, split: str, j: int) -> None:
        p = self.plans[split]
        p0, p1 = j * p.chunk, min(p.n, (j + 1) * p.chunk)
        if split not in self._caches:
            self._caches[split] = _RunCache(_native(self.work, f"{split}/runs"), p.tile)
        cache = self._caches[split]
        s = self.plan["image_size"]
        out = np.empty((p1 - p0, 3, s, s), np.uint8)
        i = int(np.searchsorted(p.seg_dest + p.seg_len, p0, side="right"))
        while i < len(p.seg_dest) and p.seg_dest[i] < p1:
            d0, n = int(p.seg_dest[i]), int(p.seg_len[i])
            lo, hi = max(p0, d0), min(p1, d0 + n)
            r0 = int(p.seg_run[i]) + lo - d0
            out[lo - p0:hi - p0] = cache.read(int(p.seg_block[i]), r0, r0 + hi - lo)
            i += 1
        self._room(self.url, out.nbytes)
        _native(self.dest, f"{split}/images")[p0:p1] = out
        self.dest.write(f"{split}/chunk_crc32", j, np.int64(chunk_crc(out)))

    # -- finishing

    def finalize(self) -> dict:
        """Write the attributes, then ``complete``, then remove the work store. Returns the attrs."""
        if self.already_complete:
            return self.dest.attrs()
        pending = [t for t in self.tasks() if not self.is_done(t)]
        if pending:
            raise StoreError(f"{self.url}: {len(pending)} tasks not done; run them before finalize()")
        hist = self.work.read("train/hist").sum(0)
        mean, std = stats_from_histogram(hist)
        info = {
            "name": self.source.name,
            "source": self.plan["source"],
            "source_format": self.source.format,
            "num_classes": self.num_classes,
            "class_names": list(self.source.class_names),
            "image_size": self.plan["image_size"],
            "mean": mean,
            "std": std,
            "num_train": self.plans["train"].n,
            "num_test": self.plans["test"].n,
            "chunk": self.chunk,
            "plan": self.plan,
            CRC: self._index_crcs(),
        }
        self.dest.update_attrs("", info)
        # the digest of the attributes as a reader will read them back
        self.dest.update_attrs("", {ATTRS_CRC: attrs_crc(self.dest.attrs(), skip=(COMPLETE, ATTRS_CRC))})
        self.dest.sync()  # every chunk durable before the marker that vouches for them
        self.dest.update_attrs("", {COMPLETE: True})
        self.dest.sync()
        self.work.close()
        self.work = None
        remove_store(self.work_url, self._work_options)
        return self.dest.attrs()

    def _index_crcs(self) -> dict:
        """CRC-32 of every index array, after checking every images chunk has its CRC."""
        out = {}
        for split in SPLITS:
            crcs = self.dest.read(f"{split}/chunk_crc32")
            if self.plans[split].n and (crcs < 0).any():
                lost = int(np.flatnonzero(crcs < 0)[0])
                raise StoreError(f"{self.url}: {split} images chunk {lost} is marked done but was never written;"
                                 f" delete {self.url} and {self.work_url} and prepare again")
            for name in INDEXES:
                out[f"{split}/{name}"] = crc32(self.dest.read(f"{split}/{name}"))
        return out

    def close(self) -> None:
        for b in (self.dest, self.work):
            if b is not None:
                b.close()
        self.dest = self.work = None
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None


# --- reader ---------------------------------------------------------------------------

def open_prepared(url: str, storage_options: Optional[dict] = None) -> "PreparedImages":
    """Open a complete prepared store for reading.

    Raises:
        StoreError: not a prepared store, a newer format, or incomplete (the message says
            to re-run ``tesla data prepare`` to resume).
    """
    backend = open_backend(str(url), "r", storage_options)
    info = backend.attrs()
    if info.get(FORMAT_KEY) != FORMAT:
        backend.close()
        raise StoreError(f"{url}: not a prepared image store; make one with `tesla data prepare SRC {url}`")
    try:
        PREPARED.version_of(info, str(url))
    except StoreError:
        backend.close()
        raise
    if info.get(COMPLETE) is not True:
        backend.close()
        raise StoreError(f"{url}: prepared store is incomplete (an interrupted `tesla data prepare`);"
                         " re-run the same prepare command to resume it")
    try:
        return PreparedImages(backend, info)
    except BaseException:
        backend.close()
        raise


def _damaged(url: str, problem: str) -> StoreError:
    return StoreError(f"{url}: the prepared store is damaged ({problem}); {_REDO}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_attrs(url: str, info: dict) -> tuple[bool, Optional[dict]]:
    """Check the root attributes; returns (version 2 rules apply, the index checksums)."""
    strict = checksummed(PREPARED.version_of(info, url))
    digest = info.get(ATTRS_CRC)
    if digest is None and strict:
        raise missing_checksum(url, "the store's attributes", _REDO)
    if digest is not None and digest != attrs_crc(info, skip=(COMPLETE, ATTRS_CRC)):
        raise _damaged(url, "its attributes do not match their checksum")
    crcs = info.get(CRC)
    if crcs is None and strict:
        raise missing_checksum(url, "the index arrays", _REDO)
    if crcs is not None and not isinstance(crcs, dict):
        raise _damaged(url, f"crc32 is {crcs!r:.60}")
    k, names, size = info.get("num_classes"), info.get("class_names"), info.get("image_size")
    if not _is_int(k) or k < 1 or not isinstance(names, list) or len(names) != k or not _is_int(size) or size < 1:
        raise _damaged(url, f"num_classes {k!r}, class_names of {len(names) if isinstance(names, list) else names!r},"
                            f" image_size {size!r}")
    for key in ("mean", "std"):
        v = info.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) and np.isfinite(x)
                                                            and not isinstance(x, bool) for x in v):
            raise _damaged(url, f"{key} is {v!r:.60}")
    return strict, crcs


def _check_split(backend: Backend, info: dict, split: str, strict: bool,
                 crcs: Optional[dict]) -> tuple[np.ndarray, int, Optional[np.ndarray]]:
    """(class offsets, images chunk length, chunk CRCs or None) of ``split``, each checked.

    The index arrays against their checksums (version 2 must have them), the offsets for
    order and against ``num_<split>``, the images and chunk CRCs for shape, and - version
    2 - that every images chunk has a CRC (a store marked complete over chunks that were
    never written is refused, not read as zeros).
    """
    url, k, s = backend.url, int(info["num_classes"]), int(info["image_size"])
    arrays: dict = {}
    for name in INDEXES:
        path = f"{split}/{name}"
        if not backend.exists(path):
            if name == "chunk_crc32" and not strict:  # prepared before chunk checksums existed
                arrays[name] = None
                continue
            raise _damaged(url, f"{path} is missing")
        if name == "labels" and not strict:
            continue  # no checksum to check it against, and the reader derives labels from the offsets
        arr = backend.read(path)
        expected = (crcs or {}).get(path)
        if expected is None and strict:
            raise missing_checksum(url, path, _REDO)
        if expected is not None and crc32(arr) != expected:
            raise _damaged(url, f"{path} does not match its checksum (a lost or altered chunk)")
        arrays[name] = arr
    offsets = arrays["class_offsets"]
    if offsets.shape != (k + 1,) or not np.issubdtype(offsets.dtype, np.integer) or offsets[0] != 0 \
            or (np.diff(offsets) < 0).any():
        raise _damaged(url, f"{split}/class_offsets is not {k + 1} ascending row offsets from 0")
    offsets = offsets.astype(np.int64)
    n = int(offsets[-1])
    recorded = info.get(f"num_{split}")
    if recorded is not None and recorded != n:
        raise _damaged(url, f"{split}/class_offsets ends at row {n} but num_{split} is {recorded!r}")
    shape = backend.shape(f"{split}/images")
    if shape != (n, 3, s, s):
        raise _damaged(url, f"{split}/images has shape {shape}, not {(n, 3, s, s)}")
    if "labels" in arrays and arrays["labels"].shape != (n,):
        raise _damaged(url, f"{split}/labels has shape {arrays['labels'].shape}, not ({n},)")
    chunk = int((backend.chunks(f"{split}/images") or (max(1, n),))[0]) if n else 1
    chunk_crcs = arrays["chunk_crc32"]
    if chunk_crcs is not None:
        want = max(-(-n // chunk), 1)
        if chunk_crcs.shape != (want,):
            raise _damaged(url, f"{split}/chunk_crc32 has shape {chunk_crcs.shape}, not ({want},) for chunks of"
                                f" {chunk} rows")
        chunk_crcs = chunk_crcs.astype(np.int64)
        if strict and n and (chunk_crcs < 0).any():
            lost = int(np.flatnonzero(chunk_crcs < 0)[0])
            raise StoreError(f"{url}: {split} images chunk {lost} was never written although the store is marked"
                             f" complete; {_REDO}")
    return offsets, chunk, chunk_crcs


class PreparedImages:
    """A prepared store as a DataSource (the :class:`ImageSet` methods, read from disk).

    Reads only what is asked for and returns float32 model-space tensors (mean/std from
    the store). Memory stays bounded by the chunk size, never the set size.

    Attributes:
        name, num_classes, class_names, image_shape (3, S, S), normalizer, url.

    Example:
        >>> data = open_prepared("imagenet64.zarr")              # doctest: +SKIP
        >>> x = data.sample_class(7, 10, seed=0)                 # (10, 3, 64, 64)
        >>> for x, y in data.train_batches(256, seed=1): ...
    """

    def __init__(self, backend: Backend, info: dict) -> None:
        from tesla.adapters.torch.normalize import Normalizer

        self.url = backend.url
        self._backend = backend
        self.info = info
        strict, crcs = _check_attrs(self.url, info)
        self.name = str(info.get("name", "prepared"))
        self.num_classes = int(info["num_classes"])
        self.class_names = list(info["class_names"])
        s = int(info["image_size"])
        self.image_shape = (3, s, s)
        # A constant channel has std 0; a tiny floor keeps the normaliser defined.
        self.normalizer = Normalizer(mean=info["mean"], std=[max(float(v), 1e-6) for v in info["std"]])
        checked = {sp: _check_split(backend, info, sp, strict, crcs) for sp in SPLITS}
        with backend.guard("images"):
            self._images = {sp: _native(backend, f"{sp}/images") for sp in SPLITS}
        self._offsets = {sp: checked[sp][0] for sp in SPLITS}
        self._chunk = {sp: checked[sp][1] for sp in SPLITS}
        # stores prepared before checksums existed have none: they read unchecked
        self._crc = {sp: checked[sp][2] for sp in SPLITS}
        self._indices: Optional[list] = None

    def __repr__(self) -> str:
        return (f"PreparedImages({self.url!r}, {self.num_classes} classes, {self.num_train} train /"
                f" {self.num_test} test, {self.image_shape[1]} px)")

    def _count(self, split: str) -> int:
        return int(self._offsets[split][-1])

    @property
    def num_train(self) -> int:
        return self._count("train")

    @property
    def num_test(self) -> int:
        return self._count("test")

    # --- reading helpers

    def _labels(self, split: str, start: int, stop: int) -> np.ndarray:
        return np.searchsorted(self._offsets[split], np.arange(start, stop), side="right").astype(np.int64) - 1

    def _chunk_rows(self, split: str, k: int) -> np.ndarray:
        """Images chunk ``k`` of ``split``, whole, checked against its stored CRC-32."""
        c, n = self._chunk[split], self._count(split)
        lo, hi = k * c, min((k + 1) * c, n)
        with self._backend.guard(f"{split}/images"):  # a chunk that does not decode: one line
            block = np.asarray(self._images[split][lo:hi])
        crcs = self._crc[split]
        if crcs is not None and crcs[k] >= 0:  # < 0 only in version-1 stores (checked on open)
            got = chunk_crc(block)
            if got != int(crcs[k]):
                raise StoreError(f"{self.url}: {split}/images chunk {k} (rows {lo}..{hi - 1}) fails its CRC-32 "
                                 f"check (stored {int(crcs[k]):08x}, read {got:08x}): the store is damaged; "
                                 f"{_REDO}")
        return block

    def _read_sorted(self, split: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted, unique) read chunk by chunk: each touched chunk once."""
        c = self._chunk[split]
        out = np.empty((len(idx),) + self.image_shape, np.uint8)
        which = idx // c
        bounds = np.flatnonzero(np.diff(which)) + 1
        for part in np.split(np.arange(len(idx)), bounds):
            if len(part) == 0:
                continue
            ci = int(which[part[0]])
            block = self._chunk_rows(split, ci)
            out[part] = block[idx[part] - ci * c]
        return out

    def _to_model(self, x: np.ndarray):
        import torch

        return self.normalizer.encode(torch.from_numpy(x).to(torch.float32).div_(255.0))

    # --- the DataSource methods

    def class_indices(self) -> list:
        """Training-row indices of each class: K LongTensors (contiguous ranges; cached)."""
        import torch

        if self._indices is None:
            o = self._offsets["train"]
            self._indices = [torch.arange(int(o[k]), int(o[k + 1])) for k in range(self.num_classes)]
        return self._indices

    def sample_class(self, c: int, n: int, seed: int):
        """``n`` random training images of class ``c``, (n, 3, S, S) float32 model space.

        Without replacement while the class has enough images (then every image once and
        the rest drawn with replacement); the same seed gives the same images. Only the
        chunks holding the chosen images are read, in storage order.
        """
        import torch

        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} is out of range: this set has classes 0..{self.num_classes - 1}")
        if n < 0:
            raise ValueError(f"cannot sample a negative number of images ({n})")
        lo, hi = int(self._offsets["train"][c]), int(self._offsets["train"][c + 1])
        size = hi - lo
        if size == 0:
            raise ValueError(f"class {c} ({self.class_names[c]!r}) has no training images")
        g = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(size, generator=g)[:n]
        if n > size:
            pick = torch.cat([pick, torch.randint(size, (n - size,), generator=g)])
        pick = pick.numpy() + lo
        rows, inverse = np.unique(pick, return_inverse=True)
        return self._to_model(self._read_sorted("train", rows)[inverse])

    def train_batches(self, batch_size: int, seed: int, *, shuffle_chunks: int = 16) -> Iterator[tuple[Any, Any]]:
        """One epoch of (x (B, 3, S, S) float32, y (B,) int64) batches, approximately shuffled.

        An exact shuffle would read a random image from a different chunk for almost
        every sample. Instead the chunks are visited in a random order, ``shuffle_chunks``
        at a time: those chunks (plus the leftover of the previous group) are pooled and
        permuted, and batches are cut from the pool. Every image appears exactly once per
        epoch and memory holds at most ``shuffle_chunks * chunk`` images. Since the store
        is sorted by class, a batch mixes about ``shuffle_chunks * chunk / class size``
        classes: for expert training on large sets prepare with a small ``--chunk`` or
        pass a larger ``shuffle_chunks``. The last batch may be smaller.
        """
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        g = torch.Generator().manual_seed(int(seed))
        n, c = self.num_train, self._chunk["train"]
        order = torch.randperm(-(-n // c), generator=g).numpy()
        yield from self._batches("train", order, batch_size, max(1, shuffle_chunks), g)

    def test_batches(self, batch_size: int) -> Iterator[tuple[Any, Any]]:
        """The test set in stored (class-sorted) order, (x (B, 3, S, S), y (B,)) batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        n, c = self.num_test, self._chunk["test"]
        yield from self._batches("test", np.arange(-(-n // c)), batch_size, 1, None)

    def _batches(self, split: str, chunk_order: Sequence[int], batch_size: int, group: int, g) -> Iterator:
        import torch

        c, n = self._chunk[split], self._count(split)
        left_x = np.empty((0,) + self.image_shape, np.uint8)
        left_y = np.empty(0, np.int64)
        for i in range(0, len(chunk_order), group):
            ids = sorted(int(k) for k in chunk_order[i:i + group])  # storage order for locality
            spans = [(k * c, min(n, (k + 1) * c)) for k in ids]
            # One pool array filled in place: no concatenated or permuted copies of it.
            pool_x = np.empty((len(left_x) + sum(hi - lo for lo, hi in spans),) + self.image_shape, np.uint8)
            pool_y = np.empty(len(pool_x), np.int64)
            pool_x[:len(left_x)], pool_y[:len(left_y)] = left_x, left_y
            at = len(left_x)
            for k, (lo, hi) in zip(ids, spans):
                pool_x[at:at + hi - lo] = self._chunk_rows(split, k)
                pool_y[at:at + hi - lo] = self._labels(split, lo, hi)
                at += hi - lo
            perm = torch.randperm(len(pool_x), generator=g).numpy() if g is not None else np.arange(len(pool_x))
            full = len(pool_x) // batch_size * batch_size
            for s in range(0, full, batch_size):
                take = np.sort(perm[s:s + batch_size]) if g is None else perm[s:s + batch_size]
                yield self._to_model(pool_x[take]), torch.from_numpy(pool_y[take])
            left_x, left_y = pool_x[perm[full:]], pool_y[perm[full:]]
            del pool_x, pool_y
        if len(left_x):
            yield self._to_model(left_x), torch.from_numpy(left_y)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "PreparedImages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
