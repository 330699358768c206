"""Hand-written fakes of the experts, evaluation, merge, bench, prepare and info ports.

Pure Python (no torch, no numpy, no files): dict-backed trajectory stores, a training
port whose "networks" are seeded formulas (a snapshot of expert seed s after epoch e is
``(s, e)``; an evaluation network's accuracy is a function of its seed, lr and
architecture), and recorders for run directories and events. The services run on these
in milliseconds, and every value they produce can be checked by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import attrs

from tesla.domain.errors import StoreError, TrainingStopped
from tesla.domain.ports import ModelLayout, SingleProcess


@attrs.define
class FakeData:
    """Real data as the services see it: classes and one image's shape."""

    num_classes: int = 10
    image_shape: tuple = (3, 16, 16)


# --- trajectory stores -------------------------------------------------------------------------


class FakeExpertWriter:
    def __init__(self, store: "FakeTrajectoryStore", expert_id: int, epochs: int, attrs_: dict) -> None:
        self.store, self.expert_id, self.epochs = store, expert_id, epochs
        self.attrs = dict(attrs_, epochs=epochs)
        self.snapshots: dict = {}
        self.accuracy: list = [None] * (epochs + 1)
        store.begun[expert_id] = self

    def write(self, epoch: int, vec: Any, test_accuracy: Optional[float] = None) -> None:
        self.store.writes += 1
        self.snapshots[epoch] = vec
        self.accuracy[epoch] = test_accuracy

    def set_attrs(self, **values: Any) -> None:
        self.attrs.update(values)

    def finish(self) -> int:
        assert sorted(self.snapshots) == list(range(self.epochs + 1)), "an expert finished with missing snapshots"
        attrs_ = dict(self.attrs)
        attrs_.setdefault("test_accuracy", list(self.accuracy))
        attrs_["crc32"] = hash(tuple(self.snapshots[e] for e in range(self.epochs + 1)))
        self.store.experts[self.expert_id] = ([self.snapshots[e] for e in range(self.epochs + 1)], attrs_)
        del self.store.begun[self.expert_id]
        return self.expert_id


@attrs.define
class Meta:
    model: dict
    layout: list
    num_params: int
    dataset: dict


class FakeTrajectoryStore:
    """A trajectory store in a dict: complete experts, experts begun, what it records."""

    def __init__(self, url: str = "mem://experts") -> None:
        self.url = url
        self.model: Optional[Meta] = None
        self.experts: dict = {}  # id -> (snapshots, attrs)
        self.begun: dict = {}  # id -> FakeExpertWriter (not finished)
        self.writes = 0
        self.closed = False

    @property
    def initialized(self) -> bool:
        return self.model is not None

    @property
    def meta(self) -> Meta:
        if self.model is None:
            raise StoreError(f"{self.url}: not a trajectory store")
        return self.model

    def initialize(self, model: Any, layout: Any, num_params: int, dataset: Any) -> None:
        if self.model is not None:
            self.check_compatible(model, layout, num_params, dataset)
            return
        self.writes += 1
        self.model = Meta(dict(model), list(layout), int(num_params), dict(dataset))

    def check_compatible(self, model: Any, layout: Any, num_params: int, dataset: Any) -> None:
        m = self.meta
        if int(num_params) != m.num_params or any(k in m.model and m.model[k] != v for k, v in dict(model).items()):
            raise StoreError(f"{self.url}: store holds another model; use a new store path")
        have, want = m.dataset.get("name"), dict(dataset or {}).get("name")
        if have and want and have != want:
            raise StoreError(f"{self.url}: store holds experts trained on {have!r}; use a new store path")
        from tesla.domain.experts import data_mismatch

        if data_mismatch(m.dataset, dict(dataset or {})):
            raise StoreError(f"{self.url}: store holds experts trained on other data; use a new store path")

    def expert_ids(self) -> list[int]:
        return sorted(self.experts)

    def incomplete_ids(self) -> list[int]:
        return sorted(self.begun)

    def expert_attrs(self, expert: int) -> dict:
        return dict(self.experts[expert][1])

    def load(self, expert: int, epoch: int) -> Any:
        return self.experts[expert][0][epoch]

    def begin_expert(self, expert_id: Optional[int], epochs: int, attrs_: Optional[dict] = None) -> FakeExpertWriter:
        return FakeExpertWriter(self, expert_id, epochs, dict(attrs_ or {}))

    def close(self) -> None:
        self.closed = True


