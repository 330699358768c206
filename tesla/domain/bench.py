"""The benchmarks' settings, results and engine names (issue 6, the paper's Table 4).

Pure values shared by the bench service (which loops over points and writes CSV) and
the torch probe that measures them (which may run in a child process and hands a
:class:`MemoryPoint` back as JSON). A bench row names an engine of
:mod:`tesla.domain.engines` with its settings: ``tesla-batched`` is the first-order
engine with pass 2 in chunks of k (on a compute that batches VJPs), ``exact-remake``
the adjoint that remakes its weights; :func:`bench_engine` maps the names through
:func:`~tesla.domain.engines.engine_for`, the one config -> engine mapping.
"""

from __future__ import annotations

import json
import random
from typing import Any, Optional, Sequence

import attrs

from tesla.domain import memory, sampling
from tesla.domain.config import ModelConfig, to_dict
from tesla.domain.engines import NAMES as ENGINES
from tesla.domain.engines import Engine, engine_for
from tesla.domain.errors import BenchError

BENCH_ENGINES = ENGINES + ("tesla-batched", "exact-remake")
BASE_ENGINE = {"tesla-batched": "tesla", "exact-remake": "exact"}  # the fp32 reference of a variant
DEFAULT_STEPS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
OOM = "OOM"


@attrs.frozen
class BenchSettings:
    """The problem one point solves.

    Fields:
        model: the student network (default ConvNet for CIFAR-10: 3x32x32, 10 classes).
        ipc: synthetic images per class; the set has ``ipc * num_classes`` images.
        batch_syn: images per student step (None: all of them).
        lr: the student lr alpha.
        dsa: replayed DSA augmentation in every step.
        chunk: pass-2 steps per batch for ``tesla-batched``.
        seed: the network, the target, the images and the step plan.
        device: ``cpu``, ``cuda``, ``cuda:N``.
        threads: torch CPU threads (None: torch's default).
        micro_batch: compute each step in pieces of at most this many images (None: whole
            batches); the memory bench's batch axis sets it per point.
        set_on: ``device`` (the set beside the network) or ``host`` (each step gathers its
            rows to the device; on a CPU the same memory).
    """

    model: ModelConfig = attrs.field(factory=ModelConfig)
    ipc: int = 10
    batch_syn: Optional[int] = None
    lr: float = 0.01
    dsa: bool = True
    chunk: int = 10
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    micro_batch: Optional[int] = None
    set_on: str = "device"

    @property
    def num_images(self) -> int:
        return self.ipc * self.model.num_classes

    @property
    def batch(self) -> int:
        """Images per student step."""
        return self.batch_syn or self.num_images

    @property
    def on_cuda(self) -> bool:
        return self.device.split(":")[0] == "cuda"

    def check(self) -> "BenchSettings":
        """Refuse settings no point can run with (BenchError naming the option)."""
        if self.batch_syn is not None and self.batch_syn > self.num_images:
            raise BenchError(f"--batch-syn {self.batch_syn} is larger than the synthetic set ({self.num_images} "
                             "images): lower it")
        if self.chunk < 1:
            raise BenchError(f"--chunk must be >= 1 (got {self.chunk})")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise BenchError(f"--micro-batch must be >= 1 (got {self.micro_batch})")
        if self.set_on not in ("device", "host"):
            raise BenchError(f"--set-on must be device or host (got {self.set_on!r})")
        return self

    def to_json(self) -> str:
        d = attrs.asdict(self, recurse=False)
        d["model"] = to_dict(self.model)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "BenchSettings":
        d = json.loads(text)
        d["model"] = ModelConfig(**d["model"])
        return cls(**d)


def check_request(engines: tuple, steps: tuple) -> None:
    """Refuse unknown engines and step counts below one."""
    bad = [e for e in engines if e not in BENCH_ENGINES]
    if bad:
        raise BenchError(f"unknown engine {bad[0]!r}: use {', '.join(BENCH_ENGINES)}")
    if not engines:
        raise BenchError("no engine to benchmark: pass e.g. --engines unrolled,tesla,exact")
    if not steps or any(int(n) < 1 for n in steps):
        raise BenchError("steps must be a list of integers >= 1, e.g. --steps 1,10,50")


