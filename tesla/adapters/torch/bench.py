"""The benchmarks' measurements on torch: the memory and speed probes of ``tesla bench``.

One *point* is one distillation iteration of an engine at a number of student steps
(in the settings' batch and micro-batch, with the set on the device or in host memory)
on a synthetic problem of a stated size (:class:`~tesla.domain.bench.BenchSettings`): a
seeded network as the start, a nearby target, random images, class-id labels and, by
default, replayed DSA. Nothing is read from disk, so the figures depend only on the
settings. The engine of a row comes from :func:`tesla.domain.bench.bench_engine`.

Memory (:class:`TorchMemoryProbe`)
    On CUDA a point runs in this process and reports the caching allocator's peak above
    what was allocated before the iteration (``reset_peak_memory_stats`` /
    ``max_memory_allocated``). On a CPU there is no such counter, so each point runs in a
    fresh child process (``python -m tesla.adapters.torch.bench _point '<json>'``) that
    reports two figures: the bytes autograd saved for backward at their peak
    (:class:`~tesla.adapters.torch.saved.SavedTensorsMeter`, device independent) and its
    peak resident set (``ru_maxrss``) above its resident set just before the iteration
    (glibc told to mmap blocks over 64 KiB, so freed memory leaves the RSS). A fresh child
    per point means one point's allocator cache cannot hide the next one's cost. A point
    that runs out of memory (CUDA OOM, ``MemoryError``, an allocation refused under
    ``max_rss_gb``'s ``RLIMIT_AS``, a child killed) is a point with status ``OOM``.

Speed (:class:`TorchSpeedProbe`)
    Builds the problem once and times single iterations (synchronising CUDA around them);
    on a CPU the caller's address-space limit (:func:`host_memory_limit`) turns an engine
    that would exhaust the host into a caught allocation failure: ``run`` then frees what
    it can and returns None (an ``OOM`` row) instead of the kernel's OOM killer ending
    the run with nothing written.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import attrs
import torch

from tesla.adapters.torch.batched import BatchedTorchCompute, check_precision
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.domain.bench import OOM, BenchSettings, MemoryPoint, batches_vjps, bench_engine, plan_steps
from tesla.domain.errors import BenchError


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
    device = torch.device(s.device)
    model = build_model(s.model, seed=s.seed).to(device)
    view = FlatView(model)
    gen = torch.Generator().manual_seed(s.seed)
    start = view.flatten()
    # a target the expert would reach: a small seeded move away from the start
    target = start + (0.01 * torch.randn(start.shape, generator=gen)).to(device)
    shape = (s.num_images, s.model.channels, s.model.image_size, s.model.image_size)
    home = torch.device("cpu") if s.set_on == "host" else device  # a host-resident set stays in host memory
    images = torch.randn(shape, generator=gen).to(home)
    labels = torch.arange(s.model.num_classes).repeat_interleave(s.ipc).to(home)
    augment = None
    if s.dsa:
        from tesla.adapters.torch.augment import DSA

        augment = DSA()
    return Problem(view=view, start=start, target=target, images=images, labels=labels, augment=augment)


def budget_micro_batch(s: BenchSettings, budget: int) -> int:
    """The largest micro-batch whose step fits ``budget`` bytes saved for backward, measured
    on the settings' network (two small steps; :func:`tesla.adapters.torch.budget.step_cost`)."""
    from tesla.adapters.torch.budget import step_cost
    from tesla.domain.memory import micro_batch_for

    view = FlatView(build_model(s.model, seed=s.seed).to(torch.device(s.device)))
    shape = (s.model.channels, s.model.image_size, s.model.image_size)
    return micro_batch_for(budget, step_cost(view, shape))


