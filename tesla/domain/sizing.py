"""Sizing a whole run to the data, the IPC, the machine and a time budget (``tesla run``).

The presets are the paper's rows: 50-epoch experts, start epochs up to 20-40, 5,000
iterations of 30-50 steps, networks 128 wide; on one's own data on a laptop they fail
against short experts or take days. :func:`plan_run` chooses every setting of the four
stages (experts, distillation, evaluation; the data preparation has its own) from
facts, and says why each one, so the user sees what was chosen before any of the work
and can override any of it.

The time model. One forward and backward pass of one image through the chosen network
takes ``t`` seconds on this machine (measured: :class:`~tesla.domain.ports.MachineSpeed`);
an expert epoch costs ``(train + test / 3) * t``; a distillation step on ``b`` synthetic
images costs ``MATCH_COST * b * t`` (the ``tesla`` engine's two passes; measured 3-6x a
training pass on a CPU); an evaluation network trains ``epochs`` epochs on the set. The
budget is split :data:`SHARES` between experts, distillation and evaluation.

The recipe, from the paper's table (docs/MATHS.md §9) and what the budget allows:

* experts: ``num_experts`` (10 on a GPU, 5 on a CPU) trained ``max_start_epoch +
  expert_epochs`` epochs, the shortest that every start epoch can use; the paper's start
  epochs grow with the IPC (up to 3 at IPC 1, 20 at IPC 10, 40 at IPC 50: about 2 x IPC);
  when the experts do not fit their share there are fewer of them (down to 2) first, and
  only then shorter ones;
* distillation: M = 2 expert epochs per target; N student steps about an eighth of the
  SGD steps an expert takes in M epochs (CIFAR-10, 50,000 images at batch 256: 392 -> 49;
  the paper uses 30-50), at least 10, at most 50, lowered (to 5) only when fewer than
  :data:`MIN_ITERATIONS` iterations would fit; the whole set per step up to 256 images;
  as many iterations as fit (at most 5,000, the paper's);
* evaluation: 5 networks (3 on a CPU) of as many epochs as fit, 50 to 1,000 (the paper's).

Pure: numbers in, configs and reasons out.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import attrs

from tesla.domain import presets
from tesla.domain.config import DistillConfig, EvalConfig, ExpertConfig, ModelConfig
from tesla.domain.data import DEPTH_FOR_SIZE
from tesla.domain.errors import ConfigError

SHARES = {"experts": 0.35, "distill": 0.45, "evaluate": 0.20}
MATCH_COST = 4.0  # a distillation step on one image, in training passes of one image
TEST_COST = 1.0 / 3.0  # a test image (forward only), in training passes
EXPERT_EPOCHS = 2  # M, the paper's usual
EXPERT_BATCH = 256
MIN_EXPERTS = 2
MIN_ITERATIONS = 50
MAX_ITERATIONS = 5000
STEPS = (10, 50)  # N's range when the budget allows it
MIN_STEPS = 5
WHOLE_SET = 256  # synthetic images per step: the whole set up to this many
EVAL_EPOCHS = (50, 1000)
CPU_WIDTH, GPU_WIDTH = 32, 128


@attrs.frozen
class DataFacts:
    """What the real data is: counts and shape, and a name for the table."""

    name: str
    num_classes: int
    num_train: int
    num_test: int
    image_shape: tuple  # (C, S, S)
    dataset: str = "prepared"  # the loader: demo | cifar10 | cifar100 | prepared


@attrs.frozen
class Wishes:
    """What the user asked for; None: sized here."""

    ipc: int
    minutes: float
    seed: int = 0
    engine: str = "tesla"
    zca: Optional[bool] = None
    width: Optional[int] = None
    num_experts: Optional[int] = None
    max_start_epoch: Optional[int] = None
    syn_steps: Optional[int] = None
    batch_syn: Optional[int] = None
    iterations: Optional[int] = None
    eval_models: Optional[int] = None
    eval_epochs: Optional[int] = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.ipc, bool) or not isinstance(self.ipc, int) or self.ipc < 1:
            raise ConfigError(f"--ipc must be an integer >= 1 (got {self.ipc!r})")
        if not isinstance(self.minutes, (int, float)) or not 0 < self.minutes < math.inf:
            raise ConfigError(f"--minutes must be a number > 0 (got {self.minutes!r})")
        for name in ("width", "num_experts", "max_start_epoch", "syn_steps", "batch_syn", "iterations",
                     "eval_models", "eval_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1 (got {value!r})")


@attrs.frozen
class Choice:
    """One row of the plan's table: a setting, its value, and why."""

    setting: str
    value: str
    why: str


