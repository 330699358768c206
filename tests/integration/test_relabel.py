"""The teacher-relabel protocol: the teacher labels the augmented batch, CutMix is
consistent, runs are seeded, and a student learns from a real teacher on real images."""

from __future__ import annotations

import copy

import pytest
import torch

from tesla.adapters.data.demo import load_demo
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.relabel import (RelabelAugment, module_teacher, param_groups, relabel_loss,
                                          snapshot_teacher, train_relabel)
from tesla.adapters.torch.training import derive_seed, train_expert
from tesla.domain.config import ExpertConfig, ModelConfig
from tesla.domain.relabel import RelabelConfig
from tests.faults.common import one_thread  # noqa: F401 - autouse fixture: torch on one thread

SMALL = ModelConfig(width=16, image_size=16, depth=3, num_classes=10)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def tiny(demo):
    return demo.subset_per_class(2, seed=0)   # 20 images, 16 x 16


class LinearTeacher:
    """A fake teacher whose outputs the test knows: logits = flatten(x) @ W.T; records inputs."""

    def __init__(self, num_classes: int = 10, dim: int = 3 * 16 * 16, seed: int = 0) -> None:
        self.w = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * 0.05
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.reshape(x.shape[0], -1) @ self.w.T


def kl_by_hand(student_logits, teacher_logits, t):
    """sum_k p_t (log p_t - log p_s), averaged over the batch, with p = softmax(logits / T)."""
    log_ps = torch.log_softmax(student_logits / t, dim=1)
    log_pt = torch.log_softmax(teacher_logits / t, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def first_batch(images, cfg, seed):
    """The images of step (epoch 0, step 0) and the augmentation seed of that step."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(derive_seed(seed, "batches", 0)))
    return images[order[:min(cfg.batch_size, images.shape[0])]], derive_seed(seed, "augment", 0, 0)


def test_loss_is_the_kl_to_the_teacher_on_the_augmented_batch(tiny):
    cfg = RelabelConfig(epochs=1, batch_size=8, temperature=4.0)
    teacher = LinearTeacher()
    student = build_model(SMALL, seed=3)
    before = copy.deepcopy(student)
    losses = []
    train_relabel(student, tiny.train_x, teacher, tiny, cfg, seed=5, on_step=lambda e, s, loss: losses.append(loss))
    assert len(losses) == len(teacher.seen) == 3  # 20 images, batches of 8

    clean, aug_seed = first_batch(tiny.train_x, cfg, seed=5)
    augment = RelabelAugment(cfg, size=(16, 16))
    expected_input = augment.apply(clean, augment.sample(tuple(clean.shape), aug_seed))
    assert torch.equal(teacher.seen[0], expected_input)          # the teacher saw the augmented batch
    assert not torch.allclose(teacher.seen[0], clean)              # ... which is not the clean one

    with torch.no_grad():
        student_logits = before(expected_input)
        wanted = kl_by_hand(student_logits, expected_input.reshape(8, -1) @ teacher.w.T, 4.0)
        clean_targets = kl_by_hand(student_logits, clean.reshape(8, -1) @ teacher.w.T, 4.0)
    assert losses[0] == pytest.approx(float(wanted), rel=1e-5)
    assert abs(float(clean_targets) - losses[0]) > 1e-3 * abs(losses[0])  # a clean-batch teacher would differ


def test_cutmix_mixes_teacher_targets_with_the_images(tiny):
    cfg = RelabelConfig(crop=False, flip=False, cutmix=True)
    augment = RelabelAugment(cfg, size=(16, 16))
    x = tiny.train_x[:8]
    params = augment.sample(tuple(x.shape), seed=11)
    mixed = augment.apply(x, params)
    pairs = params.cutmix["mix_pairs"][0]
    boxes = params.cutmix["crop_src"][0]          # corners (x, y), inclusive
    teacher = LinearTeacher()
    logits = teacher(mixed)
    cut_any = False
    for i in range(8):
        j = int(pairs[i])
        (x1, y1), (x2, y2) = boxes[i, 0].long().tolist(), boxes[i, 2].long().tolist()
        mask = torch.zeros(1, 16, 16)
        mask[:, y1:y2 + 1, x1:x2 + 1] = 1.0
        # the image: the partner's pixels inside the box, its own outside
        assert torch.equal(mixed[i], x[i] * (1 - mask) + x[j] * mask)
        # the teacher's target is its output on exactly that mixture (linear teacher: the
        # two regions' contributions add up)
        parts = (x[i] * (1 - mask)).reshape(-1) @ teacher.w.T + (x[j] * mask).reshape(-1) @ teacher.w.T
        assert torch.allclose(logits[i], parts, atol=1e-5)
        cut_any |= bool(j != i and mask.sum() > 0)
    assert cut_any


def test_augmentation_is_seeded_and_leaves_the_global_rng_alone(tiny):
    augment = RelabelAugment(RelabelConfig(), size=(16, 16))
    x = tiny.train_x[:6]
    state = torch.get_rng_state()
    a, b, c = augment(x, seed=1), augment(x, seed=1), augment(x, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_is_deterministic_for_a_seed(tiny):
    cfg = RelabelConfig(epochs=2, batch_size=8)
    teacher = snapshot_teacher(build_model(SMALL, seed=9), FlatView(build_model(SMALL, seed=9)).flatten())

    def run(seed):
        student = build_model(SMALL, seed=0)
        acc = train_relabel(student, tiny.train_x, teacher, tiny, cfg, seed=seed)
        return acc, FlatView(student).flatten()

    (acc1, w1), (acc2, w2), (_, w3) = run(4), run(4), run(5)
    assert acc1 == acc2 and torch.equal(w1, w2)
    assert not torch.equal(w1, w3)


def test_loss_scaling_and_decay_groups():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    plain = relabel_loss(s, t, 3.0)
    assert float(plain) == pytest.approx(float(kl_by_hand(s, t, 3.0)), rel=1e-6)
    assert float(relabel_loss(s, t, 3.0, scale_loss=True)) == pytest.approx(9.0 * float(plain), rel=1e-6)
    model = build_model(SMALL, seed=0)
    decayed, free = param_groups(model, 0.01)
    assert decayed["weight_decay"] == 0.01 and free["weight_decay"] == 0.0
    assert decayed["params"] and all(p.dim() > 1 for p in decayed["params"])
    assert free["params"] and all(p.dim() == 1 for p in free["params"])  # biases and norm scales
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_refuses_bad_images(tiny):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        train_relabel(build_model(SMALL, seed=0), torch.zeros(0, 3, 16, 16), LinearTeacher(), tiny,
                      RelabelConfig(epochs=1))


def test_student_learns_from_a_teacher_on_real_images(demo):
    # teacher: a network trained on the whole demo training set (3,000 images)
    teacher_net = build_model(SMALL, seed=0)
    accs = train_expert(teacher_net, demo, ExpertConfig(epochs=8, lr=0.05, batch_size=128, eval_every=0), seed=0)
    assert accs[-1] > 30.0
    # student: 10 random real images per class, relabelled every batch; it never sees a
    # label, so anything above chance (10 %) came from the teacher (measured: 26.4 %; the
    # same images with hard labels and SGD reach 18.5 %)
    few = demo.subset_per_class(10, seed=1)
    cfg = RelabelConfig(epochs=30, batch_size=50, lr=0.003, temperature=4.0)
    teacher = snapshot_teacher(teacher_net, FlatView(teacher_net).flatten())
    acc = train_relabel(build_model(SMALL, seed=1), few.train_x, teacher, demo, cfg, seed=0)
    assert acc > 20.0, acc


def test_teachers_from_a_module_and_from_a_snapshot_agree(tiny):
    net = build_model(SMALL, seed=2)
    x = tiny.train_x[:4]
    with torch.no_grad():
        want = net(x)
        from_module = module_teacher(net)(x)
        from_snapshot = snapshot_teacher(build_model(SMALL, seed=7), FlatView(net).flatten())(x)
    assert not net.training
    assert torch.allclose(from_module, want) and torch.allclose(from_snapshot, want, atol=1e-6)
