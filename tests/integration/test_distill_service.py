"""The experts and distillation services on real (embedded) data and real stores.

Small configurations, but every path is the production one: expert training streamed to
a Zarr store, distillation with replayed DSA, checkpoints, resume, label strategies, the
NaN guard, input checks, and the events a watcher sees.
"""

import numpy as np
import pytest
import torch

from tesla.adapters.data.demo import load_demo
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tesla.app.bootstrap import distill_in_process as distill
from tesla.app.bootstrap import train_experts
from tesla.app.services.distill import DistillError, NumericalError
from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig, to_dict
from tesla.domain.ports import ListSink
from tests.unit.fakes import StopAfter

MODEL = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)


@pytest.fixture(scope="module")
def data():
    return load_demo()


@pytest.fixture(scope="module")
def experts_store(tmp_path_factory, data):
    url = str(tmp_path_factory.mktemp("experts") / "traj.zarr")
    sink = ListSink()
    store = open_trajectory_store(url, "a")
    result = train_experts(model_cfg=MODEL, expert_cfg=ExpertConfig(num_experts=2, epochs=3, batch_size=128, lr=0.05),
                           data=data, store=store, dataset={"name": "demo"}, sink=sink)
    assert result.status == "completed" and result.trained == (0, 1)
    types = [e.type for e in sink.events]
    assert types[0] == "run_started" and types[-1] == "run_finished" and types.count("epoch") == 6
    return url


def _cfg(**kw):
    base = dict(ipc=2, syn_steps=4, expert_epochs=1, max_start_epoch=2, batch_syn=10, iterations=6, lr_img=10.0,
                lr_lr=1e-4, lr_init=0.01, checkpoint_every=2, seed=3)
    base.update(kw)
    return DistillConfig(**base)


def _run(data, experts_store, out, cfg, **kw):
    return distill(cfg=cfg, model_cfg=MODEL, data=data, trajectories=open_trajectory_store(experts_store),
                   store=open_synthetic_store(str(out), "a"), **kw)


def test_experts_are_stored_complete_and_a_rerun_skips_them(experts_store, data):
    store = open_trajectory_store(experts_store, "a")
    assert store.expert_ids() == [0, 1]
    assert store.num_snapshots(0) == 4
    assert not np.array_equal(store.load(0, 0), store.load(0, 3))
    again = train_experts(model_cfg=MODEL, expert_cfg=ExpertConfig(num_experts=2, epochs=3, batch_size=128, lr=0.05),
                          data=data, store=store, dataset={"name": "demo"})
    assert again.trained == () and again.skipped == (0, 1)


def test_resume_equals_uninterrupted(tmp_path, data, experts_store):
    cfg = _cfg()
    whole = _run(data, experts_store, tmp_path / "a.zarr", cfg)
    assert whole.status == "completed" and whole.iterations == 6
    part = _run(data, experts_store, tmp_path / "b.zarr", cfg, cancel=StopAfter(3))
    assert part.status == "cancelled" and part.iterations == 3
    rest = _run(data, experts_store, tmp_path / "b.zarr", cfg, resume=True)
    assert rest.status == "completed" and rest.iterations == 6
    a = open_synthetic_store(str(tmp_path / "a.zarr")).read_set()
    b = open_synthetic_store(str(tmp_path / "b.zarr")).read_set()
    assert np.array_equal(a.images, b.images)
    assert a.lr == b.lr and whole.loss == rest.loss
    assert not np.array_equal(a.images, _initial_images(data, cfg))


def _initial_images(data, cfg):
    return torch.cat([data.sample_class(c, cfg.ipc, seed=cfg.seed * 100_003 + c) for c in range(10)]).numpy()


def test_events_tell_the_whole_story(tmp_path, data, experts_store):
    sink = ListSink()
    _run(data, experts_store, tmp_path / "s.zarr", _cfg(), sink=sink, decode=data.normalizer.decode, preview_every=3)
    its = sink.of("iteration")
    assert [e.iteration for e in its] == [1, 2, 3, 4, 5, 6] and all(e.total == 6 for e in its)
    assert all(np.isfinite(e.loss) and e.lr > 0 and e.expert in (0, 1) and 0 <= e.start_epoch < 2 for e in its)
    assert [e.iteration for e in sink.of("checkpoint")] == [2, 4, 6]
    assert sink.of("memory") and sink.of("memory")[0].host_rss > 0
    preview = sink.of("preview")[0]
    assert np.asarray(preview.pixels, dtype=np.uint8).ndim == 3
    assert sink.events[0].type == "run_started" and sink.events[-1].status == "completed"


