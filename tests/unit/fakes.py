"""Hand-written fakes of the domain's ports, in pure Python (no torch, no numpy).

``QuadraticCompute`` is a student whose batch loss is
``0.5 * ||w - mean(x_j for j in batch)||^2``: its gradient is ``w - m_b``, its Hessian
is the identity and ``d(v . g)/dx_j = -v / |b|``. The unrolled gradient then has a
closed form (see ``unrolled``), which makes it a true oracle for the engines' maths.

The fakes of the distillation's ports (trajectories, set store, data, student, ranks)
make a run of the real loop (``tesla.app.services.distill``) over pure-Python numbers:
images are vectors ``V`` of dimension P (the student's weights live in the same space,
so ``QuadraticCompute`` pulls them towards the batch means), the optimiser is SGD with
momentum on the images and plain SGD on the lr, and every store is a list in memory.
A fake network's logits (:func:`fake_logits`) prefer the class nearest to an image's
mean shifted by the first weight, so a teacher's labels, its predictions and its
agreement with the classes are small closed forms too.
"""

from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import attrs

from tesla.domain.labels import LabelPlan
from tesla.domain.ports import VJP, Step
from tesla.domain.records import Checkpoint, FinalSet, TrajectoryMeta


class V(tuple):
    """A tiny immutable vector supporting +, -, and scalar *."""

    def __new__(cls, values):
        return super().__new__(cls, (float(v) for v in values))

    def __add__(self, other):  # type: ignore[override]
        return V(a + b for a, b in zip(self, other))

    def __sub__(self, other):
        return V(a - b for a, b in zip(self, other))

    def __mul__(self, k):  # type: ignore[override]
        return V(a * k for a in self)

    __rmul__ = __mul__

    def dot(self, other) -> float:
        return sum(a * b for a, b in zip(self, other))


def zeros(n: int) -> V:
    return V([0.0] * n)


class Images(tuple):
    """A set of V's with elementwise + and scalar *: what the moving average averages."""

    def __new__(cls, rows):
        return super().__new__(cls, (V(r) for r in rows))

    def __add__(self, other):  # type: ignore[override]
        return Images(a + b for a, b in zip(self, other))

    def __mul__(self, k):  # type: ignore[override]
        return Images(a * k for a in self)

    __rmul__ = __mul__


def fake_logits(w, x, k: int) -> V:
    """The fake network at ``w`` on image ``x`` with ``k`` classes: logit j is
    ``-(mean(x) - w[0] / 4 - j)^2``, so it predicts the class nearest to ``mean(x) - w[0] / 4``
    (FakeData's class-c images have entries near c; random experts' w[0] are in (-1, 1),
    a collapsing teacher's far outside)."""
    m = sum(x) / len(x) - w[0] / 4
    return V(-(m - j) ** 2 for j in range(k))


def softmax(z) -> V:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return V(v / total for v in e)


def argmax(z) -> int:
    return max(range(len(z)), key=lambda j: (z[j], -j))


