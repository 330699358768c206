"""The recipe's levers through the distillation service on torch, the embedded data and real
stores, with a tiny model.

Resume equals an uninterrupted run with every lever on at once (learned-teacher labels
with their own momentum, the widening window, the image EMA, PAD's selection, and the
health guard's streaks), bit for bit; learned-teacher's initial set on torch is the
chosen real images with the mean logits of the experts that classify them correctly,
computed here with the network directly; the stored set is the moving average of the
checkpointed iterates, in FTD's float32 expression; the health the run reports is the
agreement and entropy of the teacher's softmax; and a run whose teacher labels collapse
stops with exit-3's NumericalError and keeps its last checkpoint.
"""

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tesla.adapters.data.demo import load_demo
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.app.bootstrap import distill_in_process as distill
from tesla.app.bootstrap import train_experts
from tesla.app.services.distill import NumericalError
from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig
from tesla.domain.ports import ListSink
from tests.unit.fakes import StopAfter

MODEL = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)


@pytest.fixture(scope="module")
def data():
    return load_demo()


@pytest.fixture(scope="module")
def experts(tmp_path_factory, data):
    url = str(tmp_path_factory.mktemp("experts") / "traj.zarr")
    store = open_trajectory_store(url, "a")
    train_experts(model_cfg=MODEL, expert_cfg=ExpertConfig(num_experts=2, epochs=3, batch_size=128, lr=0.05),
                  data=data, store=store, dataset={"name": "demo"})
    return url


def _cfg(**kw):
    base = dict(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=2, batch_syn=10, iterations=6, lr_img=10.0,
                lr_lr=1e-4, lr_init=0.01, checkpoint_every=2, seed=3, min_label_agreement=0)
    base.update(kw)
    return DistillConfig(**base)


def _run(data, experts, out, cfg, **kw):
    return distill(cfg=cfg, model_cfg=MODEL, data=data, trajectories=open_trajectory_store(experts),
                   store=open_synthetic_store(str(out), "a"), **kw)


EVERY_LEVER = dict(labels="learned-teacher", label_momentum=0.9, lr_label=5.0, sampling="window",
                   initial_max_start_epoch=1, window_iterations=4, ema_decay=0.8, match_fraction=0.6,
                   min_label_agreement=0.05, collapse_iterations=50, stall_iterations=50)