@attrs.frozen
class Plan:
    """Every setting of a run, the reasons, and the estimated seconds per stage."""

    model: ModelConfig
    zca: bool
    experts: ExpertConfig
    distill: DistillConfig
    evaluate: EvalConfig
    choices: tuple
    seconds: dict  # estimated: experts, distill, evaluate

    @property
    def minutes(self) -> float:
        return sum(self.seconds.values()) / 60.0


def _depth(side: int) -> int:
    if side in DEPTH_FOR_SIZE:
        return DEPTH_FOR_SIZE[side]
    depth = 1
    while side % (2 ** (depth + 1)) == 0 and side // (2 ** (depth + 1)) >= 4:
        depth += 1
    return depth


def plan_model(facts: DataFacts, wishes: Wishes, *, gpu: bool) -> tuple[ModelConfig, tuple]:
    """The network for the data (a ConvNet: its depth ends at 4x4 features) and why."""
    channels, side = int(facts.image_shape[0]), int(facts.image_shape[-1])
    width = wishes.width or (GPU_WIDTH if gpu else CPU_WIDTH)
    model = ModelConfig(depth=_depth(side), width=width, channels=channels, image_size=side,
                        num_classes=facts.num_classes)
    why_width = ("asked for" if wishes.width else "the paper's width (a GPU)" if gpu
                 else "a quarter of the paper's 128: a CPU trains it ~10x faster")
    return model, (Choice("model", f"{model.name} depth {model.depth} width {width}",
                          f"{side} px images end at 4x4 features; width: {why_width}"),)


def plan_run(facts: DataFacts, wishes: Wishes, *, gpu: bool, seconds_per_image: float) -> Plan:
    """Every setting of a run (module docstring); ``seconds_per_image`` is the measured
    training pass of one image through :func:`plan_model`'s network."""
    model, choices = plan_model(facts, wishes, gpu=gpu)
    t = max(float(seconds_per_image), 1e-9)
    budget = wishes.minutes * 60.0
    rows = list(choices)
    zca = _zca(facts, wishes, rows)
    experts, e_seconds = _experts(facts, wishes, t, budget * SHARES["experts"], gpu, rows)
    distill, d_seconds = _distill(facts, wishes, t, budget * SHARES["distill"], experts, zca, rows)
    evaluate, v_seconds = _evaluate(facts, wishes, t, budget * SHARES["evaluate"], gpu, rows)
    seconds = {"experts": e_seconds, "distill": d_seconds, "evaluate": v_seconds}
    total = sum(seconds.values()) / 60.0
    rows.append(Choice("estimated time", f"{total:.1f} min",
                       f"budget {wishes.minutes:g} min (--minutes); measured {t * 1e3:.3g} ms per training image"
                       + ("; over budget: raise --minutes or lower what was asked for"
                          if total > wishes.minutes * 1.1 else "")))
    return Plan(model=model, zca=zca, experts=experts, distill=distill, evaluate=evaluate, choices=tuple(rows),
                seconds=seconds)


def _zca(facts: DataFacts, wishes: Wishes, rows: list) -> bool:
    if wishes.zca is not None:
        if wishes.zca and facts.dataset not in ("cifar10", "cifar100"):
            raise ConfigError("--zca applies to CIFAR folders only (prepared and demo data are mean/std normalised): "
                              "drop it")
        rows.append(Choice("ZCA whitening", "on" if wishes.zca else "off", "asked for"))
        return wishes.zca
    name = f"{facts.dataset}-ipc{wishes.ipc}"
    zca = facts.dataset in ("cifar10", "cifar100") and name in presets.PRESETS and presets.get(name).zca
    rows.append(Choice("ZCA whitening", "on" if zca else "off",
                       f"as the paper's {name} row" if name in presets.PRESETS
                       else "mean/std normalisation (ZCA: only the paper's CIFAR rows that use it)"))
    return bool(zca)