class QuadraticCompute:
    """Compute port over images that are plain vectors, loss 0.5 ||w - mean(x_b)||^2."""

    def __init__(self, images: Sequence[V]) -> None:
        self.images = [V(x) for x in images]
        self.dim = len(self.images[0])
        self.grads = [zeros(self.dim) for _ in self.images]
        self.calls = {"grad": 0, "vjp": 0, "unrolled": 0}

    def _mean(self, batch) -> V:
        total = zeros(self.dim)
        for j in batch:
            total = total + self.images[j]
        return total * (1.0 / len(batch))

    def grad(self, w: V, step: Step) -> V:
        self.calls["grad"] += 1
        return w - self._mean(step.batch)

    def vjp(self, w: V, step: Step, v: V, *, wrt_weights: bool) -> VJP:
        self.calls["vjp"] += 1
        g = w - self._mean(step.batch)
        per_image = v * (-1.0 / len(step.batch))
        data = [(j, per_image) for j in step.batch]
        return VJP(data=data, hvp=v if wrt_weights else None, dot=v.dot(g), grad=g)

    def dot(self, a: V, b: V) -> float:
        return V(a).dot(b)

    def select(self, vec: V, start: int) -> V:
        """PAD's parameter selection: the entries before ``start`` set to zero."""
        return type(vec)(0.0 if i < start else x for i, x in enumerate(vec))

    def accumulate(self, step: Step, data_grad, scale: float) -> None:
        for j, gx in data_grad:
            self.grads[j] = self.grads[j] + gx * scale

    def data_grad(self):
        return self.grads, None

    def unrolled(self, start: V, target: V, alpha: float, steps: Sequence[Step], select_from: int = 0):
        """Closed form: w_{i+1} = (1-a) w_i + a m_i, so dw_N/dm_i = a (1-a)^(N-1-i) I.

        ``select_from``: the oracle of PAD's parameter selection, the loss over entries
        ``select_from ..`` only (L = ||S(w_N - target)||^2 / ||S(start - target)||^2); the
        domain's ``unrolled`` never passes it, the tests call it directly."""
        self.calls["unrolled"] += 1
        keep = (lambda x: self.select(x, select_from)) if select_from else (lambda x: x)
        n = len(steps)
        w = start
        ms = []
        for s in steps:
            m = self._mean(s.batch)
            ms.append(m)
            w = w * (1 - alpha) + m * alpha
        D = keep(start - target).dot(keep(start - target))
        r = keep(w - target)
        lam = r * (2.0 / D)
        for i, s in enumerate(steps):
            coef = alpha * (1 - alpha) ** (n - 1 - i) / len(s.batch)
            for j in s.batch:
                self.grads[j] = self.grads[j] + lam * coef
        # dw_N/da = sum_i (1-a)^(N-1-i) (m_i - w_i) with w_i the trajectory
        dw = zeros(len(start))
        wi = start
        for i, m in enumerate(ms):
            dw = dw * (1 - alpha) + (m - wi)
            wi = wi * (1 - alpha) + m * alpha
        return r.dot(r) / D, lam.dot(dw)


# --- the distillation's ports -------------------------------------------------------------


