"""PAD's parameter selection: the slice (whole layers, deepest first) and the engines over it,
on the quadratic fake whose unrolled gradient over a slice has a closed form."""

import random

import pytest

from tesla.domain import engines, matching, sampling
from tesla.domain.config import ConfigError, DistillConfig
from tesla.domain.selection import Selection, deepest
from tests.unit.fakes import QuadraticCompute, V

DIM = 6
# a toy layout in flat order: conv (weight 2 + bias 1), norm (1 + 1), classifier (1)
LAYOUT = [("features.0.weight", [2, 1]), ("features.0.bias", [1]), ("features.1.weight", [1]),
          ("features.1.bias", [1]), ("classifier.weight", [1, 1])]


def _setup(steps=5, batch=2, seed=0, n_images=6):
    rng = random.Random(seed)
    images = [V(rng.uniform(-1, 1) for _ in range(DIM)) for _ in range(n_images)]
    start = V(rng.uniform(-1, 1) for _ in range(DIM))
    target = V(rng.uniform(-1, 1) for _ in range(DIM))
    plan = sampling.make_steps(n_images, steps, batch, rng, augment=False)
    return images, start, target, plan


def test_deepest_keeps_whole_layers_from_the_output_side():
    assert deepest(LAYOUT, 1.0) is None  # everything: the plain objective
    # 1/6 of 6 entries: the classifier alone (1 entry) is enough
    assert deepest(LAYOUT, 1 / 6) == Selection(start=5, total=6)
    # 2/6: classifier + the norm layer (its weight and bias together), never half of it
    assert deepest(LAYOUT, 0.3) == Selection(start=3, total=6)
    assert deepest(LAYOUT, 0.5) == Selection(start=3, total=6)
    # just over half: the conv layer (3 entries) must come in whole -> everything
    assert deepest(LAYOUT, 0.51) is None
    assert deepest(LAYOUT, 1e-9).start == 5
    assert Selection(start=3, total=6).size == 3


def test_deepest_on_the_paper_convnet_layout_cuts_at_a_block():
    # ConvNet depth 3 width 128 on 32 px, CIFAR-10: conv w/b, norm w/b per block, then the classifier
    layout = []
    channels = 3
    for i in range(3):
        layout += [(f"features.{4 * i}.weight", [128, channels, 3, 3]), (f"features.{4 * i}.bias", [128]),
                   (f"features.{4 * i + 1}.weight", [128]), (f"features.{4 * i + 1}.bias", [128])]
        channels = 128
    layout += [("classifier.weight", [10, 2048]), ("classifier.bias", [10])]
    total = sum(__import__("math").prod(s) for _, s in layout)
    sel = deepest(layout, 0.5)  # PAD's depth_ratio 0.5 (CIFAR-10 IPC 10)
    third_conv = 3 * 128 * 9 + 3 * 128 + 128 * 128 * 9 + 3 * 128
    assert sel == Selection(start=third_conv, total=total)
    assert sel.size / total >= 0.5


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, True, "half"])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="match_fraction"):
        deepest(LAYOUT, bad)
    with pytest.raises(ValueError):
        Selection(start=-1)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("start_at", [1, 3, 5])
def test_exact_equals_the_unrolled_closed_form_over_the_slice(alpha, start_at):
    images, start, target, plan = _setup()
    sel = Selection(start=start_at, total=DIM)
    ex = QuadraticCompute(images)
    out = matching.exact(ex, start, target, alpha, plan, selection=sel)
    un = QuadraticCompute(images)
    loss, lr_grad = un.unrolled(start, target, alpha, plan, select_from=start_at)
    assert out.loss == pytest.approx(loss, rel=1e-12)
    assert out.lr_grad == pytest.approx(lr_grad, rel=1e-10)
    for a, b in zip(ex.grads, un.grads):
        assert list(a) == pytest.approx(list(b), rel=1e-10, abs=1e-14)
    # the image gradient lives on the slice only (the identity Hessian keeps it there)
    assert all(x == 0.0 for g in ex.grads for x in g[:start_at])
    assert any(x != 0.0 for g in ex.grads for x in g[start_at:])
    # and it is not the full objective's
    full = QuadraticCompute(images)
    full_out = matching.exact(full, start, target, alpha, plan)
    assert full_out.loss != pytest.approx(out.loss)