def bench_engine(name: str, chunk: int) -> Engine:
    """The engine value of a bench row (``tesla-batched``: pass 2 in chunks of ``chunk``)."""
    if name not in BENCH_ENGINES:
        raise BenchError(f"engine must be one of {', '.join(BENCH_ENGINES)} (got {name!r})")
    if name == "tesla-batched":
        return engine_for("tesla", chunk=chunk)
    if name == "exact-remake":
        return engine_for("exact", remake_weights=True)
    return engine_for(name)


def batches_vjps(name: str) -> bool:
    """Whether the row's compute stacks its pass-2 VJPs (vmap) rather than looping."""
    return name == "tesla-batched"


def plan_steps(s: BenchSettings, steps: int) -> list:
    """The step plan (batches, augmentation seeds) of ``steps`` steps; seeded by ``s.seed``."""
    return sampling.make_steps(s.num_images, steps, s.batch_syn, random.Random(s.seed), augment=s.dsa)


def batch_axis(s: BenchSettings, batches: Sequence[Optional[int]] = (),
               micro_batches: Sequence[Optional[int]] = ()) -> list:
    """The (batch_syn, micro_batch) pairs of the memory bench's batch axis, in order.

    Empty sequences mean the settings' own value. A micro-batch is cut to its batch (a
    piece cannot hold more images than the step) and repeated pairs are dropped, so
    ``--batch-syn 100,500 --micro-batch 500,100,50`` measures (100, 100), (100, 50),
    (500, 500), (500, 100), (500, 50). Refuses (BenchError) a batch larger than the set
    or a micro-batch below one.
    """
    pairs: list = []
    for b in tuple(batches) or (s.batch_syn,):
        batch = attrs.evolve(s, batch_syn=b).check().batch
        for m in tuple(micro_batches) or (s.micro_batch,):
            if m is not None and m < 1:
                raise BenchError(f"--micro-batch must be >= 1 (got {m})")
            pair = (b, None if m is None else min(m, batch))
            if pair not in pairs:
                pairs.append(pair)
    return pairs


@attrs.frozen
class MemoryPoint:
    """One (engine, steps, batch_syn, micro_batch) measurement; byte figures are None
    where not measured or OOM.

    Attributes:
        status: ``ok`` or ``OOM``.
        device_peak: CUDA: allocator peak above the bytes allocated before the iteration.
        saved_peak: CPU: peak bytes saved for backward.
        rss_peak: CPU: the child's peak resident set (ru_maxrss).
        rss_delta: CPU: ``rss_peak`` minus the resident set just before the iteration.
        seconds: the iteration's wall time (one run; see ``speed`` for timings).
        batch_syn: images per step (None: the whole set).
        micro_batch: images per piece of a step (None: whole batches).
    """

    engine: str
    steps: int
    status: str
    device_peak: Optional[int] = None
    saved_peak: Optional[int] = None
    rss_peak: Optional[int] = None
    rss_delta: Optional[int] = None
    seconds: Optional[float] = None
    batch_syn: Optional[int] = None
    micro_batch: Optional[int] = None

    @property
    def primary(self) -> Optional[int]:
        """The figure the table shows: the device peak on CUDA, saved bytes on CPU."""
        return self.device_peak if self.device_peak is not None else self.saved_peak

    def value(self, field: str = "primary") -> Any:
        """``primary`` or another byte field; ``OOM`` for a point that ran out of memory."""
        if self.status == OOM:
            return OOM
        return self.primary if field == "primary" else getattr(self, field)


