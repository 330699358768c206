"""Ports: the small protocols through which the pure domain and the services reach the
outside world.

The domain holds the maths of trajectory matching but never a tensor library: it asks
a :class:`Compute` for everything that needs a network and treats what it gets back
(``Vec``, ``Images``) as opaque values supporting ``+``, ``-`` and scalar ``*``. The
services are loops over these protocols: a distillation reads a :class:`Trajectories`,
keeps its state in a :class:`SetStore`, leaves its numerics to a :class:`Student`, and
talks through an :class:`EventSink`. Each protocol declares exactly what its callers
use, with types; an optional capability is a protocol of its own, found by
``isinstance`` (:class:`KeepsWeights`, :class:`BatchedVJP`).

Adapters implement these protocols (``tesla.adapters``); ``tesla.app.bootstrap``
builds them and hands them to the services. Hand-written fakes in ``tests/unit``
implement them too, so a service can be run and tested with only the domain in view.
Where a role has a do-nothing form (one process, a rank that does not write, a run
without previews) the null object lives here beside its protocol: the caller chooses
it once instead of testing a flag on every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar, runtime_checkable

import attrs

from tesla.domain import events
from tesla.domain.config import DataConfig, DistillConfig, EvalConfig, ModelConfig
from tesla.domain.labels import LabelPlan, TeacherStart
from tesla.domain.records import Array, Checkpoint, FinalSet, TrajectoryMeta

Vec = Any  # a flat parameter vector, opaque to the domain
Images = Any  # a batch of images, opaque to the domain
Labels = Any  # class ids (N,), probabilities or logits (N, K), opaque to the domain
State = Any  # a synthetic set being learned (images, lr, labels, optimiser state), opaque
T = TypeVar("T")


# --- the network maths of one iteration ------------------------------------------------


@attrs.frozen
class Step:
    """What one student step used, recorded in pass 1 and replayed exactly in pass 2.

    Attributes:
        index: position of the step in the iteration (0 .. N-1).
        batch: indices of the synthetic images of this step.
        aug_seed: seed from which the compute draws (and records) this step's
            augmentation parameters; None for no augmentation.
    """

    index: int
    batch: tuple
    aug_seed: Optional[int] = None


@attrs.frozen
class VJP:
    """Result of :meth:`Compute.vjp` for one step at weights ``w`` and cotangent ``v``.

    Attributes:
        data: opaque gradient of ``v . g(w)`` w.r.t. the step's synthetic data (images
            and, where learned, label logits); hand it back to ``Compute.accumulate``.
        hvp: ``d(v . g(w))/dw = H(w) v`` when asked for (``wrt_weights=True``), else None.
        dot: the scalar ``v . g(w)``.
        grad: ``g(w)`` itself, no graph attached, where the compute has it (it computes it
            on the way): the first-order pass 2 then walks the student's trajectory again,
            ``w_{i+1} = w_i - alpha g_i``, instead of storing every ``w_i``. None: the
            engine asks ``grad`` for it (one more forward and backward).
    """

    data: Any
    hvp: Optional[Vec]
    dot: float
    grad: Optional[Vec] = None


@runtime_checkable
class Compute(Protocol):
    """The network maths one distillation iteration needs, bound to the synthetic set
    (images, labels) and the model for that iteration."""

    def grad(self, w: Vec, step: Step) -> Vec:
        """g = grad_w CE(f(w, aug(X[batch])), Y[batch]); no graph is kept."""

    def vjp(self, w: Vec, step: Step, v: Vec, *, wrt_weights: bool) -> VJP:
        """Gradient of ``v . g(w)`` w.r.t. the step's data (and w); one graph, freed on return."""

    def dot(self, a: Vec, b: Vec) -> float:
        """Inner product of two vectors."""

    def accumulate(self, step: Step, data_grad: Any, scale: float) -> None:
        """Add ``scale * data_grad`` into the running gradient of the synthetic data."""

    def data_grad(self) -> tuple[Images, Optional[Labels]]:
        """The accumulated gradient: (images (N, C, H, W), label logits (N, K) or None)."""

    def select(self, vec: Vec, start: int) -> Vec:
        """``vec`` with the entries before ``start`` set to zero (PAD's parameter selection,
        :mod:`tesla.domain.selection`); a new vector."""

    def unrolled(self, start: Vec, target: Vec, alpha: float, steps: Sequence[Step]) -> tuple[float, float]:
        """Reference: autograd through all steps. Accumulates the data gradient and
        returns (loss, dL/dalpha)."""