def test_loss_and_distance_are_over_the_slice():
    images, start, target, plan = _setup()
    c = QuadraticCompute(images)
    out = matching.first_order(c, start, target, 0.3, plan, selection=Selection(start=4))
    d = sum((s - t) ** 2 for s, t in zip(start[4:], target[4:]))
    assert out.distance == pytest.approx(d, rel=1e-14)
    r = [w - t for w, t in zip(out.final[4:], target[4:])]
    assert out.loss == pytest.approx(sum(x * x for x in r) / d, rel=1e-14)


def test_first_order_is_its_formula_over_the_slice():
    alpha, k = 0.3, 2
    images, start, target, plan = _setup()
    c = QuadraticCompute(images)
    out = matching.first_order(c, start, target, alpha, plan, selection=Selection(start=k))
    # pass 1 by hand, then v = S (2/D)(a (target - start) + a^2 G); image j of step i gets -v/|b_i|
    w, G = start, V([0.0] * DIM)
    for s in plan:
        m = V([0.0] * DIM)
        for j in s.batch:
            m = m + images[j]
        g = w - m * (1.0 / len(s.batch))
        G = G + g
        w = w - g * alpha
    D = sum((a - b) ** 2 for a, b in zip(start[k:], target[k:]))
    v = (target - start) * alpha + G * (alpha * alpha)
    v = V(0.0 if i < k else x * (2.0 / D) for i, x in enumerate(v))
    expected = [V([0.0] * DIM) for _ in images]
    for s in plan:
        for j in s.batch:
            expected[j] = expected[j] + v * (-1.0 / len(s.batch))
    for a, b in zip(c.grads, expected):
        assert list(a) == pytest.approx(list(b), rel=1e-10, abs=1e-14)
    r = V(0.0 if i < k else x for i, x in enumerate(w - target))
    assert out.lr_grad == pytest.approx(-(2.0 / D) * r.dot(G), rel=1e-12)


@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_selecting_everything_equals_no_selection_bit_for_bit(engine):
    images, start, target, plan = _setup(steps=7)
    a, b = QuadraticCompute(images), QuadraticCompute(images)
    plain = engines.engine_for(engine)(a, start, target, 0.3, plan)
    whole = engines.engine_for(engine, selection=Selection(start=0, total=DIM))(b, start, target, 0.3, plan)
    assert plain == whole and a.grads == b.grads


def test_engines_from_config_place_the_selection_from_the_layout():
    cfg = DistillConfig(engine="exact", match_fraction=0.5)
    eng = engines.from_config(cfg, layout=LAYOUT)
    assert eng.selection == Selection(start=3, total=6)
    assert engines.from_config(DistillConfig(), layout=LAYOUT).selection is None
    assert engines.from_config(DistillConfig(engine="tesla")).selection is None  # no layout needed at 1.0
    with pytest.raises(ValueError, match="layout"):
        engines.from_config(cfg)
    images, start, target, plan = _setup()
    c = QuadraticCompute(images)
    out = eng(c, start, target, 0.2, plan)
    ref = QuadraticCompute(images)
    assert out == matching.exact(ref, start, target, 0.2, plan, selection=Selection(start=3, total=6))


def test_unrolled_refuses_a_selection_by_name():
    images, start, target, plan = _setup()
    with pytest.raises(ValueError, match="exact"):
        matching.unrolled(QuadraticCompute(images), start, target, 0.1, plan, selection=Selection(start=2))
    with pytest.raises(ConfigError, match="exact"):
        engines.engine_for("unrolled", selection=Selection(start=2))
    with pytest.raises(ConfigError, match="match_fraction"):
        DistillConfig(engine="unrolled", match_fraction=0.5)


def test_a_slice_that_does_not_move_is_refused():
    images, start, _, plan = _setup()
    target = V(list(start[:4]) + [start[4] + 1.0, start[5]])  # only entry 4 moves
    with pytest.raises(ValueError, match="match_fraction"):
        matching.exact(QuadraticCompute(images), start, target, 0.1, plan, selection=Selection(start=5))
    matching.exact(QuadraticCompute(images), start, target, 0.1, plan, selection=Selection(start=4))
