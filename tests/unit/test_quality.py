"""``tesla bench quality`` on fakes: recipes parsed and checked, each distilled by the real
distillation loop (over the pure-Python fakes) into its own run directory, evaluated
with the same networks and seeds as random real, and reported (table, verdicts, CSV,
JSON); a recipe the health guard stops is a row that says why, and refusals come before
any work.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import attrs
import pytest

from tesla.app.services.distill import DistillRun, distill
from tesla.app.services.quality import (QualityPorts, QualityRequest, prepare_quality, quality_json, quality_report,
                                        table, verdicts)
from tesla.domain.config import ConfigError, DistillConfig, EvalConfig, ModelConfig, to_dict
from tesla.domain.engines import from_config
from tesla.domain.errors import DistillError
from tesla.domain.quality import BUILTIN, Recipe, builtin, parse_overrides, parse_recipe, parse_value
from tests.unit.fakes import V, FakeData, FakeSetStore, FakeStudent, FakeTrajectories
from tests.unit.service_fakes import FakeEvaluationTraining, StopAfter, accuracy_of

MODEL = ModelConfig(depth=2, width=2, channels=1, image_size=4, num_classes=2)
BASE = DistillConfig(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=3, iterations=6, checkpoint_every=3,
                     lr_img=0.1, lr_lr=1e-3, lr_init=0.05, seed=1)
EVAL = EvalConfig(num_models=2, epochs=7, seed=3)


# --- recipes --------------------------------------------------------------------------------


def test_a_recipe_is_a_name_and_overrides_read_like_json_scalars():
    assert parse_value("none") is None and parse_value("True") is True and parse_value("3") == 3
    assert parse_value("0.99") == 0.99 and parse_value("1e3") == 1000.0 and parse_value(" window ") == "window"
    r = parse_recipe("mine:ema_decay=0.99,lr-img=50,labels=learned-teacher")
    assert r == Recipe("mine", (("ema_decay", 0.99), ("lr_img", 50), ("labels", "learned-teacher")))
    assert r.apply(BASE) == attrs.evolve(BASE, ema_decay=0.99, lr_img=50, labels="learned-teacher")
    assert r.describe() == "ema_decay=0.99, lr_img=50, labels=learned-teacher"
    assert parse_recipe("ema") is builtin("ema") and parse_overrides("ipc=3, seed=2") == (("ipc", 3), ("seed", 2))


@pytest.mark.parametrize("text,match", [
    ("mine:bogus=1", "recipe key 'bogus' is not a distillation setting"),
    ("mine:ema_decay", "'ema_decay' is not key=value"),
    ("nothing-built-in", "neither a built-in recipe"),
    ("bad name:ipc=1", "recipe name 'bad name' must be"),
])
def test_bad_recipes_are_refused_with_what_to_write(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(text)


def test_a_refused_value_names_its_recipe():
    with pytest.raises(ConfigError, match=r"recipe 'x': ema_decay must be a number in \[0, 1\)"):
        parse_recipe("x:ema_decay=2").apply(BASE)


def test_the_built_ins_are_the_ablation_and_set_every_lever_they_compare():
    assert [r.name for r in BUILTIN] == ["tesla", "exact", "teacher-target", "learned-teacher", "window", "ema", "pad",
                                         "datm", "datm+ema", "all"]
    leaky = attrs.evolve(BASE, labels="teacher-target", ema_decay=0.5, sampling="window", match_fraction=0.5)
    paper = builtin("tesla").apply(leaky)  # a base that turns levers on does not leak into the baseline
    assert (paper.engine, paper.labels, paper.sampling, paper.ema_decay, paper.match_fraction) == \
        ("tesla", "hard", "uniform", None, 1.0)
    assert builtin("tesla").describe() == "paper levers" and builtin("pad").describe() == "match_fraction=0.75"
    for r in BUILTIN:
        r.apply(BASE)  # every one is a valid config


# --- the service ------------------------------------------------------------------------------


class _Experts(FakeTrajectories):
    def close(self) -> None:
        pass


class _Stores:
    def __init__(self, traj: FakeTrajectories) -> None:
        self.traj = traj

    def read(self, url: str) -> FakeTrajectories:
        return self.traj


@attrs.frozen
class _Set:
    images: tuple
    labels: tuple
    soft_labels: object
    lr: float
    attrs: dict
    ipc: int = 2


class _Stage:
    """The DistillStage port: the real distillation loop on the fakes, one store per run
    directory (resumed when it is there)."""

    def __init__(self, traj: FakeTrajectories) -> None:
        self.traj = traj
        self.stores: dict = {}
        self.calls: list = []

    def __call__(self, cfg, model, data, trajectories, run_dir, sink, cancel):
        self.calls.append((cfg, Path(run_dir)))
        store = self.stores.setdefault(Path(run_dir), FakeSetStore())
        student = FakeStudent(cfg, layout=[("a", (1,)), ("b", (2,))])
        run = DistillRun(cfg=cfg, model=model, data=data, trajectories=self.traj, store=store, student=student,
                         engine=from_config(cfg, layout=student.layout), resume=True)
        result = distill(run, sink, cancel)
        if result.status != "completed":
            return result, None
        final = store.sets[-1]
        a = final.arrays
        return result, _Set(images=a["images"], labels=a["labels"], soft_labels=a.get("soft_labels"), lr=a["lr"],
                            attrs=final.attrs)


def _experts(collapsing: bool = False) -> _Experts:
    """Two experts; ``collapsing``: from epoch 1 on every teacher calls every image class 0."""
    return _Experts({e: [V([8.0 if collapsing and k >= 1 else 0.1 * e, 0.3 * k, -0.2 * k]) for k in range(6)]
                     for e in range(2)}, model=to_dict(MODEL), dataset={"name": "demo"})


def _bench(recipes, *, traj=None, baseline="tesla", cancel=None, out=Path("/bench")):
    traj = traj or _experts()
    stage, training = _Stage(traj), FakeEvaluationTraining()
    ports = QualityPorts(stores=_Stores(traj), load_data=lambda cfg: FakeData(image_shape=(1, 4, 4)), distill=stage,
                         training=training)
    req = QualityRequest(trajectories="experts.zarr", out=out, base=BASE, recipes=tuple(recipes), evaluation=EVAL,
                         baseline=baseline)
    prepared = prepare_quality(req, ports)
    return prepared.job(_Sink(), cancel), stage, training


class _Sink:
    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)


def test_every_recipe_is_distilled_on_the_same_experts_and_evaluated_beside_random_real():
    recipes = [builtin("tesla"), builtin("learned-teacher"), builtin("ema"), builtin("pad"), builtin("window")]
    result, stage, training = _bench(recipes)
    assert [c[1] for c in stage.calls] == [Path("/bench/recipes") / r.name for r in recipes]
    assert [c[0] for c in stage.calls] == [r.apply(BASE) for r in recipes]
    assert {c[0].seed for c in stage.calls} == {1}
    assert [r.status for r in result.rows] == ["completed"] * 5
    # random real first, then every set with the same networks, seeds and epochs
    assert training.calls[0][0] == "random_real"
    trained = [c for c in training.calls if c[0] == "train_on"]
    assert len(trained) == 6 and {(c[1], c[4], c[5]) for c in trained} == {("ConvNetD2", (3, 4), 7)}
    assert trained[0][6] == 0.01  # random real's lr; each set trains at its own learned lr
    for row, call in zip(result.rows, trained[1:]):
        assert call[6] == pytest.approx(row.lr)
        assert [s.mean for s in row.scores] == pytest.approx([(accuracy_of("ConvNetD2", 3, row.lr) +
                                                              accuracy_of("ConvNetD2", 4, row.lr)) / 2])
    rows = table(result)
    ref = result.reference[0]
    assert ref.mean == pytest.approx(40.0 + 3.5 + 10.0) and all(r.real_mean == ref.mean for r in rows)
    base = rows[0].mean
    assert [r.vs_baseline for r in rows] == pytest.approx([r.mean - base for r in rows])
    assert [r.vs_real for r in rows] == pytest.approx([r.mean - ref.mean for r in rows])
    assert rows[1].agreement is not None and rows[0].agreement is None  # learned labels are measured, hard are not
    assert verdicts(result)[-1] == "completed: tesla, learned-teacher, ema, pad, window"


def test_a_recipe_the_guard_stops_is_a_row_that_says_why():
    teacher = parse_recipe("teacher:labels=teacher-target,collapse_iterations=2")
    result, stage, _ = _bench([builtin("tesla"), teacher], traj=_experts(collapsing=True))
    tesla, stopped = result.rows
    assert tesla.status == "completed" and stopped.status == "stopped" and stopped.scores == ()
    assert stopped.reason.startswith("the labels collapsed: only 50.0% of the synthetic images")
    lines = verdicts(result)
    assert lines[-1] == f"stopped by the guard: teacher: {stopped.reason}"
    assert lines[-2] == "completed: tesla"
    assert table(result)[1].mean is None and result.status == "completed"


def test_the_verdicts_name_the_best_recipe_and_those_below_random_real():
    # the fake networks score 40 + seed + 1000 lr: the baseline's lr falls to its floor, a fixed lr stays at 0.05
    result, _, _ = _bench([builtin("tesla"), parse_recipe("fixed:lr_lr=0")])
    best, below, done = verdicts(result)
    assert best == "ConvNetD2: best fixed 93.50 +- 0.71 %, +50.00 points over tesla (random real 53.50 +- 0.71 %)"
    assert below == "ConvNetD2: completed below random real: tesla" and done == "completed: tesla, fixed"


def test_the_report_writes_csv_json_and_hands_the_rows_to_the_plot(tmp_path):
    result, _, _ = _bench([builtin("tesla"), builtin("ema")])
    drawn = []
    files = quality_report(result, tmp_path, lambda rows, baseline, title, path: drawn.append(
        (rows, baseline, title, path)) or path)
    with open(files["csv"]) as f:
        lines = list(csv.DictReader(f))
    assert [(r["recipe"], r["status"], r["model"]) for r in lines] == [("tesla", "completed", "ConvNetD2"),
                                                                      ("ema", "completed", "ConvNetD2")]
    assert float(lines[1]["mean"]) == pytest.approx(table(result)[1].mean, rel=1e-5)
    assert lines[1]["changes"] == "ema_decay=0.99" and lines[0]["vs_baseline"] == "0"
    (rows, baseline, title, path), = drawn
    assert rows == table(result) and baseline == "tesla" and path == tmp_path / "quality.png"
    assert title == "ConvNetD2 width 2, IPC 2, 6 iterations x 3 steps, 2 experts; 2 networks x 7 epochs each"
    data = json.loads(quality_json(result, files))
    assert [r["recipe"] for r in data["rows"]] == ["tesla", "ema"] and data["verdicts"] == verdicts(result)


def test_a_bench_run_again_resumes_its_recipes():
    traj = _experts()
    stage = _Stage(traj)
    ports = QualityPorts(stores=_Stores(traj), load_data=lambda cfg: FakeData(image_shape=(1, 4, 4)), distill=stage,
                         training=FakeEvaluationTraining())
    req = QualityRequest(trajectories="x", out=Path("/b"), base=BASE, recipes=(builtin("tesla"),), evaluation=EVAL)
    first = prepare_quality(req, ports).job(_Sink(), None)
    sink = _Sink()
    again = prepare_quality(req, ports).job(sink, None)
    assert again.rows[0].scores == first.rows[0].scores
    assert [e.message for e in sink.events if e.type == "warning"] == ["resumed from the checkpoint at iteration 6"]


def test_cancelling_stops_between_recipes():
    result, stage, _ = _bench([builtin("tesla"), builtin("ema")], cancel=StopAfter(1))
    assert result.status == "cancelled" and [r.recipe.name for r in result.rows] == ["tesla"] and len(stage.calls) == 1


@pytest.mark.parametrize("recipes,baseline,error,match", [
    ([Recipe("a"), Recipe("a")], "a", ConfigError, "recipe name\\(s\\) a given twice"),
    ([Recipe("a")], "tesla", ConfigError, "the baseline 'tesla' is not among the recipes \\(a\\)"),
    ([Recipe("tesla"), parse_recipe("long:max_start_epoch=6")], "tesla", DistillError,
     "recipe 'long' needs expert epoch 6 but the experts stop at epoch 5"),
    ([Recipe("tesla"), parse_recipe("bad:sampling=sideways")], "tesla", ConfigError, "recipe 'bad': sampling"),
])
def test_refusals_come_before_any_work(recipes, baseline, error, match):
    traj = _experts()
    stage = _Stage(traj)
    ports = QualityPorts(stores=_Stores(traj), load_data=lambda cfg: FakeData(image_shape=(1, 4, 4)), distill=stage,
                         training=FakeEvaluationTraining())
    req = QualityRequest(trajectories="x", out=Path("/b"), base=BASE, recipes=tuple(recipes), evaluation=EVAL,
                         baseline=baseline)
    with pytest.raises(error, match=match):
        prepare_quality(req, ports)
    assert stage.calls == []
