"""The TUI's model of a run: events folded into the figures the widgets draw.

Pure Python (no Textual, no torch), so the arithmetic of the screen -- progress, rates,
ETA, the series behind each plot, the header's labels -- is unit-testable on a list of
events. The app feeds every event it reads from ``events.jsonl`` to :meth:`RunState.apply`
and bumps a reactive revision; widgets then re-read what they show from here.

Every figure derives from the events alone (rates from ``Iteration.seconds``, elapsed time
from event timestamps), never from the wall clock, so a recorded run always looks the
same -- which is what makes snapshot tests possible.

``RunState`` is a mutable accumulator on purpose: it is owned by the UI thread and grows
with the log, so re-creating it per event would only cost time. The rows it holds are
frozen.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Optional, Sequence

import attrs

from tesla.domain import events as ev
from tesla.domain.health import default_min_agreement

RATE_WINDOW = 20  # iterations (or epochs) whose duration the rate averages over
MAX_LOG = 500  # log lines kept for the log panel
BASELINE_SUBJECTS = ("random-real", "full-real")
SUBJECT_ORDER = ("synthetic",) + BASELINE_SUBJECTS


@attrs.frozen
class EpochRow:
    """One finished expert epoch; ``index`` counts epochs across experts (the x axis)."""

    index: int
    expert: int
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    test_acc: Optional[float]


@attrs.frozen
class Result:
    """The evaluations of one (model, subject): the latest, the best, how many."""

    model: str
    subject: str
    latest: ev.Evaluation
    best: ev.Evaluation
    count: int


@attrs.frozen
class MemoryRow:
    """One memory sample; ``x`` is its iteration, or the sample's position when it has none."""

    x: float
    device_allocated: Optional[int]
    device_peak: Optional[int]
    host_rss: int


@attrs.frozen
class HealthRow:
    """Run health as of the latest iteration: label agreement and entropy (None: hard
    labels, not measured) and the streaks that stop the run when they reach their limit."""

    iteration: int
    agreement: Optional[float]
    entropy: Optional[float]
    low_agreement: int
    stalled: int


@attrs.frozen
class HealthLimits:
    """The guard's thresholds as the run's config records them."""

    min_agreement: float
    collapse_iterations: int
    stall_iterations: int