@runtime_checkable
class KeepsWeights(Protocol):
    """A compute that stores the pass-1 weight vectors itself (e.g. in host memory, so
    device memory does not grow with N); ``grad``/``vjp`` accept what ``keep`` returned."""

    def keep(self, w: Vec) -> Vec:
        """A stored copy of ``w`` for pass 2."""


@runtime_checkable
class BatchedVJP(Protocol):
    """A compute that takes several independent first-order VJPs at once (batched pass 2)."""

    def vjp_many(self, ws: Sequence[Vec], steps: Sequence[Step], v: Vec) -> list[VJP]:
        """``[vjp(w, s, v, wrt_weights=False) for w, s in zip(ws, steps)]``, computed together."""


# --- what a distillation reads, keeps and computes --------------------------------------


class Trajectories(Protocol):
    """The read side of a trajectory store: per expert an (epochs + 1, P) array of flat
    parameters."""

    @property
    def meta(self) -> TrajectoryMeta:
        """Model, layout, P and dataset of the experts."""

    def expert_ids(self) -> list[int]:
        """Ids of the complete experts."""

    def num_snapshots(self, expert: int) -> int:
        """Snapshots of an expert (epochs + 1)."""

    def load(self, expert: int, epoch: int) -> Array:
        """Flat parameters of an expert after ``epoch`` epochs (0 = init), (P,) float32."""

    def fingerprint(self) -> str:
        """A short digest of which experts the store holds and what they are (their ids and
        snapshot checksums): equal for the same experts wherever the store lives, different
        once an expert is added, removed or changed."""


class SetStore(Protocol):
    """Where a distillation keeps its checkpoints and its finished set; every write is
    atomic (a reader sees the previous complete state or the new one)."""

    def last_checkpoint(self) -> Optional[Checkpoint]:
        """The newest complete checkpoint, or None."""

    def save_checkpoint(self, checkpoint: Checkpoint) -> str:
        """Write a checkpoint; returns where (for the ``Checkpoint`` event)."""

    def save_set(self, final: FinalSet) -> str:
        """Write the finished set; returns where."""

    def close(self) -> None:
        """Release the store."""


class Normalization(Protocol):
    """How a data source's images map to model space and back."""

    def decode(self, images: Images) -> Images:
        """Model-space images (N, C, H, W) to [0, 1] for display."""

    def to_state(self) -> dict:
        """What a stored set records to be shown and evaluated without the data."""


class RealData(Protocol):
    """Real images as the services see them: how many classes, what one image is.

    Batches, the test set and class samples are the training ports' business; a service
    only checks the data against the model and hands it on.
    """

    num_classes: int
    image_shape: tuple  # (C, H, W)


class DataSource(RealData, Protocol):
    """Real images: class-balanced sampling, training batches and the test set."""

    class_names: list
    normalizer: Optional[Normalization]

    def sample_class(self, c: int, n: int, seed: int) -> Images:
        """``n`` random real images of class ``c`` (without replacement where possible), (n, C, H, W)."""

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[Images, Any]]:
        """One epoch of shuffled (images, labels) training batches."""

    def test_batches(self, batch_size: int) -> Iterator[tuple[Images, Any]]:
        """The test set in batches."""


