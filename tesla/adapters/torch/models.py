"""The networks of the field, built from a :class:`~tesla.domain.config.ModelConfig`.

- **ConvNet** (DC/DSA/DM/MTT/TESLA, docs/MATHS.md §5): ``depth`` blocks of
  conv 3x3 (``width`` filters, padding 1) -> norm -> ReLU -> AvgPool 2x2, then one linear
  classifier. The module layout (``features`` Sequential + ``classifier``) is the published
  one, so ``parameters()`` order, and therefore the flat trajectory layout, matches the
  published expert buffers (MTT import).
- **ResNet-18** for small images (DC-BENCH): torchvision's ``ResNet``/``BasicBlock`` with a
  3x3 stride-1 stem and no max-pool.
- **ViT**: torchvision's ``VisionTransformer`` at patch 4, dim 512, depth 6, 8 heads,
  mlp 512, dropout 0.1.

Seeded construction (``seed=...``) runs the default initialisers under
:func:`torch.random.fork_rng`, so the same seed gives identical parameters and the
caller's global RNG state is restored afterwards (the published code reseeds the global
RNG from the clock on every network creation; we never do).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from tesla.domain.config import ModelConfig

VIT_PATCH = 4
VIT_HIDDEN = 512
VIT_DEPTH = 6
VIT_HEADS = 8
VIT_MLP = 512
VIT_DROPOUT = 0.1


def build_model(cfg: ModelConfig, seed: Optional[int] = None) -> nn.Module:
    """A freshly initialised network for ``cfg`` on the CPU.

    Args:
        cfg: the architecture, norm, input shape and number of classes.
        seed: when given, the parameters depend only on it (the global RNG is left as it
            was); when None, the global RNG is used as torch usually does.

    Returns:
        a module mapping ``(B, C, S, S)`` images to ``(B, num_classes)`` logits.

    Example:
        >>> model = build_model(ModelConfig(), seed=0)   # ConvNet for CIFAR-10
        >>> sum(p.numel() for p in model.parameters())
        320010
    """
    if seed is None:
        return _build(cfg)
    # fork_rng restores the CPU RNG on exit; devices=[] keeps CUDA RNGs out of it
    # (construction happens on the CPU, so they are never used here).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _build(cfg)


def _build(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "convnet":
        return ConvNet(cfg.channels, cfg.num_classes, width=cfg.width, depth=cfg.depth, norm=cfg.norm,
                       image_size=cfg.image_size)
    if cfg.arch == "resnet18":
        return resnet18_small(cfg.channels, cfg.num_classes, norm=cfg.norm)
    if cfg.arch == "vit":
        return vit_small(cfg.channels, cfg.num_classes, image_size=cfg.image_size)
    raise ValueError(f"unknown arch {cfg.arch!r}: use convnet, resnet18 or vit")


# --- ConvNet ---------------------------------------------------------------------------

def _norm_layer(norm: str, channels: int) -> Optional[nn.Module]:
    """The normalisation of a ConvNet block, or None for ``none``."""
    if norm == "instancenorm":
        # Instance norm as the field writes it: per-channel groups, affine, no running stats.
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "layernorm":
        # Normalises over (C, H, W) like DC-bench's nn.LayerNorm([C, H, W]), but with a
        # per-channel affine, so the parameter count does not depend on the image size.
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if norm == "none":
        return None
    raise ValueError(f"unknown norm {norm!r}: use instancenorm, batchnorm, layernorm, groupnorm or none")


class ConvNet(nn.Module):
    """The ConvNet of DC/DSA/MTT/TESLA (``ConvNetD4`` at depth 4).

    Args:
        channels: input channels C.
        num_classes: classifier outputs.
        width: filters per conv layer.
        depth: number of conv blocks; the side halves in each.
        norm: ``instancenorm``, ``batchnorm``, ``layernorm``, ``groupnorm`` or ``none``.
        image_size: input side S, divisible by ``2**depth``.

    Shape:
        - x: :math:`(B, C, S, S)`
        - output: :math:`(B, num\\_classes)`
    """

    def __init__(self, channels: int, num_classes: int, *, width: int = 128, depth: int = 3,
                 norm: str = "instancenorm", image_size: int = 32) -> None:
        super().__init__()
        if image_size % (2**depth) != 0:
            raise ValueError(f"image_size {image_size} is not divisible by 2**depth = {2**depth}: "
                             "use depth 3 for 32 px, 4 for 64 px")
        layers: list[nn.Module] = []
        in_ch = channels
        for _ in range(depth):
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=1))
            norm_layer = _norm_layer(norm, width)
            if norm_layer is not None:
                layers.append(norm_layer)
            # not in-place: the exact engine differentiates twice through these activations
            layers += [nn.ReLU(), nn.AvgPool2d(kernel_size=2, stride=2)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        side = image_size // (2**depth)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier, :math:`(B, width \\cdot (S/2^d)^2)`."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# --- ResNet-18 for small images ----------------------------------------------------------

def _resnet_norm(norm: str) -> Callable[[int], nn.Module]:
    if norm == "instancenorm":
        return lambda c: nn.GroupNorm(c, c, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d
    raise ValueError(f"norm for resnet18 must be 'instancenorm' or 'batchnorm' (got {norm!r})")


def resnet18_small(channels: int, num_classes: int, *, norm: str = "instancenorm") -> ResNet:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool (32/64 px inputs).

    Shape:
        - x: :math:`(B, C, S, S)`, any S >= 8 (global average pooling at the end)
        - output: :math:`(B, num\\_classes)`
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=_resnet_norm(norm))
    # Small images lose too much to the ImageNet stem (7x7 stride 2 + max-pool): DC-BENCH
    # and CIFAR ResNets use one 3x3 stride-1 conv instead.
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
    model.maxpool = nn.Identity()
    return model


# --- small ViT ------------------------------------------------------------------------------

def vit_small(channels: int, num_classes: int, *, image_size: int = 32) -> VisionTransformer:
    """torchvision's VisionTransformer at patch 4, dim 512, depth 6, 8 heads, mlp 512, dropout 0.1.

    Shape:
        - x: :math:`(B, C, S, S)`, S divisible by 4 and equal to ``image_size``
        - output: :math:`(B, num\\_classes)`
    """
    if image_size % VIT_PATCH != 0:
        raise ValueError(f"image_size {image_size} must be divisible by the ViT patch {VIT_PATCH}")
    model = VisionTransformer(
        image_size=image_size, patch_size=VIT_PATCH, num_layers=VIT_DEPTH, num_heads=VIT_HEADS,
        hidden_dim=VIT_HIDDEN, mlp_dim=VIT_MLP, dropout=VIT_DROPOUT, num_classes=num_classes,
    )
    if channels != 3:
        # torchvision hard-codes 3 input channels; swap the patch embedding and init it
        # the way torchvision does (truncated normal, std sqrt(1 / fan_in)).
        conv = nn.Conv2d(channels, VIT_HIDDEN, kernel_size=VIT_PATCH, stride=VIT_PATCH)
        fan_in = channels * VIT_PATCH * VIT_PATCH
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of trainable values, the length P of a flat trajectory snapshot."""
    return sum(p.numel() for p in model.parameters())