def _experts(facts: DataFacts, wishes: Wishes, t: float, share: float, gpu: bool,
             rows: list) -> tuple[ExpertConfig, float]:
    epoch = (facts.num_train + facts.num_test * TEST_COST) * t
    count = wishes.num_experts or (10 if gpu else 5)
    target = min(40, max(3, 2 * wishes.ipc))
    if wishes.max_start_epoch:
        start, why = wishes.max_start_epoch, "asked for"
    else:
        if wishes.num_experts is None:  # fewer experts before shorter ones: the start epochs are the recipe
            while count > MIN_EXPERTS and count * (target + EXPERT_EPOCHS) * epoch > share:
                count -= 1
        fits = int(share // max(epoch * count, 1e-12)) - EXPERT_EPOCHS
        start = max(2, min(target, fits))
        why = (f"the paper's start epochs grow with the IPC (about 2 x IPC, 3 to 40): {target}"
               + ("" if start == target else f", lowered to fit {share / 60:.1f} min"))
    epochs = start + EXPERT_EPOCHS
    cfg = ExpertConfig(num_experts=count, epochs=epochs, lr=0.01, batch_size=min(EXPERT_BATCH, facts.num_train),
                       seed=wishes.seed)
    rows.append(Choice("experts", f"{count} x {epochs} epochs",
                       ("asked for" if wishes.num_experts else f"{'10 on a GPU' if gpu else '5 on a CPU'}"
                        + ("" if wishes.num_experts or count == (10 if gpu else 5)
                           else f"; {count} fit the budget (fewer experts before shorter ones)"))
                       + f"; epochs = max start epoch {start} + M {EXPERT_EPOCHS}, the shortest every start can use"))
    rows.append(Choice("max start epoch", str(start), why))
    return cfg, count * epochs * epoch


def _distill(facts: DataFacts, wishes: Wishes, t: float, share: float, experts: ExpertConfig, zca: bool,
             rows: list) -> tuple[DistillConfig, float]:
    n_syn = wishes.ipc * facts.num_classes
    if wishes.batch_syn and wishes.batch_syn > n_syn:
        raise ConfigError(f"--batch-syn {wishes.batch_syn} is larger than the synthetic set ({n_syn} images): lower it")
    batch_syn = wishes.batch_syn or (None if n_syn <= WHOLE_SET else WHOLE_SET)
    b = batch_syn or n_syn
    expert_steps = EXPERT_EPOCHS * math.ceil(facts.num_train / experts.batch_size)
    step = MATCH_COST * b * t
    if wishes.syn_steps:
        steps, why_steps = wishes.syn_steps, "asked for"
    else:
        steps = min(STEPS[1], max(STEPS[0], math.ceil(expert_steps / 8)))
        why_steps = (f"about 1/8 of the {expert_steps} SGD steps an expert takes in M = {EXPERT_EPOCHS} epochs, "
                     f"in [{STEPS[0]}, {STEPS[1]}]")
        if wishes.iterations is None and share / (steps * step) < MIN_ITERATIONS:
            fewer = max(MIN_STEPS, int(share // (MIN_ITERATIONS * step)))
            if fewer < steps:
                steps, why_steps = fewer, why_steps + f"; lowered to {fewer} so {MIN_ITERATIONS} iterations fit"
    if wishes.iterations:
        iterations, why_its = wishes.iterations, "asked for"
    else:
        iterations = min(MAX_ITERATIONS, max(MIN_ITERATIONS, int(share // (steps * step))))
        why_its = f"as many as fit {share / 60:.1f} min (at most the paper's {MAX_ITERATIONS}, at least {MIN_ITERATIONS})"
    lr_img = 500.0 if zca else 100.0
    cfg = DistillConfig(ipc=wishes.ipc, syn_steps=steps, expert_epochs=EXPERT_EPOCHS,
                        max_start_epoch=experts.epochs - EXPERT_EPOCHS, batch_syn=batch_syn, iterations=iterations,
                        lr_img=lr_img, lr_lr=1e-5, lr_init=0.01, engine=wishes.engine, seed=wishes.seed,
                        checkpoint_every=min(500, max(10, iterations // 10)))
    rows += [Choice("IPC", f"{wishes.ipc} ({n_syn} images)", "asked for (--ipc)"),
             Choice("student steps N", str(steps), why_steps),
             Choice("images per step", "all" if batch_syn is None else str(batch_syn),
                    "asked for" if wishes.batch_syn else f"the whole set up to {WHOLE_SET} images"),
             Choice("iterations", str(iterations), why_its),
             Choice("lr_img", f"{lr_img:g}", "the CIFAR presets' (ZCA data)" if zca
                    else "the demo's, chosen for mean/std data with our gradient"),
             Choice("engine", wishes.engine, "asked for" if wishes.engine != "tesla" else
                    "TESLA's constant-memory gradient")]
    return cfg, iterations * steps * step


def _evaluate(facts: DataFacts, wishes: Wishes, t: float, share: float, gpu: bool,
              rows: list) -> tuple[EvalConfig, float]:
    n_syn = wishes.ipc * facts.num_classes
    models = wishes.eval_models or (5 if gpu else 3)
    per_epoch = 2 * models * n_syn * t  # the distilled set and random real images at the same IPC
    test = 2 * models * facts.num_test * TEST_COST * t
    if wishes.eval_epochs:
        epochs, why = wishes.eval_epochs, "asked for"
    else:
        fit = int((share - test) // max(per_epoch, 1e-12))
        epochs = min(EVAL_EPOCHS[1], max(EVAL_EPOCHS[0], fit))
        why = f"as many as fit {share / 60:.1f} min, in [{EVAL_EPOCHS[0]}, {EVAL_EPOCHS[1]}] (the paper: 1000)"
    rows.append(Choice("evaluation", f"{models} networks x {epochs} epochs",
                       ("asked for" if wishes.eval_models else f"{'5 on a GPU' if gpu else '3 on a CPU'}")
                       + f", on the distilled set and on random real images at the same IPC; epochs: {why}"))
    cfg = EvalConfig(num_models=models, epochs=epochs, seed=wishes.seed)
    return cfg, epochs * per_epoch + test


def plan_to_dict(plan: Plan) -> dict:
    """Plain JSON of a plan (``plan.json``)."""
    from tesla.domain.config import to_dict

    return {"model": to_dict(plan.model), "zca": plan.zca, "experts": to_dict(plan.experts),
            "distill": to_dict(plan.distill), "evaluate": to_dict(plan.evaluate),
            "choices": [attrs.asdict(c) for c in plan.choices], "seconds": dict(plan.seconds)}


def plan_from_dict(data: dict) -> Plan:
    """The plan :func:`plan_to_dict` wrote (ConfigError when it is not one)."""
    from tesla.domain.config import from_dict

    try:
        return Plan(model=from_dict(ModelConfig, data["model"]), zca=bool(data["zca"]),
                    experts=from_dict(ExpertConfig, data["experts"]), distill=from_dict(DistillConfig, data["distill"]),
                    evaluate=from_dict(EvalConfig, data["evaluate"]),
                    choices=tuple(Choice(**c) for c in data["choices"]), seconds=dict(data["seconds"]))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"the recorded plan is not one tesla run wrote ({e}): choose another --out") from None


def plan_markdown(plan: Plan, facts: DataFacts) -> str:
    """The plan's table as Markdown (``plan.md``)."""
    lines = [f"data: {facts.name}: {facts.num_classes} classes, {facts.num_train} train / {facts.num_test} test "
             f"images, {'x'.join(map(str, facts.image_shape))}", "", "| setting | value | why |", "|---|---|---|"]
    lines += [f"| {c.setting} | {c.value} | {c.why} |" for c in plan.choices]
    return "\n".join(lines) + "\n"


def wishes_differ(recorded: dict, wishes: Wishes, typed: Any) -> Optional[str]:
    """The first typed wish that differs from the recorded run's (its option name), or None."""
    recorded_wishes = recorded.get("wishes", {})
    for name in typed:
        if name in recorded_wishes and recorded_wishes[name] != getattr(wishes, name):
            return f"--{name.replace('_', '-')} {getattr(wishes, name)} (the run was planned with {recorded_wishes[name]})"
    return None


__all__ = ["Choice", "DataFacts", "Plan", "Wishes", "plan_from_dict", "plan_markdown", "plan_model", "plan_run",
           "plan_to_dict", "wishes_differ"]
