"""The evaluation service's protocols, DD-Ranking's scores, progress and records, on fakes
(no torch): which runs are trained under which protocol, with which teacher, labels and
lr; the scores equal their written formula on a hand-made case; progress from the start."""

from __future__ import annotations

import math
import statistics

import attrs
import pytest

from tesla.app.services.evaluate import (REAL_LR, EvaluatePorts, EvaluateRequest, ScoreSettings, full_real_recipe,
                                         prepare_evaluation, real_teacher_recipe, score_roles)
from tesla.domain.config import ConfigError, EvalConfig, ModelConfig, to_dict
from tesla.domain.errors import NumericalError
from tesla.domain.ports import ListSink
from tesla.domain.relabel import RelabelConfig, TeacherChoice
from tests.unit.service_fakes import (FakeData, FakeEvaluationTraining, FakeLoadData, FakeRecord, FakeRelabelTraining,
                                      FakeTeachers, accuracy_of)

MODEL = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
IMAGES = tuple(("syn", i) for i in range(20))  # 2 images per class
LABELS = tuple(i // 2 for i in range(20))
SOFT = ("soft",) * 20
E1 = math.exp(-1.0)


def by_formula(x):
    """DD-Ranking's normalisation (e^x - e^-1) / (e - e^-1), written out again."""
    return (math.exp(x) - E1) / (math.e - E1)


@attrs.frozen
class StoredSetFake:
    images: tuple = IMAGES
    labels: tuple = LABELS
    soft_labels: object = SOFT
    lr: object = 0.02
    ipc: int = 2
    labels_kind: str = "soft"
    attrs: dict = attrs.Factory(lambda: {"model": to_dict(MODEL), "dataset": {"name": "demo"},
                                         "trajectories": "mem://experts"})


def _ports(training=None, syn=None):
    syn = syn or StoredSetFake()
    return EvaluatePorts(read_set=lambda url: syn, load_data=FakeLoadData(FakeData()),
                         training=training or FakeEvaluationTraining(), relabel=FakeRelabelTraining(),
                         teachers=FakeTeachers(), record=FakeRecord())


def _run(syn=None, training=None, cancel=None, **req):
    req.setdefault("cfg", EvalConfig(num_models=2, epochs=4))
    ports = _ports(training, syn=syn or StoredSetFake())
    prepared = prepare_evaluation(EvaluateRequest(synthetic="run/synthetic.zarr", **req), ports)
    sink = ListSink()
    result = prepared.job(sink, cancel)
    return result, ports, sink


# --- the relabel protocol ------------------------------------------------------------------------


def test_relabel_trains_the_set_and_its_random_reference_with_one_real_data_teacher():
    relabel = RelabelConfig(epochs=3, temperature=4.0)
    result, ports, sink = _run(protocol="relabel", relabel=relabel, teacher_epochs=6)
    # the teacher: the set's model trained on the real data with the published full-data recipe,
    # keyed by data, classes, shape, model and recipe (so the cache is one teacher per recipe and seed)
    (call,) = ports.teachers.calls
    assert call[:3] == ("from_real", "ConvNetD2", real_teacher_recipe(6, seed=0))
    assert call[3] == {"data": {"name": "demo", "root": None, "zca": False, "image_size": None}, "classes": 10,
                       "image_shape": [3, 16, 16], "model": to_dict(MODEL), "recipe": to_dict(real_teacher_recipe(6, 0))}
    syn_call, rdm_call = ports.relabel.calls
    # the set: its images, no stored labels, the teacher; the reference: random real images, the same teacher
    assert syn_call[2] == IMAGES and rdm_call[2][0] == ("real", 0, 0, 0)
    assert syn_call[3] is rdm_call[3] and syn_call[3].name == "real-ConvNetD2"
    assert syn_call[4] == rdm_call[4] == (0, 1) and syn_call[5] == rdm_call[5] == relabel
    assert ports.training.calls == [("random_real", 2, tuple(c * 1 for c in range(10)))]  # images only: no SGD run
    by = {s.subject: s for s in result.scores}
    assert list(by) == ["synthetic", "random-real"]
    want = [accuracy_of("ConvNetD2", s, 0.001) + 11.0 for s in (0, 1)]
    assert by["synthetic"].accuracies == by["random-real"].accuracies == tuple(want)
    assert all((s.protocol, s.labels, s.lr, s.augment) == ("relabel", "teacher", 0.001, True) for s in result.scores)
    evals = sink.of("evaluation")
    assert [(e.subject, e.protocol) for e in evals] == [("synthetic", "relabel"), ("random-real", "relabel")]
    assert result.protocol["teacher"] == {"kind": "real", "model": "ConvNetD2", "epochs": 6, "test_accuracy": 66.0,
                                          "cached": False}
    # the teacher's training shows as progress before the networks
    labels = [e.label for e in sink.of("progress")]
    assert labels[:labels.index("networks")] == ["teacher epochs"] * 8  # 0, 1..6, and done
    assert sink.of("progress")[labels.index("networks") - 1].done == 6


def test_relabel_teacher_from_an_expert_of_the_recorded_store_or_another():
    result, ports, _ = _run(protocol="relabel", teacher=TeacherChoice.parse("expert:1@3"))
    assert ports.teachers.calls == [("from_expert", "mem://experts", 1, 3, 10)]
    assert ports.relabel.calls[0][3].name == "expert1@3"
    assert result.protocol["teacher"] == {"kind": "expert", "trajectories": "mem://experts", "expert": 1,
                                          "model": "ConvNetD2", "epoch": 3, "test_accuracy": 55.0}
    _, ports, _ = _run(protocol="relabel", teacher=TeacherChoice.parse("expert:0"), trajectories="mem://other")
    assert ports.teachers.calls[0][1:4] == ("mem://other", 0, None)


def test_relabel_refusals_come_before_any_training():
    with pytest.raises(ConfigError, match="has no complete expert 5"):
        _run(protocol="relabel", teacher=TeacherChoice.parse("expert:5"))
    bare = StoredSetFake(attrs={"model": to_dict(MODEL), "dataset": {"name": "demo"}})
    with pytest.raises(ConfigError, match="records no trajectory store.*--trajectories"):
        _run(syn=bare, protocol="relabel", teacher=TeacherChoice.parse("expert:0"))
    # relabel does not need the set's learned lr ...
    result, _, _ = _run(syn=StoredSetFake(lr=None), protocol="relabel")
    assert [s.subject for s in result.scores] == ["synthetic", "random-real"]
    # ... but its hard-label score run (the mtt protocol) does, and says so before training
    training = FakeEvaluationTraining()
    with pytest.raises(ConfigError, match="no student lr"):
        _run(syn=StoredSetFake(lr=None), training=training, protocol="relabel", scores=True)
    assert training.calls == []


def test_relabel_uses_a_real_teacher_of_another_architecture():
    _, ports, _ = _run(protocol="relabel", teacher=TeacherChoice.parse("real:resnet18"))
    assert ports.teachers.calls[0][1] == "ResNet18" and ports.teachers.calls[0][3]["model"]["arch"] == "resnet18"


@pytest.mark.parametrize("text,want", [
    ("real", TeacherChoice()), ("real:resnet18", TeacherChoice(arch="resnet18")),
    ("expert:3", TeacherChoice(kind="expert", expert=3)), ("expert:3@20", TeacherChoice(kind="expert", expert=3, epoch=20)),
])
def test_teacher_choices_parse_and_print_back(text, want):
    assert TeacherChoice.parse(text) == want and str(want) == text


@pytest.mark.parametrize("text", ["", "teacher", "real:resnet50", "expert:", "expert:a", "expert:1@", "expert:1@x"])
def test_bad_teacher_choices_are_refused_with_the_forms(text):
    with pytest.raises(ConfigError, match=r"expert:I\[@EPOCH\]"):
        TeacherChoice.parse(text)


# --- DD-Ranking's scores through the service -------------------------------------------------------


class HandMade(FakeEvaluationTraining):
    """Accuracies a test writes down: by (images, labels, DSA), one per round."""

    TABLE = {("syn", "soft", True): [62.0, 58.0], ("syn", "hard", True): [45.0, 41.0],
             ("real", "hard", True): [50.0, 44.0], ("syn", "soft", False): [55.0, 53.0],
             ("real", "hard", False): [47.0, 40.0], ("syn", "hard", False): [43.0, 40.0]}
    FULL = [84.0, 86.0]

    def train_on(self, model, images, labels, data, *, seeds, epochs, lr, cfg, on_epoch=None):
        super().train_on(model, images, labels, data, seeds=seeds, epochs=epochs, lr=lr, cfg=cfg)
        kind = ("syn" if images[0][0] == "syn" else "real", "soft" if labels[0] == "soft" else "hard", cfg.dsa)
        return list(self.TABLE[kind])

    def train_on_real(self, model, data, recipe, seed, on_epoch=None):
        super().train_on_real(model, data, recipe, seed)
        return self.FULL[seed]


def _expected(convention_unit=100.0, w=0.5, g=0.5):
    t, full = HandMade.TABLE, HandMade.FULL
    syn, rdm = t[("syn", "soft", True)], t[("real", "hard", True)]
    syn_h, syn_n, rdm_n = t[("syn", "hard", True)], t[("syn", "soft", False)], t[("real", "hard", False)]
    hlr = [full[i] - syn_h[i] for i in range(2)]
    ior = [syn[i] - rdm[i] for i in range(2)]
    lrs = [by_formula((w * ior[i] - (1 - w) * hlr[i]) / convention_unit) for i in range(2)]
    ars = [by_formula((g * (syn[i] - rdm[i]) + (1 - g) * (syn_n[i] - rdm_n[i])) / convention_unit) for i in range(2)]
    return hlr, ior, lrs, ars


def test_scores_equal_their_formula_on_a_hand_made_case():
    result, ports, sink = _run(training=HandMade(), scores=True, full_epochs=3)
    subjects = [s.subject for s in result.scores]
    assert subjects == ["synthetic", "random-real", "synthetic hard", "synthetic no-aug", "random-real no-aug",
                        "full-real"]
    # the hard-label run: the set's class ids, the mtt protocol with DSA, the learned lr
    hard = ports.training.calls[3]
    assert hard[3] == LABELS and hard[-1] == 0.02 and ports.training.cfgs[2].dsa
    # no-aug runs: the same protocol without DSA; the set keeps its soft labels
    assert [c.dsa for c in ports.training.cfgs] == [True, True, True, False, False]
    assert ports.training.calls[4][3] == SOFT
    full = [c for c in ports.training.calls if c[0] == "train_on_real"]
    assert [c[3] for c in full] == [0, 1] and full[0][2] == full_real_recipe(EvalConfig(num_models=2, epochs=4), 3)

    (r,) = result.robustness
    hlr, ior, lrs, ars = _expected()
    assert r.label.hlr.values == pytest.approx(hlr) and r.label.ior.values == pytest.approx(ior)
    assert r.label.lrs.values == pytest.approx(lrs, abs=1e-12)
    assert r.label.lrs.mean == pytest.approx(statistics.fmean(lrs)) and r.label.lrs.std == pytest.approx(
        statistics.pstdev(lrs))
    assert r.augmentation.ars.values == pytest.approx(ars, abs=1e-12)
    assert r.label.lrs.mean != pytest.approx(by_formula((0.5 * statistics.fmean(ior) - 0.5 * statistics.fmean(hlr))
                                                        / 100))  # per round, then the mean
    assert r.sources["syn_hard"] == "synthetic hard" and r.sources["syn_naug"] == "synthetic no-aug"
    # the scores are in the RunFinished summary and the JSON
    (done,) = sink.of("run_finished")
    assert done.status == "completed" and done.summary["scores"][0]["lrs"]["values"] == pytest.approx(lrs)
    assert result.to_json()["scores"][0]["ars"]["mean"] == pytest.approx(statistics.fmean(ars))


def test_scores_in_the_package_convention_and_other_weights():
    settings = ScoreSettings(weight=0.8, ars_weight=0.3, convention="ddranking-0.2.0")
    result, _, _ = _run(training=HandMade(), scores=True, score_settings=settings)
    _, _, lrs, ars = _expected(convention_unit=1.0, w=0.8, g=0.3)
    (r,) = result.robustness
    assert r.label.lrs.values == pytest.approx(lrs) and r.augmentation.ars.values == pytest.approx(ars)
    assert r.label.convention == "ddranking-0.2.0" and r.label.weight == 0.8


@pytest.mark.parametrize("kw,match", [({"weight": 1.5}, "--score-weight"), ({"ars_weight": -0.1}, "--ars-weight"),
                                      ({"convention": "percent"}, "--score-convention")])
def test_bad_score_settings_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        ScoreSettings(**kw)


def test_a_hard_label_set_under_mtt_is_its_own_hard_label_run():
    result, ports, _ = _run(syn=StoredSetFake(soft_labels=None, labels_kind="hard"), scores=True)
    assert "synthetic hard" not in [s.subject for s in result.scores]
    # so is a soft set evaluated with --hard: its main run trains on the class ids
    forced, ports, _ = _run(hard=True, scores=True)
    assert "synthetic hard" not in [s.subject for s in forced.scores] and forced.scores[0].labels == "hard"
    assert ports.training.calls[1][3] == LABELS
    assert result.robustness[0].sources["syn_hard"] == "synthetic"
    assert score_roles(True, hard_run=False)["syn_hard"] == ("synthetic",)


def test_relabel_scores_switch_its_augmentation_off_and_train_the_hard_run_with_sgd():
    result, ports, _ = _run(protocol="relabel", scores=True)
    subjects = [(s.subject, s.protocol, s.labels, s.augment) for s in result.scores]
    assert subjects == [("synthetic", "relabel", "teacher", True), ("random-real", "relabel", "teacher", True),
                        ("synthetic hard", "mtt", "hard", True), ("synthetic no-aug", "relabel", "teacher", False),
                        ("random-real no-aug", "relabel", "teacher", False), ("full-real", "mtt", "hard", True)]
    no_aug = ports.relabel.calls[2][5]
    assert (no_aug.crop, no_aug.flip, no_aug.cutmix) == (False, False, False)


def test_a_protocol_without_augmentation_gets_an_augmented_pair():
    result, ports, _ = _run(training=HandMade(), scores=True, cfg=EvalConfig(num_models=2, epochs=4, dsa=False))
    assert [s.subject for s in result.scores][3:5] == ["synthetic aug", "random-real aug"]
    assert result.robustness[0].sources["syn_aug"] == "synthetic aug"
    assert result.robustness[0].sources["syn_naug"] == "synthetic"


# --- progress, records, cancel, failures --------------------------------------------------------------


@pytest.mark.parametrize("report", [True, False])
def test_progress_from_the_start_per_network_and_epoch_block(report):
    cfg = EvalConfig(num_models=2, epochs=300, models=("convnet", "resnet18"))
    result, _, sink = _run(training=FakeEvaluationTraining(report=report), cfg=cfg, full_real=True)
    kinds = [e.type for e in sink.events]
    assert kinds[:3] == ["run_started", "progress", "progress"] and kinds[-1] == "run_finished"
    assert sink.events[0].job == "evaluate" and sink.events[0].config["protocol"] == {"name": "mtt"}
    assert sink.events[0].config["distill"] == {"ipc": 2, "labels": "soft"}
    networks = [e for e in sink.of("progress") if e.label == "networks"]
    epochs = [e for e in sink.of("progress") if e.label == "epochs"]
    assert networks[0].done == 0 and networks[0].total == 12  # 3 runs x 2 models x 2 networks
    assert epochs[0].done == 0 and epochs[0].total == 2 * 2 * (300 + 300 + 30)
    assert networks[-1].done == 12 and epochs[-1].done == epochs[0].total
    assert [e.done for e in networks] == sorted(e.done for e in networks)
    if report:  # one event per network, and epochs in blocks of at most 1 % between them
        assert [e.done for e in networks] == list(range(13))
        assert 12 < len(epochs) <= 130 and all(b.done - a.done <= 300 for a, b in zip(epochs, epochs[1:]))
    # every evaluation comes after the progress that finished its networks
    first_eval = kinds.index("evaluation")
    assert any(e.label == "networks" and e.done == 2 for e in sink.events[:first_eval] if e.type == "progress")


def test_results_are_recorded_in_the_stores_provenance_when_asked():
    record = FakeRecord()
    ports = EvaluatePorts(read_set=lambda url: StoredSetFake(), load_data=FakeLoadData(FakeData()),
                          training=HandMade(), record=record)
    req = EvaluateRequest(synthetic="run/s.zarr", cfg=EvalConfig(num_models=2, epochs=4), scores=True, record=True)
    prepare_evaluation(req, ports).job(ListSink(), None)
    (rec,) = record.records["run/s.zarr"]
    assert rec["protocol"]["name"] == "mtt" and rec["evaluate"]["num_models"] == 2
    assert [r["subject"] for r in rec["results"]][:2] == ["synthetic", "random-real"]
    assert rec["scores"][0]["lrs"]["values"] == pytest.approx(_expected()[2])
    # not asked: nothing written
    prepare_evaluation(attrs.evolve(req, record=False), ports).job(ListSink(), None)
    assert len(record.records["run/s.zarr"]) == 1


class ReadOnly:
    def __call__(self, url, record):
        from tesla.domain.errors import StoreError

        raise StoreError(f"{url}: store is open read-only")


def test_a_store_that_refuses_the_record_costs_a_warning_not_the_results():
    ports = EvaluatePorts(read_set=lambda url: StoredSetFake(), load_data=FakeLoadData(FakeData()),
                          training=HandMade(), record=ReadOnly())
    req = EvaluateRequest(synthetic="s3://b/s.zarr", cfg=EvalConfig(num_models=2, epochs=4), scores=True, record=True)
    sink = ListSink()
    result = prepare_evaluation(req, ports).job(sink, None)
    assert result.status == "completed" and len(result.robustness) == 1
    (warning,) = sink.of("warning")
    assert "not recorded" in warning.message and "read-only" in warning.message and "--no-record" in warning.message
    assert sink.of("run_finished")[0].status == "completed"


class CancelAfterRuns:
    def __init__(self, n):
        self.n, self.asked = n, 0

    def is_set(self):
        self.asked += 1
        return self.asked > self.n


def test_cancel_between_runs_returns_what_finished():
    record = FakeRecord()
    ports = EvaluatePorts(read_set=lambda url: StoredSetFake(), load_data=FakeLoadData(FakeData()),
                          training=FakeEvaluationTraining(), record=record)
    req = EvaluateRequest(synthetic="s", cfg=EvalConfig(num_models=1, epochs=2), scores=True, record=True)
    sink = ListSink()
    result = prepare_evaluation(req, ports).job(sink, CancelAfterRuns(2))
    assert result.status == "cancelled" and [s.subject for s in result.scores] == ["synthetic", "random-real"]
    assert sink.of("run_finished")[0].status == "cancelled" and record.records == {}


class Diverges(FakeEvaluationTraining):
    def train_on(self, *a, **kw):
        raise FloatingPointError("loss is nan at epoch 3: lower the lr")


def test_a_diverging_network_is_an_error_event_and_a_numerical_error():
    ports = EvaluatePorts(read_set=lambda url: StoredSetFake(), load_data=FakeLoadData(FakeData()),
                          training=Diverges())
    sink = ListSink()
    with pytest.raises(NumericalError, match="lower the lr"):
        prepare_evaluation(EvaluateRequest(synthetic="s", cfg=EvalConfig(num_models=1)), ports).job(sink, None)
    assert sink.of("error")[0].message.startswith("loss is nan") and sink.of("run_finished")[0].status == "failed"


def test_the_default_mtt_rows_are_unchanged():
    result, ports, _ = _run(cfg=EvalConfig(num_models=2, epochs=4, seed=3))
    assert [(s.subject, s.protocol, s.labels, s.lr) for s in result.scores] == [
        ("synthetic", "mtt", "soft", 0.02), ("random-real", "mtt", "hard", REAL_LR)]
    assert result.to_json() == [s.to_json() for s in result.scores]  # a list of rows, as before --scores
    assert ports.training.calls[0][0] == "random_real"  # the reference's images are drawn before any training
    assert ports.training.calls[1] == ("train_on", "ConvNetD2", IMAGES, SOFT, (3, 4), 4, 0.02)


def test_the_tui_folds_an_evaluation_into_progress_and_per_subject_results():
    from tesla.app.tui.state import RunState

    _, _, sink = _run(training=HandMade(), scores=True)
    state = RunState()
    state.apply_all(sink.events)
    assert state.job == "evaluate" and state.status == "completed"
    assert state.unit == "epochs" and state.done == state.progress_total == 2 * (4 * 5 + 0) + 2 * 1
    assert [(r.model, r.subject) for r in state.results()][:2] == [("ConvNetD2", "synthetic"),
                                                                  ("ConvNetD2", "random-real")]
    assert {r.subject for r in state.results()} == {"synthetic", "random-real", "synthetic hard", "synthetic no-aug",
                                                    "random-real no-aug", "full-real"}
