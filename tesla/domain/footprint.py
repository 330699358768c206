"""How much memory a job needs at least, from its configs alone, before it allocates any.

An absurd size (``--ipc 100000``, ``--width 100000``, ``--syn-steps 10**9`` with the
exact engine, ``--image-size 100000``) used to be found out by the allocator, minutes in
or at once with a traceback, or by the kernel's OOM killer after the machine had been
swapping. The commands now add up what the job certainly holds, compare it with what the
machine has free (the :class:`~tesla.domain.ports.FreeMemory` port), and refuse in one
line naming the number, the largest part and the option that shrinks it.

The estimate is a lower bound on purpose: only the arrays the job must hold at once are
counted (4-byte floats), and activations as the three tensors per conv block that any
backward pass keeps; the caching allocator, the framework's own buffers, fragmentation
and the double-backward graph come on top. A run refused here could never have fitted;
a run let through may still run out (a warning is no use here: the point is to refuse
what is certain, never a run that fits).

Where the job runs on a device, the device's parts (the set, the weights, activations)
are checked against the device's free memory and the host's parts (the step plans of
one iteration) against the host's; on the CPU they add up.
"""

from __future__ import annotations

import math
from typing import Optional

import attrs

from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig
from tesla.domain.errors import ResourceError
from tesla.domain.ports import FreeMemory

FLOAT = 4  # bytes of a float32
# bytes a plan of one student step holds on the host per image of its batch, and per step
# (a Python int in a tuple, and the Step record itself with its augmentation seed)
PLAN_PER_IMAGE = 8
PLAN_PER_STEP = 200


@attrs.frozen
class Part:
    """One term of an estimate: what it is, its bytes, where it lives, and how to shrink it."""

    what: str
    bytes: int
    fix: str
    on_device: bool = True


@attrs.frozen
class Footprint:
    """The parts a job holds at once (see the module docstring)."""

    parts: tuple = ()

    def total(self, *, on_device: Optional[bool] = None) -> int:
        return sum(p.bytes for p in self.parts if on_device is None or p.on_device == on_device)

    def largest(self, *, on_device: Optional[bool] = None) -> Optional[Part]:
        parts = [p for p in self.parts if on_device is None or p.on_device == on_device]
        return max(parts, key=lambda p: p.bytes) if parts else None


def convnet_params(model: ModelConfig) -> Optional[int]:
    """P of the ConvNet ``model`` describes (conv 3x3 + bias, a norm's affine pair per
    channel, the linear classifier); None for other architectures (their size does not
    follow the options that could make it absurd)."""
    if model.arch != "convnet":
        return None
    total, channels = 0, model.channels
    for _ in range(model.depth):
        total += channels * model.width * 9 + model.width + (0 if model.norm == "none" else 2 * model.width)
        channels = model.width
    side = model.image_size // 2 ** model.depth
    return total + model.width * side * side * model.num_classes + model.num_classes


