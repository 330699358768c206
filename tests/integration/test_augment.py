"""DSA: exact replay, seeded determinism, the published ranges and semantics, gradients."""

from __future__ import annotations

import math
from collections import Counter

import attrs
import pytest
import torch
from torch.nn import functional as F

from tesla.adapters.torch.augment import OPS, DSA, DSAParams, crop_shift, cutout_size

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
DEVICES = ["cpu", CUDA]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape=(4, 3, 16, 16), seed=0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=dtype).to(device)


def draws(op: str, shape, n: int = 40):
    dsa = DSA(ops=(op,))
    return [dsa.sample(shape, gen(s)) for s in range(n)]


# --- replay and determinism --------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_apply_replays_identically(op, device):
    dsa = DSA(ops=(op,))
    x = images(device=device)
    params = dsa.sample(x.shape, gen(5), device=x.device)
    assert params.op == op
    assert all(v.device == x.device for v in params.values.values())
    a, b = dsa.apply(x, params), dsa.apply(x, params)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device


@pytest.mark.parametrize("op", OPS)
def test_same_seed_same_params_different_seed_different_params(op):
    dsa = DSA(ops=(op,))
    p1, p2, p3 = (dsa.sample((8, 3, 32, 32), gen(s)) for s in (1, 1, 2))
    assert p1.op == p2.op == op
    assert p1.values.keys() == p2.values.keys()
    for k in p1.values:
        assert torch.equal(p1[k], p2[k])
        assert p1[k].shape == (8,)
    assert any(not torch.equal(p1[k], p3[k]) for k in p1.values)


def test_call_is_sample_then_apply():
    dsa = DSA()
    x = images()
    expected = dsa.apply(x, dsa.sample(x.shape, gen(9)))
    assert torch.equal(dsa(x, gen(9)), expected)


def test_one_op_per_call_chosen_uniformly():
    dsa = DSA()
    counts = Counter(dsa.sample((2, 3, 8, 8), gen(s)).op for s in range(1200))
    assert set(counts) == set(OPS)
    assert all(150 <= c <= 250 for c in counts.values()), counts


def test_from_strategy_and_bad_ops():
    assert DSA.from_strategy("color_crop_cutout_flip_scale_rotate").ops == OPS
    assert DSA.from_strategy("flip_rotate").ops == ("flip", "rotate")
    assert DSA("crop").ops == ("crop",)
    with pytest.raises(ValueError, match="unknown DSA op.*'blur'"):
        DSA.from_strategy("color_blur")
    with pytest.raises(ValueError, match="at least one op"):
        DSA(ops=())


def test_params_are_frozen_and_must_match_the_batch():
    dsa = DSA(ops=("flip",))
    params = dsa.sample((4, 3, 8, 8), gen(0))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        params.op = "crop"
    with pytest.raises(TypeError):
        params.values["flip"] = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="drawn for 4 images"):
        dsa.apply(images((3, 3, 8, 8)), params)
    assert params.to("cpu") is params


# --- ranges and semantics -----------------------------------------------------------------

def test_flip_only_flips():
    x = images((16, 3, 8, 8))
    for params in draws("flip", x.shape, 10):
        out = DSA(ops=("flip",)).apply(x, params)
        for i, flipped in enumerate(params["flip"].tolist()):
            assert torch.equal(out[i], x[i].flip(-1) if flipped else x[i])
    frac = torch.cat([p["flip"] for p in draws("flip", (16, 3, 8, 8), 50)]).float().mean()
    assert 0.4 < frac < 0.6


@pytest.mark.parametrize("side,limit", [(32, 4), (64, 8)])
def test_crop_shift_range(side, limit):
    assert crop_shift(side) == limit
    shifts = torch.cat([torch.cat([p["shift_y"], p["shift_x"]]) for p in draws("crop", (16, 3, side, side))])
    assert shifts.dtype == torch.int64
    assert shifts.min() == -limit and shifts.max() == limit


def published_crop(x: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """The published rand_crop indexing (1 px zero pad, clamped indices), for comparison."""
    b, _, h, w = x.shape
    gb, gy, gx = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    gy = torch.clamp(gy + ty.view(b, 1, 1) + 1, 0, h + 1)
    gx = torch.clamp(gx + tx.view(b, 1, 1) + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])
    return x_pad.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def test_crop_is_the_published_integer_translation():
    x = images((8, 3, 32, 32))
    for params in draws("crop", x.shape, 10):
        out = DSA(ops=("crop",)).apply(x, params)
        assert torch.equal(out, published_crop(x, params["shift_y"], params["shift_x"]))
    # and one case by hand: shift right by 2 columns -> content moves left, zeros on the right
    shifted = DSA(ops=("crop",)).apply(x[:1], DSAParams("crop", {"shift_y": torch.tensor([0]),
                                                                  "shift_x": torch.tensor([2])}))
    assert torch.equal(shifted[0, :, :, :30], x[0, :, :, 2:])
    assert torch.equal(shifted[0, :, :, 30:], torch.zeros(3, 32, 2))