class Student(Protocol):
    """The numerics a distillation does outside the engines, on one device: the student
    network's flat view, the synthetic set being learned (an opaque ``State``) and its
    optimiser, the labels and the finiteness checks.

    The service never looks inside a ``State``; it hands it back to the student.
    """

    @property
    def num_params(self) -> int:
        """P: the length of the student network's flat parameter vector."""

    def initial(self, data: DataSource, start: Optional[TeacherStart] = None) -> State:
        """A fresh set: real images of each class, or noise, as the config says (seeded);
        with ``start`` (``learned-teacher``), the chosen pool images, labelled with the
        logits ``sum_e start.weights[e][i] f(start.teachers[e], x_i)``."""

    def restore(self, arrays: Mapping[str, Array]) -> State:
        """The set (and its optimiser state) a checkpoint holds, to continue bit for bit."""

    def checkpoint_arrays(self, state: State) -> dict[str, Array]:
        """Everything needed to continue exactly (optimiser buffers included)."""

    def final_arrays(self, state: State, soft: Optional[Labels]) -> dict[str, Array]:
        """``images``, ``lr``, ``labels`` and the soft labels or learned logits to store."""

    def size(self, state: State) -> int:
        """N: the number of synthetic images."""

    def lr(self, state: State) -> float:
        """The learned student learning rate."""

    def weights(self, snapshot: Array) -> Vec:
        """An expert snapshot (P,) as a vector on the student's device."""

    def labels(self, state: State, plan: LabelPlan, teacher: Optional[Vec]) -> Labels:
        """The labels of an iteration: class ids, the learned logits, or the softmax of the
        network at ``teacher`` on the current images (then also what an evaluation of the
        set now would use)."""

    def compute(self, state: State, labels: Labels) -> Compute:
        """The compute of one iteration over the current images and ``labels``."""

    def step(self, state: State, images_grad: Images, labels_grad: Optional[Labels], lr_grad: float) -> float:
        """One optimiser step on the images, the lr (and the logits); returns the
        image-gradient norm (before clipping)."""

    def problem(self, state: State) -> Optional[str]:
        """None when the set is finite, else the name of what is not (``images``, ``lr`` ...)."""

    def finite(self, value: Images) -> bool:
        """Whether every entry of ``value`` (e.g. the image gradient) is finite."""

    # -- the recipe's levers (labels from the experts, run health, PAD, the image EMA) --

    @property
    def layout(self) -> Sequence:
        """The network's ``[(tensor name, shape), ...]`` in flat-vector order (where PAD's
        parameter selection cuts, :func:`tesla.domain.engines.from_config`)."""

    def candidates(self, data: DataSource, per_class: int) -> Images:
        """``per_class`` real images of each class, class by class, (K * per_class, C, H, W),
        drawn with the seeds of the initial set."""

    def predict(self, weights: Vec, images: Images) -> list[int]:
        """The argmax of the network at ``weights`` for each of ``images`` (un-augmented)."""

    def health(self, state: State, labels: Labels) -> tuple[list[int], list[int], list[float]]:
        """Per image: (label argmax, class id, label entropy in nats) of soft ``labels`` (a
        teacher's softmax, (N, K)) or learned logits (softmaxed first); what
        :meth:`tesla.domain.health.Health.measure` takes."""

    def images(self, state: State) -> Images:
        """A detached copy of the images being learned (the moving average's input)."""

    def with_images(self, state: State, images: Images) -> State:
        """The set with ``images`` in place of its own, the same lr and labels: what is
        evaluated, previewed and stored when the run averages its images. It is a view
        to read, never stepped."""

    def images_array(self, images: Images) -> Array:
        """``images`` as a host array (a checkpoint's)."""

    def images_from(self, array: Array) -> Images:
        """The images a checkpoint holds, where the set lives."""


class Gauges(Protocol):
    """What a run shows of itself while it goes: image previews and memory figures."""

    def preview(self, state: State, iteration: int) -> Optional[events.Preview]:
        """A small grid of the current images, or None when there is nothing to show."""

    def memory(self, iteration: int) -> Optional[events.Memory]:
        """Device and host memory now, or None."""


class NoGauges:
    """Gauges of a process that shows nothing (ranks other than 0)."""

    def preview(self, state: State, iteration: int) -> None:
        return None

    def memory(self, iteration: int) -> None:
        return None


class Evaluator(Protocol):
    """Scores the set during a run (it publishes its own ``Evaluation`` events)."""

    def __call__(self, state: State, iteration: int) -> None: ...