def activations(model: ModelConfig, batch: int) -> int:
    """Bytes of one forward pass's activations kept for its backward: per block the conv
    output, the normalised and the rectified maps at that block's side (ConvNet); the
    input-sized maps of one block for other architectures."""
    width = model.width if model.arch == "convnet" else 64
    depth = model.depth if model.arch == "convnet" else 1
    per_image = sum(3 * width * (model.image_size // 2 ** i) ** 2 for i in range(depth))
    return batch * per_image * FLOAT


def set_bytes(images: int, model: ModelConfig) -> int:
    """Bytes of ``images`` float images of the model's input shape."""
    return images * model.channels * model.image_size * model.image_size * FLOAT


def distill_footprint(cfg: DistillConfig, model: ModelConfig, num_params: int) -> Footprint:
    """What a distillation holds at once: the set (images, their gradient and momentum,
    the EMA copy), a handful of weight vectors, the stored weight vectors of its engine,
    one step's activations (all N steps' for ``unrolled``) and the plans of one
    iteration's steps."""
    n = cfg.ipc * model.num_classes
    batch = cfg.batch_syn or n
    steps = cfg.syn_steps
    copies = 3 + (1 if cfg.ema_decay is not None else 0)
    parts = [Part(f"the synthetic set ({n:,} images x {copies}: images, gradient, momentum"
                  + (", EMA" if cfg.ema_decay is not None else "") + ")",
                  copies * set_bytes(n, model), "lower --ipc")]
    vec = num_params * FLOAT
    parts.append(Part(f"8 weight vectors of {num_params:,} parameters", 8 * vec, "use a smaller model"))
    kept = 0
    if cfg.engine == "exact":
        kept = 2 * math.ceil(math.sqrt(steps)) if cfg.remake_weights else steps
        fix = "lower --syn-steps" + ("" if cfg.remake_weights else " or pass --remake-weights")
    elif cfg.engine == "unrolled":
        kept, fix = steps, "lower --syn-steps or use --engine tesla (constant memory in the steps)"
    elif cfg.second_pass_chunk > 1:
        kept, fix = steps, "lower --syn-steps or --second-pass-chunk"
    if kept:
        parts.append(Part(f"{kept:,} stored student weight vectors of the {cfg.engine} engine", kept * vec, fix,
                          on_device=not cfg.offload_weights))
    graphs = steps if cfg.engine == "unrolled" else max(1, min(cfg.second_pass_chunk, steps))
    parts.append(Part(f"activations of {graphs:,} step(s) of {batch:,} images", graphs * activations(model, batch),
                      "lower --batch-syn" + (" or --ipc" if cfg.batch_syn is None else "")
                      + (" or --syn-steps" if graphs > 1 else "")))
    parts.append(Part(f"the plans of {steps:,} student steps", steps * (PLAN_PER_STEP + PLAN_PER_IMAGE * batch),
                      "lower --syn-steps or --batch-syn", on_device=False))
    return Footprint(tuple(parts))


def experts_footprint(model: ModelConfig, cfg: ExpertConfig) -> Footprint:
    """What expert training holds at once: per network trained together (``parallel``)
    its weights, gradient, momentum and snapshot. Empty when the model's size is not
    known from its config. (A batch's activations are left out: a ``--batch-size`` above
    the data's size trains on the whole data, which the config does not know.)"""
    p = convnet_params(model)
    if p is None:
        return Footprint()
    nets = cfg.parallel
    return Footprint((
        Part(f"{nets} network(s) of {p:,} parameters x 4 (weights, gradient, momentum, snapshot)",
             4 * nets * p * FLOAT, "lower --width or --depth" + (" or --parallel" if nets > 1 else "")),
    ))


def prepare_footprint(image_size: int, chunk: int, block: int, images: int, channels: int = 3) -> Footprint:
    """What ``data prepare`` holds at once: a sort block of uint8 images at the stored
    size and one destination chunk (each at most the ``images`` of the source)."""
    image = channels * image_size * image_size
    block, chunk = min(block, images), min(chunk, images)
    return Footprint((
        Part(f"a sort block of {block:,} images of {image_size} px", block * image,
             "lower --image-size or --chunk", on_device=False),
        Part(f"a chunk of {chunk:,} images of {image_size} px", chunk * image, "lower --image-size or --chunk",
             on_device=False),
    ))


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_fits(footprint: Footprint, memory: FreeMemory) -> None:
    """Refuse (ResourceError) what cannot fit: on a device, its parts against its free
    memory and the host's parts against the host's; on the CPU everything against the
    host. An unknown free size (None) checks nothing.

    The message names the estimate, what is free, the largest part and its fix.
    """
    device = str(memory.device)
    if device == "cpu":
        checks = [(None, memory.free_host(), "the host")]
    else:
        checks = [(True, memory.free_device(), device), (False, memory.free_host(), "the host")]
    for on_device, free, where in checks:
        need = footprint.total(on_device=on_device)
        if free is None or need <= free:
            continue
        big = footprint.largest(on_device=on_device)
        raise ResourceError(f"this job needs at least {gib(need)} of memory on {where} but {gib(free)} is free; "
                            f"the largest part is {big.what} ({gib(big.bytes)}): {big.fix}")


__all__ = ["Footprint", "Part", "activations", "check_fits", "convnet_params", "distill_footprint",
           "experts_footprint", "prepare_footprint"]
