"""Micro-batched steps and a host-resident synthetic set give the whole-batch numbers.

float64 ConvNets with per-sample normalisation (instance, group, layer norm and none),
replayed DSA, batches of 7 cut into pieces that do not divide them:

- ``grad`` (g_i), the ``tesla`` engine's image and label gradients, ``exact``'s image,
  label and lr gradients, ``unrolled``'s, and the batched pass 2 (``vjp_many``) equal
  the whole-batch ones to < 1e-10 relative;
- cutting DSA's recorded parameters by rows equals cutting its output;
- batch norm is refused; bytes saved for backward stay flat as the batch grows at a
  fixed micro-batch (and grow without one); ``auto_micro_batch`` fits its budget;
- a host-resident set (gather, compute, scatter) gives the images of a device-resident
  one after several SGD updates (CPU; and on CUDA where a GPU exists).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tesla.adapters.torch.augment import DSA, OPS
from tesla.adapters.torch.batched import BatchedTorchCompute
from tesla.adapters.torch.budget import auto_micro_batch, step_saved_bytes
from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.microbatch import has_batch_norm, pieces
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.saved import SavedTensorsMeter
from tesla.adapters.torch.synthetic import SyntheticState, soft_labels
from tesla.domain import engines, sampling
from tesla.domain.config import DistillConfig, ModelConfig
from tesla.domain.errors import ConfigError
from tesla.domain.ports import Step
from tests.faults.common import one_thread  # noqa: F401 - autouse fixture: torch on one thread

N_IMG, K, SIZE, BATCH, STEPS = 12, 4, 8, 7, 4
NORMS = ("instancenorm", "groupnorm", "layernorm", "none")
MICROS = (1, 3, 5)  # 7 = 1+1+..., 3+3+1, 5+2


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _problem(norm="instancenorm", labels="hard", seed=0, dtype=torch.float64, width=4, size=SIZE, n=N_IMG):
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(depth=2, width=width, image_size=size, num_classes=K, norm=norm), seed=seed)
    view = FlatView(model.to(dtype))
    start = view.flatten()
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    if labels == "hard":
        y = torch.arange(n) % K
    else:
        y = torch.randn(n, K, generator=g, dtype=dtype)
        y = torch.softmax(y, dim=1) if labels == "soft" else y
    return view, start, target, images, y


def _plan(augment=True, seed=7):
    return sampling.make_steps(N_IMG, STEPS, BATCH, random.Random(seed), augment=augment)


def _engine_run(engine, micro, *, norm="instancenorm", labels="hard", cls=TorchCompute, **kw):
    view, start, target, images, y = _problem(norm, labels)
    compute = cls(view, images, y, augment=DSA(), learned_labels=labels == "learned", micro_batch=micro, **kw)
    out = engine(compute, start, target, 0.1, _plan())
    dx, dy = compute.data_grad()
    return out, dx.clone(), None if dy is None else dy.clone()


def _assert_same(whole, cut, *, lr=True):
    (o0, dx0, dy0), (o1, dx1, dy1) = whole, cut
    assert dx0.abs().sum() > 0
    assert _relerr(dx1, dx0) < 1e-10
    if dy0 is not None:
        assert dy0.abs().sum() > 0 and _relerr(dy1, dy0) < 1e-10
    assert o1.loss == pytest.approx(o0.loss, rel=1e-10)
    if lr:
        assert abs(o1.lr_grad - o0.lr_grad) <= 1e-10 * abs(o0.lr_grad)


# --- the pieces ------------------------------------------------------------------------------

def test_pieces_cover_the_batch_in_order():
    assert pieces(7, None) == [(0, 7)]
    assert pieces(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert pieces(7, 7) == pieces(7, 50) == [(0, 7)]
    assert pieces(7, 1) == [(i, i + 1) for i in range(7)]


@pytest.mark.parametrize("op", OPS)
def test_dsa_rows_of_the_params_are_rows_of_the_output(op):
    """Every DSA op acts per sample: applying rows a:b of the parameters to x[a:b] gives
    rows a:b of the whole batch's output, exactly."""
    dsa = DSA(ops=(op,))
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = dsa.sample(x.shape, torch.Generator().manual_seed(2))
    whole = dsa.apply(x, params)
    for a, b in pieces(7, 3):
        part = params.rows(a, b)
        assert part.op == params.op and part.batch_size == b - a
        assert torch.equal(dsa.apply(x[a:b], part), whole[a:b])
    with pytest.raises(ValueError, match="outside"):
        params.rows(5, 9)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("micro", MICROS)