class Cancel(Protocol):
    """A stop request, read once per iteration (``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


class Ranks(Protocol):
    """This process's place in a job of one or more processes, and the collectives a run
    uses. Every rank calls the collectives the same number of times, in the same order."""

    @property
    def rank(self) -> int:
        """This process's rank (0 .. world - 1)."""

    @property
    def world(self) -> int:
        """How many processes take part."""

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world)."""

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes checkpoints, sets, logs (rank 0)."""

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (small picklable values), in rank order, on every rank."""

    def sum(self, value: Images) -> Images:
        """``value`` summed over the ranks, in place; every rank gets identical values."""

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""

    def agree(self, fn: Callable[[], T], *, only_writer: bool = False) -> Optional[T]:
        """Run ``fn`` (on every rank, or on the writer only) and stop every rank if any
        failed; returns ``fn()``'s value (None where it did not run)."""


@attrs.frozen
class SingleProcess:
    """The ranks of a plain run: rank 0 of 1, every collective the identity."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world(self) -> int:
        return 1

    @property
    def shard(self) -> tuple[int, int]:
        return (0, 1)

    def all_gather(self, obj: Any) -> list:
        return [obj]

    @property
    def is_writer(self) -> bool:
        return True

    def sum(self, value: Images) -> Images:
        return value

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def agree(self, fn: Callable[[], T], *, only_writer: bool = False) -> Optional[T]:
        return fn()


class RunFiles(Protocol):
    """The file operations of a run directory (local files)."""

    def kind(self, path: Path) -> str:
        """``missing``, ``dir`` or ``file``."""

    def read_text(self, path: Path) -> str:
        """The text of a file (OSError when unreadable)."""

    def make_writable_dir(self, path: Path) -> None:
        """Create ``path`` (and its parents) and prove a file can be written in it (OSError if not)."""

    def write_atomic(self, path: Path, text: str) -> None:
        """Write ``text`` through a temporary file and an atomic rename."""

    def lock(self, path: Path) -> "Held":
        """Take the writer lock of the directory ``path`` until ``release()`` (or the
        process ends); RunDirError naming the holder when another process has it."""


class Held(Protocol):
    """A lock (or any resource) held until released."""

    def release(self) -> None: ...


class DistillParts(Protocol):
    """What the distillation set-up asks the composition root to open and build for this
    rank (stores at URLs, with the request's storage options; the device is the rank's)."""

    ranks: Ranks
    files: RunFiles
    memory: "FreeMemory"  # what this rank's device and host have free (the size checks)

    def open_trajectories(self, url: str) -> Trajectories:
        """The trajectory store at ``url``, for reading."""

    def load_data(self, cfg: DataConfig) -> DataSource:
        """The real data ``cfg`` names."""

    def student(self, model_cfg: ModelConfig, cfg: DistillConfig) -> Student:
        """The student network (seeded by ``cfg.seed``) and the set's numerics."""

    def gauges(self, data: DataSource, model_cfg: ModelConfig, cfg: DistillConfig) -> Gauges:
        """Previews (un-whitened through the data's normaliser) and memory samples."""

    def open_set_store(self, url: str, *, write: bool) -> SetStore:
        """The synthetic store at ``url``: created for writing, or opened to read (StoreError if absent)."""

    def evaluator(self, data: DataSource, model_cfg: ModelConfig, cfg: EvalConfig, ipc: int,
                  sink: "EventSink") -> Evaluator:
        """Scores of the set during the run beside random real images at ``ipc``."""

    def export_images(self, store: SetStore, folder: Path, data: Optional[DataSource] = None) -> None:
        """Pictures per class of the store's finished set (un-whitened, upscaled, named),
        with real images of each class from ``data`` beside them when it is given."""


# --- events ---------------------------------------------------------------------------


class EventSink(Protocol):
    """Receives the frozen records of :mod:`tesla.domain.events`."""

    def emit(self, event: Any) -> None: ...


class NullSink:
    """The do-nothing default sink."""

    def emit(self, event: Any) -> None:  # noqa: D401 - protocol method
        return None


