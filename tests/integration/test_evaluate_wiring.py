"""The evaluation service on the torch adapters: the relabel protocol hands the teacher the
augmented batches of the set (and of its random reference), real-data teachers are
trained once and cached safely, expert teachers are the stored snapshots, and an
evaluation's record lands in the set's provenance with the arrays unchanged."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch

from tesla.adapters.data.demo import load_demo
from tesla.adapters.stores.evaluations import record_evaluation
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.relabel import RelabelAugment
from tesla.adapters.torch.teachers import TorchTeachers
from tesla.adapters.torch.trainers import TorchEvaluationTraining, TorchRelabelTraining
from tesla.adapters.torch.training import derive_seed
from tesla.app.services.evaluate import EvaluatePorts, EvaluateRequest, prepare_evaluation, real_teacher_recipe
from tesla.domain.config import ConfigError, EvalConfig, ModelConfig, to_dict
from tesla.domain.errors import UserError
from tesla.domain.ports import ListSink
from tesla.domain.relabel import RelabelConfig, TeacherChoice
from tests.faults.common import one_thread  # noqa: F401 - autouse fixture: torch on one thread

SMALL = ModelConfig(width=8, image_size=16, depth=2, num_classes=10)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


class LinearTeacher:
    """A teacher whose outputs the test knows (flatten(x) @ W.T); it records what it sees."""

    def __init__(self, seed: int = 0) -> None:
        self.w = torch.randn(10, 3 * 16 * 16, generator=torch.Generator().manual_seed(seed)) * 0.05
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.reshape(x.shape[0], -1) @ self.w.T


class GivenTeacher:
    """The Teachers port handing out one teacher (any kind asked for)."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def from_expert(self, url, expert, epoch, num_classes):
        return self.teacher, {"model": "linear", "epoch": epoch}

    def from_real(self, model, data, recipe, key, *, on_epoch=None):
        return self.teacher, {"test_accuracy": None, "cached": True}


@attrs.frozen
class Stored:
    images: np.ndarray
    labels: np.ndarray
    soft_labels: object = None
    lr: float = 0.01
    ipc: int = 2
    labels_kind: str = "hard"
    attrs: dict = attrs.Factory(lambda: {"model": to_dict(SMALL), "dataset": {"name": "demo"}})


