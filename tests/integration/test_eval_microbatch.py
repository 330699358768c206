"""Evaluation training in micro-batches: the same networks, activation memory bounded.

A batch's loss is the mean over its images, so the size-weighted sum of its pieces'
means has the same gradient (docs/MATHS.md §13); the augmentation is drawn for the
whole batch before it is cut, so the pieces see exactly the images the whole batch
would. Checked here for the sequential loop and the stacked (vmapped) one, with hard
and soft labels; a network with batch norm keeps whole batches; the in-run evaluation
of a distillation keeps to the run's micro-batch.
"""

from __future__ import annotations

import pytest
import torch

from tesla.adapters.data.base import ImageSet
from tesla.adapters.data.demo import load_demo
from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.parallel import train_and_evaluate_parallel
from tesla.adapters.torch.training import EVAL_BATCH, eval_chunk, pieces, split_for, train_and_evaluate
from tesla.domain.config import ModelConfig

TINY = ModelConfig(width=8, image_size=16, depth=2, num_classes=10)
SEEDS = (3, 4)


@pytest.fixture(scope="module")
def tiny_data():
    demo = load_demo()
    te = torch.arange(100)
    return ImageSet(name="demo-tiny", num_classes=demo.num_classes, class_names=demo.class_names,
                    image_shape=demo.image_shape, normalizer=demo.normalizer, train_x=demo.train_x[:50],
                    train_y=demo.train_y[:50], test_x=demo.test_x[te], test_y=demo.test_y[te])


def _set(soft: bool):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(20, 3, 16, 16, generator=g)
    labels = torch.softmax(torch.randn(20, 10, generator=g), dim=1) if soft else torch.arange(20) % 10
    return images, labels


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_micro_batched_evaluation_trains_the_same_network(tiny_data, soft):
    images, labels = _set(soft)
    kw = dict(epochs=3, lr=0.01, batch_size=8, augment=DSA(), seed=3)
    whole, cut = build_model(TINY, seed=3), build_model(TINY, seed=3)
    sizes = {id(whole): [], id(cut): []}
    for m in (whole, cut):
        m.register_forward_hook(lambda mod, args, out: sizes[id(mod)].append(args[0].shape[0]))
    acc_whole = train_and_evaluate(whole, images, labels, tiny_data, **kw)
    acc_cut = train_and_evaluate(cut, images, labels, tiny_data, micro_batch=3, **kw)  # 8 = 3 + 3 + 2
    assert max(sizes[id(whole)]) == 100 and max(sizes[id(cut)]) == 3  # tested in chunks too
    assert sizes[id(cut)][:4] == [3, 3, 2, 3]
    before = _params(build_model(TINY, seed=3))
    assert not torch.allclose(_params(whole), before)  # it trained
    torch.testing.assert_close(_params(cut), _params(whole), rtol=1e-5, atol=1e-6)  # float32 sums, reordered
    assert abs(acc_cut - acc_whole) <= 1.0  # one test image in 100 may flip on rounding


def test_micro_batched_stacked_networks_train_the_same_networks(tiny_data):
    images, labels = _set(soft=True)
    kw = dict(epochs=2, lr=0.01, batch_size=8, augment=DSA(), seeds=SEEDS, mode="vmap")
    whole = [build_model(TINY, seed=s) for s in SEEDS]
    cut = [build_model(TINY, seed=s) for s in SEEDS]
    train_and_evaluate_parallel(whole, images, labels, tiny_data, **kw)
    train_and_evaluate_parallel(cut, images, labels, tiny_data, micro_batch=5, **kw)
    for a, b in zip(whole, cut):
        torch.testing.assert_close(_params(b), _params(a), rtol=1e-5, atol=1e-6)


def test_a_network_with_batch_norm_keeps_whole_batches(tiny_data):
    bn = ModelConfig(width=8, image_size=16, depth=2, num_classes=10, norm="batchnorm")
    assert split_for(build_model(bn, seed=0), 3) is None and split_for(build_model(TINY, seed=0), 3) == 3
    images, labels = _set(soft=False)
    a, b = build_model(bn, seed=0), build_model(bn, seed=0)
    kw = dict(epochs=2, lr=0.01, batch_size=8, seed=0)
    assert train_and_evaluate(a, images, labels, tiny_data, **kw) == \
        train_and_evaluate(b, images, labels, tiny_data, micro_batch=3, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pieces_and_test_chunks():
    x, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    assert [p[0].shape[0] for p in pieces(x, y, 4)] == [4, 4, 2]
    assert pieces(x, y, None)[0][0] is x and len(pieces(x, y, 10)) == 1
    assert eval_chunk(None) == EVAL_BATCH and eval_chunk(50) == 50 and eval_chunk(10**6) == EVAL_BATCH


def test_a_distillation_evaluates_within_its_micro_batch():
    from tesla.adapters.torch.dist import single_process
    from tesla.app.bootstrap import TorchParts
    from tesla.domain.config import DistillConfig, EvalConfig

    parts = TorchParts(single_process(torch.device("cpu")))
    parts.student(TINY, DistillConfig(ipc=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, micro_batch=4))
    evaluator = parts.evaluator(None, TINY, EvalConfig(num_models=1, epochs=1), 2, None)
    assert evaluator.micro_batch == 4
    parts.student(TINY, DistillConfig(ipc=2, syn_steps=2, expert_epochs=1, max_start_epoch=1))
    assert parts.evaluator(None, TINY, EvalConfig(num_models=1, epochs=1), 2, None).micro_batch is None
