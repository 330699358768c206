"""Hand-written fakes of the domain's ports, in pure Python (no torch, no numpy).

``QuadraticCompute`` is a student whose batch loss is
``0.5 * ||w - mean(x_j for j in batch)||^2``: its gradient is ``w - m_b``, its Hessian
is the identity and ``d(v . g)/dx_j = -v / |b|``. The unrolled gradient then has a
closed form (see ``unrolled``), which makes it a true oracle for the engines' maths.
"""

from __future__ import annotations

from typing import Sequence

from tesla.domain.ports import VJP, Step


class V(tuple):
    """A tiny immutable vector supporting +, -, and scalar *."""

    def __new__(cls, values):
        return super().__new__(cls, (float(v) for v in values))

    def __add__(self, other):  # type: ignore[override]
        return V(a + b for a, b in zip(self, other))

    def __sub__(self, other):
        return V(a - b for a, b in zip(self, other))

    def __mul__(self, k):  # type: ignore[override]
        return V(a * k for a in self)

    __rmul__ = __mul__

    def dot(self, other) -> float:
        return sum(a * b for a, b in zip(self, other))


def zeros(n: int) -> V:
    return V([0.0] * n)


class QuadraticCompute:
    """Compute port over images that are plain vectors, loss 0.5 ||w - mean(x_b)||^2."""

    def __init__(self, images: Sequence[V]) -> None:
        self.images = [V(x) for x in images]
        self.dim = len(self.images[0])
        self.grads = [zeros(self.dim) for _ in self.images]
        self.calls = {"grad": 0, "vjp": 0, "unrolled": 0}

    def _mean(self, batch) -> V:
        total = zeros(self.dim)
        for j in batch:
            total = total + self.images[j]
        return total * (1.0 / len(batch))

    def grad(self, w: V, step: Step) -> V:
        self.calls["grad"] += 1
        return w - self._mean(step.batch)

    def vjp(self, w: V, step: Step, v: V, *, wrt_weights: bool) -> VJP:
        self.calls["vjp"] += 1
        g = w - self._mean(step.batch)
        per_image = v * (-1.0 / len(step.batch))
        data = [(j, per_image) for j in step.batch]
        return VJP(data=data, hvp=v if wrt_weights else None, dot=v.dot(g), grad=g)

    def dot(self, a: V, b: V) -> float:
        return V(a).dot(b)

    def select(self, vec: V, start: int) -> V:
        """PAD's parameter selection: the entries before ``start`` set to zero."""
        return type(vec)(0.0 if i < start else x for i, x in enumerate(vec))

    def accumulate(self, step: Step, data_grad, scale: float) -> None:
        for j, gx in data_grad:
            self.grads[j] = self.grads[j] + gx * scale

    def data_grad(self):
        return self.grads, None

    def unrolled(self, start: V, target: V, alpha: float, steps: Sequence[Step], select_from: int = 0):
        """Closed form: w_{i+1} = (1-a) w_i + a m_i, so dw_N/dm_i = a (1-a)^(N-1-i) I.

        ``select_from``: the oracle of PAD's parameter selection, the loss over entries
        ``select_from ..`` only (L = ||S(w_N - target)||^2 / ||S(start - target)||^2); the
        domain's ``unrolled`` never passes it, the tests call it directly."""
        self.calls["unrolled"] += 1
        keep = (lambda x: self.select(x, select_from)) if select_from else (lambda x: x)
        n = len(steps)
        w = start
        ms = []
        for s in steps:
            m = self._mean(s.batch)
            ms.append(m)
            w = w * (1 - alpha) + m * alpha
        D = keep(start - target).dot(keep(start - target))
        r = keep(w - target)
        lam = r * (2.0 / D)
        for i, s in enumerate(steps):
            coef = alpha * (1 - alpha) ** (n - 1 - i) / len(s.batch)
            for j in s.batch:
                self.grads[j] = self.grads[j] + lam * coef
        # dw_N/da = sum_i (1-a)^(N-1-i) (m_i - w_i) with w_i the trajectory
        dw = zeros(len(start))
        wi = start
        for i, m in enumerate(ms):
            dw = dw * (1 - alpha) + (m - wi)
            wi = wi * (1 - alpha) + m * alpha
        return r.dot(r) / D, lam.dot(dw)
