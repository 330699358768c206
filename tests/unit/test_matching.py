"""The engines' protocol on a fake student whose exact gradient is known in closed form."""

import random

import pytest

from tesla.domain import engines, matching, sampling
from tests.unit.fakes import QuadraticCompute, V


def _setup(n_images=6, dim=3, steps=5, batch=2, seed=0):
    rng = random.Random(seed)
    images = [V(rng.uniform(-1, 1) for _ in range(dim)) for _ in range(n_images)]
    start = V(rng.uniform(-1, 1) for _ in range(dim))
    target = V(rng.uniform(-1, 1) for _ in range(dim))
    plan = sampling.make_steps(n_images, steps, batch, rng, augment=False)
    return images, start, target, plan


def _run(engine, alpha=0.3, **kw):
    images, start, target, plan = _setup(**kw)
    compute = QuadraticCompute(images)
    out = engines.match(compute, start, target, alpha, plan, engine)
    return out, compute.data_grad()[0], compute


@pytest.mark.parametrize("alpha", [0.01, 0.3, 0.9])
def test_exact_equals_closed_form_unrolled(alpha):
    ex, gx, _ = _run("exact", alpha)
    un, gu, _ = _run("unrolled", alpha)
    assert ex.loss == pytest.approx(un.loss, rel=1e-12)
    assert ex.lr_grad == pytest.approx(un.lr_grad, rel=1e-10)
    for a, b in zip(gx, gu):
        assert list(a) == pytest.approx(list(b), rel=1e-10, abs=1e-14)


def test_first_order_is_its_formula_and_not_exact():
    alpha = 0.3
    images, start, target, plan = _setup()
    fo, g_fo, _ = _run("tesla", alpha)
    # first-order: each image of step i gets a * lambda_N / |b_i| (no (1-a)^k chain)
    w = start
    for s in plan:
        m = V([0.0] * 3)
        for j in s.batch:
            m = m + images[j]
        w = w * (1 - alpha) + m * (alpha / len(s.batch))
    D = (start - target).dot(start - target)
    lam = (w - target) * (2.0 / D)
    expected = [V([0.0] * 3) for _ in images]
    for s in plan:
        for j in s.batch:
            expected[j] = expected[j] + lam * (alpha / len(s.batch))
    for a, b in zip(g_fo, expected):
        assert list(a) == pytest.approx(list(b), rel=1e-10, abs=1e-14)
    _, g_ex, _ = _run("exact", alpha)
    assert max(abs(x - y) for a, b in zip(g_fo, g_ex) for x, y in zip(a, b)) > 1e-3


def test_three_engines_agree_at_one_step():
    outs = {e: _run(e, 0.4, steps=1) for e in matching.ENGINES}
    ref_loss, ref_lr = outs["unrolled"][0].loss, outs["unrolled"][0].lr_grad
    for e, (m, g, _) in outs.items():
        assert m.loss == pytest.approx(ref_loss, rel=1e-12)
        assert m.lr_grad == pytest.approx(ref_lr, rel=1e-10)
        for a, b in zip(g, outs["unrolled"][1]):
            assert list(a) == pytest.approx(list(b), rel=1e-10, abs=1e-14)


def test_second_pass_uses_one_vjp_per_step_and_no_unrolled_graph():
    for engine in ("tesla", "exact"):
        _, _, compute = _run(engine, steps=7)
        assert compute.calls == {"grad": 7, "vjp": 7, "unrolled": 0}


def test_shards_of_the_second_pass_sum_to_the_whole():
    alpha = 0.2
    images, start, target, plan = _setup(steps=6)
    whole = QuadraticCompute(images)
    matching.first_order(whole, start, target, alpha, plan)
    parts = []
    for rank in range(3):
        c = QuadraticCompute(images)
        matching.first_order(c, start, target, alpha, plan, shard=(rank, 3))
        parts.append(c.grads)
    summed = [parts[0][j] + parts[1][j] + parts[2][j] for j in range(len(images))]
    for a, b in zip(summed, whole.grads):
        assert list(a) == pytest.approx(list(b), rel=1e-12, abs=1e-15)


def test_bad_inputs_are_refused_by_name():
    images, start, target, plan = _setup()
    c = QuadraticCompute(images)
    with pytest.raises(ValueError, match="engine"):
        engines.match(c, start, target, 0.1, plan, "magic")
    with pytest.raises(ValueError, match="lr"):
        engines.match(c, start, target, -0.1, plan, "tesla")
    with pytest.raises(ValueError, match="identical"):
        engines.match(c, start, start, 0.1, plan, "exact")
    with pytest.raises(ValueError, match="step"):
        engines.match(c, start, target, 0.1, [], "tesla")


class BatchedQuadratic(QuadraticCompute):
    """The fake with the optional batched pass-2 method, recording the group sizes."""

    def __init__(self, images):
        super().__init__(images)
        self.groups = []

    def vjp_many(self, ws, steps, v):
        self.groups.append(len(steps))
        return [self.vjp(w, s, v, wrt_weights=False) for w, s in zip(ws, steps)]


@pytest.mark.parametrize("chunk", [2, 3, 7, 50])
def test_chunked_second_pass_equals_one_at_a_time(chunk):
    images, start, target, plan = _setup(steps=7)
    one = QuadraticCompute(images)
    matching.first_order(one, start, target, 0.3, plan)
    many = BatchedQuadratic(images)
    matching.first_order(many, start, target, 0.3, plan, chunk=chunk)
    assert sum(many.groups) + many.calls["vjp"] - sum(many.groups) == 7
    assert all(g <= chunk for g in many.groups) and many.groups
    for a, b in zip(many.grads, one.grads):
        assert list(a) == pytest.approx(list(b), rel=1e-12, abs=1e-15)


