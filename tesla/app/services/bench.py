"""Memory and speed benchmarks of the gradient engines (issue 6, the paper's Table 4).

The loops over points and rounds, the events, the ratios and the CSV files; what one
point costs is measured through ports (:class:`~tesla.domain.ports.MemoryProbe`,
:class:`~tesla.domain.ports.SpeedProbe`, implemented on torch in
:mod:`tesla.adapters.torch.bench`), and the plot is drawn by a
:class:`~tesla.domain.ports.MemoryPlot`. The settings, result records and engine names
are in :mod:`tesla.domain.bench`.

``memory``
    Peak memory of one iteration per (engine, steps, batch_syn, micro-batch): the device
    allocator's peak on CUDA; on a CPU the bytes saved for backward and the peak resident
    set of a fresh child process per point. Steps are the outer loop, then the batch axis
    (:func:`~tesla.domain.bench.batch_axis`), engines the inner one, so a slow
    ``unrolled`` tail does not starve the others; a point that runs out of memory is an
    ``OOM`` cell and a Warning event. :func:`memory_summary` states the targets as
    ratios (growth with the steps from the first point, the micro-batch's share of the
    whole batch, growth with the batch at a fixed micro-batch) and
    :func:`paper_comparison` sets a measured row beside the paper's figure where the
    settings are the paper's.

``speed``
    Seconds per iteration of every configuration, interleaved in one run (A B C A B C
    ...) after warm-up rounds, so background load hits all of them alike and the ratios
    to ``unrolled`` stay meaningful on a busy machine; medians over ``repeats``. Besides
    the engines it can time ``exact-remake`` and ``tesla-batched`` and, when asked, TF32
    / bf16 / channels-last variants, each with the relative error of its image gradient
    against the same engine in fp32. On a CPU the rounds run under an address-space
    limit (by default 90% of the available memory), so an engine that would exhaust the
    host becomes an ``OOM`` row instead of a run the kernel's OOM killer ends.

Both publish ``RunStarted``, ``Progress`` (one per point, labelled with the job's name
so the display's main bar advances with it), ``Warning`` (per OOM) and ``RunFinished``
events; the CLI renders the returned rows.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

import attr
import attrs

from tesla.domain import events
from tesla.domain.bench import (BASE_ENGINE, BENCH_ENGINES, DEFAULT_STEPS, ENGINES, OOM, BenchSettings, MemoryPoint,
                                MemoryResult, SpeedResult, SpeedRow, batch_axis, check_request, paper_figures,
                                set_bytes)
from tesla.domain.errors import BenchError
from tesla.domain.memory import format_bytes
from tesla.domain.ports import (Cancel, EventSink, MemoryPlot, MemoryProbe, NullSink, SpeedPlot, SpeedProbe,
                                SpeedSession)

__all__ = ["BENCH_ENGINES", "DEFAULT_STEPS", "ENGINES", "OOM", "BenchError", "BenchSettings", "MemoryPoint",
           "MemoryResult", "SpeedResult", "SpeedRow", "memory_bench", "memory_report", "memory_summary",
           "paper_comparison", "speed_bench", "speed_report", "write_memory_csv", "write_speed_csv"]

MEMORY_JOB = "bench memory"
SPEED_JOB = "bench speed"


def _cancelled(cancel: Optional[Cancel]) -> bool:
    return cancel is not None and cancel.is_set()


# --- memory ------------------------------------------------------------------------------------


def memory_bench(s: BenchSettings, *, probe: MemoryProbe, steps: Sequence[int] = DEFAULT_STEPS,
                 engines: Sequence[str] = ENGINES, batches: Sequence[Optional[int]] = (),
                 micro_batches: Sequence[Optional[int]] = (), sink: Optional[EventSink] = None,
                 cancel: Optional[Cancel] = None) -> MemoryResult:
    """Peak memory of one iteration per (engine, steps, batch_syn, micro-batch); see the module docstring.

    Args:
        s: the problem.
        probe: measures one point.
        steps: numbers of student steps (columns of the table).
        engines: rows, from ``unrolled``, ``tesla``, ``exact``, ``tesla-batched``, ``exact-remake``.
        batches, micro_batches: the batch axis (empty: the settings' own ``batch_syn`` and
            ``micro_batch``); every micro-batch is measured at every batch.
        cancel: when set, the remaining points are skipped.
    """
    sink = sink or NullSink()
    check_request(tuple(engines), tuple(steps))
    pairs = batch_axis(s, batches, micro_batches)
    total = len(steps) * len(pairs) * len(engines)
    sink.emit(events.RunStarted(job=MEMORY_JOB, config={
        "bench": "memory", "settings": json.loads(s.to_json()), "steps": list(steps), "engines": list(engines),
        "batch_axis": [list(p) for p in pairs], "max_rss_gb": probe.max_rss_gb}, total=total))
    points: list = []
    status = "completed"
    for n in steps:
        for b, m in pairs:
            for engine in engines:
                if _cancelled(cancel):
                    status = "cancelled"
                    break
                points.append(_measure(probe, attrs.evolve(s, batch_syn=b, micro_batch=m), engine, n))
                if points[-1].status == OOM:
                    sink.emit(events.Warning(message=f"{engine} ran out of memory at {n} steps"
                                             + ("" if len(pairs) == 1 else f" (batch {b or s.num_images}, "
                                                f"micro-batch {m or 'whole'})")))
                sink.emit(events.Progress(label=MEMORY_JOB, done=len(points), total=total))
            if status == "cancelled":
                break
        if status == "cancelled":
            break
    order = {e: i for i, e in enumerate(engines)}
    axis = {p: i for i, p in enumerate(pairs)}
    points.sort(key=lambda p: (order[p.engine], axis[(p.batch_syn, p.micro_batch)], p.steps))
    result = MemoryResult(settings=s, points=tuple(points),
                          measure="device peak" if s.on_cuda else "saved for backward", isolated=probe.isolated(s))
    sink.emit(events.RunFinished(status=status, summary={"memory": {e: {str(k): v for k, v in row.items()}
                                                                     for e, row in result.table().items()}}))
    return result


def _measure(probe: MemoryProbe, s: BenchSettings, engine: str, steps: int) -> MemoryPoint:
    """One point, stamped with the batch axis it was measured at."""
    return attrs.evolve(probe.measure(s, engine, steps), batch_syn=s.batch_syn, micro_batch=s.micro_batch)


def _ratio(a: Any, b: Any) -> Optional[float]:
    """``a / b`` of two measured byte counts; None where either is missing, OOM or b is 0."""
    return a / b if isinstance(a, int) and isinstance(b, int) and b > 0 else None


def memory_summary(result: MemoryResult, field: str = "primary") -> list[str]:
    """The issue's targets as ratios of one measure (``primary`` or ``rss_delta``).

    - growth with the steps: each row's value at the largest N against its value at the
      first (smallest) N, and its share of ``unrolled`` at the largest N;
    - the micro-batch: at the largest N, the smallest micro-batch's value against the
      largest one's (whole batch when measured) at the same batch;
    - the batch: at the largest N and a fixed micro-batch, the largest batch's value
      against the smallest one's (flat when the activations no longer grow with it).
    """
    name = result.measure if field == "primary" else "peak RSS"
    steps = sorted({p.steps for p in result.points})
    lo, hi = steps[0], steps[-1]
    at = {(p.engine, p.batch_syn, p.micro_batch, p.steps): p.value(field) for p in result.points}
    lines = []
    if lo != hi:
        for b, m in result.pairs:
            un = at.get(("unrolled", b, m, hi))
            for e in ("tesla", "exact", "tesla-batched", "exact-remake"):
                r = _ratio(at.get((e, b, m, hi)), at.get((e, b, m, lo)))
                if r is None:
                    continue
                row = next(p for p in result.points if (p.engine, p.batch_syn, p.micro_batch) == (e, b, m))
                text = f"{result.label(row)} ({name}): at {hi} steps {r:.3f} x its value at {lo} steps"
                share = _ratio(un, at[(e, b, m, hi)])
                if share is not None:
                    text += f"; 1/{share:.1f} of unrolled at {hi} steps"
                elif un == OOM:
                    text += f"; unrolled at {hi} steps: {un}"
                lines.append(text)
    lines += _micro_lines(result, at, hi, name) + _batch_lines(result, at, hi, name)
    return lines


def _micro_lines(result: MemoryResult, at: dict, n: int, name: str) -> list[str]:
    lines = []
    for e in dict.fromkeys(p.engine for p in result.points):
        for b in dict.fromkeys(b for b, _ in result.pairs):
            batch = b or result.settings.num_images
            micros = [m for bb, m in result.pairs if bb == b]
            if len(micros) < 2:
                continue
            size = {m: batch if m is None else m for m in micros}
            big, small = max(micros, key=size.get), min(micros, key=size.get)
            r = _ratio(at.get((e, b, small, n)), at.get((e, b, big, n)))
            if r is not None:
                whole = " (the whole batch)" if size[big] == batch else ""
                lines.append(f"{e}, batch {batch} ({name}) at {n} steps: micro-batch {size[small]} takes {r:.3f} x "
                             f"micro-batch {size[big]}{whole}")
    return lines


def _batch_lines(result: MemoryResult, at: dict, n: int, name: str) -> list[str]:
    lines = []
    for e in dict.fromkeys(p.engine for p in result.points):
        for m in dict.fromkeys(m for _, m in result.pairs if m is not None):
            batches = sorted((b or result.settings.num_images, b) for b, mm in result.pairs if mm == m)
            if len(batches) < 2:
                continue
            (lo_n, lo_b), (hi_n, hi_b) = batches[0], batches[-1]
            r = _ratio(at.get((e, hi_b, m, n)), at.get((e, lo_b, m, n)))
            if r is not None:
                lines.append(f"{e}, micro-batch {m} ({name}) at {n} steps: batch {hi_n} takes {r:.3f} x batch {lo_n}")
    return lines


def paper_comparison(result: MemoryResult) -> list[str]:
    """Measured rows beside the paper's figures, where the settings are the paper's.

    The paper's figure is a whole GPU's allocation during its iteration (Table 5: one
    A6000, the paper's matching steps): the set, its gradient and momentum, the network,
    the weights and the activations. Ours is the measured peak of one iteration plus what
    the measurement leaves out of the float32 set, its gradient and momentum, stated as
    separate terms:

    - on a CPU: the bytes saved for backward (what a GPU would hold for activations) +
      the set, its gradient and momentum (on a GPU, on the device unless ``--set-on host``);
    - on CUDA with the set on the device: the device peak (the gradient accumulator is
      made inside it) + the images and their momentum, there before it;
    - on CUDA with ``--set-on host``: the device peak alone (the set is in host memory).
    """
    lines = []
    s = result.settings
    for f in paper_figures(result):
        lines.append(f"paper, {f.name} ({f.model.name} width {f.model.width}, batch {f.batch_syn}, {f.steps} "
                     f"steps; one A6000, Table 5): {f.gigabytes} GB")
        for p in result.points:
            if p.engine != f.engine or result.batch_of(p) != f.batch_syn:
                continue
            micro = "whole batch" if p.micro_batch is None else f"micro-batch {p.micro_batch}"
            head = f"  here, {p.engine}, batch {f.batch_syn}, {micro}, {p.steps} steps: "
            if p.status == OOM:
                lines.append(head + OOM)
                continue
            held, what = _held_beside(s)
            total = p.primary + held
            terms = f"{format_bytes(p.primary)} {result.measure}" + (f" + {format_bytes(held)} {what}" if what else "")
            lines.append(head + f"{terms} = {total / 1e9:.1f} GB ({total / (f.gigabytes * 1e9):.2f} x the paper's)")
    return lines


def _held_beside(s: BenchSettings) -> tuple[int, str]:
    """Bytes of the set a point's measure leaves out, and what they are (see :func:`paper_comparison`)."""
    if not s.on_cuda:
        return set_bytes(s), "set, gradient and momentum (on a GPU: on the device unless --set-on host)"
    if s.set_on == "host":
        return 0, ""
    return set_bytes(s) * 2 // 3, "set and momentum on the device"


def write_memory_csv(result: MemoryResult, path: Path) -> Path:
    """One row per point: engine, steps, batch_syn (images per step), micro_batch (empty:
    whole batches), status and every byte figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["engine", "steps", "batch_syn", "micro_batch", "status", "device_peak", "saved_peak", "rss_peak",
              "rss_delta", "seconds"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for p in result.points:
            row = {k: ("" if v is None else v) for k, v in attrs.asdict(p).items()}
            row["batch_syn"] = result.batch_of(p)  # the images per step, also where it was "all"
            w.writerow(row)
    return path


def memory_report(result: MemoryResult, out: Path, plot: MemoryPlot) -> dict:
    """``memory.csv`` and ``memory.png`` in ``out``; {"csv": path, "png": path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"csv": write_memory_csv(result, out / "memory.csv"), "png": plot(result, out / "memory.png")}


# --- speed -------------------------------------------------------------------------------------


def speed_bench(s: BenchSettings, *, probe: SpeedProbe, steps: Sequence[int] = (50,),
                engines: Sequence[str] = BENCH_ENGINES, repeats: int = 5, warmup: int = 1,
                precisions: Sequence[str] = ("fp32",), channels_last: bool = False,
                max_memory_gb: Optional[float] = None, sink: Optional[EventSink] = None,
                cancel: Optional[Cancel] = None) -> SpeedResult:
    """Seconds per iteration, interleaved (A B C A B C ...); see the module docstring.

    Args:
        precisions: from ``fp32``, ``tf32``, ``bf16``; every engine runs in each.
        channels_last: also run every (engine, precision) with channels-last images.
        repeats, warmup: timed and untimed rounds (every configuration once per round).
        max_memory_gb: CPU: GiB the timed iterations may map beyond the built problem;
            default 90% of the host's available memory. Ignored on CUDA (its OOM is an
            error torch raises).
    """
    sink = sink or NullSink()
    check_request(tuple(engines), tuple(steps))
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    for pr in precisions:
        probe.check_precision(pr)
    limit = _memory_limit(s, probe, max_memory_gb)
    configs = _configs(steps, engines, precisions, channels_last)
    total = (warmup + repeats) * len(configs)
    sink.emit(events.RunStarted(job=SPEED_JOB, config={"bench": "speed", "settings": json.loads(s.to_json()),
                                                     "steps": list(steps), "engines": list(engines),
                                                     "precisions": list(precisions), "channels_last": channels_last,
                                                     "repeats": repeats, "warmup": warmup}, total=total))
    rounds = _Rounds(configs)
    with probe.session(s, limit) as session:
        status = rounds.run(session, warmup, repeats, sink, cancel)
        rows = [rounds.row(c, session) for c in configs]
    sink.emit(events.RunFinished(status=status, summary={"speed": [
        {"engine": r.label, "steps": r.steps, "median_s": r.median, "ratio_to_unrolled": r.ratio,
         "grad_error": r.grad_error} for r in rows]}))
    return SpeedResult(settings=s, rows=tuple(rows), repeats=repeats, warmup=warmup)


def _memory_limit(s: BenchSettings, probe: SpeedProbe, max_memory_gb: Optional[float]) -> Optional[float]:
    """The CPU address-space allowance of the timed rounds (None on CUDA or where unknown)."""
    if s.on_cuda:
        return None
    if max_memory_gb is not None and not max_memory_gb > 0:
        raise BenchError(f"max_memory_gb must be > 0 (got {max_memory_gb})")
    if max_memory_gb is not None:
        return max_memory_gb
    available = probe.available_memory_gb()
    return 0.9 * available if available else None


def _configs(steps: Sequence[int], engines: Sequence[str], precisions: Sequence[str], channels_last: bool) -> list:
    """Every (engine, precision, channels_last, steps), with the fp32 references first
    when the precisions asked for leave them out."""
    layouts = (False, True) if channels_last else (False,)
    configs = [(e, pr, cl, n) for n in steps for e in engines for pr in precisions for cl in layouts]
    if not any(pr == "fp32" and not cl for _, pr, cl, _ in configs):
        configs = [(e, "fp32", False, n) for n in steps for e in engines] + configs
    return configs


class _Rounds:
    """The timings, first gradients and failures of the configurations over the rounds."""

    def __init__(self, configs: list) -> None:
        self.configs = configs
        self.times: dict = {c: [] for c in configs}
        self.grads: dict = {}
        self.failed: set = set()

    def run(self, session: SpeedSession, warmup: int, repeats: int, sink: EventSink,
            cancel: Optional[Cancel]) -> str:
        """Every configuration once per round; ``cancelled`` when asked to stop."""
        done, total = 0, (warmup + repeats) * len(self.configs)
        for r in range(warmup + repeats):
            for c in self.configs:
                if _cancelled(cancel):
                    return "cancelled"
                done += 1
                if c not in self.failed:
                    self._time(session, c, timed=r >= warmup, sink=sink)
                # every configuration of every round moves the bar, an OOM row's skipped turns too
                sink.emit(events.Progress(label=SPEED_JOB, done=done, total=total))
        return "completed"

    def _time(self, session: SpeedSession, c: tuple, *, timed: bool, sink: EventSink) -> None:
        engine, pr, cl, n = c
        result = session.run(engine, n, pr, cl)
        if result is None:
            self.failed.add(c)
            sink.emit(events.Warning(message=f"{engine} ({pr}) ran out of memory at {n} steps"))
            return
        if timed:
            self.times[c].append(result.seconds)
        self.grads.setdefault(c, result.grad)

    def row(self, c: tuple, session: SpeedSession) -> SpeedRow:
        engine, pr, cl, n = c
        med = statistics.median(self.times[c]) if self.times[c] else None
        ref_t = self.times.get(("unrolled", "fp32", False, n))
        ratio = med / statistics.median(ref_t) if med is not None and ref_t else None
        ref_g = self.grads.get((BASE_ENGINE.get(engine, engine), "fp32", False, n))
        err = session.relative_error(self.grads[c], ref_g) if c in self.grads and ref_g is not None else None
        return SpeedRow(engine=engine, precision=pr, channels_last=cl, steps=n,
                        status=OOM if c in self.failed else "ok", median=med, times=tuple(self.times[c]),
                        ratio=ratio, grad_error=err)


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


def speed_report(result: SpeedResult, out: Path, plot: Optional[SpeedPlot] = None) -> dict:
    """``speed.csv`` (and ``speed.png`` when given a plot) in ``out``; {"csv": path[, "png": path]}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": write_speed_csv(result, out / "speed.csv")}
    if plot is not None:
        files["png"] = plot(result, out / "speed.png")
    return files


def as_json(result: Any, files: dict) -> str:
    """One JSON object: the result's fields (settings, points or rows) and the files written."""
    data = attr.asdict(result, retain_collection_types=False)  # tuples as lists, as JSON has them
    data["files"] = {k: str(v) for k, v in files.items()}
    return json.dumps(data, default=str)