def test_micro_batched_step_gradient_equals_whole_batch(norm, micro):
    view, start, _, images, y = _problem(norm)
    whole = TorchCompute(view, images, y, augment=DSA())
    cut = TorchCompute(view, images, y, augment=DSA(), micro_batch=micro)
    for step in _plan():
        g0, g1 = whole.grad(start, step), cut.grad(start, step)
        assert g0.abs().sum() > 0 and _relerr(g1, g0) < 1e-10


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("micro", MICROS)
def test_tesla_engine_gradients_equal_whole_batch(norm, micro):
    """The first-order image and label gradients, end to end through the ``tesla`` engine."""
    run = engines.FirstOrder()
    _assert_same(_engine_run(run, None, norm=norm, labels="learned"),
                 _engine_run(run, micro, norm=norm, labels="learned"))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("micro", MICROS)
def test_exact_engine_gradients_equal_whole_batch(norm, micro):
    """Image, learned-label and lr gradients of the adjoint (its HVPs and dots are piecewise too)."""
    run = engines.Exact()
    _assert_same(_engine_run(run, None, norm=norm, labels="learned"),
                 _engine_run(run, micro, norm=norm, labels="learned"))


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_exact_with_hard_and_soft_labels_equals_whole_batch(labels):
    run = engines.Exact()
    _assert_same(_engine_run(run, None, labels=labels), _engine_run(run, 3, labels=labels))


@pytest.mark.parametrize("norm", ["instancenorm", "none"])
def test_unrolled_reference_equals_whole_batch(norm):
    run = engines.Unrolled()
    _assert_same(_engine_run(run, None, norm=norm, labels="learned"), _engine_run(run, 3, norm=norm, labels="learned"))


@pytest.mark.parametrize("micro", MICROS)
def test_batched_pass_two_in_micro_batches_equals_whole_batch(micro):
    """``vjp_many`` (vmap over stacked weights) cut at the same rows for every step."""
    run = engines.FirstOrder(chunk=3)
    whole = _engine_run(run, None, labels="learned", cls=BatchedTorchCompute, mode="vmap")
    cut = _engine_run(run, micro, labels="learned", cls=BatchedTorchCompute, mode="vmap")
    _assert_same(whole, cut)
    plain = _engine_run(engines.FirstOrder(), None, labels="learned")
    _assert_same(plain, cut)


def test_vjp_fields_are_sums_over_pieces():
    """``grad`` of a micro-batched VJP is g itself (the sum of the weighted g_k), ``dot`` is v . g."""
    view, start, target, images, y = _problem()
    step = _plan()[0]
    v = target - start
    whole = TorchCompute(view, images, y, augment=DSA()).vjp(start, step, v, wrt_weights=True)
    cut = TorchCompute(view, images, y, augment=DSA(), micro_batch=2).vjp(start, step, v, wrt_weights=True)
    assert _relerr(cut.grad, whole.grad) < 1e-10 and _relerr(cut.hvp, whole.hvp) < 1e-10
    assert cut.dot == pytest.approx(whole.dot, rel=1e-10)
    assert _relerr(cut.data[1], whole.data[1]) < 1e-10 and cut.data[1].shape == (BATCH, 3, SIZE, SIZE)


# --- refusals ---------------------------------------------------------------------------------

def test_batch_norm_is_refused_with_micro_batches():
    view, _, _, images, y = _problem("batchnorm")
    assert has_batch_norm(view.module)
    for cls in (TorchCompute, BatchedTorchCompute):
        with pytest.raises(ConfigError, match="batch norm"):
            cls(view, images, y, micro_batch=4)
        cls(view, images, y)  # whole batches: allowed, as before


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_bad_micro_batch_is_refused(bad):
    view, _, _, images, y = _problem()
    with pytest.raises(ConfigError, match="micro_batch"):
        TorchCompute(view, images, y, micro_batch=bad)


def test_set_on_is_checked():
    view, _, _, images, y = _problem()
    with pytest.raises(ConfigError, match="set_on"):
        TorchCompute(view, images, y, set_on="disk")
    with pytest.raises(ConfigError, match="set_on='host'"):
        TorchCompute(view, images, y, device="meta")
    with pytest.raises(ConfigError, match="set_on"):
        SyntheticState(images, y, 0.01, DistillConfig(), set_on="gpu")


def test_augmentation_params_that_cannot_be_cut_are_refused():
    class Opaque:
        def sample(self, shape, generator, device=None):
            return object()

        def apply(self, x, params):
            return x

    view, start, _, images, y = _problem()
    with pytest.raises(ConfigError, match="rows"):
        TorchCompute(view, images, y, augment=Opaque(), micro_batch=3).grad(start, _plan()[0])


# --- memory -------------------------------------------------------------------------------------

