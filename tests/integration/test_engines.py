"""The three gradient engines on a real ConvNet, in float64.

- ``exact`` equals ``unrolled`` (autograd through every step) to rounding, for the
  images and the lr, with hard and soft labels, with and without replayed augmentation;
- ``tesla`` equals the first-order formula, computed here independently of the engine;
- the three agree at one step;
- activation memory (bytes saved for backward) of ``tesla`` and ``exact`` does not grow
  with the number of steps, while ``unrolled``'s does.
"""

import pytest
import torch

import tesla
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.saved import SavedTensorsMeter
from tesla.domain.config import ModelConfig

N_IMG, K, SIZE = 8, 4, 8


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class ReplayAugment:
    """A small deterministic augmentation with the DSA interface (sample/apply):
    per-sample brightness shift, contrast scale and a horizontal flip."""

    def sample(self, shape, generator, device=None):
        b = shape[0]
        return {
            "shift": (torch.rand(b, generator=generator) - 0.5).to(device),
            "scale": (0.5 + torch.rand(b, generator=generator)).to(device),
            "flip": (torch.rand(b, generator=generator) < 0.5).to(device),
        }

    def apply(self, x, p):
        shift = p["shift"].to(x.dtype).view(-1, 1, 1, 1)
        scale = p["scale"].to(x.dtype).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        y = (x - mean) * scale + mean + shift
        return torch.where(p["flip"].view(-1, 1, 1, 1), y.flip(3), y)


def _dsa_or_replay():
    try:
        from tesla.adapters.torch.augment import DSA
    except ImportError:  # pragma: no cover - the DSA module is part of the package
        return ReplayAugment()
    return DSA()


def _problem(seed=0, soft=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(depth=2, width=4, image_size=SIZE, num_classes=K), seed=seed).to(dtype)
    view = FlatView(model)
    start = view.flatten().to(dtype)
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn(N_IMG, 3, SIZE, SIZE, generator=g, dtype=dtype)
    if soft:
        labels = torch.softmax(torch.randn(N_IMG, K, generator=g, dtype=dtype), dim=1)
    else:
        labels = torch.arange(N_IMG) % K
    return model, start, target, images, labels


def _run(engine, *, steps=4, lr=0.1, soft=False, augment=None, batch_size=4, seed=0):
    model, start, target, images, labels = _problem(seed, soft)
    gen = torch.Generator().manual_seed(123)
    return tesla.match_gradients(model, start, target, images, labels, lr, steps=steps, batch_size=batch_size,
                                 engine=engine, augment=augment, generator=gen)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("aug", ["none", "replay", "dsa"])
def test_exact_equals_unrolled(soft, aug):
    augment = {"none": None, "replay": ReplayAugment(), "dsa": _dsa_or_replay()}[aug]
    ex = _run("exact", soft=soft, augment=augment)
    un = _run("unrolled", soft=soft, augment=augment)
    assert ex.loss == pytest.approx(un.loss, rel=1e-12)
    assert _relerr(ex.images_grad, un.images_grad) < 1e-8
    assert abs(ex.lr_grad - un.lr_grad) / abs(un.lr_grad) < 1e-8
    assert ex.images_grad.abs().sum() > 0


@pytest.mark.parametrize("segment", [2, 3])
def test_exact_with_remade_weights_equals_unrolled(segment):
    """``exact`` keeping every segment-th weight vector (7 steps: partial last segment)."""
    augment = _dsa_or_replay()
    ex = _run("exact", steps=7, augment=augment)
    re_ = _run_exact_segment(segment, steps=7, augment=augment)
    un = _run("unrolled", steps=7, augment=augment)
    assert _relerr(re_.images_grad, un.images_grad) < 1e-8
    assert abs(re_.lr_grad - un.lr_grad) / abs(un.lr_grad) < 1e-8
    # remade with the same kernels: the numbers of keeping them, to rounding
    assert _relerr(re_.images_grad, ex.images_grad) < 1e-12 and re_.loss == pytest.approx(ex.loss, rel=1e-14)


def _run_exact_segment(segment, *, steps, augment):
    model, start, target, images, labels = _problem(0, False)
    return tesla.match_gradients(model, start, target, images, labels, 0.1, steps=steps, batch_size=4,
                                 engine="exact", augment=augment, generator=torch.Generator().manual_seed(123),
                                 segment=segment)