def run_iteration(p: Problem, s: BenchSettings, engine: str, steps: int, *, precision: str = "fp32",
                  channels_last: bool = False) -> tuple[float, torch.Tensor]:
    """One iteration of the bench row ``engine`` (in the settings' micro-batches, with the set
    where they put it); returns (loss, dL/dimages (N, C, H, W))."""
    run = bench_engine(engine, s.chunk)
    where = {"device": s.device} if s.set_on == "host" else {}
    compute = BatchedTorchCompute(p.view, p.images, p.labels, augment=p.augment, precision=precision,
                                  channels_last=channels_last, mode="vmap" if batches_vjps(engine) else "loop",
                                  micro_batch=s.micro_batch, set_on=s.set_on, **where)
    out = run(compute, p.start, p.target, s.lr, plan_steps(s, steps))
    return out.loss, compute.data_grad()[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is running out of memory (CUDA, host, or under an address-space limit)."""
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "not enough memory" in text)


_is_oom = is_oom  # its former name


# --- memory ------------------------------------------------------------------------------------


def measure_point_here(s: BenchSettings, engine: str, steps: int) -> MemoryPoint:
    """Measure one point in this process (what a CPU child runs; CUDA points run here too)."""
    from tesla.adapters.torch.memory import host_rss, peak_rss
    from tesla.adapters.torch.saved import SavedTensorsMeter

    device = torch.device(s.device)
    axis = {"batch_syn": s.batch_syn, "micro_batch": s.micro_batch}
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
            return MemoryPoint(engine, steps, "ok", device_peak=int(peak), seconds=seconds, **axis)
        rss_before = host_rss()
        t0 = time.perf_counter()
        with SavedTensorsMeter() as meter:
            run_iteration(p, s, engine, steps)
        seconds = time.perf_counter() - t0
        rss = peak_rss()
        return MemoryPoint(engine, steps, "ok", saved_peak=int(meter.peak), rss_peak=rss,
                           rss_delta=max(0, rss - rss_before), seconds=seconds, **axis)
    except BaseException as e:  # noqa: BLE001 - an OOM is a result here, anything else is not
        if not is_oom(e):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return MemoryPoint(engine, steps, OOM, **axis)


def measure_point_child(s: BenchSettings, engine: str, steps: int, *, max_rss_gb: Optional[float] = None,
                        timeout: Optional[float] = None) -> MemoryPoint:
    """Measure one point in a fresh ``python -m tesla.adapters.torch.bench _point`` child."""
    args = [sys.executable, "-m", "tesla.adapters.torch.bench", "_point", s.to_json(), engine, str(steps)]
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
    return MemoryPoint(**json.loads(line))


@attrs.frozen
class TorchMemoryProbe:
    """The :class:`~tesla.domain.ports.MemoryProbe`: CUDA points in this process, CPU
    points in fresh children (or here too with ``in_process``: quick, RSS cumulative).

    Attributes:
        in_process: measure CPU points in this process.
        max_rss_gb: CPU children may map at most this many GiB beyond what they map after
            their imports (RLIMIT_AS); a point that needs more is ``OOM``.
        child_timeout: seconds a child may run (None: no limit).
    """

    in_process: bool = False
    max_rss_gb: Optional[float] = None
    child_timeout: Optional[float] = None

    def isolated(self, settings: BenchSettings) -> bool:
        return not self.in_process and not settings.on_cuda

    def measure(self, settings: BenchSettings, engine: str, steps: int) -> MemoryPoint:
        if not self.isolated(settings):
            return measure_point_here(settings, engine, steps)
        return measure_point_child(settings, engine, steps, max_rss_gb=self.max_rss_gb, timeout=self.child_timeout)


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
        import tesla.adapters.torch.memory  # noqa: F401
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


# --- speed -------------------------------------------------------------------------------------


@attrs.frozen
class Timed:
    seconds: float
    grad: torch.Tensor  # dL/dimages on the CPU, float32


class TorchSpeedSession:
    """The built problem; :meth:`run` times one iteration of a configuration."""

    def __init__(self, problem: Problem, settings: BenchSettings) -> None:
        self.problem, self.settings = problem, settings
        self.device = torch.device(settings.device)

    def run(self, engine: str, steps: int, precision: str, channels_last: bool) -> Optional[Timed]:
        failed = False
        try:
            _sync(self.device)
            t0 = time.perf_counter()
            _, g = run_iteration(self.problem, self.settings, engine, steps, precision=precision,
                                 channels_last=channels_last)
            _sync(self.device)
            seconds = time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - an OOM is a row, anything else is raised
            if not is_oom(e):
                raise
            failed = True
        if failed:
            # outside the handler: its traceback no longer holds the failed iteration's tensors
            self._release()
            return None
        timed = Timed(seconds=seconds, grad=g.detach().float().cpu().clone())
        del g
        return timed

    def _release(self) -> None:
        from tesla.adapters.torch.memory import release_host_memory

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            release_host_memory()

    def relative_error(self, grad: torch.Tensor, reference: torch.Tensor) -> float:
        return float((grad - reference).norm() / reference.norm().clamp_min(1e-30))


class TorchSpeedProbe:
    """The :class:`~tesla.domain.ports.SpeedProbe` on torch."""

    def check_precision(self, precision: str) -> None:
        try:
            check_precision(precision)
        except ValueError as e:
            raise BenchError(str(e)) from None

    def available_memory_gb(self) -> Optional[float]:
        return available_memory_gb()

    @contextlib.contextmanager
    def session(self, settings: BenchSettings, memory_limit_gb: Optional[float]) -> Iterator[TorchSpeedSession]:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        problem = build_problem(settings)
        with host_memory_limit(memory_limit_gb):
            yield TorchSpeedSession(problem, settings)


if __name__ == "__main__":  # the CPU memory child: python -m tesla.adapters.torch.bench _point ...
    if len(sys.argv) < 2 or sys.argv[1] != "_point":
        sys.exit("usage: python -m tesla.adapters.torch.bench _point '<settings json>' ENGINE STEPS [MAX_RSS_GB]")
    sys.exit(_point_main(sys.argv[2:]))