class FakeStores:
    """The TrajectoryStores port over a dict of URL -> FakeTrajectoryStore."""

    def __init__(self, **stores: FakeTrajectoryStore) -> None:
        self.stores: dict = {}
        for store in stores.values():
            self.add(store)
        self.opened: list = []

    def add(self, store: FakeTrajectoryStore) -> FakeTrajectoryStore:
        self.stores[store.url] = store
        return store

    def exists(self, url: str) -> bool:
        return url in self.stores

    def open(self, url: str) -> FakeTrajectoryStore:
        self.opened.append(url)
        store = self.stores.setdefault(url, FakeTrajectoryStore(url))
        store.closed = False
        return store

    def read(self, url: str) -> FakeTrajectoryStore:
        if url not in self.stores:
            raise StoreError(f"{url}: no such store")
        return self.stores[url]

    def shared(self, url: str) -> bool:
        return not url.endswith(".h5")

    def rank_url(self, url: str, rank: int, world: int) -> str:
        if world == 1 or self.shared(url):
            return url
        return url[:-3] + f".rank{rank}.h5"


# --- training ------------------------------------------------------------------------------------

PARAMS = 4  # the fake model's flat vector length


class FakeExpertTraining:
    """Experts whose snapshot after epoch e of seed s is ``(s, e)`` and whose test accuracy
    is ``10 * e + s % 10``. ``should_stop`` is asked between epochs, after the snapshot of
    the last epoch done, as torch's loops ask it."""

    def __init__(self) -> None:
        self.groups: list = []  # the seeds of each call to train
        self.layouts: list = []  # the models whose layout was asked (the network is built)

    def layout(self, model: Any) -> ModelLayout:
        self.layouts.append(model)
        return ModelLayout(layout=[("w", [PARAMS])], num_params=PARAMS)

    def train(self, model: Any, cfg: Any, data: Any, seeds: Sequence[int], *, on_snapshot: Sequence[Callable],
              on_epoch: Sequence[Callable], should_stop: Optional[Callable[[], bool]] = None) -> list:
        self.groups.append(list(seeds))
        histories: list = [[] for _ in seeds]
        for epoch in range(cfg.epochs + 1):
            if epoch > 0 and should_stop is not None and should_stop():
                raise TrainingStopped(epoch - 1)
            for i, s in enumerate(seeds):
                acc = 10.0 * epoch + s % 10
                histories[i].append(acc)
                on_snapshot[i](epoch, (s, epoch), acc)
                if epoch > 0:
                    on_epoch[i](epoch, cfg.epochs, 1.0 / epoch, acc, acc, 0.01)
        return histories


class StopAfter:
    """A cancel flag that turns set after ``n`` questions (the n+1-th answer is True)."""

    def __init__(self, n: int) -> None:
        self.n, self.asked = n, 0

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > self.n


def accuracy_of(arch: str, seed: int, lr: float) -> float:
    """The fake evaluation network's test accuracy: a formula a test can recompute."""
    return {"ConvNet": 40.0, "ConvNetD2": 40.0, "ResNet18": 30.0, "ViT": 20.0}[arch] + seed + 1000.0 * lr


class FakeEvaluationTraining:
    """Evaluation networks whose accuracy is :func:`accuracy_of`; records every call."""

    def __init__(self, report: bool = True) -> None:
        self.calls: list = []
        self.cfgs: list = []
        self.report = report  # call on_epoch as a real adapter does (False: an adapter that reports nothing)

    def train_on(self, model: Any, images: Any, labels: Any, data: Any, *, seeds: Sequence[int], epochs: int,
                 lr: float, cfg: Any, on_epoch: Optional[Callable] = None) -> list[float]:
        self.calls.append(("train_on", model.name, tuple(images), tuple(labels), tuple(seeds), epochs, lr))
        self.cfgs.append(cfg)
        for i in range(len(seeds) if on_epoch is not None and self.report else 0):
            for e in range(1, epochs + 1):
                on_epoch(i, e)
        # without DSA the fake networks lose 5 points: augmentation scores have two sides
        return [accuracy_of(model.name, s, lr) - (0.0 if cfg.dsa else 5.0) for s in seeds]

    def train_on_real(self, model: Any, data: Any, recipe: Any, seed: int,
                      on_epoch: Optional[Callable] = None) -> float:
        self.calls.append(("train_on_real", model.name, recipe, seed))
        for e in range(1, recipe.epochs + 1 if on_epoch is not None and self.report else 1):
            on_epoch(0, e)
        return accuracy_of(model.name, seed, recipe.lr) + 50.0

    def random_real(self, data: Any, ipc: int, seeds: Sequence[int]) -> tuple:
        self.calls.append(("random_real", ipc, tuple(seeds)))
        images = tuple(("real", c, seeds[c], k) for c in range(data.num_classes) for k in range(ipc))
        return images, tuple(c for c in range(data.num_classes) for _ in range(ipc))

    def count(self, images: Any) -> int:
        return len(images)


