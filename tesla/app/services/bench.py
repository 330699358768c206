"""Memory and speed benchmarks of the three gradient engines (issue 6, the paper's Table 4).

One *point* is one distillation iteration of an engine at a number of student steps on
a synthetic problem of a stated size (model, image shape, classes, IPC, batch): a
seeded network as the start, a nearby target, random images, class-id labels and, by
default, replayed DSA. Nothing is read from disk, so the figures depend only on the
settings.

``memory``
    On CUDA each point runs in this process and reports the caching allocator's peak
    above what was allocated before the iteration (``reset_peak_memory_stats`` /
    ``max_memory_allocated``). On a CPU there is no such counter, so each point runs in a
    fresh child process (``python -m tesla.app.services.bench _point '<json>'``) that
    reports two figures: the bytes autograd saved for backward at their peak
    (:class:`~tesla.adapters.torch.saved.SavedTensorsMeter`, device independent) and
    its peak resident set (``ru_maxrss``) above its resident set just before the
    iteration (glibc told to mmap blocks over 64 KiB, so freed memory leaves the RSS). A fresh child per point means one point's allocator cache cannot hide the
    next one's cost. A point that runs out of memory (CUDA OOM, ``MemoryError``, an
    allocation refused under ``max_rss_gb``'s ``RLIMIT_AS``, a child killed) is recorded
    as ``OOM``, not raised.

``speed``
    Seconds per iteration of every configuration, interleaved in one run (A B C A B C
    ...) after warm-up rounds, so background load hits all of them alike and the ratios
    to ``unrolled`` stay meaningful on a busy machine; medians over ``repeats``. Besides
    the engines it can time ``exact-remake`` (``exact`` keeping about 2 sqrt(N) weight
    vectors and remaking the rest) and ``tesla-batched`` (:class:`BatchedTorchCompute` with the
    second pass in chunks of k) and, when asked, TF32 / bf16 / channels-last variants,
    each with the relative error of its image gradient against the same engine in fp32.
    On a CPU the rounds run under an address-space limit (:func:`host_memory_limit`, by
    default 90% of the available memory): an engine that would exhaust the host, as
    ``unrolled`` does at the paper's ConvNet and 50 steps on a 24 GiB machine, becomes an
    ``OOM`` row instead of a run the kernel's OOM killer ends with nothing written.

Both publish ``RunStarted``, ``Progress`` (one per point), ``Warning`` (per OOM) and
``RunFinished`` events; the CLI renders the returned rows and writes CSV and PNG.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import attrs
import torch

from tesla.domain import events, matching, sampling
from tesla.domain.config import ModelConfig, to_dict
from tesla.domain.errors import UserError
from tesla.domain.ports import EventSink, NullSink

ENGINES = ("unrolled", "tesla", "exact")
BENCH_ENGINES = ENGINES + ("tesla-batched", "exact-remake")
BASE_ENGINE = {"tesla-batched": "tesla", "exact-remake": "exact"}
DEFAULT_STEPS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
OOM = "OOM"


class BenchError(UserError):
    """A benchmark cannot run as asked (the message names the fix)."""


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

    def to_json(self) -> str:
        d = attrs.asdict(self, recurse=False)
        d["model"] = to_dict(self.model)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "BenchSettings":
        d = json.loads(text)
        d["model"] = ModelConfig(**d["model"])
        return cls(**d)


@attrs.frozen
class Problem:
    """A built point: functional model, start/target snapshots, the set, augmentation."""

    view: Any
    start: torch.Tensor
    target: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    augment: Any


def build_problem(s: BenchSettings) -> Problem:
    """The seeded synthetic problem of ``s`` on ``s.device`` (float32)."""
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model

    device = torch.device(s.device)
    model = build_model(s.model, seed=s.seed).to(device)
    view = FlatView(model)
    gen = torch.Generator().manual_seed(s.seed)
    start = view.flatten()
    # a target the expert would reach: a small seeded move away from the start
    target = start + (0.01 * torch.randn(start.shape, generator=gen)).to(device)
    n = s.ipc * s.model.num_classes
    shape = (n, s.model.channels, s.model.image_size, s.model.image_size)
    images = torch.randn(shape, generator=gen).to(device)
    labels = torch.arange(s.model.num_classes).repeat_interleave(s.ipc).to(device)
    augment = None
    if s.dsa:
        from tesla.adapters.torch.augment import DSA

        augment = DSA()
    return Problem(view=view, start=start, target=target, images=images, labels=labels, augment=augment)


def plan_steps(s: BenchSettings, steps: int) -> list:
    """The step plan (batches, augmentation seeds) of ``steps`` steps; seeded by ``s.seed``."""
    n = s.ipc * s.model.num_classes
    return sampling.make_steps(n, steps, s.batch_syn, random.Random(s.seed), augment=s.dsa)


def run_iteration(p: Problem, s: BenchSettings, engine: str, steps: int, *, precision: str = "fp32",
                  channels_last: bool = False) -> tuple[float, torch.Tensor]:
    """One iteration of ``engine`` (``tesla``, ``exact``, ``unrolled``, ``tesla-batched``, ``exact-remake``).

    Returns:
        (loss, dL/dimages (N, C, H, W)).
    """
    from tesla.adapters.torch.batched import BatchedTorchCompute

    if engine not in BENCH_ENGINES:
        raise BenchError(f"engine must be one of {', '.join(BENCH_ENGINES)} (got {engine!r})")
    compute = BatchedTorchCompute(p.view, p.images, p.labels, augment=p.augment, precision=precision,
                                  channels_last=channels_last,
                                  mode="vmap" if engine == "tesla-batched" else "loop")
    base = BASE_ENGINE.get(engine, engine)
    extra = {"chunk": s.chunk} if engine == "tesla-batched" else {}
    if engine == "exact-remake":
        extra = {"segment": matching.sqrt_segment(steps)}
    out = matching.match(compute, p.start, p.target, s.lr, plan_steps(s, steps), base, **extra)
    return out.loss, compute.data_grad()[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "not enough memory" in text)


# --- memory -----------------------------------------------------------------------------------

@attrs.frozen
class MemoryPoint:
    """One (engine, steps) measurement; byte figures are None where not measured or OOM.

    Attributes:
        status: ``ok`` or ``OOM``.
        device_peak: CUDA: allocator peak above the bytes allocated before the iteration.
        saved_peak: CPU: peak bytes saved for backward.
        rss_peak: CPU: the child's peak resident set (ru_maxrss).
        rss_delta: CPU: ``rss_peak`` minus the resident set just before the iteration.
        seconds: the iteration's wall time (one run; see ``speed`` for timings).
    """

    engine: str
    steps: int
    status: str
    device_peak: Optional[int] = None
    saved_peak: Optional[int] = None
    rss_peak: Optional[int] = None
    rss_delta: Optional[int] = None
    seconds: Optional[float] = None

    @property
    def primary(self) -> Optional[int]:
        """The figure the table shows: the device peak on CUDA, saved bytes on CPU."""
        return self.device_peak if self.device_peak is not None else self.saved_peak


def measure_point_here(s: BenchSettings, engine: str, steps: int) -> MemoryPoint:
    """Measure one point in this process (what a CPU child runs; CUDA points run here too)."""
    from tesla.adapters.torch.memory import host_rss, peak_rss
    from tesla.adapters.torch.saved import SavedTensorsMeter

    device = torch.device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        p = build_problem(s)
        if device.type == "cuda":
            _sync(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            run_iteration(p, s, engine, steps)
            _sync(device)
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(device) - before
            return MemoryPoint(engine, steps, "ok", device_peak=int(peak), seconds=seconds)
        rss_before = host_rss()
        t0 = time.perf_counter()
        with SavedTensorsMeter() as meter:
            run_iteration(p, s, engine, steps)
        seconds = time.perf_counter() - t0
        rss = peak_rss()
        return MemoryPoint(engine, steps, "ok", saved_peak=int(meter.peak), rss_peak=rss,
                           rss_delta=max(0, rss - rss_before), seconds=seconds)
    except BaseException as e:  # noqa: BLE001 - an OOM is a result here, anything else is not
        if not _is_oom(e):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return MemoryPoint(engine, steps, OOM)


def measure_point_child(s: BenchSettings, engine: str, steps: int, *, max_rss_gb: Optional[float] = None,
                        timeout: Optional[float] = None) -> MemoryPoint:
    """Measure one point in a fresh ``python -m tesla.app.services.bench _point`` child."""
    args = [sys.executable, "-m", "tesla.app.services.bench", "_point", s.to_json(), engine, str(steps)]
    if max_rss_gb is not None:
        args.append(str(max_rss_gb))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])  # the checkout holding the tesla package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # glibc keeps freed heap pages and fragments under many out-of-order frees, which
    # reads as RSS growth that no tensor holds (exact: +30% from 10 to 100 steps);
    # serving every block over 64 KiB by mmap returns freed activations to the OS, so
    # the child's peak RSS tracks what the iteration really holds at once
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {engine} point at {steps} steps ran past {timeout} s: use fewer --steps or a "
                         "smaller model") from None
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        # killed by the kernel (SIGKILL from the OOM killer) or out of address space
        # under a limit any failure is the limit's doing (allocations, thread stacks, mmaps)
        if proc.returncode < 0 or "MemoryError" in proc.stderr or max_rss_gb is not None:
            return MemoryPoint(engine, steps, OOM)
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"the {engine} point at {steps} steps failed in its child process: {tail[0]}")
    d = json.loads(line)
    return MemoryPoint(**d)


def _virtual_size() -> int:
    """This process's mapped address space in bytes (/proc/self/statm), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def available_memory_gb() -> Optional[float]:
    """The host's available memory in GiB (``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def host_memory_limit(extra_gb: Optional[float]) -> Iterator[None]:
    """While inside, this process may map at most ``extra_gb`` GiB more than on entry.

    An allocation past the limit then fails with a catchable error (an ``OOM`` row) instead
    of the kernel's OOM killer ending the whole run and every row timed so far. The soft
    limit is restored on exit. None, or a platform without ``resource``, limits nothing.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        resource = None
    size = _virtual_size()
    if extra_gb is None or resource is None or size == 0:
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + int(extra_gb * 2**30)
    if old[1] != resource.RLIM_INFINITY:
        limit = min(limit, old[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def _point_main(argv: Sequence[str]) -> int:
    """Child entry: ``_point <settings json> <engine> <steps> [max_rss_gb]``; prints one JSON line."""
    s = BenchSettings.from_json(argv[0])
    engine, steps = argv[1], int(argv[2])
    limit = float(argv[3]) if len(argv) > 3 else None
    if limit is not None:
        # load every library first: a shared object that cannot be mapped under the limit
        # fails with unrelated errors, and that is not what the limit is about
        import tesla.adapters.torch.augment  # noqa: F401
        import tesla.adapters.torch.batched  # noqa: F401
        import tesla.adapters.torch.memory  # noqa: F401
        import tesla.adapters.torch.models  # noqa: F401
        import tesla.adapters.torch.saved  # noqa: F401

        if s.threads:
            torch.set_num_threads(s.threads)
        torch.ones(256, 256) @ torch.ones(256, 256)  # start the thread pool (its stacks) before the limit
    # the limit counts from what is mapped now: the iteration, not the libraries torch maps at import
    with host_memory_limit(limit):
        try:
            point = measure_point_here(s, engine, steps)
        except MemoryError:
            point = MemoryPoint(engine, steps, OOM)
    print(json.dumps(attrs.asdict(point)), flush=True)
    return 0


@attrs.frozen
class MemoryResult:
    settings: BenchSettings
    points: tuple  # MemoryPoint, in (engine, steps) order
    measure: str  # what ``primary`` means: "device peak" or "saved for backward"
    isolated: bool = False  # CPU points ran in fresh children (their RSS is per point)

    def table(self) -> dict:
        """{engine: {steps: bytes or 'OOM'}} of the primary measure."""
        out: dict = {}
        for p in self.points:
            out.setdefault(p.engine, {})[p.steps] = OOM if p.status == OOM else p.primary
        return out


def memory_bench(s: BenchSettings, *, steps: Sequence[int] = DEFAULT_STEPS, engines: Sequence[str] = ENGINES,
                 max_rss_gb: Optional[float] = None, sink: EventSink | None = None,
                 cancel: Any = None, child_timeout: Optional[float] = None,
                 measure: Optional[Callable[..., MemoryPoint]] = None) -> MemoryResult:
    """Peak memory of one iteration per (engine, steps); see the module docstring.

    Args:
        s: the problem.
        steps: numbers of student steps (columns of the table).
        engines: rows, from ``unrolled``, ``tesla``, ``exact``, ``tesla-batched``, ``exact-remake``.
        max_rss_gb: CPU only: each child may map at most this many GiB beyond what it
            maps after its imports (RLIMIT_AS); a point that needs more is ``OOM``.
        cancel: a ``threading.Event``; when set, the remaining points are skipped.
        measure: override of the per-point measurement (tests).
    """
    sink = sink or NullSink()
    _check(engines, steps)
    device = torch.device(s.device)
    isolated = measure is None and device.type != "cuda"
    if measure is None:
        if device.type == "cuda":
            measure = lambda s_, e, n: measure_point_here(s_, e, n)  # noqa: E731
        else:
            measure = lambda s_, e, n: measure_point_child(s_, e, n, max_rss_gb=max_rss_gb,  # noqa: E731
                                                            timeout=child_timeout)
    total = len(steps) * len(engines)
    sink.emit(events.RunStarted(job="bench", config={"bench": "memory", "settings": json.loads(s.to_json()),
                                                     "steps": list(steps), "engines": list(engines),
                                                     "max_rss_gb": max_rss_gb}, total=total))
    points = []
    status = "completed"
    for n in steps:  # steps outer, engines inner: a slow unrolled tail does not starve the others
        for engine in engines:
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            point = measure(s, engine, n)
            points.append(point)
            if point.status == OOM:
                sink.emit(events.Warning(message=f"{engine} ran out of memory at {n} steps"))
            sink.emit(events.Progress(label="bench memory", done=len(points), total=total))
        if status == "cancelled":
            break
    order = {e: i for i, e in enumerate(engines)}
    points.sort(key=lambda p: (order[p.engine], p.steps))
    result = MemoryResult(settings=s, points=tuple(points),
                          measure="device peak" if device.type == "cuda" else "saved for backward",
                          isolated=isolated)
    sink.emit(events.RunFinished(status=status, summary={"memory": {e: {str(k): v for k, v in row.items()}
                                                                     for e, row in result.table().items()}}))
    return result


def _check(engines: Sequence[str], steps: Sequence[int]) -> None:
    bad = [e for e in engines if e not in BENCH_ENGINES]
    if bad:
        raise BenchError(f"unknown engine {bad[0]!r}: use {', '.join(BENCH_ENGINES)}")
    if not engines:
        raise BenchError("no engine to benchmark: pass e.g. --engines unrolled,tesla,exact")
    if not steps or any(int(n) < 1 for n in steps):
        raise BenchError("steps must be a list of integers >= 1, e.g. --steps 1,10,50")


def write_memory_csv(result: MemoryResult, path: Path) -> Path:
    """One row per point: engine, steps, status and every byte figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["engine", "steps", "status", "device_peak", "saved_peak", "rss_peak", "rss_delta", "seconds"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for p in result.points:
            w.writerow({k: ("" if v is None else v) for k, v in attrs.asdict(p).items()})
    return path


def plot_memory(result: MemoryResult, path: Path) -> Path:
    """Memory (MiB) against steps, one line per engine; OOM points marked on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = result.measure != "device peak"
    fig, axes = plt.subplots(1, 2 if cpu else 1, figsize=(11 if cpu else 6, 4), squeeze=False)
    rss_title = ("peak RSS above start (a child per point)" if result.isolated
                 else "peak RSS above start (in process: cumulative)")
    panels = [("primary", result.measure)] + ([("rss_delta", rss_title)] if cpu else [])
    for ax, (field, title) in zip(axes[0], panels):
        for engine in dict.fromkeys(p.engine for p in result.points):
            pts = [p for p in result.points if p.engine == engine]
            ok = [(p.steps, (p.primary if field == "primary" else getattr(p, field)) / 2**20) for p in pts
                  if p.status != OOM]
            line = ax.plot([a for a, _ in ok], [b for _, b in ok], marker="o", label=engine)
            oom = [p.steps for p in pts if p.status == OOM]
            if oom:
                ax.plot(oom, [0] * len(oom), "x", color=line[0].get_color(), markersize=10,
                        label=f"{engine} OOM")
        ax.set_xlabel("matching steps N")
        ax.set_ylabel("MiB")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    m = result.settings.model
    fig.suptitle(f"{m.name} width {m.width}, {m.channels}x{m.image_size}x{m.image_size}, {m.num_classes} classes, "
                 f"IPC {result.settings.ipc}, batch {result.settings.batch_syn or 'all'} ({result.settings.device})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- speed ------------------------------------------------------------------------------------

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


def speed_bench(s: BenchSettings, *, steps: Sequence[int] = (50,), engines: Sequence[str] = BENCH_ENGINES,
                repeats: int = 5, warmup: int = 1, precisions: Sequence[str] = ("fp32",),
                channels_last: bool = False, max_memory_gb: Optional[float] = None,
                sink: EventSink | None = None, cancel: Any = None,
                clock: Callable[[], float] = time.perf_counter) -> SpeedResult:
    """Seconds per iteration, interleaved (A B C A B C ...); see the module docstring.

    Args:
        precisions: from ``fp32``, ``tf32``, ``bf16``; every engine runs in each.
        channels_last: also run every (engine, precision) with channels-last images.
        repeats, warmup: timed and untimed rounds (every configuration once per round).
        max_memory_gb: CPU: GiB the timed iterations may map beyond the built problem
            (:func:`host_memory_limit`); default 90% of the host's available memory, so an
            engine that would exhaust it (``unrolled`` at many steps) is an ``OOM`` row
            rather than the OOM killer ending the run. Ignored on CUDA (its OOM is an error
            torch raises).
    """
    from tesla.adapters.torch.batched import check_precision

    sink = sink or NullSink()
    _check(engines, steps)
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    for pr in precisions:
        try:
            check_precision(pr)
        except ValueError as e:
            raise BenchError(str(e)) from None
    device = torch.device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    p = build_problem(s)
    layouts = (False, True) if channels_last else (False,)
    configs = [(e, pr, cl, n) for n in steps for e in engines for pr in precisions for cl in layouts]
    if not any(pr == "fp32" and not cl for _, pr, cl, _ in configs):
        configs = [(e, "fp32", False, n) for n in steps for e in engines] + configs  # the references
    total = (warmup + repeats) * len(configs)
    sink.emit(events.RunStarted(job="bench", config={"bench": "speed", "settings": json.loads(s.to_json()),
                                                     "steps": list(steps), "engines": list(engines),
                                                     "precisions": list(precisions), "channels_last": channels_last,
                                                     "repeats": repeats, "warmup": warmup}, total=total))
    times: dict = {c: [] for c in configs}
    grads: dict = {}
    failed: set = set()
    limit = None
    if device.type == "cpu":
        if max_memory_gb is not None and not max_memory_gb > 0:
            raise BenchError(f"max_memory_gb must be > 0 (got {max_memory_gb})")
        available = available_memory_gb()
        limit = max_memory_gb if max_memory_gb is not None else (0.9 * available if available else None)
    with host_memory_limit(limit):
        status = _timed_rounds(p, s, configs, warmup, repeats, times, grads, failed, device, sink, cancel, clock,
                               total)
    rows = []
    for c in configs:
        engine, pr, cl, n = c
        med = statistics.median(times[c]) if times[c] else None
        ref_t = times.get(("unrolled", "fp32", False, n))
        ratio = med / statistics.median(ref_t) if med is not None and ref_t else None
        ref_engine = BASE_ENGINE.get(engine, engine)
        ref_g = grads.get((ref_engine, "fp32", False, n))
        err = None
        if c in grads and ref_g is not None:
            err = float((grads[c] - ref_g).norm() / ref_g.norm().clamp_min(1e-30))
        rows.append(SpeedRow(engine=engine, precision=pr, channels_last=cl, steps=n,
                             status=OOM if c in failed else "ok", median=med, times=tuple(times[c]),
                             ratio=ratio, grad_error=err))
    sink.emit(events.RunFinished(status=status, summary={"speed": [
        {"engine": r.label, "steps": r.steps, "median_s": r.median, "ratio_to_unrolled": r.ratio,
         "grad_error": r.grad_error} for r in rows]}))
    return SpeedResult(settings=s, rows=tuple(rows), repeats=repeats, warmup=warmup)


def _timed_rounds(p: Problem, s: BenchSettings, configs: list, warmup: int, repeats: int, times: dict,
                  grads: dict, failed: set, device: torch.device, sink: EventSink, cancel: Any,
                  clock: Callable[[], float], total: int) -> str:
    """Run every configuration once per round; fills ``times``, ``grads`` and ``failed``."""
    from tesla.adapters.torch.memory import release_host_memory

    done = 0
    status = "completed"
    for r in range(warmup + repeats):
        for c in configs:
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            done += 1
            if c in failed:
                continue
            engine, pr, cl, n = c
            try:
                _sync(device)
                t0 = clock()
                _, g = run_iteration(p, s, engine, n, precision=pr, channels_last=cl)
                _sync(device)
                dt = clock() - t0
            except BaseException as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                failed.add(c)
            if c in failed:
                # outside the handler: its traceback no longer holds the failed iteration's tensors
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                else:
                    release_host_memory()
                sink.emit(events.Warning(message=f"{engine} ({pr}) ran out of memory at {n} steps"))
                continue
            if r >= warmup:
                times[c].append(dt)
            if c not in grads:
                grads[c] = g.detach().float().cpu().clone()
            del g
            sink.emit(events.Progress(label="bench speed", done=done, total=total))
        if status == "cancelled":
            break
    return status


def write_speed_csv(result: SpeedResult, path: Path) -> Path:
    """One row per configuration: medians, ratios, gradient errors and every repeat."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["engine", "precision", "channels_last", "steps", "status", "median_s", "ratio_to_unrolled",
              "grad_error", "chunk", "times_s"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result.rows:
            w.writerow({"engine": r.engine, "precision": r.precision, "channels_last": r.channels_last,
                        "steps": r.steps, "status": r.status, "median_s": "" if r.median is None else r.median,
                        "ratio_to_unrolled": "" if r.ratio is None else r.ratio,
                        "grad_error": "" if r.grad_error is None else r.grad_error,
                        "chunk": result.settings.chunk if r.engine == "tesla-batched" else "",
                        "times_s": " ".join(f"{t:.6f}" for t in r.times)})
    return path


if __name__ == "__main__":  # the CPU memory child: python -m tesla.app.services.bench _point ...
    if len(sys.argv) < 2 or sys.argv[1] != "_point":
        sys.exit("usage: python -m tesla.app.services.bench _point '<settings json>' ENGINE STEPS [MAX_RSS_GB]")
    sys.exit(_point_main(sys.argv[2:]))
