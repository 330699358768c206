"""Store damage, done the way disks, copies and people do it, and judged by what a reader sees.

Six tiny stores - expert trajectories, synthetic sets and prepared images, each in HDF5
and in Zarr - are written once by tesla itself and read once to give the reference. Each
damage case copies one, damages the copy, and reads it back the way ``info``, ``distill``,
``evaluate``, ``export`` and ``--resume`` do (every expert, snapshot, checkpoint, set,
batch and sample). The outcome is one of:

* ``refused``: one :class:`StoreError` line naming the store - the guarantee;
* ``correct``: the read equals the reference (the damage hit bytes no reader uses);
* ``hidden``: a finished expert or checkpoint reads as unfinished (a completion marker
  was hit and the work silently drops out) - a failure since markers are checksummed;
* ``raw``: any other exception (a traceback) - a failure;
* ``silent``: the read succeeded with other values than were written - a failure.

The damage kinds: seeded single-bit flips in every array's chunks and in every metadata
object (``zarr.json``; for HDF5 in every dataset's bytes and anywhere in the file),
truncated and deleted chunks, deleted checksum attributes (and prepared chunk checksums),
metadata JSON that does not parse, edited array shapes, and completion markers set on
partial writes. ``python -m tests.faults.damage h5-anywhere KIND N SEED`` runs the HDF5
whole-file flips in a child process (a flip in HDF5's own metadata is the one place a C
library could take the process down) and prints the outcome counts as JSON.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tesla.adapters.stores.errors import StoreError

Damage = Callable[[Path], None]
FAILED = ("raw", "silent", "hidden")
KINDS = ("trajectories.h5", "trajectories.zarr", "synthetic.h5", "synthetic.zarr", "prepared.h5", "prepared.zarr")

# --- the stores ------------------------------------------------------------------------------

P, EPOCHS, EXPERTS = 37, 2, 2
CLASSES, SIDE = 3, 8


def _build_trajectories(url: str) -> None:
    from tesla.adapters.stores.trajectory import open_trajectory_store

    rng = np.random.default_rng(0)
    with open_trajectory_store(url, "a") as s:
        s.initialize({"arch": "convnet", "width": 4}, [["w", [32]], ["b", [5]]], P, {"name": "demo"})
        for i in range(EXPERTS):
            traj = rng.standard_normal((EPOCHS + 1, P)).astype(np.float32)
            s.add_expert(traj, {"seed": i, "lr": 0.01, "test_accuracy": [None, 12.5, 25.0 + i]})


def _read_trajectories(url: str) -> dict:
    from tesla.adapters.stores import describe_store
    from tesla.adapters.stores.trajectory import open_trajectory_store

    with open_trajectory_store(url, "r") as s:
        m = s.meta
        out: dict = {"meta": (m.model, m.layout, m.num_params, m.dataset, m.format_version, m.created),
                     "incomplete": s.incomplete_ids()}
        for i in s.expert_ids():
            n = s.num_snapshots(i)
            out[i] = (s.expert_attrs(i), s.load_trajectory(i), [s.load(i, e) for e in range(n)])
    summary = describe_store(url)
    summary.pop("size_bytes"), summary.pop("url")
    out["describe"] = summary
    return out


def _build_synthetic(url: str) -> None:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    rng = np.random.default_rng(1)
    n, k = 6, CLASSES
    with open_synthetic_store(url, "a") as s:
        for it in (2, 4):
            s.write_checkpoint(it, {"images": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
                                    "momentum": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
                                    "rng": rng.integers(0, 256, 40).astype(np.uint8),
                                    "lr": np.asarray(0.01, np.float32)},
                               {"seed": it, "config": {"ipc": 2, "engine": "tesla"}})
        s.write_set({"images": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
                     "labels": np.repeat(np.arange(k), n // k),
                     "soft_labels": rng.random((n, k)).astype(np.float32),
                     "label_logits": rng.standard_normal((n, k)).astype(np.float32)},
                    {"lr": 0.02, "class_names": ["a", "b", "c"], "iteration": 4, "trajectories": "t.zarr"},
                    normalizer_state={"kind": "zca", "zca_mean": rng.random(48).astype(np.float32),
                                      "zca_matrix": rng.random((48, 48)).astype(np.float32), "zca_eps": [0.1]})


def _read_synthetic(url: str) -> dict:
    from tesla.adapters.stores.synthetic import open_synthetic_store

    with open_synthetic_store(url, "r") as s:
        st = s.read_set()
        return {"checkpoints": s.checkpoints(), "latest": s.latest_checkpoint(), "summary": s.summary(),
                "set": (st.images, st.labels, st.soft_labels, st.label_logits, st.lr, st.normalizer_state, st.attrs,
                        st.arrays)}


class _Split:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x, self.labels = x, y

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._x[start:stop]


class _Source:
    """An in-memory image source: 24 train and 9 test images of 3 classes, 8 px."""

    name, format, image_size = "tiny", "test", SIDE
    class_names = [f"c{i}" for i in range(CLASSES)]

    def __init__(self) -> None:
        rng = np.random.default_rng(2)
        self.train = _Split(rng.integers(0, 256, (24, 3, SIDE, SIDE), dtype=np.uint8), rng.integers(0, CLASSES, 24))
        self.test = _Split(rng.integers(0, 256, (9, 3, SIDE, SIDE), dtype=np.uint8), rng.integers(0, CLASSES, 9))
        self.train.labels[:CLASSES] = np.arange(CLASSES)  # every class present

    def fingerprint(self) -> str:
        return "tiny-source"

    def close(self) -> None:
        pass


def _build_prepared(url: str, stop_after: int | None = None) -> None:
    from tesla.adapters.data.prepared import PreparedWriter

    writer = PreparedWriter(url, _Source(), chunk=4, block=8)
    try:
        for i, task in enumerate(writer.tasks()):
            if stop_after is not None and i == stop_after:
                return  # an interrupted prepare: no finalize
            if not writer.is_done(task):
                writer.run(task)
        writer.finalize()
    finally:
        writer.close()


def _read_prepared(url: str) -> dict:
    from tesla.adapters.data.prepared import open_prepared

    with open_prepared(url) as p:
        return {"info": (p.name, p.num_classes, p.class_names, p.image_shape, p.num_train, p.num_test,
                         p.normalizer.mean, p.normalizer.std),
                "indices": [ix.numpy() for ix in p.class_indices()],
                "train": [(x.numpy(), y.numpy()) for x, y in p.train_batches(5, seed=0)],
                "test": [(x.numpy(), y.numpy()) for x, y in p.test_batches(5)],
                "samples": [p.sample_class(c, 3, seed=c).numpy() for c in range(p.num_classes)]}


BUILD = {"trajectories": _build_trajectories, "synthetic": _build_synthetic, "prepared": _build_prepared}
READ = {"trajectories": _read_trajectories, "synthetic": _read_synthetic, "prepared": _read_prepared}


def make(kind: str, root: Path) -> tuple[Path, Any]:
    """Write store ``kind`` (e.g. ``synthetic.zarr``) under ``root``; returns (path, reference read)."""
    path = root / kind
    BUILD[kind.split(".")[0]](str(path))
    return path, READ[kind.split(".")[0]](str(path))


# --- judging a read ---------------------------------------------------------------------------

def same(a: Any, b: Any) -> bool:
    """Deep equality; arrays (and torch tensors made numpy) by dtype, shape and value."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _fewer(got: dict, ref: dict) -> bool:
    """A read that equals the reference but for finished experts / checkpoints reading as unfinished."""
    if "checkpoints" in ref:  # synthetic: an older checkpoint is the newest complete one
        return (set(got["checkpoints"]) < set(ref["checkpoints"]) and same(got["set"], ref["set"]))
    if "meta" in ref:
        ids = [k for k in ref if isinstance(k, int)]
        kept = [k for k in got if isinstance(k, int)]
        return (set(kept) < set(ids) and same(got["meta"], ref["meta"])
                and all(same(got[k], ref[k]) for k in kept))
    return False