def test_exact_equals_unrolled_with_learned_labels():
    model, start, target, images, _ = _problem(1)
    logits = torch.randn(N_IMG, K, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outs = {e: tesla.match_gradients(model, start, target, images, logits, 0.2, steps=3, batch_size=4, engine=e,
                                     generator=torch.Generator().manual_seed(0), learned_labels=True)
            for e in ("exact", "unrolled")}
    assert _relerr(outs["exact"].labels_grad, outs["unrolled"].labels_grad) < 1e-8
    assert _relerr(outs["exact"].images_grad, outs["unrolled"].images_grad) < 1e-8


def test_tesla_equals_first_order_formula():
    """Recompute Eq. 6 with the factor 2 from scratch: pass 1 by hand, then one autograd call
    over sum_i v . g_i(w_i fixed, X[b_i]) with v = (2/D)(a(target-start) + a^2 G)."""
    lr, steps = 0.3, 5
    model, start, target, images, labels = _problem(2)
    batches = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([1, 3, 5, 7]),
               torch.tensor([0, 2, 4, 6]), torch.tensor([7, 6, 5, 4])]
    out = tesla.match_gradients(model, start, target, images, labels, lr, steps=steps, batches=batches, engine="tesla")
    view = FlatView(model)
    ce = torch.nn.functional.cross_entropy
    ws, G = [start.clone()], torch.zeros_like(start)
    for b in batches:
        w = ws[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(view(w, images[b]), labels[b]), w)
        ws.append(ws[-1] - lr * g)
        G += g
    D = ((start - target) ** 2).sum()
    wN = ws[-1]
    assert out.loss == pytest.approx(float(((wN - target) ** 2).sum() / D), rel=1e-12)
    assert out.lr_grad == pytest.approx(float(-(2 / D) * torch.dot(wN - target, G)), rel=1e-10)
    v = (2 / D) * (lr * (target - start) + lr ** 2 * G)
    X = images.clone().requires_grad_(True)
    total = 0
    for w, b in zip(ws[:-1], batches):
        w = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(view(w, X[b]), labels[b]), w, create_graph=True)
        total = total + torch.dot(g, v)
    (expected,) = torch.autograd.grad(total, X)
    assert _relerr(out.images_grad, expected) < 1e-10
    # and it really is an approximation of the exact gradient at this lr
    ex = tesla.match_gradients(model, start, target, images, labels, lr, steps=steps, batches=batches, engine="exact")
    assert _relerr(out.images_grad, ex.images_grad) > 1e-4


@pytest.mark.parametrize("soft", [False, True])
def test_engines_agree_at_one_step(soft):
    outs = {e: _run(e, steps=1, soft=soft, augment=ReplayAugment()) for e in ("tesla", "exact", "unrolled")}
    for e in ("tesla", "exact"):
        assert _relerr(outs[e].images_grad, outs["unrolled"].images_grad) < 1e-9
        assert outs[e].lr_grad == pytest.approx(outs["unrolled"].lr_grad, rel=1e-9)


def _saved_peak(engine, steps):
    model, start, target, images, labels = _problem(3, dtype=torch.float32)
    with SavedTensorsMeter() as meter:
        tesla.match_gradients(model, start, target, images, labels, 0.01, steps=steps, batch_size=4, engine=engine,
                              generator=torch.Generator().manual_seed(0))
    return meter.peak


def test_activation_memory_is_flat_in_steps_for_tesla_and_exact():
    peaks = {e: [_saved_peak(e, n) for n in (2, 8, 16)] for e in ("tesla", "exact", "unrolled")}
    for e in ("tesla", "exact"):
        assert peaks[e][0] > 0
        assert peaks[e][2] == peaks[e][0], (e, peaks[e])
    un = peaks["unrolled"]
    assert un[1] > 3 * un[0] and un[2] > 1.8 * un[1], un
    assert un[2] > 4 * peaks["exact"][2]


def test_public_api_validates_inputs():
    model, start, target, images, labels = _problem()
    with pytest.raises(ValueError, match="engine"):
        tesla.match_gradients(model, start, target, images, labels, 0.1, steps=2, engine="nope")
    with pytest.raises(ValueError, match="start"):
        tesla.match_gradients(model, start[:-1], target, images, labels, 0.1, steps=2)
    with pytest.raises(ValueError, match="batches"):
        tesla.match_gradients(model, start, target, images, labels, 0.1, steps=2, batches=[torch.arange(4)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_offloaded_weights_equal_device_weights_on_cuda(engine):
    from tesla.adapters.torch.compute import TorchCompute
    from tesla.domain import engines, matching, sampling
    import random

    model, start, target, images, labels = _problem(4)
    model, start, target, images, labels = (model.cuda(), start.cuda(), target.cuda(), images.cuda(), labels.cuda())
    view = FlatView(model)
    plan = sampling.make_steps(N_IMG, 5, 4, random.Random(0), augment=False)
    outs = []
    for offload in (False, True):
        c = TorchCompute(view, images, labels, offload=offload)
        m = engines.match(c, start, target, 0.1, plan, engine)
        outs.append((m.loss, c.data_grad()[0]))
        if offload:
            assert c.keep(start).device.type == "cpu"
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-12)
    assert _relerr(outs[1][1], outs[0][1]) < 1e-12