class FakeTeacher:
    """A teacher the tests can name; ``bonus`` is what it adds to a student's accuracy."""

    def __init__(self, name: str, bonus: float) -> None:
        self.name, self.bonus = name, bonus

    def __repr__(self) -> str:
        return f"FakeTeacher({self.name})"


class FakeRelabelTraining:
    """Relabel students: accuracy :func:`accuracy_of` at the AdamW lr, plus the teacher's
    bonus, minus 3 points without augmentation; records every call."""

    def __init__(self) -> None:
        self.calls: list = []

    def train_relabel(self, model: Any, images: Any, teacher: Any, data: Any, *, seeds: Sequence[int], cfg: Any,
                      on_epoch: Optional[Callable] = None) -> list[float]:
        self.calls.append(("train_relabel", model.name, tuple(images), teacher, tuple(seeds), cfg))
        for i in range(len(seeds) if on_epoch is not None else 0):
            for e in range(1, cfg.epochs + 1):
                on_epoch(i, e)
        return [accuracy_of(model.name, s, cfg.lr) + teacher.bonus - (0.0 if cfg.augments else 3.0) for s in seeds]


class FakeTeachers:
    """Teachers by name: ``expert`` snapshots and a ``real`` network (its training
    reports ``epochs`` epochs); records every request."""

    def __init__(self, experts: Optional[dict] = None) -> None:
        self.experts = experts if experts is not None else {"mem://experts": {0: 4, 1: 4}, "mem://other": {0: 2}}
        self.calls: list = []

    def from_expert(self, url: str, expert: int, epoch: Optional[int], num_classes: int) -> tuple:
        from tesla.domain.errors import ConfigError

        self.calls.append(("from_expert", url, expert, epoch, num_classes))
        if url not in self.experts or expert not in self.experts[url]:
            raise ConfigError(f"{url} has no complete expert {expert}")
        at = self.experts[url][expert] if epoch is None else epoch
        return FakeTeacher(f"expert{expert}@{at}", 7.0), {"model": "ConvNetD2", "epoch": at, "test_accuracy": 55.0}

    def from_real(self, model: Any, data: Any, recipe: Any, key: Any, *, on_epoch: Optional[Callable] = None) -> tuple:
        self.calls.append(("from_real", model.name, recipe, dict(key)))
        for e in range(1, recipe.epochs + 1 if on_epoch is not None else 1):
            on_epoch(0, e)
        return FakeTeacher(f"real-{model.name}", 11.0), {"test_accuracy": 66.0, "cached": False}


class FakeRecord:
    """Evaluation records by store url."""

    def __init__(self) -> None:
        self.records: dict = {}

    def __call__(self, url: str, record: Any) -> None:
        self.records.setdefault(url, []).append(record)


# --- run directories and data ------------------------------------------------------------------


class FakeRunDirs:
    """Records each run directory asked for; ``refuse`` makes it raise that error."""

    def __init__(self, refuse: Optional[Exception] = None) -> None:
        self.calls: list = []  # directories made (config recorded)
        self.checks: list = []  # directories only checked
        self.refuse = refuse

    def __call__(self, run_dir: Path, config: dict, *, resume: bool, compare_keys: tuple = (),
                 check_only: bool = False) -> Path:
        if self.refuse is not None:
            raise self.refuse
        (self.checks if check_only else self.calls).append((run_dir, config, resume, compare_keys))
        return Path(run_dir)


class FakeLoadData:
    def __init__(self, data: FakeData) -> None:
        self.data = data
        self.loaded: list = []

    def __call__(self, cfg: Any) -> FakeData:
        self.loaded.append(cfg)
        return self.data


OneRank = SingleProcess  # the domain's null object is the one-process rank group


# --- benchmarks ----------------------------------------------------------------------------------


