"""Networks: published sizes and layouts, every arch/norm shape, seeded init, flat views."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model, num_parameters
from tesla.domain.config import NORMS, ModelConfig


def small(**kw) -> ModelConfig:
    base = dict(arch="convnet", depth=2, width=8, image_size=16, num_classes=5)
    base.update(kw)
    return ModelConfig(**base)


def test_convnet_cifar10_has_published_parameter_count():
    assert num_parameters(build_model(ModelConfig(), seed=0)) == 320_010


def test_convnet_d4_imagenet64_has_published_parameter_count():
    cfg = ModelConfig(depth=4, image_size=64, num_classes=1000)
    assert cfg.name == "ConvNetD4"
    assert num_parameters(build_model(cfg, seed=0)) == 2_496_360


def test_convnet_parameter_order_is_the_published_layout():
    names = [n for n, _ in build_model(ModelConfig(), seed=0).named_parameters()]
    assert names == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias",
        "features.8.weight", "features.8.bias", "features.9.weight", "features.9.bias",
        "classifier.weight", "classifier.bias",
    ]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("depth,size", [(1, 8), (2, 16), (3, 32)])
@pytest.mark.parametrize("channels", [1, 3])
def test_convnet_output_shape_for_every_norm_and_size(norm, depth, size, channels):
    model = build_model(small(norm=norm, depth=depth, image_size=size, channels=channels), seed=0)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_convnet_norm_layers_are_the_field_definitions():
    def norm_of(norm):
        return build_model(small(norm=norm), seed=0).features[1]

    inst = norm_of("instancenorm")
    assert isinstance(inst, nn.GroupNorm) and inst.num_groups == inst.num_channels == 8 and inst.affine
    layer = norm_of("layernorm")
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1 and layer.weight.shape == (8,)
    group = norm_of("groupnorm")
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 4
    assert isinstance(norm_of("batchnorm"), nn.BatchNorm2d)
    no_norm = build_model(small(norm="none"), seed=0)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in no_norm.modules())
    # Instance norm keeps no running statistics: the flat vector is the whole state.
    assert list(build_model(small(), seed=0).buffers()) == []


def test_layernorm_normalises_over_channels_and_space():
    model = build_model(small(norm="layernorm"), seed=0)
    x = torch.randn(3, 3, 16, 16)
    y = model.features[1](model.features[0](x))  # affine is identity at init
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_small_images(norm, channels):
    model = build_model(ModelConfig(arch="resnet18", norm=norm, channels=channels, image_size=16,
                                    num_classes=7), seed=0)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == channels
    assert isinstance(model.maxpool, nn.Identity)
    if norm == "instancenorm":
        assert isinstance(model.bn1, nn.GroupNorm) and model.bn1.num_groups == 64
    assert model(torch.randn(2, channels, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("channels", [1, 3])
def test_vit_small(channels):
    model = build_model(ModelConfig(arch="vit", channels=channels, image_size=16, num_classes=4), seed=0).eval()
    assert model.patch_size == 4 and model.hidden_dim == 512
    assert len(model.encoder.layers) == 6
    assert model.encoder.layers[0].self_attention.num_heads == 8
    assert model.encoder.layers[0].mlp[0].out_features == 512
    assert model.conv_proj.in_channels == channels
    assert model(torch.randn(2, channels, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "vit"])
def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(arch):
    cfg = ModelConfig(arch=arch, image_size=16, depth=2, width=8) if arch == "convnet" else \
        ModelConfig(arch=arch, image_size=16)
    before = torch.get_rng_state()
    a, b, c = build_model(cfg, seed=3), build_model(cfg, seed=3), build_model(cfg, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    wa, wb, wc = (FlatView(m).flatten() for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_unseeded_init_uses_the_global_rng():
    torch.manual_seed(11)
    a = FlatView(build_model(small())).flatten()
    torch.manual_seed(11)
    b = FlatView(build_model(small())).flatten()
    assert torch.equal(a, b)


FLAT_CASES = [
    small(norm="instancenorm"),
    small(norm="batchnorm"),
    small(norm="layernorm"),
    small(norm="none", channels=1),
    ModelConfig(arch="resnet18", image_size=16, num_classes=5),
    ModelConfig(arch="vit", image_size=16, num_classes=5),
]


@pytest.mark.parametrize("cfg", FLAT_CASES, ids=lambda c: f"{c.arch}-{c.norm}-c{c.channels}")
def test_flat_view_round_trip(cfg):
    model = build_model(cfg, seed=0).eval()  # eval: ViT dropout off, batch norm deterministic
    view = FlatView(model)
    x = torch.randn(2, cfg.channels, cfg.image_size, cfg.image_size)
    w = view.flatten()
    assert w.shape == (num_parameters(model),)
    torch.testing.assert_close(view(w, x), model(x), rtol=0, atol=0)
    for (name, p), (uname, u) in zip(model.named_parameters(), view.unflatten(w).items()):
        assert name == uname
        assert torch.equal(p, u)


def test_functional_forward_differentiates_wrt_the_flat_vector():
    torch.manual_seed(0)
    model = build_model(small(), seed=1)
    view = FlatView(model)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    w = view.flatten().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(view(w, x), y), w, create_graph=True)
    F.cross_entropy(model(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(g.detach(), expected, rtol=1e-5, atol=1e-6)
    # Second order (the exact engine's Hessian-vector products) goes through as well.
    v = torch.randn_like(g)
    (hv,) = torch.autograd.grad(g @ v, w)
    assert hv.shape == w.shape and torch.isfinite(hv).all() and hv.abs().sum() > 0