def judge(kind: str, path: Path, ref: Any) -> str:
    """The outcome of reading the (damaged) store at ``path``: refused/correct/hidden/raw/silent."""
    try:
        got = READ[kind.split(".")[0]](str(path))
    except StoreError as e:
        text = str(e)
        return "refused" if "\n" not in text and str(path) in text else f"raw: StoreError without the path: {text}"
    except Exception as e:  # noqa: BLE001 - the point is to catch everything else
        return f"raw: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if same(got, ref):
        return "correct"
    return "hidden" if _fewer(got, ref) else "silent"


# --- damage -----------------------------------------------------------------------------------

def _rewrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes through a new inode: the copies share the pristine files' inodes."""
    path.unlink()
    path.write_bytes(data)


def _flip(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    _rewrite(path, bytes(data))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    _rewrite(path, data[: len(data) - 1 if keep < 0 else int(len(data) * keep)])


def _kind_of(rel: str) -> str:
    """``experts/000001/params`` -> ``experts/*/params``: one name per kind of array or group."""
    return "/".join("*" if part.isdigit() else part for part in rel.split("/")) or "/"


def zarr_nodes(root: Path) -> dict[str, list[Path]]:
    """Zarr node folders by kind (arrays and groups): ``{kind: [folder, ...]}``."""
    out: dict = collections.defaultdict(list)
    for meta in sorted(root.rglob("zarr.json")):
        rel = meta.parent.relative_to(root).as_posix()
        out[_kind_of("" if rel == "." else rel)].append(meta.parent)
    return out


def zarr_chunks(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "c").rglob("*") if p.is_file()) if (folder / "c").exists() else []