class StopAfter:
    """A cancel flag read as set from its (k+1)-th read on: the loop reads it once per
    iteration, so the run stops (with a checkpoint) after k iterations of this call."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.reads = 0

    def is_set(self) -> bool:
        self.reads += 1
        return self.reads > self.k

    def set(self) -> None:
        self.k = 0


class FakeTrajectories:
    """Experts as lists of snapshots (one V per epoch); records every load."""

    def __init__(self, trajectories: dict, model: Optional[dict] = None, dataset: Optional[dict] = None) -> None:
        self.trajectories = trajectories
        dim = len(next(iter(trajectories.values()))[0])
        self.meta = TrajectoryMeta(model=dict(model or {}), layout=[["w", [dim]]], num_params=dim,
                                   dataset=dict(dataset or {}), format_version=1)
        self.loads: list = []

    @classmethod
    def random(cls, experts: int = 2, epochs: int = 4, dim: int = 3, seed: int = 0, **meta) -> "FakeTrajectories":
        rng = random.Random(seed)
        return cls({e: [V(rng.uniform(-1, 1) for _ in range(dim)) for _ in range(epochs + 1)]
                    for e in range(experts)}, **meta)

    def expert_ids(self) -> list:
        return sorted(self.trajectories)

    def num_snapshots(self, expert: int) -> int:
        return len(self.trajectories[expert])

    def load(self, expert: int, epoch: int) -> V:
        self.loads.append((expert, epoch))
        return self.trajectories[expert][epoch]

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(repr(sorted(self.trajectories.items())).encode()).hexdigest()[:16]


class FakeSetStore:
    """Checkpoints and sets in lists; what was written is kept in order."""

    def __init__(self, checkpoints: Sequence[Checkpoint] = ()) -> None:
        self.checkpoints: list = list(checkpoints)
        self.sets: list = []
        self.closed = False
        self.reads = 0

    def last_checkpoint(self):
        self.reads += 1
        return self.checkpoints[-1] if self.checkpoints else None

    def save_checkpoint(self, checkpoint: Checkpoint) -> str:
        self.checkpoints.append(checkpoint)
        return f"memory#checkpoints/{checkpoint.iteration}"

    def save_set(self, final: FinalSet) -> str:
        self.sets.append(final)
        return f"memory#sets/{len(self.sets) - 1}"

    def close(self) -> None:
        self.closed = True


class FakeData:
    """``num_classes`` classes of random vectors of dimension ``dim`` (``nan``: every one NaN)."""

    def __init__(self, num_classes: int = 2, dim: int = 3, image_shape: tuple = (1, 2, 2), nan: bool = False) -> None:
        self.num_classes = num_classes
        self.dim = dim
        self.image_shape = image_shape
        self.class_names = [f"class{c}" for c in range(num_classes)]
        self.normalizer = None
        self.nan = nan

    def sample_class(self, c: int, n: int, seed: int) -> list:
        rng = random.Random(seed)
        if self.nan:
            return [V([math.nan] * self.dim) for _ in range(n)]
        return [V(c + rng.uniform(-0.5, 0.5) for _ in range(self.dim)) for _ in range(n)]


@attrs.define
class FakeState:
    images: list  # of V
    lr: float
    class_ids: list
    momentum: list  # of V
    logits: Optional[list] = None
    soft: Optional[list] = None


def _finite(vectors) -> bool:
    return all(math.isfinite(v) for x in vectors for v in x)


class FakeStudent:
    """The Student port over QuadraticCompute.

    Args:
        cfg: the run's DistillConfig (ipc, seed, lr_init, lr_img, lr_lr, min_lr, labels).
        num_params: P, the dimension of weights and images.
        num_classes: K.
        overflow_at: the k-th step (1-based, counted over this student's life) writes
            inf into the images, as an overflowing update would.
        layout: the network's tensors (name, shape) in flat order (default one tensor of P).
    """

    def __init__(self, cfg, num_params: int = 3, num_classes: int = 2, overflow_at: Optional[int] = None,
                 layout: Optional[list] = None) -> None:
        self.cfg = cfg
        self._p = num_params
        self.k = num_classes
        self.overflow_at = overflow_at
        self.steps = 0
        self.label_calls: list = []  # (plan, teacher) per labels() call
        self._layout = layout or [("w", (num_params,))]
        self.starts: list = []  # the TeacherStart of every initial() that had one

    @property
    def num_params(self) -> int:
        return self._p

    @property
    def layout(self) -> list:
        return list(self._layout)

    def initial(self, data, start=None) -> FakeState:
        if start is not None:
            return self._initial_from(start)
        images = [x for c in range(self.k) for x in data.sample_class(c, self.cfg.ipc, seed=self.cfg.seed * 100_003 + c)]
        ids = [c for c in range(self.k) for _ in range(self.cfg.ipc)]
        logits = None
        if self.cfg.labels == "learned":
            logits = [V(10.0 if j == c else 0.0 for j in range(self.k)) for c in ids]
        return FakeState(images=images, lr=self.cfg.lr_init, class_ids=ids, momentum=[zeros(self._p) for _ in images],
                         logits=logits)

    def _initial_from(self, start) -> FakeState:
        """learned-teacher: the chosen pool images, logits mixed from the teachers'."""
        self.starts.append(start)
        images = [start.pool[i] for i in start.chosen]
        ids = [c for c in range(self.k) for _ in range(self.cfg.ipc)]
        logits = []
        for i, x in enumerate(images):
            total = zeros(self.k)
            for e, w in enumerate(start.teachers):
                total = total + fake_logits(w, x, self.k) * start.weights[e][i]
            logits.append(total)
        return FakeState(images=images, lr=self.cfg.lr_init, class_ids=ids, momentum=[zeros(self._p) for _ in images],
                         logits=logits)

    def candidates(self, data, per_class: int) -> list:
        return [x for c in range(self.k) for x in data.sample_class(c, per_class, seed=self.cfg.seed * 100_003 + c)]

    def predict(self, weights, images) -> list:
        return [argmax(fake_logits(weights, x, self.k)) for x in images]

    def health(self, state: FakeState, labels) -> tuple:
        rows = [softmax(z) for z in labels] if state.logits is not None and labels is state.logits else list(labels)
        entropies = [-sum(p * math.log(p) for p in row if p > 0) for row in rows]
        return [argmax(row) for row in rows], list(state.class_ids), entropies

    def images(self, state: FakeState) -> Images:
        return Images(state.images)

    def with_images(self, state: FakeState, images) -> FakeState:
        return attrs.evolve(state, images=list(images), soft=None)

    def images_array(self, images) -> tuple:
        return tuple(tuple(x) for x in images)

    def images_from(self, array) -> Images:
        return Images(array)

    def restore(self, arrays) -> FakeState:
        logits = arrays.get("label_logits")
        return FakeState(images=[V(x) for x in arrays["images"]], lr=float(arrays["lr"]),
                         class_ids=list(arrays["class_ids"]), momentum=[V(m) for m in arrays["momentum_images"]],
                         logits=None if logits is None else [V(x) for x in logits])

    def checkpoint_arrays(self, state: FakeState) -> dict:
        out = {"images": tuple(state.images), "class_ids": tuple(state.class_ids), "lr": state.lr,
               "momentum_images": tuple(state.momentum)}
        if state.logits is not None:
            out["label_logits"] = tuple(state.logits)
        return out

    def final_arrays(self, state: FakeState, soft) -> dict:
        out = {"images": tuple(state.images), "lr": state.lr, "labels": tuple(state.class_ids)}
        if state.logits is not None:
            out["label_logits"] = tuple(state.logits)
        elif soft is not None:
            out["soft_labels"] = tuple(soft)
        return out

    def size(self, state: FakeState) -> int:
        return len(state.images)

    def lr(self, state: FakeState) -> float:
        return state.lr

    def weights(self, snapshot) -> V:
        return V(snapshot)

    def labels(self, state: FakeState, plan: LabelPlan, teacher):
        self.label_calls.append((plan, teacher))
        if plan.teacher:
            state.soft = [softmax(fake_logits(teacher, x, self.k)) for x in state.images]
            return state.soft
        return state.logits if plan.kind == "learned" else state.class_ids

    def compute(self, state: FakeState, labels) -> QuadraticCompute:
        return QuadraticCompute(state.images)

    def step(self, state: FakeState, images_grad, labels_grad, lr_grad: float) -> float:
        cfg = self.cfg
        norm = math.sqrt(sum(g.dot(g) for g in images_grad))
        state.momentum = [m * cfg.momentum + g for m, g in zip(state.momentum, images_grad)]
        state.images = [x - m * cfg.lr_img for x, m in zip(state.images, state.momentum)]
        state.lr = max(state.lr - cfg.lr_lr * lr_grad, cfg.min_lr)
        self.steps += 1
        if self.steps == self.overflow_at:
            state.images[0] = V([math.inf] * self._p)
        return norm

    def problem(self, state: FakeState):
        if not _finite(state.images):
            return "images"
        if not math.isfinite(state.lr):
            return "lr"
        return None

    def finite(self, value) -> bool:
        return _finite(value)


class Poisoned:
    """An engine whose ``at``-th call (1-based) returns ``loss``/``lr_grad`` instead of its
    own, or leaves a NaN in the image gradient (``image_grad``)."""

    def __init__(self, engine, at: int, *, loss: Optional[float] = None, lr_grad: Optional[float] = None,
                 image_grad: bool = False) -> None:
        self.engine, self.at, self.loss, self.lr_grad, self.image_grad = engine, at, loss, lr_grad, image_grad
        self.calls = 0
        self.name = engine.name

    def __call__(self, compute, start, target, alpha, steps):
        out = self.engine(compute, start, target, alpha, steps)
        self.calls += 1
        if self.calls != self.at:
            return out
        if self.image_grad:
            compute.grads[0] = V([math.nan] * len(compute.grads[0]))
        changes = {k: v for k, v in (("loss", self.loss), ("lr_grad", self.lr_grad)) if v is not None}
        return attrs.evolve(out, **changes)


class FakeRanks:
    """One rank of a pretend job: collectives record their calls and return this rank's
    value (``others_cancel``: another rank asks to stop)."""

    def __init__(self, rank: int = 0, world: int = 2, others_cancel: bool = False) -> None:
        self.rank, self.world, self.others_cancel = rank, world, others_cancel
        self.calls: list = []

    @property
    def shard(self) -> tuple:
        return (self.rank, self.world)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def sum(self, value):
        self.calls.append("sum")
        return value

    def all_gather(self, obj) -> list:
        self.calls.append("all_gather")
        return [obj] * self.world

    def any(self, flag: bool) -> bool:
        self.calls.append("any")
        return bool(flag) or self.others_cancel

    def agree(self, fn, *, only_writer: bool = False):
        self.calls.append("agree")
        return fn() if self.is_writer or not only_writer else None


class FakeRunFiles:
    """A filesystem of a few paths in a dict: ``dirs``, ``files`` (path -> text), and
    paths where nothing can be written."""

    def __init__(self, files: Optional[dict] = None, dirs: Sequence = (), readonly: Sequence = ()) -> None:
        self.files = {str(k): v for k, v in (files or {}).items()}
        self.dirs = {str(d) for d in dirs} | {str(_parent(k)) for k in self.files}
        self.readonly = {str(p) for p in readonly}
        self.locks: list = []  # run directories locked now
        self.locked_by_others: set = set()  # run directories another process holds

    def kind(self, path) -> str:
        if str(path) in self.dirs:
            return "dir"
        return "file" if str(path) in self.files else "missing"

    def read_text(self, path) -> str:
        try:
            return self.files[str(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None

    def make_writable_dir(self, path) -> None:
        if str(path) in self.readonly:
            raise PermissionError(13, "Permission denied", str(path))
        self.dirs.add(str(path))

    def write_atomic(self, path, text: str) -> None:
        self.files[str(path)] = text

    def lock(self, path) -> "FakeLock":
        from tesla.domain.errors import RunDirError

        if str(path) in self.locked_by_others:
            raise RunDirError(f"the run directory {path} is being written by process 4242")
        self.locks.append(str(path))
        return FakeLock(self, str(path))


class FakeLock:
    """A held run-directory lock of :class:`FakeRunFiles`."""

    def __init__(self, files: "FakeRunFiles", path: str) -> None:
        self.files, self.path = files, path

    def release(self) -> None:
        if self.path in self.files.locks:
            self.files.locks.remove(self.path)


def _parent(path) -> str:
    from pathlib import PurePath

    return str(PurePath(path).parent)


class FakeParts:
    """The composition root of a run on fakes (the DistillParts port)."""

    def __init__(self, traj: FakeTrajectories, *, ranks=None, store: Optional[FakeSetStore] = None,
                 data: Optional[FakeData] = None, files: Optional[FakeRunFiles] = None, memory=None) -> None:
        from tesla.domain.ports import SingleProcess, UnknownMemory

        self.traj = traj
        self.ranks = ranks or SingleProcess()
        self.store = store or FakeSetStore()
        self.data = data or FakeData()
        self.files = files or FakeRunFiles()
        self.memory = memory or UnknownMemory()
        self.opened: list = []  # (url, write) of every store opened
        self.exported: list = []
        self.students: list = []

    def open_trajectories(self, url: str) -> FakeTrajectories:
        return self.traj

    def load_data(self, cfg) -> FakeData:
        return self.data

    def student(self, model_cfg, cfg) -> FakeStudent:
        self.students.append(FakeStudent(cfg, num_params=self.traj.meta.num_params, num_classes=model_cfg.num_classes))
        return self.students[-1]

    def gauges(self, data, model_cfg, cfg):
        from tesla.domain.ports import NoGauges

        return NoGauges()

    def open_set_store(self, url: str, *, write: bool) -> FakeSetStore:
        self.opened.append((url, write))
        return self.store

    def evaluator(self, data, model_cfg, cfg, ipc, sink):
        return lambda state, iteration: None

    def export_images(self, store, folder, data=None) -> None:
        self.exported.append(str(folder))
        self.exported_with = data