def _saved_step(batch, micro, wrt_weights):
    view, start, target, images, y = _problem(dtype=torch.float32, width=8, size=16, n=32)
    compute = TorchCompute(view, images, y, augment=DSA(), micro_batch=micro)
    step = Step(index=0, batch=tuple(range(batch)), aug_seed=3)
    with SavedTensorsMeter() as meter:
        compute.vjp(start, step, target - start, wrt_weights=wrt_weights)
    with SavedTensorsMeter() as grad_meter:
        compute.grad(start, step)
    return meter.peak, grad_meter.peak


@pytest.mark.parametrize("wrt_weights", [False, True], ids=["first-order", "exact"])
def test_saved_bytes_are_flat_in_the_batch_at_a_fixed_micro_batch(wrt_weights):
    cut = [_saved_step(b, 4, wrt_weights) for b in (4, 8, 32)]
    whole = [_saved_step(b, None, wrt_weights) for b in (4, 8, 32)]
    assert cut[0] == whole[0]  # one piece: the whole-batch computation
    assert cut[1] == cut[0] and cut[2] == cut[0], cut
    assert whole[1][0] > 1.8 * whole[0][0] and whole[2][0] > 3.5 * whole[1][0], whole
    assert whole[2][1] > 6 * whole[0][1], whole


def test_auto_micro_batch_fits_the_budget():
    view, *_ = _problem(dtype=torch.float32, width=8, size=16)
    shape = (3, 16, 16)
    five = step_saved_bytes(view, shape, 5)
    assert step_saved_bytes(view, shape, 6) > five > step_saved_bytes(view, shape, 4)
    assert auto_micro_batch(view, shape, five) == 5
    assert auto_micro_batch(view, shape, five - 1) == 4
    assert auto_micro_batch(view, shape, 1) == 1  # never zero
    with pytest.raises(ConfigError, match="budget"):
        auto_micro_batch(view, shape, 0)


# --- a host-resident set ------------------------------------------------------------------------

def _distil(set_on, *, engine, micro=None, iterations=3, device="cpu", labels="learned"):
    """A few distillation iterations by hand: compute, match, SGD update of the set."""
    view, _, _, images, logits = _problem(labels="learned")
    view = FlatView(view.module.to(device))
    cfg = DistillConfig(lr_img=10.0, lr_lr=1e-4, lr_label=1.0, lr_init=0.1, min_lr=1e-4)
    state = SyntheticState(images.to(device), (torch.arange(N_IMG) % K).to(device), cfg.lr_init, cfg,
                           logits=logits.to(device) if labels == "learned" else None, set_on=set_on)
    rng = random.Random(0)
    g = torch.Generator().manual_seed(1)
    for _ in range(iterations):
        start = view.flatten()
        target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=start.dtype).to(device)
        y = state.logits if labels == "learned" else state.class_ids
        compute = TorchCompute(view, state.images, y, augment=DSA(), learned_labels=labels == "learned",
                               micro_batch=micro, set_on=set_on)
        steps = sampling.make_steps(N_IMG, STEPS, BATCH, rng, augment=True)
        out = engines.engine_for(engine)(compute, start, target, state.lr_value, steps)
        images_grad, logits_grad = compute.data_grad()
        assert images_grad.device == state.images.device  # scattered back beside the set
        state.apply(images_grad, out.lr_grad, logits_grad)
    return state


@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_host_resident_set_gives_the_device_resident_images(engine):
    dev = _distil("device", engine=engine)
    host = _distil("host", engine=engine, micro=3)
    assert host.images.device.type == "cpu" and host.set_on == "host"
    a, b = dev.to_arrays(), host.to_arrays()
    assert sorted(a) == sorted(b) and "momentum_images" in a and "momentum_logits" in a
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert not np.array_equal(a["images"], _problem(labels="learned")[3].numpy())  # the set did move


def test_host_state_round_trips_through_checkpoint_arrays():
    state = _distil("host", engine="tesla", iterations=1)
    again = SyntheticState.from_arrays(state.to_arrays(), state.cfg, torch.device("cpu"), set_on="host")
    for key, value in state.to_arrays().items():
        np.testing.assert_array_equal(again.to_arrays()[key], value)


def test_soft_labels_of_a_host_set_come_back_to_the_host():
    view, start, _, images, _ = _problem()
    out = soft_labels(view, start, images, chunk=5)
    assert out.shape == (N_IMG, K) and out.device == images.device
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_IMG, dtype=out.dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_host_resident_set_with_cuda_compute_equals_device_resident(engine):
    dev = _distil("device", engine=engine, device="cuda")
    host = _distil("host", engine=engine, micro=3, device="cuda")
    assert dev.images.is_cuda and not host.images.is_cuda
    for key, value in dev.to_arrays().items():
        np.testing.assert_allclose(host.to_arrays()[key], value, rtol=1e-9, atol=1e-11, err_msg=key)