class FakeMemoryProbe:
    """Points whose saved bytes are ``1000 * steps`` for unrolled and ``1000`` otherwise;
    ``oom`` lists (engine, steps) that run out of memory."""

    def __init__(self, oom: Sequence[tuple] = (), max_rss_gb: Optional[float] = None) -> None:
        self.oom = set(oom)
        self.max_rss_gb = max_rss_gb
        self.asked: list = []

    def isolated(self, settings: Any) -> bool:
        return not settings.on_cuda

    def measure(self, settings: Any, engine: str, steps: int) -> Any:
        from tesla.domain.bench import OOM, MemoryPoint

        self.asked.append((engine, steps))
        if (engine, steps) in self.oom:
            return MemoryPoint(engine, steps, OOM)
        return MemoryPoint(engine, steps, "ok", saved_peak=1000 * (steps if engine == "unrolled" else 1))


@attrs.frozen
class FakeTimed:
    seconds: float
    grad: float


class FakeSpeedSession:
    """Iterations that take ``steps * cost[engine]`` seconds (+1 on the first run of a
    configuration: a warm-up that must not count) and whose gradient is a number."""

    COST = {"unrolled": 4.0, "tesla": 1.0, "exact": 2.0, "tesla-batched": 0.5, "exact-remake": 3.0}

    def __init__(self, oom: set) -> None:
        self.oom = oom
        self.runs: list = []

    def run(self, engine: str, steps: int, precision: str, channels_last: bool) -> Optional[FakeTimed]:
        c = (engine, precision, channels_last, steps)
        first = c not in self.runs
        self.runs.append(c)
        if c in self.oom:
            return None
        grad = 1.0 + (0.01 if precision == "bf16" else 0.0) + (0.001 if engine == "tesla-batched" else 0.0)
        return FakeTimed(seconds=steps * self.COST[engine] + (1.0 if first else 0.0), grad=grad)

    def relative_error(self, grad: float, reference: float) -> float:
        return abs(grad - reference) / abs(reference)


class FakeSpeedProbe:
    def __init__(self, oom: Sequence[tuple] = (), available: Optional[float] = 10.0) -> None:
        self.session_ = FakeSpeedSession(set(oom))
        self.available = available
        self.limits: list = []

    def check_precision(self, precision: str) -> None:
        from tesla.domain.errors import BenchError

        if precision not in ("fp32", "tf32", "bf16"):
            raise BenchError(f"precision must be fp32, tf32 or bf16 (got {precision!r})")

    def available_memory_gb(self) -> Optional[float]:
        return self.available

    def session(self, settings: Any, memory_limit_gb: Optional[float]) -> Any:
        import contextlib

        self.limits.append(memory_limit_gb)
        return contextlib.nullcontext(self.session_)


# --- prepare ----------------------------------------------------------------------------------


@attrs.define
class FakeTask:
    label: str


class FakeSource:
    format = "imagefolder"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakePreparedStore:
    """A prepared store of ``n_tasks`` tasks; ``done`` survives between writers (a resumed
    store); ``fail_at`` makes that task raise."""

    def __init__(self, n_tasks: int = 4, fail_at: Optional[int] = None) -> None:
        self.tasks_ = [FakeTask(f"task {i}") for i in range(n_tasks)]
        self.done: set = set()
        self.fail_at = fail_at
        self.finalized = False


class FakePreparedWriter:
    def __init__(self, store: FakePreparedStore, chunk: int, block: Optional[int]) -> None:
        self.store = store
        self.plan = {"source": "/src", "image_size": 8, "chunk": chunk, "block": block or 8 * chunk,
                     "counts": {"train": 12, "test": 6}}
        self.num_classes = 3
        self.resumed = bool(store.done) and not store.finalized
        self.already_complete = store.finalized
        self.closed = False

    def tasks(self) -> list:
        return list(self.store.tasks_)

    def is_done(self, task: FakeTask) -> bool:
        return task.label in self.store.done

    def run(self, task: FakeTask) -> None:
        if self.store.fail_at is not None and task.label == f"task {self.store.fail_at}":
            raise OSError("disk full")
        self.store.done.add(task.label)

    def finalize(self) -> dict:
        self.store.finalized = True
        return {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def close(self) -> None:
        self.closed = True


class FakePrepareSources:
    def __init__(self, store: FakePreparedStore) -> None:
        self.store = store
        self.sources: list = []
        self.writers: list = []

    def open(self, src: Any, fmt: Optional[str], image_size: int) -> FakeSource:
        self.sources.append(FakeSource())
        return self.sources[-1]

    def writer(self, dest: str, source: Any, *, chunk: int, block: Optional[int]) -> FakePreparedWriter:
        self.writers.append(FakePreparedWriter(self.store, chunk, block))
        return self.writers[-1]
