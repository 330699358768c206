"""PAD's parameter selection on a real ConvNet in float64, through ``TorchCompute.select``.

- ``exact`` over the slice equals autograd through every step of the sliced objective
  ``||S(w_N - target)||^2 / ||S(start - target)||^2`` (written here, independently of
  the engines and of ``TorchCompute.unrolled``), for the images and the lr;
- ``tesla`` over the slice equals its first-order formula with the restricted cotangent;
- selecting everything (``Selection(0)``) equals no selection bit for bit;
- the slice from ``deepest`` starts where a layer starts.
"""

import random

import pytest
import torch

from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.domain import engines, matching, sampling
from tesla.domain.config import DistillConfig, ModelConfig
from tesla.domain.selection import Selection, deepest

N_IMG, K, SIZE = 8, 4, 8
ce = torch.nn.functional.cross_entropy


def _relerr(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _problem(seed=0, soft=True):
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(depth=2, width=4, image_size=SIZE, num_classes=K), seed=seed).double()
    view = FlatView(model)
    start = view.flatten().double()
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=torch.float64)
    images = torch.randn(N_IMG, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    labels = (torch.softmax(torch.randn(N_IMG, K, generator=g, dtype=torch.float64), dim=1) if soft
              else torch.arange(N_IMG) % K)
    plan = sampling.make_steps(N_IMG, 5, 4, random.Random(seed), augment=False)
    return view, start, target, images, labels, plan


def _sliced_unrolled(view, start, target, images, labels, plan, alpha, k):
    """Autograd through all steps of the sliced objective: the oracle."""
    X = images.clone().requires_grad_(True)
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    w = start.clone().requires_grad_(True)
    for step in plan:
        idx = torch.tensor(step.batch)
        (g,) = torch.autograd.grad(ce(view(w, X[idx]), labels[idx]), w, create_graph=True)
        w = w - a * g
    L = ((w - target)[k:] ** 2).sum() / ((start - target)[k:] ** 2).sum()
    gx, ga = torch.autograd.grad(L, [X, a])
    return float(L.detach()), gx, float(ga)


@pytest.mark.parametrize("fraction", [0.2, 0.5])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_exact_over_the_slice_equals_unrolled_over_the_slice(fraction, soft):
    view, start, target, images, labels, plan = _problem(soft=soft)
    sel = deepest(view.layout, fraction)
    assert sel is not None and 0 < sel.start < view.num_params
    compute = TorchCompute(view, images, labels)
    out = matching.exact(compute, start, target, 0.1, plan, selection=sel)
    loss, gx, ga = _sliced_unrolled(view, start, target, images, labels, plan, 0.1, sel.start)
    assert out.loss == pytest.approx(loss, rel=1e-12)
    assert _relerr(compute.data_grad()[0], gx) < 1e-8
    assert abs(out.lr_grad - ga) / abs(ga) < 1e-8
    # it is a different objective from the full one
    full = TorchCompute(view, images, labels)
    matching.exact(full, start, target, 0.1, plan)
    assert _relerr(full.data_grad()[0], gx) > 1e-3


def test_first_order_over_the_slice_equals_its_formula():
    alpha = 0.3
    view, start, target, images, labels, plan = _problem(1)
    sel = deepest(view.layout, 0.5)
    k = sel.start
    compute = TorchCompute(view, images, labels)
    out = matching.first_order(compute, start, target, alpha, plan, selection=sel)
    ws, G = [start.clone()], torch.zeros_like(start)
    for step in plan:
        idx = torch.tensor(step.batch)
        w = ws[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(view(w, images[idx]), labels[idx]), w)
        ws.append(ws[-1] - alpha * g)
        G += g
    D = ((start - target)[k:] ** 2).sum()
    r = (ws[-1] - target).clone()
    r[:k] = 0
    assert out.loss == pytest.approx(float((r ** 2).sum() / D), rel=1e-12)
    assert out.lr_grad == pytest.approx(float(-(2 / D) * torch.dot(r, G)), rel=1e-10)
    v = (2 / D) * (alpha * (target - start) + alpha ** 2 * G)
    v[:k] = 0
    X = images.clone().requires_grad_(True)
    total = 0
    for w, step in zip(ws[:-1], plan):
        idx = torch.tensor(step.batch)
        w = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(view(w, X[idx]), labels[idx]), w, create_graph=True)
        total = total + torch.dot(g, v)
    (expected,) = torch.autograd.grad(total, X)
    assert _relerr(compute.data_grad()[0], expected) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_selection_of_everything_equals_no_selection_bit_for_bit(engine, dtype):
    view, start, target, images, labels, plan = _problem(2)
    view = FlatView(view.module.to(dtype))
    start, target, images, labels = start.to(dtype), target.to(dtype), images.to(dtype), labels.to(dtype)
    outs = []
    for sel in (None, Selection(start=0, total=view.num_params)):
        c = TorchCompute(view, images, labels)
        m = engines.engine_for(engine, selection=sel)(c, start, target, 0.1, plan)
        outs.append((m.loss, m.lr_grad, c.data_grad()[0]))
    assert outs[0][0] == outs[1][0] and outs[0][1] == outs[1][1]
    assert torch.equal(outs[0][2], outs[1][2])
    # and a config at match_fraction 1.0 asks for no selection at all
    assert engines.from_config(DistillConfig(engine=engine), layout=view.layout).selection is None


def test_select_zeroes_the_head_and_leaves_its_input():
    view, start, *_ = _problem()
    c = TorchCompute(view, torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, dtype=torch.long))
    before = start.clone()
    out = c.select(start, 7)
    assert torch.equal(start, before) and torch.all(out[:7] == 0) and torch.equal(out[7:], start[7:])


def test_deepest_cuts_where_a_layer_begins():
    view, *_ = _problem()
    sel = deepest(view.layout, 0.5)
    offsets, at = {}, 0
    for name, n in zip(view.names, view.numels):
        offsets.setdefault(name.rsplit(".", 1)[0], at)
        at += n
    assert sel.start in offsets.values()
    assert view.num_params - sel.start >= 0.5 * view.num_params