class FanOut:
    """Sends every event to several sinks, in order."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, event: Any) -> None:
        for sink in self.sinks:
            sink.emit(event)


class ListSink:
    """Keeps every event in a list (tests, summaries)."""

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def of(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]


# === ports of the experts, evaluation, bench, prepare and info services (below this line) ===
#
# What the experts, evaluation, merge, bench, prepare and info services ask of the world.
# Each service names the few ports it uses; tesla.app.bootstrap hands it the adapters
# (torch training loops, HDF5/Zarr stores, data loaders) and tests hand it fakes.

from contextlib import AbstractContextManager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar  # noqa: E402

if TYPE_CHECKING:  # only for the annotations: the domain modules below import this one
    from tesla.domain.bench import BenchSettings, MemoryPoint, MemoryResult, SpeedResult
    from tesla.domain.config import DataConfig, DistillConfig, EvalConfig, ExpertConfig, ModelConfig
    from tesla.domain.relabel import RelabelConfig


# on_snapshot(epoch, flat parameters (P,), test accuracy or None): after init and every epoch
SnapshotFn = Callable[[int, Vec, Optional[float]], None]
# on_epoch(epoch, epochs, train loss, train accuracy, test accuracy or None, seconds)
EpochFn = Callable[[int, int, float, float, Optional[float], float], None]


class LoadData(Protocol):
    """Opens the real data a :class:`~tesla.domain.config.DataConfig` names."""

    def __call__(self, cfg: "DataConfig") -> RealData: ...


@attrs.frozen
class ModelLayout:
    """The flat parameter vector of a model: ``layout`` lists (tensor name, shape) in
    vector order; ``num_params`` is its length P."""

    layout: list
    num_params: int


class ExpertOutput(Protocol):
    """One expert being written: snapshots as they come, complete only on ``finish``."""

    def write(self, epoch: int, vec: Vec, test_accuracy: Optional[float] = None) -> None:
        """Store the flat parameters after ``epoch`` epochs (0 = init), (P,)."""

    def set_attrs(self, **values: Any) -> None:
        """Record attributes of the expert (e.g. its test accuracies)."""

    def finish(self) -> int:
        """Mark the expert complete; returns its id."""


class TrajectoryOutput(Protocol):
    """The write side of a trajectory store (experts, merges)."""

    @property
    def url(self) -> str: ...

    @property
    def initialized(self) -> bool:
        """The store already records a model (it was written before)."""

    def initialize(self, model: Mapping[str, Any], layout: Any, num_params: int,
                   dataset: Mapping[str, Any]) -> None:
        """Record the model on a new store; on an initialised one, refuse another model."""

    def check_compatible(self, model: Mapping[str, Any], layout: Any, num_params: int,
                         dataset: Mapping[str, Any]) -> None:
        """Refuse (StoreError) a store of another model or dataset; write nothing."""

    def expert_ids(self) -> list[int]:
        """Ids of the complete experts."""

    def expert_attrs(self, expert: int) -> dict:
        """Attributes of an expert (seed, lr, crc32, test accuracies ...)."""

    def begin_expert(self, expert_id: Optional[int], epochs: int,
                     attrs: Optional[Mapping[str, Any]] = None) -> ExpertOutput:
        """Start writing expert ``expert_id`` with ``epochs + 1`` snapshots."""

    def close(self) -> None: ...


class TrajectoryInput(Trajectories, Protocol):
    """The read side of a trajectory store as the merge service walks it."""

    @property
    def meta(self) -> TrajectoryMeta: ...

    def check_compatible(self, model: Mapping[str, Any], layout: Any, num_params: int,
                         dataset: Mapping[str, Any]) -> None:
        """Refuse (StoreError) a store of another model or dataset."""

    def expert_ids(self) -> list[int]: ...

    def incomplete_ids(self) -> list[int]:
        """Experts begun but never finished (left behind by a merge)."""

    def expert_attrs(self, expert: int) -> dict: ...

    def load(self, expert: int, epoch: int) -> Vec:
        """One snapshot, its checksum verified, (P,)."""

    def close(self) -> None: ...


class TrajectoryStores(Protocol):
    """Opens trajectory stores by path or URL (storage options are the adapter's)."""

    def exists(self, url: str) -> bool:
        """Something is already at ``url`` (a store, or a path that will be refused)."""

    def open(self, url: str) -> TrajectoryOutput:
        """Open for writing, created when missing."""

    def read(self, url: str) -> TrajectoryInput:
        """Open an existing store read-only."""

    def shared(self, url: str) -> bool:
        """Several processes may write different experts into ``url`` at once (Zarr: yes;
        an HDF5 file has one writer)."""

    def rank_url(self, url: str, rank: int, world: int) -> str:
        """Where rank ``rank`` of ``world`` writes when the store is not shared."""


class ExpertTraining(Protocol):
    """Trains experts (teacher networks) on real data and hands out their snapshots."""

    def layout(self, model: "ModelConfig") -> ModelLayout:
        """The flat parameter layout of ``model``'s networks."""

    def train(self, model: "ModelConfig", cfg: "ExpertConfig", data: RealData, seeds: Sequence[int], *,
              on_snapshot: Sequence[SnapshotFn], on_epoch: Sequence[EpochFn],
              should_stop: Optional[Callable[[], bool]] = None) -> list[list[Optional[float]]]:
        """Train one fresh network per seed (together where that is faster), each exactly
        as it would train alone; returns each one's test accuracy history.

        Raises:
            TrainingStopped: ``should_stop()`` returned True between epochs.
        """


# on_network_epoch(network, epoch): network ``network`` (its index in the call's seeds)
# finished epoch ``epoch`` (1-based); evaluation training reports through it as it goes
NetworkEpochFn = Callable[[int, int], None]


class EvaluationTraining(Protocol):
    """Trains fresh evaluation networks and measures top-1 (%) on the real test set."""

    def train_on(self, model: "ModelConfig", images: Images, labels: Labels, data: RealData, *,
                 seeds: Sequence[int], epochs: int, lr: float, cfg: "EvalConfig",
                 on_epoch: Optional[NetworkEpochFn] = None) -> list[float]:
        """One network per seed on (images, labels) with ``cfg``'s protocol (momentum,
        weight decay, batch, DSA, lr x0.1 at half time); their test accuracies."""

    def train_on_real(self, model: "ModelConfig", data: RealData, recipe: "ExpertConfig", seed: int,
                      on_epoch: Optional[NetworkEpochFn] = None) -> float:
        """One network on the whole real training set with ``recipe``; its test accuracy
        (``on_epoch(0, epoch)`` after each epoch)."""

    def random_real(self, data: RealData, ipc: int, seeds: Sequence[int]) -> tuple[Images, Labels]:
        """``ipc`` random real images of each class c (drawn with ``seeds[c]``) and their
        class ids, class by class."""

    def count(self, images: Images) -> int:
        """Number of images in a set."""


Teacher = Any  # a network mapping images (B, C, H, W) to logits (B, K), opaque to the services


class RelabelTraining(Protocol):
    """Trains students under the teacher-relabel protocol (:mod:`tesla.domain.relabel`):
    the teacher's softmax at a temperature on every augmented batch is the target."""

    def train_relabel(self, model: "ModelConfig", images: Images, teacher: Teacher, data: RealData, *,
                      seeds: Sequence[int], cfg: "RelabelConfig",
                      on_epoch: Optional[NetworkEpochFn] = None) -> list[float]:
        """One fresh student per seed on ``images`` (stored labels are not used); their
        test accuracies (%)."""


class Teachers(Protocol):
    """Where a relabel teacher comes from: an expert snapshot, or a network trained on
    the real data (cached, so it is trained once for a data/model/recipe/seed)."""

    def from_expert(self, url: str, expert: int, epoch: Optional[int], num_classes: int) -> tuple[Teacher, dict]:
        """Expert ``expert`` of the trajectory store at ``url`` after ``epoch`` epochs
        (None: its last snapshot), and facts to record (``model``, ``epoch``); refuses
        (UserError) a missing store, expert or epoch, or a model of another class count."""

    def from_real(self, model: "ModelConfig", data: RealData, recipe: "ExpertConfig", key: Mapping[str, Any], *,
                  on_epoch: Optional[NetworkEpochFn] = None) -> tuple[Teacher, dict]:
        """A network trained on the real training set with ``recipe`` (loaded when ``key``
        was trained before), and facts to record (``test_accuracy``, ``cached``)."""


class RecordEvaluation(Protocol):
    """Adds an evaluation's record to a synthetic set's provenance (checksummed with the
    set's other attributes; the arrays are unchanged)."""

    def __call__(self, url: str, record: Mapping[str, Any]) -> None: ...



class FreeMemory(Protocol):
    """What the machine has free for a job (:mod:`tesla.domain.footprint`): bytes on the
    job's device and on the host; None where it cannot tell."""

    device: str  # "cpu", "cuda:0" ...

    def free_device(self) -> Optional[int]:
        """Bytes the job can still allocate on its device (None on the CPU or unknown)."""

    def free_host(self) -> Optional[int]:
        """Bytes the process can still allocate on the host (None: unknown)."""


class UnknownMemory:
    """A :class:`FreeMemory` that cannot tell: nothing is refused for size."""

    device = "cpu"

    def free_device(self) -> None:
        return None

    def free_host(self) -> None:
        return None


class PrepareRunDir(Protocol):
    """Creates or reopens a run directory and records its config (refusing a clash);
    with ``check_only`` it only refuses, writing nothing."""

    def __call__(self, run_dir: Path, config: dict, *, resume: bool, compare_keys: tuple = (),
                 check_only: bool = False) -> Path: ...


class MemoryProbe(Protocol):
    """Measures the memory of one engine iteration on the benchmark's seeded problem.

    ``max_rss_gb`` is the address space (GiB) an isolated point may map beyond its start
    (None: no limit); the run records it.
    """

    max_rss_gb: Optional[float]

    def isolated(self, settings: "BenchSettings") -> bool:
        """Each point runs in a fresh process (its resident-set figures are its own)."""

    def measure(self, settings: "BenchSettings", engine: str, steps: int) -> "MemoryPoint":
        """One point; running out of memory is a point with status ``OOM``, not an error."""


class Timed(Protocol):
    """One timed iteration: its wall time and its image gradient (opaque)."""

    seconds: float
    grad: Any


class SpeedSession(Protocol):
    """The benchmark's problem, built once, on which iterations are timed."""

    def run(self, engine: str, steps: int, precision: str, channels_last: bool) -> Optional[Timed]:
        """Time one iteration; None when it ran out of memory (freed again)."""

    def relative_error(self, grad: Any, reference: Any) -> float:
        """``||grad - reference|| / ||reference||``."""


class SpeedProbe(Protocol):
    """Builds the speed benchmark's problem and checks its options."""

    def check_precision(self, precision: str) -> None:
        """Refuse (BenchError) a precision the compute does not offer."""

    def available_memory_gb(self) -> Optional[float]:
        """The host's available memory, None where unknown."""

    def session(self, settings: "BenchSettings", memory_limit_gb: Optional[float]
                ) -> AbstractContextManager[SpeedSession]:
        """The built problem; inside it the process may map at most ``memory_limit_gb``
        GiB more than on entry (None: no limit)."""


class MemoryPlot(Protocol):
    """Draws the memory benchmark (MiB against steps per engine) into a PNG file."""

    def __call__(self, result: "MemoryResult", path: Path) -> Path: ...


class SpeedPlot(Protocol):
    """Draws the speed benchmark (seconds per iteration of each configuration) into a PNG file."""

    def __call__(self, result: "SpeedResult", path: Path) -> Path: ...


class PrepareTask(Protocol):
    """One resumable unit of a prepare job."""

    @property
    def label(self) -> str: ...


class ImageSourceInfo(Protocol):
    """A source of real images being prepared."""

    format: str

    def close(self) -> None: ...


class PreparedOutput(Protocol):
    """Builds (or resumes) a prepared store task by task.

    ``plan`` records the job: ``source``, ``image_size``, ``chunk``, ``block``,
    ``counts`` ({"train": n, "test": n}) among others.
    """

    plan: Mapping[str, Any]
    num_classes: int
    resumed: bool
    already_complete: bool

    def tasks(self) -> list: ...

    def is_done(self, task: Any) -> bool: ...

    def run(self, task: Any) -> None: ...

    def finalize(self) -> dict:
        """Finish the store; returns its statistics (``mean``, ``std`` per channel)."""

    def close(self) -> None: ...


class PrepareSources(Protocol):
    """Opens real-image sources by layout and prepared stores to write them into."""

    def open(self, src: str | Path, fmt: Optional[str], image_size: int) -> ImageSourceInfo:
        """The source at ``src`` in layout ``fmt`` (detected when None); PrepareError when
        the folder is missing or its layout unknown."""

    def writer(self, dest: str, source: ImageSourceInfo, *, chunk: int, block: Optional[int]) -> PreparedOutput:
        """The prepared store at ``dest`` (created, resumed or found complete)."""


class StoreInspector(Protocol):
    """Reads what a store is (attributes and shapes, never the big arrays)."""

    def prepared(self, url: str) -> Optional[dict]:
        """Facts of a prepared real-data store (``attrs``, ``num_classes``, ``image_shape``,
        ``num_train``, ``num_test``, ``class_counts``, ``size_bytes``), None for other stores."""

    def describe(self, url: str) -> dict:
        """The summary of a trajectory or synthetic-set store (``kind`` says which)."""


class StoredSet(Protocol):
    """A synthetic set as read from its store (read-only)."""

    images: Images
    labels: Labels
    soft_labels: Optional[Labels]
    lr: Optional[float]
    ipc: int
    labels_kind: str
    attrs: dict


class ReadSet(Protocol):
    """Reads the final set of a synthetic store."""

    def __call__(self, url: str) -> StoredSet: ...


class DistillOutcome(Protocol):
    """How a distillation ended (see ``tesla.app.services.distill.DistillResult``)."""

    status: str
    iterations: int
    loss: Optional[float]
    lr: float


class DistillStage(Protocol):
    """Distils ``cfg`` from the experts at ``trajectories`` into ``run_dir`` (resuming what
    is there) and returns how it ended and the final set."""

    def __call__(self, cfg: "DistillConfig", model: "ModelConfig", data: RealData, trajectories: str, run_dir: Path,
                 sink: EventSink, cancel: Optional[Cancel]) -> tuple[DistillOutcome, Optional[StoredSet]]: ...


class ExportImages(Protocol):
    """Writes one picture per class of a set (un-whitened, upscaled, named) and an
    overview into a folder, with real images of each class from ``data`` when given."""

    def __call__(self, syn: StoredSet, folder: Path, data: Optional[DataSource] = None) -> None: ...


class SetExporter(Protocol):
    """Writes a stored set for other tools (the published ``.pt`` layout, DD-Ranking's
    files) and for people (pictures per class, un-whitened, upscaled and named); each
    returns the paths written."""

    def published(self, syn: StoredSet, folder: str) -> list[str]: ...

    def png_grid(self, syn: StoredSet, folder: str, per_row: int) -> list[str]: ...

    def ddranking(self, syn: StoredSet, folder: str, dataset: Optional[str]) -> list[str]:
        """``images.pt``, ``labels.pt``, ``lr.pt``, ``meta.json`` and ``README.md`` as
        DD-Ranking's evaluators load them (``dataset``: its name; None: the set's)."""


class QualityPlot(Protocol):
    """Draws ``tesla bench quality``'s table (:class:`~tesla.domain.quality.TableRow` per
    recipe and architecture) as bars, random real as the reference, into a PNG file."""

    def __call__(self, rows: Sequence[Any], baseline: str, title: str, path: Path) -> Path: ...


class ResultsChart(Protocol):
    """Draws evaluation scores as a bar chart into a picture file; returns its path."""

    def __call__(self, scores: Sequence[Any], path: Path, *, title: str, chance: Optional[float] = None) -> Path: ...


# --- a whole run (``tesla run``) -----------------------------------------------------------------


class SizedData(DataSource, Protocol):
    """Real images that say how many there are (what a run is sized by)."""

    num_train: int
    num_test: int


class MachineSpeed(Protocol):
    """How fast this machine trains a network."""

    def seconds_per_image(self, model: "ModelConfig") -> float:
        """Seconds of one image's forward and backward pass (with DSA) through ``model``."""


class FindData(Protocol):
    """Says what a data argument names: ``(kind, path)``, kind ``demo``, ``cifar10``,
    ``cifar100``, ``prepared`` or a source to prepare (``imagefolder``, ``tiny-imagenet``,
    ``imagenet64``); DataError when it names nothing readable."""

    def __call__(self, data: str) -> tuple[str, str]: ...


class PrepareData(Protocol):
    """Converts a source folder into a prepared store (resumable); returns a summary
    with ``complete`` (False when ``should_stop`` stopped it)."""

    def __call__(self, src: str, dest: str, *, fmt: Optional[str], image_size: int, sink: EventSink,
                 should_stop: Callable[[], bool]) -> Any: ...