@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_resume_equals_uninterrupted_with_every_lever_on(tmp_path, data, experts, engine):
    cfg = _cfg(engine=engine, **EVERY_LEVER)
    sink = ListSink()
    whole = _run(data, experts, tmp_path / "a.zarr", cfg, sink=sink)
    assert whole.status == "completed" and whole.label_init["source"] == "experts"
    part = _run(data, experts, tmp_path / "b.zarr", cfg, cancel=StopAfter(3))
    assert part.status == "cancelled"
    ck = open_synthetic_store(str(tmp_path / "b.zarr")).latest_checkpoint()
    assert "ema_images" in ck[1] and "momentum_logits" in ck[1] and ck[2]["health"] == {"low_agreement": 0,
                                                                                         "stalled": 0}
    rest_sink = ListSink()
    rest = _run(data, experts, tmp_path / "b.zarr", cfg, resume=True, sink=rest_sink)
    a = open_synthetic_store(str(tmp_path / "a.zarr")).read_set()
    b = open_synthetic_store(str(tmp_path / "b.zarr")).read_set()
    assert np.array_equal(a.images, b.images) and np.array_equal(a.label_logits, b.label_logits)
    assert np.array_equal(a.soft_labels, b.soft_labels) and a.lr == b.lr and whole.loss == rest.loss
    assert a.attrs["label_init"] == b.attrs["label_init"] and a.attrs["label_health"] == b.attrs["label_health"]
    keep = ("loss", "lr", "expert", "start_epoch", "agreement", "label_entropy", "low_agreement", "stalled")
    assert [[getattr(e, k) for k in keep] for e in rest_sink.of("iteration")] == \
        [[getattr(e, k) for k in keep] for e in sink.of("iteration")][3:]
    # the window: iteration i (0-based) starts below 1 + (2 - 1) * i // 4
    assert all(e.start_epoch < 1 + (e.iteration - 1) // 4 for e in sink.of("iteration"))


def test_learned_teacher_starts_from_correct_images_with_the_experts_mean_logits(tmp_path, data, experts):
    cfg = _cfg(labels="learned-teacher", ipc=2)
    _run(data, experts, tmp_path / "s.zarr", cfg, cancel=StopAfter(0))
    _, arrays, attrs_ = open_synthetic_store(str(tmp_path / "s.zarr")).latest_checkpoint()
    traj = open_trajectory_store(experts)
    view = FlatView(build_model(MODEL, seed=0))
    teachers = [torch.as_tensor(traj.load(e, 3)) for e in (0, 1)]  # each expert's last snapshot
    per_class = 8  # 4 candidates per synthetic image
    pool = torch.cat([torch.as_tensor(data.sample_class(c, per_class, seed=cfg.seed * 100_003 + c))
                      for c in range(10)]).float()
    with torch.no_grad():
        logits = [view(w, pool) for w in teachers]
    preds = [z.argmax(1) for z in logits]
    chosen, correct = [], 0
    for c in range(10):
        block = range(c * per_class, (c + 1) * per_class)
        right = [i for i in block if preds[0][i] == c]
        chosen += (right + [i for i in block if preds[0][i] != c])[:2]
        correct += min(len(right), 2)
    assert np.array_equal(arrays["images"], pool[chosen].numpy())
    want = []
    for i in chosen:
        voters = [e for e in (0, 1) if preds[e][i] == i // per_class] or [0, 1]
        want.append(sum(logits[e][i] for e in voters) / len(voters))
    assert np.allclose(arrays["label_logits"], torch.stack(want).numpy(), atol=1e-5)
    assert attrs_["label_init"] == {"source": "experts", "chooser": 0, "experts": [0, 1], "epoch": 3,
                                    "correct": correct, "images": 20}


def test_the_stored_set_is_the_moving_average_of_the_iterates(tmp_path, data, experts):
    cfg = _cfg(ema_decay=0.75, checkpoint_every=1, iterations=3)
    states = []  # (images, ema) after k iterations: a run stopped there checkpoints them
    for k in range(4):
        _run(data, experts, tmp_path / f"k{k}.zarr", cfg, cancel=StopAfter(k))
        arrays = open_synthetic_store(str(tmp_path / f"k{k}.zarr")).latest_checkpoint()[1]
        states.append((torch.as_tensor(arrays["images"]), torch.as_tensor(arrays["ema_images"])))
    assert torch.equal(states[0][1], states[0][0])  # ema_0 = x_0
    for (_, before), (images, ema) in zip(states, states[1:]):
        assert torch.equal(ema, 0.75 * before + (1.0 - 0.75) * images)  # FTD's expression, float32, to the bit
    _run(data, experts, tmp_path / "s.zarr", cfg)
    final = open_synthetic_store(str(tmp_path / "s.zarr")).read_set()
    assert np.array_equal(final.images, states[3][1].numpy())
    assert not np.array_equal(final.images, states[3][0].numpy())


def test_the_reported_health_is_the_teachers_agreement_and_entropy(tmp_path, data, experts):
    cfg = _cfg(labels="teacher-last", iterations=1, checkpoint_every=1)
    first = tmp_path / "first.zarr"
    _run(data, experts, first, cfg, cancel=StopAfter(0))
    sink = ListSink()
    _run(data, experts, tmp_path / "s.zarr", cfg, sink=sink)
    (event,) = sink.of("iteration")
    images = torch.as_tensor(open_synthetic_store(str(first)).latest_checkpoint()[1]["images"])
    view = FlatView(build_model(MODEL, seed=0))
    teacher = torch.as_tensor(open_trajectory_store(experts).load(event.expert, 3))
    with torch.no_grad():
        p = F.softmax(view(teacher, images), dim=1).double()
    ids = torch.arange(10).repeat_interleave(2)
    assert event.agreement == pytest.approx(float((p.argmax(1) == ids).double().mean()))
    entropy = float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())
    assert event.label_entropy == pytest.approx(entropy, rel=1e-5)


def test_collapsed_teacher_labels_stop_the_run_and_keep_its_last_checkpoint(tmp_path, data, experts):
    cfg = _cfg(labels="teacher-target", min_label_agreement=1.0, collapse_iterations=3, iterations=8)
    sink = ListSink()
    with pytest.raises(NumericalError, match=r"^the labels collapsed: only .* for 3 iterations up to iteration 3, "
                                             r".*; the last checkpoint \(after iteration 2\) is kept for --resume$"):
        _run(data, experts, tmp_path / "s.zarr", cfg, sink=sink)
    store = open_synthetic_store(str(tmp_path / "s.zarr"))
    assert store.latest_checkpoint()[0] == 2 and sink.events[-1].status == "failed"
    with pytest.raises(Exception, match="no finished synthetic set"):
        store.read_set()
    # the thresholds may change on resume: with the check off, the run continues from iteration 2
    resumed = _run(data, experts, tmp_path / "s.zarr", attrs.evolve(cfg, min_label_agreement=0), resume=True)
    assert resumed.status == "completed" and resumed.iterations == 8