@pytest.mark.parametrize("labels,kind", [("teacher-target", "teacher"), ("teacher-last", "teacher"),
                                         ("learned", "learned"), ("hard", "hard")])
def test_label_strategies_store_their_labels_and_provenance(tmp_path, data, experts_store, labels, kind):
    cfg = _cfg(labels=labels, iterations=2)
    result = _run(data, experts_store, tmp_path / "s.zarr", cfg)
    syn = open_synthetic_store(str(tmp_path / "s.zarr")).read_set()
    assert syn.attrs["label_source"]["kind"] == kind == result.label_source["kind"]
    if kind == "teacher":
        src = syn.attrs["label_source"]
        assert src["expert"] in (0, 1)
        assert src["epoch"] == (3 if labels == "teacher-last" else None) or labels == "teacher-target"
        assert syn.soft_labels.shape == (20, 10)
        assert np.allclose(syn.soft_labels.sum(1), 1, atol=1e-5)
    elif kind == "learned":
        assert syn.label_logits.shape == (20, 10)
    else:
        assert syn.soft_labels is None
    assert syn.lr > 0 and list(syn.labels) == [c for c in range(10) for _ in range(2)]


@pytest.mark.parametrize("engine", ["exact", "unrolled"])
def test_other_engines_run_in_the_service(tmp_path, data, experts_store, engine):
    result = _run(data, experts_store, tmp_path / "s.zarr", _cfg(engine=engine, iterations=2))
    assert result.status == "completed" and np.isfinite(result.loss)


def test_exact_and_unrolled_services_take_the_same_path(tmp_path, data, experts_store):
    torch.use_deterministic_algorithms(False)
    a = _run(data, experts_store, tmp_path / "a.zarr", _cfg(engine="exact", iterations=3, dsa=False))
    b = _run(data, experts_store, tmp_path / "b.zarr", _cfg(engine="unrolled", iterations=3, dsa=False))
    ia = open_synthetic_store(str(tmp_path / "a.zarr")).read_set().images
    ib = open_synthetic_store(str(tmp_path / "b.zarr")).read_set().images
    assert np.allclose(ia, ib, rtol=1e-4, atol=1e-5)
    assert a.lr == pytest.approx(b.lr, rel=1e-5)


def test_nan_stops_the_run_and_keeps_the_last_good_state(tmp_path, data, experts_store):
    sink = ListSink()
    cfg = _cfg(lr_img=1e38, iterations=6)
    with pytest.raises(NumericalError) as err:
        _run(data, experts_store, tmp_path / "s.zarr", cfg, sink=sink)
    msg = str(err.value)
    assert "iteration" in msg and "--lr-img" in msg and "--resume" in msg
    it, arrays, _ = open_synthetic_store(str(tmp_path / "s.zarr")).latest_checkpoint()
    assert np.isfinite(arrays["images"]).all() and float(arrays["lr"][0]) > 0
    assert sink.of("error") and sink.events[-1].status == "failed"
    assert it < 6


def test_learned_lr_stays_positive():
    from tesla.adapters.torch.synthetic import SyntheticState

    cfg = _cfg(lr_lr=1.0, lr_init=0.01, min_lr=1e-4)
    state = SyntheticState(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), cfg.lr_init, cfg)
    state.apply(torch.zeros(2, 3, 4, 4), lr_grad=5.0)  # a plain step would make the lr -4.99
    assert state.lr_value == pytest.approx(1e-4)
    state.apply(torch.zeros(2, 3, 4, 4), lr_grad=-20.0)  # momentum 0.5 keeps half of the +5 step
    assert state.lr_value > 1e-4


def test_inputs_are_checked_before_any_work(tmp_path, data, experts_store):
    with pytest.raises(DistillError, match="epoch"):
        _run(data, experts_store, tmp_path / "s.zarr", _cfg(max_start_epoch=3, expert_epochs=2))
    with pytest.raises(DistillError, match="batch_syn"):
        _run(data, experts_store, tmp_path / "s.zarr", _cfg(batch_syn=500))
    wrong = ModelConfig(depth=2, width=16, image_size=16, num_classes=10)
    with pytest.raises(DistillError, match="parameters|model"):
        distill(cfg=_cfg(), model_cfg=wrong, data=data, trajectories=open_trajectory_store(experts_store),
                store=open_synthetic_store(str(tmp_path / "s.zarr"), "a"))
    assert open_synthetic_store(str(tmp_path / "s.zarr"), "a").latest_checkpoint() is None


def test_resume_refuses_a_different_run(tmp_path, data, experts_store):
    _run(data, experts_store, tmp_path / "s.zarr", _cfg(), cancel=StopAfter(2))
    with pytest.raises(DistillError, match="ipc"):
        _run(data, experts_store, tmp_path / "s.zarr", _cfg(ipc=3), resume=True)
    # the usual fixes may change on resume
    done = _run(data, experts_store, tmp_path / "s.zarr", _cfg(lr_img=5.0, iterations=4), resume=True)
    assert done.status == "completed" and done.iterations == 4


