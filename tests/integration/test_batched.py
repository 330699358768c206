"""The batched second pass (``BatchedTorchCompute.vjp_many``) equals one VJP at a time.

float64, ConvNet, every chunk size 1..N, with and without replayed DSA, hard, soft and
learned labels, batches of unequal size; plus the fallbacks (BatchNorm, bf16) and the
precision options' plumbing.
"""

import random

import pytest
import torch

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.batched import BatchedTorchCompute, check_precision, vmappable
from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.domain import matching, sampling
from tesla.domain.config import ModelConfig

N_IMG, K, SIZE, STEPS = 8, 4, 8, 5


def _problem(norm="instancenorm", labels="hard", seed=0):
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(depth=2, width=4, image_size=SIZE, num_classes=K, norm=norm), seed=seed).double()
    view = FlatView(model)
    start = view.flatten()
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=torch.float64)
    images = torch.randn(N_IMG, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    if labels == "hard":
        y = torch.arange(N_IMG) % K
    else:
        y = torch.randn(N_IMG, K, generator=g, dtype=torch.float64)
        y = torch.softmax(y, dim=1) if labels == "soft" else y
    return view, start, target, images, y


def _grads(compute_cls, chunk, *, augment=None, labels="hard", batch_size=4, norm="instancenorm", **kw):
    view, start, target, images, y = _problem(norm, labels)
    plan = sampling.make_steps(N_IMG, STEPS, batch_size, random.Random(7), augment=augment is not None)
    compute = compute_cls(view, images, y, augment=augment, learned_labels=labels == "learned", **kw)
    out = matching.first_order(compute, start, target, 0.1, plan, chunk=chunk)
    dx, dy = compute.data_grad()
    return out, dx.clone(), None if dy is None else dy.clone()


def _relerr(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("aug", [None, "dsa"])
@pytest.mark.parametrize("chunk", range(1, STEPS + 1))
def test_vjp_many_equals_one_at_a_time(chunk, aug):
    augment = DSA() if aug else None
    ref, dx_ref, _ = _grads(TorchCompute, 1, augment=augment)
    out, dx, _ = _grads(BatchedTorchCompute, chunk, augment=augment, mode="vmap")
    assert out.loss == ref.loss and out.lr_grad == ref.lr_grad  # pass 1 is untouched
    assert dx_ref.abs().sum() > 0
    assert _relerr(dx, dx_ref) < 1e-10


@pytest.mark.parametrize("labels", ["soft", "learned"])
def test_vjp_many_with_soft_and_learned_labels(labels):
    _, dx_ref, dy_ref = _grads(TorchCompute, 1, augment=DSA(), labels=labels)
    _, dx, dy = _grads(BatchedTorchCompute, 3, augment=DSA(), labels=labels, mode="vmap")
    assert _relerr(dx, dx_ref) < 1e-10
    if labels == "learned":
        assert _relerr(dy, dy_ref) < 1e-10
    else:
        assert dy is None and dy_ref is None


def test_unequal_batches_are_grouped_by_size():
    # 8 images in batches of 3: sizes 3, 3, 2, 3, 3 within one chunk of 5
    _, dx_ref, _ = _grads(TorchCompute, 1, augment=DSA(), batch_size=3)
    _, dx, _ = _grads(BatchedTorchCompute, STEPS, augment=DSA(), batch_size=3, mode="vmap")
    assert _relerr(dx, dx_ref) < 1e-10


def test_vjp_many_returns_dots_and_no_hvp():
    view, start, target, images, y = _problem()
    plan = sampling.make_steps(N_IMG, 3, 4, random.Random(0), augment=True)
    ws = [start + 0.01 * i for i in range(3)]
    v = target - start
    c = BatchedTorchCompute(view, images, y, augment=DSA(), mode="vmap")
    many = c.vjp_many(ws, plan, v)
    for w, step, got in zip(ws, plan, many):
        one = c.vjp(w, step, v, wrt_weights=False)
        assert got.hvp is None
        assert got.dot == pytest.approx(one.dot, rel=1e-12)
        assert torch.equal(got.data[0], one.data[0])
        assert _relerr(got.data[1], one.data[1]) < 1e-10
    with pytest.raises(ValueError, match="one per step"):
        c.vjp_many(ws[:2], plan, v)


def test_fallbacks_give_the_same_numbers():
    # BatchNorm (running statistics) and bf16 (autocast does not reach inside vmap) loop
    view, *_ = _problem("batchnorm")
    assert not vmappable(view.module)
    assert not BatchedTorchCompute(view, torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1).long(), mode="vmap").batched
    _, dx_ref, _ = _grads(TorchCompute, 1, norm="batchnorm")
    _, dx, _ = _grads(BatchedTorchCompute, 3, norm="batchnorm", mode="vmap")
    assert torch.equal(dx, dx_ref)
    view, *_ = _problem()
    c = BatchedTorchCompute(view, torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1).long(), mode="vmap", precision="bf16")
    assert not c.batched
    assert not BatchedTorchCompute(view, torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1).long()).batched  # auto on CPU


def test_precision_options():
    with pytest.raises(ValueError, match="precision"):
        check_precision("fp8")
    with pytest.raises(ValueError, match="mode"):
        _grads(BatchedTorchCompute, 1, mode="fast")
    _, dx_ref, _ = _grads(TorchCompute, 1, augment=DSA())
    # channels-last and tf32 (a no-op on CPU) do not change the float64 result
    _, dx_cl, _ = _grads(BatchedTorchCompute, 2, augment=DSA(), channels_last=True, precision="tf32", mode="vmap")
    assert _relerr(dx_cl, dx_ref) < 1e-10
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after every call
    # bf16 autocast runs the forward in bfloat16: close to, not equal to, float32
    view, start, target, images, y = _problem()
    view32 = FlatView(view.module.float())
    plan = sampling.make_steps(N_IMG, STEPS, 4, random.Random(7), augment=False)
    outs = {}
    for pr in ("fp32", "bf16"):
        c = BatchedTorchCompute(view32, images.float(), y, precision=pr)
        matching.first_order(c, start.float(), target.float(), 0.1, plan)
        outs[pr] = c.data_grad()[0]
    err = _relerr(outs["bf16"], outs["fp32"])
    assert 0 < err < 1.0