@attrs.frozen
class MemoryResult:
    settings: BenchSettings
    points: tuple  # MemoryPoint, in (engine, batch_syn, micro_batch, steps) order
    measure: str  # what ``primary`` means: "device peak" or "saved for backward"
    isolated: bool = False  # CPU points ran in fresh children (their RSS is per point)

    @property
    def pairs(self) -> list:
        """The (batch_syn, micro_batch) pairs measured, in order."""
        return list(dict.fromkeys((p.batch_syn, p.micro_batch) for p in self.points))

    def batch_of(self, p: MemoryPoint) -> int:
        return p.batch_syn or self.settings.num_images

    def label(self, p: MemoryPoint) -> str:
        """A row's name: the engine, with its batch and micro-batch when the batch axis has more than one pair."""
        if len(self.pairs) <= 1:
            return p.engine
        micro = "whole" if p.micro_batch is None else str(p.micro_batch)
        return f"{p.engine} batch {self.batch_of(p)} micro {micro}"

    def table(self) -> dict:
        """{row label: {steps: bytes or 'OOM'}} of the primary measure (label: :meth:`label`)."""
        out: dict = {}
        for p in self.points:
            out.setdefault(self.label(p), {})[p.steps] = p.value()
        return out


@attrs.frozen
class PaperMemory:
    """A memory figure the TESLA paper reports (Table 5: one NVIDIA A6000, whole iteration).

    Attributes:
        name: the setting, as the paper's table names it.
        model, ipc, batch_syn, steps: the setting (steps: the paper's matching steps).
        engine: our engine that computes what the paper's method did.
        gigabytes: the paper's figure, in GB as printed.
    """

    name: str
    model: ModelConfig
    ipc: int
    batch_syn: int
    steps: int
    engine: str
    gigabytes: float


PAPER_MEMORY = (
    PaperMemory("ImageNet-1K IPC 50, TESLA", ModelConfig(depth=4, width=128, image_size=64, num_classes=1000), 50, 500,
                100, "tesla", 13.9),
    PaperMemory("ImageNet-1K IPC 50, MTT", ModelConfig(depth=4, width=128, image_size=64, num_classes=1000), 50, 500,
                100, "unrolled", 79.9),
    PaperMemory("CIFAR-100 IPC 50, TESLA", ModelConfig(width=128, num_classes=100), 50, 100, 50, "tesla", 3.6),
    PaperMemory("CIFAR-100 IPC 50, MTT", ModelConfig(width=128, num_classes=100), 50, 100, 50, "unrolled", 17.1),
)


def paper_figures(result: MemoryResult) -> list:
    """The :data:`PAPER_MEMORY` figures whose setting (network, IPC, batch) the result measured."""
    s = result.settings
    batches = {result.batch_of(p) for p in result.points}
    return [f for f in PAPER_MEMORY if f.model == s.model and f.ipc == s.ipc and f.batch_syn in batches]


def set_bytes(s: BenchSettings, *, itemsize: int = 4) -> int:
    """Bytes of the synthetic set a distillation keeps: images, gradient and momentum (float32)."""
    return memory.set_bytes(s.num_images, s.model.channels * s.model.image_size ** 2, itemsize=itemsize)


@attrs.frozen
class SpeedRow:
    """Timings of one configuration.

    Attributes:
        engine: ``unrolled``, ``tesla``, ``exact``, ``tesla-batched`` or ``exact-remake``.
        precision, channels_last: the forward's precision options.
        steps: student steps.
        median, times: seconds per iteration (median and every repeat), or OOM status.
        ratio: median / median of ``unrolled`` fp32 at the same steps (None without it).
        grad_error: ||dX - dX_fp32|| / ||dX_fp32|| against the same engine in fp32 without
            channels-last (0 for that reference itself; for ``tesla-batched`` and
            ``exact-remake``, against ``tesla`` and ``exact``).
    """

    engine: str
    precision: str
    channels_last: bool
    steps: int
    status: str
    median: Optional[float]
    times: tuple
    ratio: Optional[float]
    grad_error: Optional[float]

    @property
    def label(self) -> str:
        extra = "" if self.precision == "fp32" else f" {self.precision}"
        extra += " channels-last" if self.channels_last else ""
        return self.engine + extra


@attrs.frozen
class SpeedResult:
    settings: BenchSettings
    rows: tuple
    repeats: int
    warmup: int