def test_config_round_trip_recorded_with_the_set(tmp_path, data, experts_store):
    cfg = _cfg(iterations=2)
    _run(data, experts_store, tmp_path / "s.zarr", cfg)
    syn = open_synthetic_store(str(tmp_path / "s.zarr")).read_set()
    assert syn.attrs["distill"] == to_dict(cfg) and syn.attrs["model"] == to_dict(MODEL)


def test_evaluation_service_scores_a_set_beside_its_references(data):
    from tesla.app.bootstrap import evaluate_set
    from tesla.domain.config import EvalConfig

    sink = ListSink()
    images = torch.cat([data.sample_class(c, 2, seed=c) for c in range(10)])
    labels = torch.arange(10).repeat_interleave(2)
    cfg = EvalConfig(num_models=2, epochs=3, batch_size=64, models=("convnet", "resnet18"))
    small = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
    real = data.subset_per_class(10, seed=0)  # the full-real reference on a small real set keeps this quick
    scores = evaluate_set(images, labels, 0.01, real, model_cfg=small, cfg=cfg, ipc=2, full_real=True,
                          full_epochs=1, sink=sink)
    subjects = [(s.model, s.subject) for s in scores]
    assert ("ConvNetD2", "synthetic") in subjects and ("ResNet18", "synthetic") in subjects
    assert ("ConvNetD2", "random-real") in subjects and ("ResNet18", "full-real") in subjects
    assert all(len(s.accuracies) == 2 and 0 <= s.mean <= 100 and s.std >= 0 for s in scores)
    assert len(sink.of("evaluation")) == len(scores)


def test_batched_second_pass_in_the_service_equals_one_at_a_time(tmp_path, data, experts_store):
    a = _run(data, experts_store, tmp_path / "a.zarr", _cfg(iterations=2))
    b = _run(data, experts_store, tmp_path / "b.zarr", _cfg(iterations=2, second_pass_chunk=3))
    ia = open_synthetic_store(str(tmp_path / "a.zarr")).read_set().images
    ib = open_synthetic_store(str(tmp_path / "b.zarr")).read_set().images
    assert np.allclose(ia, ib, rtol=1e-5, atol=1e-6) and a.lr == pytest.approx(b.lr, rel=1e-6)


def test_experts_in_groups_equal_experts_one_by_one(tmp_path, data):
    def train(url, parallel):
        store = open_trajectory_store(str(url), "a")
        train_experts(model_cfg=MODEL, expert_cfg=ExpertConfig(num_experts=3, epochs=1, batch_size=256,
                                                               parallel=parallel, eval_every=0),
                      data=data, store=store, dataset={"name": "demo"})
        return open_trajectory_store(str(url))

    one, grouped = train(tmp_path / "one.zarr", 1), train(tmp_path / "grouped.zarr", 2)
    assert grouped.expert_ids() == [0, 1, 2]
    for e in range(3):
        assert np.allclose(one.load_trajectory(e), grouped.load_trajectory(e), rtol=1e-5, atol=1e-6)


def test_resuming_a_finished_teacher_run_keeps_its_soft_labels(tmp_path, data, experts_store):
    """A run that dies after its last checkpoint but before writing the set: --resume writes
    the set with the soft labels of the teacher the checkpoint recorded."""
    cfg = _cfg(labels="teacher-target", iterations=4, checkpoint_every=2)
    whole = _run(data, experts_store, tmp_path / "a.zarr", cfg)

    class Died(Exception):
        pass

    def die(*args, **kwargs):
        raise Died

    dying = open_synthetic_store(str(tmp_path / "b.zarr"), "a")
    dying.write_set = die  # the process dies right where the set would be written
    with pytest.raises(Died):
        distill(cfg=cfg, model_cfg=MODEL, data=data, trajectories=open_trajectory_store(experts_store), store=dying)
    assert not open_synthetic_store(str(tmp_path / "b.zarr")).has_set()
    again = _run(data, experts_store, tmp_path / "b.zarr", cfg, resume=True)
    a = open_synthetic_store(str(tmp_path / "a.zarr")).read_set()
    b = open_synthetic_store(str(tmp_path / "b.zarr")).read_set()
    assert again.iterations == whole.iterations == 4
    assert b.attrs["label_source"] == a.attrs["label_source"] and b.soft_labels is not None
    assert np.array_equal(a.soft_labels, b.soft_labels) and np.array_equal(a.images, b.images)
