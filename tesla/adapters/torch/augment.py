"""Differentiable Siamese augmentation (DSA) with recorded, replayable parameters.

DSA (Zhao & Bilen 2021), as MTT and TESLA use it (docs/MATHS.md §6): each call applies ONE
operation chosen uniformly from the configured list, with parameters drawn per sample;
every operation is differentiable with respect to the images, so the gradient of a
matching loss flows back into the synthetic pixels through the augmentation.

TESLA's second pass recomputes each student step and must see exactly the same
augmentation as the first pass. Instead of reseeding a global RNG (what the published
code does), :meth:`DSA.sample` draws everything from an explicit ``torch.Generator``
into a frozen :class:`DSAParams`, and :meth:`DSA.apply` is a pure function of
``(x, params)``: applying the same params twice gives bit-identical output, and the same
seeded generator gives identical params.

Operations and ranges (published ``ParamDiffAug`` defaults):

- ``color``: brightness ``x + U[-0.5, 0.5)``, then saturation
  ``(x - mean_c) * U[0, 2) + mean_c`` (mean over channels per pixel), then contrast
  ``(x - mean) * U[0.5, 1.5) + mean`` (mean per image); no clamping, images are in
  model space.
- ``crop``: integer translation by ``[-s, s]`` pixels per axis, zero fill,
  ``s = int(0.125 * side + 0.5)`` (4 px at 32, 8 px at 64).
- ``cutout``: zero a square of side ``int(0.5 * side + 0.5)`` centred at a random pixel
  (clipped at the border).
- ``flip``: horizontal flip with probability 0.5.
- ``scale``: ``sx, sy ~ U[1/1.2, 1.2]`` independently, about the centre.
- ``rotate``: ``U[-15, 15]`` degrees about the centre.

``scale`` and ``rotate`` use kornia (``get_affine_matrix2d`` + ``warp_affine``, bilinear,
zero padding, ``align_corners=True``), which for square images is the published
``affine_grid``/``grid_sample`` warp. The other operations are a few plain tensor ops:
kornia's colour ops clamp to [0, 1] and its saturation works in HSV, its erasing
samples area and aspect ratio, and a translation through ``warp_affine`` re-interpolates
(so integer shifts are only exact to rounding); none matches the published semantics
exactly.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Sequence

import attrs
import torch
from kornia.geometry.transform import get_affine_matrix2d, warp_affine

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _frozen_mapping(values: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return MappingProxyType(dict(values))


@attrs.frozen(eq=False)
class DSAParams:
    """The random choices of one DSA call: the op and its per-sample tensors.

    Attributes:
        op: one of ``color``, ``crop``, ``cutout``, ``flip``, ``scale``, ``rotate``.
        values: read-only mapping of parameter name to a ``(B,)`` tensor:
            ``color``: ``brightness``, ``saturation``, ``contrast``;
            ``crop``: ``shift_y`` (rows), ``shift_x`` (columns), integers;
            ``cutout``: ``center_y``, ``center_x``, integers;
            ``flip``: ``flip`` (bool);
            ``scale``: ``scale_x``, ``scale_y``;
            ``rotate``: ``degrees``.
    """

    op: str
    values: Mapping[str, torch.Tensor] = attrs.field(converter=_frozen_mapping)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]

    @property
    def batch_size(self) -> int:
        """B, the number of samples the parameters were drawn for."""
        return int(next(iter(self.values.values())).shape[0])

    def rows(self, start: int, stop: int) -> "DSAParams":
        """The parameters of samples ``start .. stop-1``: the same op, each (B,) tensor cut.

        Every op's parameters are per sample and every op acts on each sample alone, so
        applying ``rows(a, b)`` to ``x[a:b]`` gives rows ``a:b`` of applying the whole to
        ``x``: a micro-batched step draws once for its whole batch and cuts. The rows are
        copied, so a micro-batch's graph holds only its own rows, not the batch's storage.
        """
        b = self.batch_size
        if not 0 <= start < stop <= b:
            raise ValueError(f"rows {start}:{stop} are outside the {b} samples the parameters were drawn for")
        return DSAParams(self.op, {k: v[start:stop].clone() for k, v in self.values.items()})

    def to(self, device: torch.device | str | None) -> "DSAParams":
        """The same parameters on ``device`` (self when already there or device is None)."""
        if device is None:
            return self
        device = torch.device(device)
        if all(v.device == device for v in self.values.values()):
            return self
        return DSAParams(self.op, {k: v.to(device) for k, v in self.values.items()})


def _check_ops(inst: "DSA", attr: attrs.Attribute, value: tuple) -> None:
    if not value:
        raise ValueError(f"DSA needs at least one op: choose from {', '.join(OPS)}")
    bad = [op for op in value if op not in OPS]
    if bad:
        raise ValueError(f"unknown DSA op(s) {', '.join(map(repr, bad))}: choose from {', '.join(OPS)}")


def _ops_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.split("_") if v)
    return tuple(value)


@attrs.frozen
class DSA:
    """Differentiable Siamese augmentation: one op per call, parameters per sample.

    Args:
        ops: the operations to choose from (uniformly), a sequence or a strategy string
            such as ``"color_crop_cutout_flip_scale_rotate"``.
        ratio_scale, ratio_rotate, ratio_crop, ratio_cutout, prob_flip, brightness,
        saturation, contrast: the ranges of docs/MATHS.md §6 (published defaults).

    Example:
        >>> dsa = DSA.from_strategy("color_crop_cutout_flip_scale_rotate")
        >>> params = dsa.sample(x.shape, torch.Generator().manual_seed(0), device=x.device)
        >>> y1, y2 = dsa.apply(x, params), dsa.apply(x, params)   # identical
    """

    ops: tuple[str, ...] = attrs.field(default=OPS, converter=_ops_tuple, validator=_check_ops)
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop: float = 0.125
    ratio_cutout: float = 0.5
    prob_flip: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    @classmethod
    def from_strategy(cls, strategy: str = DEFAULT_STRATEGY) -> "DSA":
        """DSA over the ops of an underscore-separated strategy string."""
        return cls(ops=strategy)

    # --- drawing -------------------------------------------------------------------------

    def sample(self, shape: Sequence[int], generator: torch.Generator,
               device: torch.device | str | None = None) -> DSAParams:
        """Draw the op and its per-sample parameters for a batch of ``shape`` (B, C, H, W).

        All randomness comes from ``generator`` (normally a CPU generator seeded per step),
        so the same seeded generator gives the same params; they are then moved to ``device``.
        """
        if len(shape) != 4:
            raise ValueError(f"DSA expects a (B, C, H, W) shape (got {tuple(shape)})")
        b, _, h, w = (int(s) for s in shape)
        gdev = generator.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(b, generator=generator, device=gdev) * (hi - lo) + lo

        def integers(lo: int, hi: int) -> torch.Tensor:  # lo <= v < hi
            return torch.randint(lo, hi, (b,), generator=generator, device=gdev)

        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator, device=gdev))]
        if op == "color":
            values = {
                "brightness": uniform(-0.5 * self.brightness, 0.5 * self.brightness),
                "saturation": uniform(0.0, self.saturation),
                "contrast": uniform(self.contrast, self.contrast + 1.0),
            }
        elif op == "crop":
            sy, sx = crop_shift(h, self.ratio_crop), crop_shift(w, self.ratio_crop)
            values = {"shift_y": integers(-sy, sy + 1), "shift_x": integers(-sx, sx + 1)}
        elif op == "cutout":
            ch, cw = cutout_size(h, self.ratio_cutout), cutout_size(w, self.ratio_cutout)
            # Published range: centres 0 .. side for an even cutout, 0 .. side-1 for odd.
            values = {"center_y": integers(0, h + 1 - ch % 2), "center_x": integers(0, w + 1 - cw % 2)}
        elif op == "flip":
            values = {"flip": torch.rand(b, generator=generator, device=gdev) < self.prob_flip}
        elif op == "scale":
            lo, hi = 1.0 / self.ratio_scale, self.ratio_scale
            values = {"scale_x": uniform(lo, hi), "scale_y": uniform(lo, hi)}
        else:  # rotate
            values = {"degrees": uniform(-self.ratio_rotate, self.ratio_rotate)}
        return DSAParams(op, values).to(device)

    # --- applying ------------------------------------------------------------------------

    def apply(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Apply recorded ``params`` to ``x``; differentiable in ``x`` and deterministic.

        Shape:
            - x: :math:`(B, C, H, W)`, B equal to ``params.batch_size``
            - output: :math:`(B, C, H, W)`
        """
        if x.dim() != 4:
            raise ValueError(f"DSA expects images shaped (B, C, H, W) (got {tuple(x.shape)})")
        if params.batch_size != x.shape[0]:
            raise ValueError(f"DSA params were drawn for {params.batch_size} images but the batch has "
                             f"{x.shape[0]}: sample them for this batch")
        p = params.to(x.device)
        if p.op == "color":
            return color(x, p["brightness"], p["saturation"], p["contrast"])
        if p.op == "crop":
            return crop(x, p["shift_y"], p["shift_x"])
        if p.op == "cutout":
            h, w = x.shape[-2:]
            return cutout(x, p["center_y"], p["center_x"],
                          (cutout_size(h, self.ratio_cutout), cutout_size(w, self.ratio_cutout)))
        if p.op == "flip":
            return flip(x, p["flip"])
        if p.op == "scale":
            return scale(x, p["scale_x"], p["scale_y"])
        if p.op == "rotate":
            return rotate(x, p["degrees"])
        raise ValueError(f"unknown DSA op {p.op!r}: choose from {', '.join(OPS)}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sample parameters for ``x`` from ``generator`` and apply them."""
        return self.apply(x, self.sample(tuple(x.shape), generator, device=x.device))


# --- sizes -----------------------------------------------------------------------------------

def crop_shift(side: int, ratio: float = 0.125) -> int:
    """Largest crop translation in pixels: ``int(ratio * side + 0.5)`` (4 at 32, 8 at 64)."""
    return int(side * ratio + 0.5)


def cutout_size(side: int, ratio: float = 0.5) -> int:
    """Side of the cutout square: ``int(ratio * side + 0.5)`` (16 at 32)."""
    return int(side * ratio + 0.5)


# --- the operations (pure functions of images and parameters) ---------------------------------

def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) parameter as a (B, 1, 1, 1) tensor of x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def color(x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor,
          contrast: torch.Tensor) -> torch.Tensor:
    """Brightness, saturation and contrast in turn, per sample, without clamping.

    Args:
        x: images :math:`(B, C, H, W)` in model space.
        brightness: :math:`(B,)` added to every pixel.
        saturation: :math:`(B,)` factor on the deviation from the per-pixel channel mean.
        contrast: :math:`(B,)` factor on the deviation from the per-image mean.
    """
    x = x + _per_sample(brightness, x)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * _per_sample(saturation, x) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_sample(contrast, x) + mean