def h5_datasets(path: Path) -> dict[str, list[str]]:
    import h5py

    out: dict = collections.defaultdict(list)
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out[_kind_of(name)].append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def h5_regions(path: Path, name: str) -> list[tuple[int, int]]:
    """(offset, size) of every stored chunk (or the one contiguous block) of dataset ``name``."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[name]
        if ds.chunks is None:
            off = ds.id.get_offset()
            return [(off, ds.id.get_storage_size())] if off is not None and ds.id.get_storage_size() else []
        out = []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            out.append((info.byte_offset, info.size))
        return out


def _edit_json(meta: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(meta.read_text())
    edit(doc)
    _rewrite(meta, json.dumps(doc).encode())


def _h5_attr_nodes(path: Path) -> list[str]:
    import h5py

    names = ["/"]
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


def cases(kind: str, path: Path, rng: random.Random, flips: int) -> Iterator[tuple[str, str, Damage]]:
    """(damage class, target, damage) for store ``kind`` written at ``path``."""
    yield from (_zarr_cases if kind.endswith(".zarr") else _h5_cases)(path, rng, flips)
    yield from _marker_cases(kind)


def _zarr_cases(path: Path, rng: random.Random, flips: int) -> Iterator[tuple[str, str, Damage]]:
    nodes = zarr_nodes(path)
    for what, folders in nodes.items():
        metas = [f.relative_to(path) / "zarr.json" for f in folders]
        chunks = [c.relative_to(path) for f in folders for c in zarr_chunks(f)]
        for _ in range(max(1, flips // 2)):  # bit flips in the node's metadata
            rel = rng.choice(metas)
            bit = rng.randrange((path / rel).stat().st_size * 8)
            yield "flip", f"{what}/zarr.json", lambda p, rel=rel, bit=bit: _flip(p / rel, bit)
        yield "json", f"{what}/zarr.json", lambda p, rel=metas[0]: _rewrite(p / rel, b"{ not json")
        yield "json", f"{what}/zarr.json", lambda p, rel=metas[-1]: _truncate(p / rel, 0.5)
        for key in ("crc32", "attrs_crc32"):
            with_key = [m for m in metas if key in json.loads((path / m).read_text()).get("attributes", {})]
            for rel in with_key[:2]:
                yield "checksum", f"{what} {key}", lambda p, rel=rel, key=key: _edit_json(
                    p / rel, lambda d: d["attributes"].pop(key))
        if not chunks:
            continue
        for _ in range(flips):  # bit flips in the array's chunks
            rel = rng.choice(chunks)
            bit = rng.randrange(max(1, (path / rel).stat().st_size * 8))
            yield "flip", what, lambda p, rel=rel, bit=bit: _flip(p / rel, bit)
        rel = rng.choice(chunks)
        yield "delete", what, lambda p, rel=rel: (p / rel).unlink()
        for keep in (0.0, 0.5, -1):
            rel = rng.choice(chunks)
            yield "truncate", what, lambda p, rel=rel, keep=keep: _truncate(p / rel, keep)
        rel = metas[-1]  # the newest group of the kind: the one a reader reads
        for delta in (1, -1):
            yield "shape", f"{what} {delta:+d} row", lambda p, rel=rel, delta=delta: _edit_json(
                p / rel, lambda d: d["shape"].__setitem__(0, max(0, d["shape"][0] + delta)))
    if "train/chunk_crc32" in nodes:
        for split in ("train", "test"):
            yield "checksum", f"{split}/chunk_crc32 array", lambda p, split=split: shutil.rmtree(p / split / "chunk_crc32")


def _h5_cases(path: Path, rng: random.Random, flips: int) -> Iterator[tuple[str, str, Damage]]:
    import h5py

    with h5py.File(path, "r") as f:
        ndim = {n: f[n].ndim for names in h5_datasets(path).values() for n in names}
    for what, names in h5_datasets(path).items():
        regions = [r for n in names for r in h5_regions(path, n)]
        for _ in range(flips if regions else 0):
            off, size = rng.choice(regions)
            bit = off * 8 + rng.randrange(size * 8)
            yield "flip", what, lambda p, bit=bit: _flip(p, bit)

        def reshape(p: Path, name: str = names[0], delta: int = 1) -> None:
            with h5py.File(p, "a") as f:
                data, attrs_ = f[name][()], dict(f[name].attrs)
                del f[name]
                data = np.concatenate([data, data[-1:]]) if delta > 0 else data[:-1]
                f.create_dataset(name, data=data)
                f[name].attrs.update(attrs_)

        for delta in (1, -1) if ndim[names[0]] else ():
            yield "shape", f"{what} {delta:+d} row", lambda p, reshape=reshape, delta=delta: reshape(p, delta=delta)
    size = path.stat().st_size
    for keep in (0.2, 0.5, 0.8, 0.99):
        yield "truncate", f"file at {keep:.0%}", lambda p, keep=keep: _truncate(p, keep)

    def set_attr(p: Path, node: str, key: str, value: Any = None) -> None:
        with h5py.File(p, "a") as f:
            if value is None:
                del f[node].attrs[key]
            else:
                f[node].attrs[key] = value

    nodes = _h5_attr_nodes(path)
    with h5py.File(path, "r") as f:
        attrs_of = {n: dict(f[n].attrs) for n in nodes}
    seen: set = set()
    for node, attrs_ in attrs_of.items():
        what = _kind_of(node.strip("/"))
        for key, value in attrs_.items():
            if key in ("crc32", "attrs_crc32") and (what, key) not in seen:
                seen.add((what, key))
                yield "checksum", f"{what} {key}", lambda p, node=node, key=key: set_attr(p, node, key)
            if isinstance(value, str) and value.startswith("json:") and (what, "json") not in seen:
                seen.add((what, "json"))
                yield "json", f"{what} {key}", lambda p, node=node, key=key: set_attr(p, node, key, "json:{bad")
    if "train/chunk_crc32" in h5_datasets(path):
        for split in ("train", "test"):
            yield "checksum", f"{split}/chunk_crc32 array", lambda p, split=split: set_attr_del(p, f"{split}/chunk_crc32")


def set_attr_del(p: Path, name: str) -> None:
    import h5py

    with h5py.File(p, "a") as f:
        del f[name]


def _marker_cases(kind: str) -> Iterator[tuple[str, str, Damage]]:
    """Completion markers set by hand on writes cut off half way: they must not vouch for them."""
    from tesla.adapters.stores.backends import open_backend

    store = kind.split(".")[0]
    if store == "trajectories":
        def partial_expert(p: Path) -> None:
            from tesla.adapters.stores.trajectory import open_trajectory_store

            with open_trajectory_store(str(p), "a") as s:
                w = s.begin_expert(9, EPOCHS, {"seed": 9})
                w.write(0, np.ones(P, np.float32))  # killed after one snapshot
            b = open_backend(str(p), "a")
            b.update_attrs("experts/000009", {"complete": True})
            b.close()

        yield "marker", "complete on a half-written expert", partial_expert
    elif store == "synthetic":
        def partial_checkpoint(p: Path) -> None:
            b = open_backend(str(p), "a")
            b.create_group("checkpoints/00000009")
            b.update_attrs("checkpoints/00000009", {"complete": False, "iteration": 9})
            b.create_array("checkpoints/00000009/images", (6, 3, 4, 4), np.float32)  # never filled
            b.update_attrs("checkpoints/00000009", {"complete": True})
            b.close()

        yield "marker", "complete on a half-written checkpoint", partial_checkpoint
    else:
        def partial_prepare(p: Path) -> None:
            for leftover in p.parent.glob(f"{p.name}*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            _build_prepared(str(p), stop_after=5)  # cut off after 5 tasks
            b = open_backend(str(p), "a")
            b.update_attrs("", {"complete": True})
            b.close()

        yield "marker", "complete on an interrupted prepare", partial_prepare


def as_version_1(path: Path) -> None:
    """Turn a store into what the previous tesla wrote: format version 1, without the
    attribute digests, the prepared index checksums or the HDF5 metadata seal."""
    root_only = ("crc32",) if "prepared" in path.name else ()
    if path.is_dir():
        for meta in path.rglob("zarr.json"):
            doc = json.loads(meta.read_text())
            attrs_ = doc.get("attributes", {})
            attrs_.pop("attrs_crc32", None)
            if meta.parent == path:
                attrs_["format_version"] = 1
                for key in root_only:
                    attrs_.pop(key, None)
            _rewrite(meta, json.dumps(doc).encode())
        return
    import h5py

    with h5py.File(path, "a") as f:
        for node in _h5_attr_nodes(path):
            if "attrs_crc32" in f[node].attrs:
                del f[node].attrs["attrs_crc32"]
        f.attrs["format_version"] = 1
        for key in root_only:
            del f.attrs[key]
    data = bytearray(path.read_bytes())
    if data.startswith(b"tesla-hdf5-metadata-crc32\n"):
        data[:4096] = bytes(4096)  # no seal: the user block holds nothing
    _rewrite(path, bytes(data))


def without_version(read: Any) -> Any:
    """A read with the format version left out (it is what differs between versions)."""
    if isinstance(read, dict):
        return {k: without_version(v) for k, v in read.items() if k != "format_version"}
    if isinstance(read, tuple) and len(read) == 6 and isinstance(read[4], int):  # trajectory meta
        return read[:4] + read[5:]
    return read


def copy_store(src: Path, dst: Path) -> None:
    """A copy to damage: a Zarr tree of hard links (damage writes new inodes), an HDF5 file copied."""
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        shutil.copyfile(src, dst)


class Workbench:
    """A damageable copy of a pristine store, put back to pristine after each case.

    A Zarr tree is copied once as hard links; damage only ever replaces files (new inodes),
    deletes them or adds some, so after a case only the paths whose inode changed are
    linked back - far cheaper than a fresh copy of ~100 objects per case. HDF5 stores are
    one small file, copied afresh.
    """

    def __init__(self, pristine: Path, work: Path) -> None:
        self.pristine, self.work = pristine, work
        copy_store(pristine, work)
        self.manifest = self._scan() if pristine.is_dir() else None

    def _scan(self) -> dict:
        out = {}
        for folder, dirs, files in os.walk(self.work):
            for name in dirs + files:
                full = os.path.join(folder, name)
                out[os.path.relpath(full, self.work)] = (os.lstat(full).st_ino, name in dirs)
        return out

    def reset(self) -> None:
        for leftover in self.work.parent.glob(f".{self.work.name}.*"):  # writers' lock files
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        if self.manifest is None or not self.work.is_dir():
            copy_store(self.pristine, self.work)
            return
        now = self._scan()
        for rel in sorted(set(now) - set(self.manifest), reverse=True):  # added: deepest first
            full = self.work / rel
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full, ignore_errors=True)
            elif full.exists():
                full.unlink()
        for rel, (ino, is_dir) in sorted(self.manifest.items()):
            full = self.work / rel
            if is_dir:
                full.mkdir(exist_ok=True)
            elif now.get(rel, (None,))[0] != ino or not full.exists():
                if full.exists():
                    full.unlink()
                os.link(self.pristine / rel, full)


def run(kind: str, root: Path, seed: int, flips: int) -> tuple[collections.Counter, list[str]]:
    """Every damage case of store ``kind``: (outcome counts by damage class, failures)."""
    path, ref = make(kind, root / "pristine")
    counts: collections.Counter = collections.Counter()
    failures = []
    (root / "damaged").mkdir(parents=True, exist_ok=True)
    bench = Workbench(path, root / "damaged" / kind)
    for damage_class, target, damage in list(cases(kind, path, random.Random(seed), flips)):
        damage(bench.work)
        outcome = judge(kind, bench.work, ref)
        bench.reset()
        counts[(damage_class, outcome.split(":")[0])] += 1
        if outcome.split(":")[0] in FAILED:
            failures.append(f"{kind} {damage_class} {target}: {outcome}")
    return counts, failures


def h5_anywhere(kind: str, root: Path, flips: int, seed: int) -> tuple[collections.Counter, list[str]]:
    """Single-bit flips anywhere in an HDF5 store's file (its own metadata included)."""
    path, ref = make(kind, root / "pristine")
    rng = random.Random(seed)
    size = path.stat().st_size
    head = path.read_bytes()[:4096]
    # a sealed file's user block is a header line and zeros nothing reads: flip the header
    # and everything after the user block
    skip = (head.index(b"\n", head.index(b"\n", head.index(b"\n") + 1) + 1) + 1, 4096) \
        if head.startswith(b"tesla-hdf5-metadata-crc32\n") else (0, 0)
    counts: collections.Counter = collections.Counter()
    failures = []
    work = root / "damaged" / kind
    work.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(flips):
        bit = rng.randrange((size - (skip[1] - skip[0])) * 8)
        if bit >= skip[0] * 8:
            bit += (skip[1] - skip[0]) * 8
        copy_store(path, work)
        _flip(work, bit)
        outcome = judge(kind, work, ref)
        counts[("flip anywhere", outcome.split(":")[0])] += 1
        if outcome.split(":")[0] in FAILED:
            failures.append(f"{kind} flip at byte {bit // 8} bit {bit % 8}: {outcome}")
    return counts, failures


if __name__ == "__main__":  # python -m tests.faults.damage h5-anywhere KIND FLIPS SEED ROOT
    import tempfile

    _, kind_, n_, seed_ = sys.argv[1:5]
    with tempfile.TemporaryDirectory() as tmp:
        c, f = h5_anywhere(kind_, Path(tmp), int(n_), int(seed_))
    print(json.dumps({"counts": [[k[0], k[1], v] for k, v in c.items()], "failures": f}))