def test_cutout_zeroes_one_square_of_half_the_side():
    assert cutout_size(32) == 16
    x = torch.ones(16, 3, 32, 32)
    for params in draws("cutout", x.shape, 10):
        out = DSA(ops=("cutout",)).apply(x, params)
        for i in range(x.shape[0]):
            hole = out[i, 0] == 0
            assert torch.equal(out[i, 1] == 0, hole) and torch.equal(out[i, 2] == 0, hole)
            rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
            assert hole.sum() == len(rows) * len(cols)  # a rectangle
            cy, cx = int(params["center_y"][i]), int(params["center_x"][i])
            assert len(rows) == min(cy + 8, 32) - max(cy - 8, 0)
            assert len(cols) == min(cx + 8, 32) - max(cx - 8, 0)
            if 8 <= cy <= 24 and 8 <= cx <= 24:
                assert hole.sum() == 256
    centres = torch.cat([torch.cat([p["center_y"], p["center_x"]]) for p in draws("cutout", (16, 3, 32, 32))])
    assert centres.min() >= 0 and centres.max() <= 32


def test_color_ranges_and_formula():
    ps = draws("color", (32, 3, 8, 8))
    b = torch.cat([p["brightness"] for p in ps])
    s = torch.cat([p["saturation"] for p in ps])
    c = torch.cat([p["contrast"] for p in ps])
    assert -0.5 <= b.min() and b.max() < 0.5 and b.min() < -0.4 and b.max() > 0.4
    assert 0.0 <= s.min() and s.max() < 2.0 and s.max() > 1.8
    assert 0.5 <= c.min() and c.max() < 1.5
    x = images((2, 3, 8, 8))
    params = DSAParams("color", {"brightness": torch.tensor([0.25, -0.1]), "saturation": torch.tensor([1.0, 0.0]),
                                 "contrast": torch.tensor([1.0, 1.0])})
    out = DSA().apply(x, params)
    torch.testing.assert_close(out[0], x[0] + 0.25)  # saturation 1, contrast 1: brightness only
    gray = (x[1] - 0.1).mean(0, keepdim=True).expand(3, 8, 8)  # saturation 0: channel mean
    torch.testing.assert_close(out[1], gray)
    # no clamping in model space
    big = DSA().apply(torch.full((2, 3, 8, 8), 5.0), params)
    assert big.max() > 5.0


def test_scale_and_rotate_ranges():
    sx = torch.cat([torch.cat([p["scale_x"], p["scale_y"]]) for p in draws("scale", (16, 3, 8, 8))])
    assert 1 / 1.2 <= sx.min() and sx.max() <= 1.2
    deg = torch.cat([p["degrees"] for p in draws("rotate", (16, 3, 8, 8))])
    assert -15 <= deg.min() and deg.max() <= 15 and deg.min() < -12 and deg.max() > 12
    p = draws("scale", (64, 3, 8, 8), 1)[0]
    assert not torch.equal(p["scale_x"], p["scale_y"])  # drawn independently


def published_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def test_scale_and_rotate_match_the_published_affine_grid_warp():
    x = images((4, 3, 16, 16), dtype=torch.float64)
    p = draws("scale", x.shape, 1)[0]
    theta = torch.zeros(4, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = p["scale_x"].double(), p["scale_y"].double()
    torch.testing.assert_close(DSA().apply(x, p), published_affine(x, theta), rtol=0, atol=1e-10)
    p = draws("rotate", x.shape, 1)[0]
    t = p["degrees"].double() * math.pi / 180
    theta = torch.zeros(4, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = t.cos(), -t.sin(), t.sin(), t.cos()
    torch.testing.assert_close(DSA().apply(x, p), published_affine(x, theta), rtol=0, atol=1e-10)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("side", [8, 32])
def test_shapes_kept(op, side):
    x = images((3, 3, side, side))
    assert DSA(ops=(op,))(x, gen(1)).shape == x.shape


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_gradient_flows_to_images(op, device):
    dsa = DSA(ops=(op,))
    x = images(device=device).requires_grad_(True)
    out = dsa.apply(x, dsa.sample(x.shape, gen(2), device=x.device))
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op):
    dsa = DSA(ops=(op,))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen(0)).requires_grad_(True)
    params = dsa.sample(x.shape, gen(3))
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params), (x,))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("op", OPS)
def test_cuda_matches_cpu(op):
    dsa = DSA(ops=(op,))
    x = images((4, 3, 16, 16))
    params = dsa.sample(x.shape, gen(4))
    cpu = dsa.apply(x, params)
    cuda = dsa.apply(x.cuda(), params.to("cuda"))
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)