def crop(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero fill: ``out[b, :, i, j] = x[b, :, i + dy, j + dx]``.

    Args:
        x: images :math:`(B, C, H, W)`.
        shift_y, shift_x: :math:`(B,)` integer shifts along rows and columns.
    """
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h) + shift_y.to(x.device).long().view(b, 1)  # (B, H)
    cols = torch.arange(w, device=x.device).view(1, w) + shift_x.to(x.device).long().view(b, 1)  # (B, W)
    inside = ((rows >= 0) & (rows < h)).view(b, 1, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # Gather with clamped indices, then zero whatever came from outside the image.
    moved = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1).view(b, h, 1), cols.clamp(0, w - 1).view(b, 1, w)]
    return moved.permute(0, 3, 1, 2) * inside.to(x.dtype)


def cutout(x: torch.Tensor, center_y: torch.Tensor, center_x: torch.Tensor,
           size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size`` (h, w) rectangle starting at ``center - size // 2``, clipped to the image.

    Args:
        x: images :math:`(B, C, H, W)`.
        center_y, center_x: :math:`(B,)` integer centres.
        size: (height, width) of the rectangle.
    """
    b, _, h, w = x.shape
    top = center_y.to(x.device).long().view(b, 1) - size[0] // 2
    left = center_x.to(x.device).long().view(b, 1) - size[1] // 2
    r = torch.arange(h, device=x.device).view(1, h)
    c = torch.arange(w, device=x.device).view(1, w)
    in_rows = (r >= top) & (r < top + size[0])
    in_cols = (c >= left) & (c < left + size[1])
    hole = in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)
    return x * (~hole).to(x.dtype)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the samples where ``mask`` (B,) is true."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _warp(x: torch.Tensor, scale_xy: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Warp about the image centre by kornia's (dst from src) scale and angle; bilinear, zero fill."""
    b, _, h, w = x.shape
    center = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=x.dtype, device=x.device).expand(b, 2)
    m = get_affine_matrix2d(torch.zeros(b, 2, dtype=x.dtype, device=x.device), center, scale_xy, degrees)
    return warp_affine(x, m[:, :2, :], (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


def scale(x: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor) -> torch.Tensor:
    """Per-sample rescale about the centre, published convention: the sampling grid is
    multiplied by ``(sx, sy)``, so ``s > 1`` shrinks the content and ``s < 1`` enlarges it.

    Shape:
        - x: :math:`(B, C, H, W)`; scale_x, scale_y: :math:`(B,)`
    """
    s = torch.stack([scale_x, scale_y], dim=1).to(device=x.device, dtype=x.dtype)
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return _warp(x, 1.0 / s, zero)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Per-sample rotation about the centre by ``degrees`` (published sign convention).

    Shape:
        - x: :math:`(B, C, H, W)`; degrees: :math:`(B,)`
    """
    ones = torch.ones(x.shape[0], 2, dtype=x.dtype, device=x.device)
    # The published grid is rotated by +degrees, which moves the content by -degrees in
    # kornia's (dst from src) convention.
    return _warp(x, ones, -degrees.to(device=x.device, dtype=x.dtype))