class KeepingQuadratic(QuadraticCompute):
    """The fake with the optional ``keep``: stored weights come back as a wrapped copy
    (as a host copy would), and grad/vjp must accept that form."""

    class Kept:
        def __init__(self, w):
            self.w = w

    def __init__(self, images):
        super().__init__(images)
        self.kept = 0

    def keep(self, w):
        self.kept += 1
        return self.Kept(w)

    def _w(self, w):
        return w.w if isinstance(w, self.Kept) else w

    def grad(self, w, step):
        return super().grad(self._w(w), step)

    def vjp(self, w, step, v, *, wrt_weights):
        return super().vjp(self._w(w), step, v, wrt_weights=wrt_weights)


@pytest.mark.parametrize("engine", ["tesla", "exact"])
def test_kept_weights_give_the_same_gradients(engine):
    images, start, target, plan = _setup(steps=6)
    plain = QuadraticCompute(images)
    a = engines.match(plain, start, target, 0.3, plan, engine)
    kept = KeepingQuadratic(images)
    b = engines.match(kept, start, target, 0.3, plan, engine)
    # exact walks the steps backwards and keeps every w_i; tesla's pass 2 walks forwards
    # and remakes them, so it keeps none
    assert kept.kept == (6 if engine == "exact" else 0)
    assert a.loss == b.loss and a.lr_grad == b.lr_grad and kept.grads == plain.grads
    if engine == "tesla":  # the chunked pass 2 takes its steps out of order: it keeps them
        chunked = type("ChunkedKeeping", (KeepingQuadratic, BatchedQuadratic), {})(images)
        c = matching.first_order(chunked, start, target, 0.3, plan, chunk=3)
        assert chunked.kept == 6 and c.loss == a.loss


class Counted(V):
    """A vector that counts how many of its kind are alive (for the memory tests)."""

    alive = 0
    most = 0

    def __new__(cls, values):
        obj = super().__new__(cls, values)
        Counted.alive += 1
        Counted.most = max(Counted.most, Counted.alive)
        return obj

    def __del__(self):
        Counted.alive -= 1

    def __add__(self, other):
        return Counted(V.__add__(self, other))

    def __sub__(self, other):
        return Counted(V.__sub__(self, other))

    def __mul__(self, k):
        return Counted(V.__mul__(self, k))

    __rmul__ = __mul__


def _most_vectors_alive(engine: str, steps: int, **kwargs) -> int:
    images, start, target, plan = _setup(steps=steps)
    Counted.alive = Counted.most = 0
    engines.match(QuadraticCompute(images), Counted(start), Counted(target), 0.3, plan, engine, **kwargs)
    return Counted.most


def test_tesla_holds_a_constant_number_of_vectors_whatever_the_steps():
    """Memory flat in N, weights included: the most parameter vectors alive at once is the
    same at 5 and at 50 steps; ``exact`` holds N more (its adjoint needs every w_i)."""
    tesla = {n: _most_vectors_alive("tesla", n) for n in (5, 50)}
    exact = {n: _most_vectors_alive("exact", n) for n in (5, 50)}
    assert tesla[5] == tesla[50], tesla
    assert exact[50] - exact[5] >= 45, exact


def test_a_compute_that_returns_no_grad_is_asked_for_it():
    """VJP.grad is optional: without it pass 2 asks ``grad`` (one more pass), same result."""

    class NoGrad(QuadraticCompute):
        def vjp(self, w, step, v, *, wrt_weights):
            out = super().vjp(w, step, v, wrt_weights=wrt_weights)
            return type(out)(data=out.data, hvp=out.hvp, dot=out.dot)

    images, start, target, plan = _setup(steps=5)
    plain, bare = QuadraticCompute(images), NoGrad(images)
    a = matching.first_order(plain, start, target, 0.3, plan)
    b = matching.first_order(bare, start, target, 0.3, plan)
    assert (plain.calls["grad"], bare.calls["grad"]) == (5, 10)
    assert a == b and bare.grads == plain.grads


@pytest.mark.parametrize("segment", [1, 2, 3, 4, 5, 11, 12, 40])
def test_exact_with_remade_weights_equals_exact_with_kept_ones(segment):
    images, start, target, plan = _setup(steps=12)
    kept, remade = QuadraticCompute(images), QuadraticCompute(images)
    a = matching.exact(kept, start, target, 0.3, plan)
    b = matching.exact(remade, start, target, 0.3, plan, segment=segment)
    assert a == b and remade.grads == kept.grads
    # one more grad for every step that does not start a segment
    k = min(segment, 12)
    assert remade.calls["grad"] == 12 + sum(min(k, 12 - f) - 1 for f in range(0, 12, k))
    assert remade.calls["vjp"] == 12


def test_exact_with_sqrt_segments_holds_about_two_sqrt_n_vectors():
    assert [matching.sqrt_segment(n) for n in (1, 2, 4, 5, 16, 17, 100)] == [1, 2, 2, 3, 4, 5, 10]
    most = {n: _most_vectors_alive("exact", n, segment=matching.sqrt_segment(n)) for n in (16, 100)}
    # 4 + 4 kept at 16 steps, 10 + 10 at 100: 12 more, where keeping all of them is 84 more
    assert most[100] - most[16] <= 12 + 2, most
    with pytest.raises(ValueError, match="segment"):
        matching.exact(QuadraticCompute([[1.0]]), V([0.0]), V([1.0]), 0.1, _setup(steps=2)[3], segment=0)