@attrs.frozen
class LogLine:
    """A line of the log panel. ``level``: info | warning | error | checkpoint | result."""

    level: str
    text: str
    iteration: Optional[int] = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def model_name(model: dict) -> Optional[str]:
    """Display name of a ``ModelConfig`` dict: ConvNet, ConvNetD4, ResNet18, ViT."""
    arch = model.get("arch")
    if arch is None:
        return model.get("name")
    if arch == "convnet":
        depth = model.get("depth", 3)
        return "ConvNet" if depth == 3 else f"ConvNetD{depth}"
    return {"resnet18": "ResNet18", "vit": "ViT"}.get(arch, str(arch))


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (or ``-`` when unknown)."""
    if seconds is None or not _finite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_mib(n: Optional[float]) -> str:
    """Bytes as whole MiB (the header's compact form), ``-`` when None."""
    return "-" if n is None else f"{n / 2**20:.0f}"


def format_accuracy(e: ev.Evaluation) -> str:
    """``mean ± std`` in percent, two decimals."""
    return f"{e.mean:.2f} ± {e.std:.2f}"


def integer_ticks(lo: float, hi: float, max_count: int) -> list[int]:
    """At most ``max_count`` round integers in ``[lo, hi]`` (steps 1, 2, 5 x 10^k) to
    label an axis of iterations or epochs, which are never fractional."""
    first, last = math.ceil(lo), math.floor(hi)
    if last < first:
        return []
    if last == first or max_count <= 1:
        return [first]
    span, step = last - first, 1
    while span // step + 1 > max_count:
        step = next(m * 10**e for e in range(20) for m in (1, 2, 5) if m * 10**e > step)
    start = -(-first // step) * step  # the first multiple of step at or above first
    ticks = list(range(start, last + 1, step))
    return ticks if len(ticks) > 1 else [first, last]


def format_bytes(n: Optional[float]) -> str:
    """Bytes as MiB/GiB, ``-`` when None."""
    if n is None:
        return "-"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def thin(points: Sequence, max_points: int) -> list:
    """Every k-th point (always keeping the last) so a plot never draws more than
    ``max_points``; long runs stay cheap to redraw."""
    n = len(points)
    if n <= max_points:
        return list(points)
    step = math.ceil(n / max_points)
    out = list(points[::step])
    if out[-1] is not points[-1]:
        out.append(points[-1])
    return out


class RunState:
    """Everything the screen shows about one run, folded from its events.

    Attributes (read by widgets):
        revision: bumped by every applied event or note; widgets redraw when it moves.
        job, config, run_dir, status: from RunStarted / RunFinished (status ``waiting``
            before the first event, then ``running``, ``completed``, ``cancelled``, ``failed``).
        iteration, total: progress of a distillation (or the run's declared total).
        losses, lrs, grad_norms: ``(iteration, value)`` per Iteration (finite values only).
        agreements: ``(iteration, label agreement)`` where the labels are measured.
        health: the latest :class:`HealthRow` (distillations that record run health).
        epochs: EpochRow per Epoch event (expert runs).
        memory: MemoryRow per Memory event.
        evaluations: every Evaluation event, in order.
        preview: the last Preview event.
        progress: ``label -> (done, total)`` of Progress events.
        log: the last :data:`MAX_LOG` log lines.
        summary: RunFinished.summary.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.job: Optional[str] = None
        self.config: dict = {}
        self.run_dir: Optional[str] = None
        self.status = "waiting"
        self.started_at: Optional[float] = None
        self.last_time: Optional[float] = None
        self.total: Optional[int] = None
        self.iteration: Optional[int] = None
        self.last_loss: Optional[float] = None
        self.last_lr: Optional[float] = None
        self.losses: list[tuple[int, float]] = []
        self.lrs: list[tuple[int, float]] = []
        self.grad_norms: list[tuple[int, float]] = []
        self.agreements: list[tuple[int, float]] = []
        self.health: Optional[HealthRow] = None
        self.epochs: list[EpochRow] = []
        self.memory: list[MemoryRow] = []
        self.evaluations: list = []
        self.preview: Optional[ev.Preview] = None
        self.progress: dict[str, tuple[int, Optional[int]]] = {}
        self.log: deque[LogLine] = deque(maxlen=MAX_LOG)
        self.log_count = 0  # lines ever logged; the log widget appends the ones it lacks
        self.summary: dict = {}
        self.counts: dict[str, int] = {}
        self._durations: deque[float] = deque(maxlen=RATE_WINDOW)
        self._unknown: set[str] = set()

    # -- folding --------------------------------------------------------------------------
    def apply(self, event: Any) -> None:
        """Fold one event in (unknown kinds are counted and noted once)."""
        kind = getattr(event, "type", "unknown")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        t = getattr(event, "time", None)
        if _finite(t):
            self.last_time = t if self.last_time is None else max(self.last_time, t)
        handler = getattr(self, "_on_" + kind, None)
        if handler is not None:
            handler(event)
        self.revision += 1

    def apply_all(self, events: Iterable[Any]) -> None:
        for e in events:
            self.apply(e)

    def note(self, level: str, text: str) -> None:
        """A line the app itself adds to the log (job cancelled, job raised ...)."""
        self._log(level, text)
        self.revision += 1

    def _log(self, level: str, text: str, iteration: Optional[int] = None) -> None:
        self.log.append(LogLine(level, text, iteration))
        self.log_count += 1

    def _on_run_started(self, e: ev.RunStarted) -> None:
        resumed = self.job is not None
        self.job, self.config, self.run_dir = e.job, dict(e.config or {}), e.run_dir
        self.total = e.total if e.total is not None else self.total
        self.status = "running"
        if self.started_at is None:
            self.started_at = e.time
        self._log("info", f"{e.job} {'resumed' if resumed else 'started'}"
                  + (f" (total {e.total})" if e.total is not None else ""))

    def _on_iteration(self, e: ev.Iteration) -> None:
        self.iteration = e.iteration if self.iteration is None else max(self.iteration, e.iteration)
        self.total = e.total or self.total
        if _finite(e.loss):
            self.losses.append((e.iteration, float(e.loss)))
        else:
            self._log("warning", f"loss is {e.loss} at iteration {e.iteration}", e.iteration)
        if _finite(e.lr):
            self.lrs.append((e.iteration, float(e.lr)))
        if _finite(e.grad_norm):
            self.grad_norms.append((e.iteration, float(e.grad_norm)))
        if _finite(e.agreement):
            self.agreements.append((e.iteration, float(e.agreement)))
        self.health = HealthRow(e.iteration, e.agreement if _finite(e.agreement) else None,
                                e.label_entropy if _finite(e.label_entropy) else None,
                                int(e.low_agreement or 0), int(e.stalled or 0))
        self.last_loss, self.last_lr = e.loss, e.lr
        if _finite(e.seconds) and e.seconds > 0:
            self._durations.append(float(e.seconds))

    def _on_epoch(self, e: ev.Epoch) -> None:
        self.epochs.append(EpochRow(len(self.epochs) + 1, e.expert, e.epoch, e.epochs,
                                    e.train_loss, e.train_acc, e.test_acc))
        self.last_loss = e.train_loss
        if _finite(e.seconds) and e.seconds > 0:
            self._durations.append(float(e.seconds))

    def _on_memory(self, e: ev.Memory) -> None:
        x = e.iteration if e.iteration is not None else (self.iteration or len(self.memory))
        self.memory.append(MemoryRow(float(x), e.device_allocated, e.device_peak, e.host_rss))

    def _on_evaluation(self, e: ev.Evaluation) -> None:
        self.evaluations.append(e)
        self._log("result", f"{e.model} {e.subject}: {format_accuracy(e)} % over {e.n} network"
                  + ("s" if e.n != 1 else ""), e.iteration)

    def _on_checkpoint(self, e: ev.Checkpoint) -> None:
        if self.is_experts:  # an expert's trajectory is complete; ``iteration`` is its index
            self._log("checkpoint", f"expert {e.iteration} saved to {e.path}")
        else:
            self._log("checkpoint", f"saved to {e.path}", e.iteration)

    def _on_preview(self, e: ev.Preview) -> None:
        self.preview = e

    def _on_progress(self, e: ev.Progress) -> None:
        self.progress[e.label] = (e.done, e.total)

    def _on_warning(self, e: ev.Warning) -> None:
        self._log("warning", e.message, e.iteration)

    def _on_error(self, e: ev.Error) -> None:
        self._log("error", e.message, e.iteration)

    def _on_unknown(self, e: ev.UnknownEvent) -> None:
        kind = str(e.data.get("type"))
        if kind not in self._unknown:
            self._unknown.add(kind)
            self._log("info", f"skipping events of unknown type {kind!r} (written by a newer tesla?)")

    def _on_run_finished(self, e: ev.RunFinished) -> None:
        self.status, self.summary = e.status, dict(e.summary or {})
        level = {"completed": "info", "cancelled": "warning"}.get(e.status, "error")
        self._log(level, f"{self.job or 'run'} {e.status}")

    # -- figures --------------------------------------------------------------------------
    @property
    def is_experts(self) -> bool:
        """An expert-training run (Epoch events drive progress and plots)."""
        return self.job == "experts" or (bool(self.epochs) and not self.losses)

    def section(self, name: str) -> dict:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    def setting(self, section: str, key: str) -> Any:
        """A config value from ``config[section][key]``, or a top-level ``config[key]``."""
        value = self.section(section).get(key)
        return self.config.get(key) if value is None else value

    @property
    def done(self) -> Optional[int]:
        """Work done, in the unit of :attr:`total` (iterations, epochs, or items)."""
        if self.is_experts:
            return len(self.epochs)
        if self.iteration is not None:
            return self.iteration
        if self.progress:
            return list(self.progress.values())[-1][0]
        return None

    @property
    def progress_total(self) -> Optional[int]:
        if self.total is not None:
            return self.total
        if self.is_experts and self.epochs:
            experts = self.setting("experts", "num_experts")
            return self.epochs[-1].epochs * experts if experts else None
        if self.progress:
            return list(self.progress.values())[-1][1]
        return None

    @property
    def fraction(self) -> Optional[float]:
        done, total = self.done, self.progress_total
        if done is None or not total:
            return None
        return min(max(done / total, 0.0), 1.0)

    @property
    def rate(self) -> Optional[float]:
        """Iterations (or epochs) per second over the last :data:`RATE_WINDOW`, from the
        events' own durations."""
        if not self._durations:
            return None
        return len(self._durations) / sum(self._durations)

    @property
    def eta(self) -> Optional[float]:
        """Seconds left at the current rate (0 once finished)."""
        if self.status in ("completed", "cancelled", "failed"):
            return 0.0
        done, total, rate = self.done, self.progress_total, self.rate
        if done is None or total is None or not rate:
            return None
        return max(total - done, 0) / rate

    @property
    def elapsed(self) -> Optional[float]:
        if self.started_at is None or self.last_time is None:
            return None
        return max(self.last_time - self.started_at, 0.0)

    @property
    def unit(self) -> str:
        """What :attr:`done` counts: epochs, iterations, or the last Progress label (a
        job without iterations, such as ``evaluate``)."""
        if self.is_experts:
            return "epoch"
        if self.iteration is None and self.job != "distill" and self.progress:
            return list(self.progress)[-1]
        return "iteration"

    @property
    def has_steps(self) -> bool:
        """Progress is counted in iterations or epochs (so there is a rate and an x axis)."""
        return self.is_experts or self.iteration is not None or self.job == "distill"

    @property
    def records_health(self) -> bool:
        """A distillation whose log carries run health (its config has the guard's
        thresholds; logs written before run health do not)."""
        return not self.is_experts and "stall_iterations" in self.section("distill")

    def health_limits(self) -> HealthLimits:
        """The thresholds the run's guard uses (the config's, or their defaults)."""
        d = self.section("distill")
        classes = self.section("model").get("num_classes") or 10
        threshold = d.get("min_label_agreement")
        return HealthLimits(min_agreement=float(default_min_agreement(int(classes)) if threshold is None else threshold),
                            collapse_iterations=int(d.get("collapse_iterations") or 10),
                            stall_iterations=int(d.get("stall_iterations") or 0))

    def header_labels(self) -> list[tuple[str, str]]:
        """``(label, value)`` pairs for the run header, only those the config holds."""
        pairs: list[tuple[str, str]] = []
        data = self.setting("data", "name")
        if data:
            pairs.append(("data", str(data) + (" zca" if self.section("data").get("zca") else "")))
        model = model_name(self.section("model"))
        if model:
            pairs.append(("model", model))
        if self.is_experts:
            n, e = self.setting("experts", "num_experts"), self.setting("experts", "epochs")
            if n is not None:
                pairs.append(("experts", str(n)))
            if e is not None:
                pairs.append(("epochs", str(e)))
        else:
            for label, key in (("IPC", "ipc"), ("engine", "engine"), ("labels", "labels")):
                value = self.setting("distill", key)
                if value is not None:
                    pairs.append((label, str(value)))
        return pairs

    def loss_series(self) -> dict[str, list[tuple[float, float]]]:
        """Series of the loss plot: the matching loss per iteration, or expert train loss
        per epoch."""
        if self.is_experts:
            return {"train loss": [(r.index, r.train_loss) for r in self.epochs if _finite(r.train_loss)]}
        return {"loss": list(self.losses)}

    def second_series(self) -> dict[str, list[tuple[float, float]]]:
        """Series of the second plot: the learned lr, or expert train/test accuracy."""
        if self.is_experts:
            return {
                "train acc": [(r.index, r.train_acc) for r in self.epochs if _finite(r.train_acc)],
                "test acc": [(r.index, r.test_acc) for r in self.epochs if _finite(r.test_acc)],
            }
        return {"learned lr": list(self.lrs)}

    def memory_series(self) -> dict[str, list[tuple[float, float]]]:
        """Memory in MiB over iterations: device allocated and peak (when on a GPU) and
        host RSS."""
        mib = 2**20
        series: dict[str, list[tuple[float, float]]] = {}
        if any(r.device_allocated is not None for r in self.memory):
            series["device alloc"] = [(r.x, r.device_allocated / mib) for r in self.memory
                                      if r.device_allocated is not None]
            series["device peak"] = [(r.x, r.device_peak / mib) for r in self.memory if r.device_peak is not None]
        series["host RSS"] = [(r.x, r.host_rss / mib) for r in self.memory]
        return series

    @property
    def memory_reference(self) -> Optional[float]:
        """MiB of the first sample's peak (device peak on a GPU, else host RSS): a
        reference line, so memory that stays constant is seen to be flat."""
        if not self.memory:
            return None
        first = self.memory[0]
        value = first.device_peak if first.device_peak is not None else first.host_rss
        return value / 2**20

    def accuracy_series(self) -> dict[str, list[tuple[float, float]]]:
        """Mean accuracy over iterations per subject (and model, when several were
        evaluated): synthetic series first, then the references."""
        models = {e.model for e in self.evaluations}
        series: dict[str, list[tuple[float, float]]] = {}
        ordered = sorted(self.evaluations, key=lambda e: e.subject in BASELINE_SUBJECTS)  # stable
        for e in ordered:
            label = e.subject if len(models) <= 1 else f"{e.model} {e.subject}"
            x = e.iteration if e.iteration is not None else (self.iteration or 0)
            series.setdefault(label, []).append((float(x), float(e.mean)))
        if self.is_experts:
            tests = [(r.index, r.test_acc) for r in self.epochs if _finite(r.test_acc)]
            if tests:
                series["expert test"] = tests
        return series

    def results(self) -> list[Result]:
        """One row per (model, subject) evaluated: models in the order first seen, then
        synthetic, random-real, full-real (the references beside what they judge)."""
        groups: dict[tuple[str, str], list[ev.Evaluation]] = {}
        for e in self.evaluations:
            groups.setdefault((e.model, e.subject), []).append(e)
        models = list(dict.fromkeys(e.model for e in self.evaluations))

        def order(key: tuple[str, str]) -> tuple:
            subject = key[1]
            rank = SUBJECT_ORDER.index(subject) if subject in SUBJECT_ORDER else len(SUBJECT_ORDER)
            return models.index(key[0]), rank, subject

        return [Result(model, subject, found[-1], max(found, key=lambda e: e.mean), len(found))
                for (model, subject), found in sorted(groups.items(), key=lambda kv: order(kv[0]))]

    def best(self, subject: str = "synthetic") -> Optional[ev.Evaluation]:
        """The evaluation of ``subject`` with the highest mean."""
        found = [e for e in self.evaluations if e.subject == subject]
        return max(found, key=lambda e: e.mean) if found else None

    def latest_memory(self) -> Optional[MemoryRow]:
        return self.memory[-1] if self.memory else None

    def peak_memory(self) -> tuple[Optional[int], Optional[int]]:
        """(highest device peak, highest host RSS) seen, bytes."""
        peaks = [r.device_peak for r in self.memory if r.device_peak is not None]
        return (max(peaks) if peaks else None, max((r.host_rss for r in self.memory), default=None))


__all__ = ["RunState", "EpochRow", "HealthLimits", "HealthRow", "MemoryRow", "LogLine", "Result", "thin", "model_name", "format_duration",
           "format_bytes", "format_mib", "format_accuracy", "integer_ticks", "BASELINE_SUBJECTS", "SUBJECT_ORDER"]