def _first_augmented_batch(images: torch.Tensor, cfg: RelabelConfig, seed: int) -> torch.Tensor:
    """What the relabel loop feeds at epoch 0, step 0 for network ``seed``."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(derive_seed(seed, "batches", 0)))
    batch = images[order[:min(cfg.batch_size, images.shape[0])]]
    augment = RelabelAugment(cfg, size=(16, 16))
    return augment.apply(batch, augment.sample(tuple(batch.shape), derive_seed(seed, "augment", 0, 0)))


def test_the_service_relabels_every_augmented_batch_with_the_teachers_outputs(demo):
    syn_images = demo.subset_per_class(2, seed=3).train_x.numpy()
    syn = Stored(images=syn_images, labels=np.repeat(np.arange(10), 2))
    teacher = LinearTeacher()
    cfg = RelabelConfig(epochs=1, batch_size=8, temperature=4.0)
    ports = EvaluatePorts(read_set=lambda url: syn, load_data=lambda c: demo, training=TorchEvaluationTraining(),
                          relabel=TorchRelabelTraining(), teachers=GivenTeacher(teacher))
    req = EvaluateRequest(synthetic="s", cfg=EvalConfig(num_models=1, seed=5), protocol="relabel", relabel=cfg)
    sink = ListSink()
    result = prepare_evaluation(req, ports).job(sink, None)

    # 20 images in batches of 8: three steps for the set, three for its random reference
    assert len(teacher.seen) == 6
    want = _first_augmented_batch(torch.from_numpy(syn_images), cfg, seed=5)
    assert torch.equal(teacher.seen[0], want)                     # the set's batch, augmented, went to the teacher
    rdm_images, _ = TorchEvaluationTraining().random_real(demo, 2, [5 * 7919 + c for c in range(10)])
    assert torch.equal(teacher.seen[3], _first_augmented_batch(rdm_images, cfg, seed=5))  # same teacher, same way
    assert [(s.subject, s.protocol, s.labels) for s in result.scores] == [
        ("synthetic", "relabel", "teacher"), ("random-real", "relabel", "teacher")]
    assert all(0.0 <= s.mean <= 100.0 for s in result.scores)
    progress = [e for e in sink.of("progress") if e.label == "epochs"]
    assert progress[0].done == 0 and progress[-1].done == progress[-1].total == 2


def test_a_real_data_teacher_is_trained_once_and_cached(tmp_path, demo):
    few = demo.subset_per_class(20, seed=0)
    teachers = TorchTeachers("cpu", tmp_path / "teachers", open_trajectory_store)
    recipe = real_teacher_recipe(2, seed=1)
    key = {"data": {"name": "demo"}, "model": to_dict(SMALL), "recipe": to_dict(recipe)}
    epochs = []
    first, facts = teachers.from_real(SMALL, few, recipe, key, on_epoch=lambda i, e: epochs.append(e))
    assert epochs == [1, 2] and facts["cached"] is False and 0.0 <= facts["test_accuracy"] <= 100.0
    files = sorted(p.name for p in (tmp_path / "teachers").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")
    record = json.loads((tmp_path / "teachers" / files[0]).read_text())
    assert record["key"]["recipe"]["epochs"] == 2 and record["test_accuracy"] == facts["test_accuracy"]

    again, facts2 = teachers.from_real(SMALL, few, recipe, key, on_epoch=lambda i, e: epochs.append(e))
    assert facts2 == {"test_accuracy": facts["test_accuracy"], "cached": True} and epochs == [1, 2]
    x = few.train_x[:5]
    with torch.no_grad():
        assert torch.equal(first(x), again(x))

    # another recipe is another teacher; a damaged entry is trained again, never trusted
    _, other = teachers.from_real(SMALL, few, attrs.evolve(recipe, epochs=1),
                                  {**key, "recipe": to_dict(attrs.evolve(recipe, epochs=1))})
    assert other["cached"] is False
    npz = tmp_path / "teachers" / files[1]
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    _, repaired = teachers.from_real(SMALL, few, recipe, key)
    assert repaired["cached"] is False
    _, trusted = teachers.from_real(SMALL, few, recipe, key)
    assert trusted["cached"] is True


def test_an_expert_teacher_is_the_stored_snapshot(tmp_path, demo):
    url = str(tmp_path / "experts.zarr")
    net = build_model(SMALL, seed=4)
    flat = FlatView(net).flatten().detach()
    with open_trajectory_store(url, "a") as store:
        store.initialize(to_dict(SMALL), FlatView(net).layout, flat.numel(), {"name": "demo"})
        store.add_expert(torch.stack([flat * 0.5, flat]).numpy(), attrs={"test_accuracy": [None, 42.0]})
    teachers = TorchTeachers("cpu", tmp_path / "cache", open_trajectory_store)
    teacher, facts = teachers.from_expert(url, 0, None, num_classes=10)
    assert facts == {"model": SMALL.name, "epoch": 1, "test_accuracy": 42.0}
    x = demo.train_x[:4]
    with torch.no_grad():
        assert torch.allclose(teacher(x), net(x), atol=1e-6)
    with pytest.raises(ConfigError, match=r"has no complete expert 3 \(it has 0..0\)"):
        teachers.from_expert(url, 3, None, num_classes=10)
    with pytest.raises(ConfigError, match="epochs 0..1, not 5"):
        teachers.from_expert(url, 0, 5, num_classes=10)
    with pytest.raises(ConfigError, match="classify 10 classes but the data has 100"):
        teachers.from_expert(url, 0, 0, num_classes=100)


def test_expert_teacher_refusal_reaches_the_user_before_training(tmp_path, demo):
    syn = Stored(images=demo.subset_per_class(2, seed=0).train_x.numpy(), labels=np.repeat(np.arange(10), 2),
                 attrs={"model": to_dict(SMALL), "dataset": {"name": "demo"}, "trajectories": str(tmp_path / "no.zarr")})
    ports = EvaluatePorts(read_set=lambda url: syn, load_data=lambda c: demo, training=TorchEvaluationTraining(),
                          relabel=TorchRelabelTraining(),
                          teachers=TorchTeachers("cpu", tmp_path / "cache", open_trajectory_store))
    req = EvaluateRequest(synthetic="s", cfg=EvalConfig(num_models=1), protocol="relabel",
                          teacher=TeacherChoice.parse("expert:0"))
    with pytest.raises(UserError, match="no.zarr"):
        prepare_evaluation(req, ports)


@pytest.mark.parametrize("name", ["set.zarr", "set.h5"])
def test_an_evaluation_record_joins_the_provenance_and_leaves_the_arrays(tmp_path, name):
    url = str(tmp_path / name)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 3, 4, 4)).astype(np.float32)
    soft = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
    norm = {"kind": "meanstd", "mean": np.array([0.1, 0.2, 0.3], np.float32), "std": np.ones(3, np.float32)}
    with open_synthetic_store(url, "a") as store:
        store.write_set({"images": images, "labels": np.repeat(np.arange(3), 2), "soft_labels": soft, "extra": soft[:2]},
                        {"lr": 0.0123, "seed": 4, "trajectories": "t.zarr"}, normalizer_state=norm)
        record_evaluation(store, {"protocol": {"name": "mtt"}, "results": [{"subject": "synthetic", "mean": 50.0}]},
                          time="2025-01-01T00:00:00+00:00")
        record_evaluation(store, {"protocol": {"name": "relabel"}, "scores": [{"lrs": {"mean": 0.3}}]})
    back = open_synthetic_store(url, "r").read_set()
    assert np.array_equal(back.images, images) and np.array_equal(back.soft_labels, soft)
    assert np.array_equal(back.labels, np.repeat(np.arange(3), 2)) and np.array_equal(back.arrays["extra"], soft[:2])
    assert back.lr == pytest.approx(0.0123) and back.attrs["seed"] == 4 and back.attrs["trajectories"] == "t.zarr"
    assert np.array_equal(back.normalizer_state["mean"], norm["mean"]) and back.normalizer_state["kind"] == "meanstd"
    first, second = back.attrs["evaluations"]
    assert first == {"time": "2025-01-01T00:00:00+00:00", "protocol": {"name": "mtt"},
                     "results": [{"subject": "synthetic", "mean": 50.0}]}
    assert second["protocol"] == {"name": "relabel"} and second["scores"][0]["lrs"]["mean"] == 0.3


def test_groups_of_parallel_networks_report_every_network_by_its_index(demo):
    few = demo.subset_per_class(1, seed=0)
    seen = []
    accs = TorchEvaluationTraining("cpu", parallel=2).train_on(
        SMALL, few.train_x, few.train_y, demo, seeds=[0, 1, 2], epochs=2, lr=0.01,
        cfg=EvalConfig(batch_size=10, dsa=False), on_epoch=lambda i, e: seen.append((i, e)))
    assert sorted(seen) == [(i, e) for i in range(3) for e in (1, 2)]
    alone = TorchEvaluationTraining("cpu").train_on(SMALL, few.train_x, few.train_y, demo, seeds=[2], epochs=2,
                                                    lr=0.01, cfg=EvalConfig(batch_size=10, dsa=False))
    assert accs[2] == alone[0]  # network 2 of the second group is network 2 alone: same seed, same result
