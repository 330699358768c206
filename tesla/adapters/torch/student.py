"""The :class:`~tesla.domain.ports.Student` and :class:`~tesla.domain.ports.Gauges` ports on
PyTorch: the numerics a distillation does outside the engines.

``TorchStudent`` is built once per run from the configs: the student network (seeded
by the run's seed) and its flat view, the DSA augmentation when asked for, and the
compute the config chooses (plain, or batched/mixed-precision). Its state is a
:class:`~tesla.adapters.torch.synthetic.SyntheticState` (images, learned lr, optional
logits and their SGD optimisers), which the service hands back without looking inside.

Memory (:class:`MemoryPlan`, decided once at construction, before any work, so a
refusal writes nothing): the micro-batch every step is computed in (explicit, or the
largest that fits ``memory_budget`` as measured on this network; None when it would not
split a batch), the soft-label chunk the budget allows, and where the set lives
(``set_on``; ``auto`` weighs the set, its gradient and momentum against the device's
memory, :func:`tesla.domain.memory.choose_set_on`). A model with batch norm is refused
when a step would be split.
The recipe's levers reach the network here and nowhere else: ``learned-teacher``'s
initial set (the chosen pool images, labelled with the experts' mixed logits; which
images and which weights the service decides, :mod:`tesla.domain.labels`), the argmax
and entropy of the labels that run health measures, the flat layout where PAD's
selection cuts, and the copies and views of the images that FTD's moving average needs
(the average itself is the service's, :mod:`tesla.domain.ema`).

``TorchGauges`` makes what a run shows of itself: a small grid of un-whitened images
(classes as columns, at most 16 px per image so an event stays small) and the device
and host memory figures of :mod:`tesla.adapters.torch.memory`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Mapping, Optional

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.memory import memory_sample
from tesla.adapters.torch.microbatch import has_batch_norm
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.synthetic import SyntheticState, soft_labels
from tesla.domain import events
from tesla.domain.config import DistillConfig, ModelConfig
from tesla.domain.errors import ConfigError
from tesla.domain.labels import LabelPlan, TeacherStart, labels_for
from tesla.domain.memory import choose_set_on, resolve_micro_batch, set_bytes, soft_label_chunk
from tesla.domain.ports import Compute, DataSource


@attrs.frozen
class MemoryPlan:
    """How a run keeps its memory: decided once from the config, the network and the device.

    Attributes:
        micro_batch: images per piece of a step; None: whole batches.
        set_on: ``device`` or ``host`` (``auto`` resolved).
        soft_label_chunk: images per teacher forward.
        batch: images per student step (``batch_syn``, or the whole set).
    """

    micro_batch: Optional[int]
    set_on: str
    soft_label_chunk: int
    batch: int


def _device_total(device: torch.device) -> Optional[int]:
    """Bytes of memory on an accelerator; None on a CPU (host and device are one memory)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def memory_plan(view: FlatView, model_cfg: ModelConfig, cfg: DistillConfig, device: torch.device, *,
                learned_labels: bool = False) -> MemoryPlan:
    """The run's :class:`MemoryPlan`; ConfigError for micro-batching a model with batch norm."""
    from tesla.adapters.torch.budget import step_cost

    images = cfg.ipc * model_cfg.num_classes
    batch = min(cfg.batch_syn or images, images)
    shape = (model_cfg.channels, model_cfg.image_size, model_cfg.image_size)

    def measure():
        # on a copy: a measuring forward must not touch the student's buffers (batch norm's running stats)
        return step_cost(FlatView(copy.deepcopy(view.module)), shape, learned_labels=learned_labels)

    micro = resolve_micro_batch(cfg.micro_batch, cfg.memory_budget, batch, measure)
    if micro is not None and has_batch_norm(view.module):
        asked = f"--micro-batch {cfg.micro_batch}" if cfg.micro_batch is not None else "--memory-budget"
        raise ConfigError(f"{asked} would split each step of {batch} images into pieces of {micro}, but the "
                          "experts' network has batch norm, which couples a step's images: train the experts with "
                          "--norm instancenorm, or drop --micro-batch and --memory-budget")
    needed = set_bytes(images, model_cfg.channels * model_cfg.image_size ** 2,
                       label_elements=model_cfg.num_classes if learned_labels else 0)
    set_on = choose_set_on(cfg.set_on, on_cpu=device.type == "cpu", needed=needed, device_total=_device_total(device))
    return MemoryPlan(micro_batch=micro, set_on=set_on, batch=batch,
                      soft_label_chunk=soft_label_chunk(cfg.soft_label_chunk, micro, cfg.memory_budget))


def default_compute(cfg: DistillConfig, plan: Optional[MemoryPlan] = None,
                    device: Optional[torch.device] = None) -> Callable[..., Compute]:
    """The plain compute, or the batched one when a chunked pass 2 or another precision is
    asked; with the plan's micro-batch, and computing on ``device`` for a host-resident set."""
    memory = {}
    if plan is not None:
        memory = {"micro_batch": plan.micro_batch, "set_on": plan.set_on}
        if plan.set_on == "host":
            memory["device"] = device
    if cfg.second_pass_chunk > 1 or cfg.precision != "fp32" or cfg.channels_last:
        from tesla.adapters.torch.batched import BatchedTorchCompute

        return functools.partial(BatchedTorchCompute, precision=cfg.precision, channels_last=cfg.channels_last,
                                 offload=cfg.offload_weights, **memory)
    return functools.partial(TorchCompute, offload=cfg.offload_weights, **memory)


class TorchStudent:
    """The student network and the synthetic set's numerics on one device.

    Args:
        model_cfg: the network (the experts' architecture).
        cfg: the run (seed, labels, DSA, optimiser settings, compute options).
        device: where the network and the set live.
        compute_factory: builds the compute of an iteration (default :func:`default_compute`).
    """

    def __init__(self, model_cfg: ModelConfig, cfg: DistillConfig, device: torch.device | str = "cpu", *,
                 compute_factory: Optional[Callable[..., Compute]] = None) -> None:
        self.model_cfg = model_cfg
        self.device = torch.device(device)
        self.view = FlatView(build_model(model_cfg, seed=cfg.seed).to(self.device))
        self.augment = DSA() if cfg.dsa else None
        self.learned = labels_for(cfg).learned  # the labels are logits (learned, learned-teacher)
        self.memory = memory_plan(self.view, model_cfg, cfg, self.device, learned_labels=self.learned)
        # the soft-label chunk is memory only (the labels do not depend on it): the budget's
        self.cfg = attrs.evolve(cfg, soft_label_chunk=self.memory.soft_label_chunk)
        self.make_compute = compute_factory or default_compute(cfg, self.memory, self.device)

    @property
    def num_params(self) -> int:
        return self.view.num_params

    # -- the state -----------------------------------------------------------------------
    def initial(self, data: DataSource, start: Optional[TeacherStart] = None) -> SyntheticState:
        if start is not None:
            return self._initial_from_teachers(start)
        return SyntheticState.initialise(data, self.cfg, num_classes=self.model_cfg.num_classes, device=self.device,
                                         learned_labels=self.learned, set_on=self.memory.set_on)

    def restore(self, arrays: Mapping[str, Any]) -> SyntheticState:
        return SyntheticState.from_arrays(dict(arrays), self.cfg, self.device, set_on=self.memory.set_on)

    def checkpoint_arrays(self, state: SyntheticState) -> dict[str, np.ndarray]:
        return state.to_arrays()

    def final_arrays(self, state: SyntheticState, soft: Optional[torch.Tensor]) -> dict[str, np.ndarray]:
        arrays = {"images": state.images.detach().cpu().numpy(), "lr": np.asarray(state.lr_value)}
        arrays.update(state.labels_for_store(soft))
        return arrays

    def size(self, state: SyntheticState) -> int:
        return int(state.images.shape[0])

    def lr(self, state: SyntheticState) -> float:
        return state.lr_value

    # -- one iteration -------------------------------------------------------------------
    def weights(self, snapshot: Any) -> torch.Tensor:
        return torch.as_tensor(snapshot, device=self.device)

    def labels(self, state: SyntheticState, plan: LabelPlan, teacher: Optional[torch.Tensor]) -> torch.Tensor:
        if plan.teacher:
            state.soft = soft_labels(self.view, teacher, state.images, self.cfg.soft_label_chunk)
            return state.soft
        return state.logits if plan.kind == "learned" else state.class_ids

    def compute(self, state: SyntheticState, labels: torch.Tensor) -> Compute:
        return self.make_compute(self.view, state.images, labels, augment=self.augment, learned_labels=self.learned)

    def step(self, state: SyntheticState, images_grad: torch.Tensor, labels_grad: Optional[torch.Tensor],
             lr_grad: float) -> float:
        return state.apply(images_grad, lr_grad, labels_grad)

    def problem(self, state: SyntheticState) -> Optional[str]:
        return state.finite()

    def finite(self, value: torch.Tensor) -> bool:
        return bool(torch.isfinite(value).all())

    # -- the recipe's levers (labels from the experts, run health, PAD, the image EMA) ----
    @property
    def layout(self) -> list:
        return self.view.layout

    def candidates(self, data: DataSource, per_class: int) -> torch.Tensor:
        """``per_class`` real images of each class, class by class, drawn with the seeds
        of :meth:`SyntheticState.initialise`, (K * per_class, C, H, W) float32."""
        parts = [data.sample_class(c, per_class, seed=self.cfg.seed * 100_003 + c)
                 for c in range(self.model_cfg.num_classes)]
        return torch.cat([torch.as_tensor(p) for p in parts]).to(device=self.device, dtype=torch.float32)

    def _logits(self, weights: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The network at ``weights`` on ``images`` (un-augmented, no graph), in chunks."""
        chunk = self.cfg.soft_label_chunk
        with torch.no_grad():
            return torch.cat([self.view(weights, images[i:i + chunk].to(weights.device))
                              for i in range(0, images.shape[0], chunk)])

    def predict(self, weights: torch.Tensor, images: torch.Tensor) -> list[int]:
        return self._logits(weights, images).argmax(dim=1).tolist()

    def _initial_from_teachers(self, start: TeacherStart) -> SyntheticState:
        """``learned-teacher``'s set: the chosen pool images and the logits
        ``sum_e weights[e][i] f(teachers[e], x_i)`` (the mean over the experts that
        classify x_i correctly, as the service weighed them)."""
        images = start.pool[torch.as_tensor(start.chosen, dtype=torch.long, device=start.pool.device)]
        logits = torch.zeros(images.shape[0], self.model_cfg.num_classes, dtype=images.dtype, device=images.device)
        for teacher, weights in zip(start.teachers, start.weights):
            w = torch.as_tensor(weights, dtype=images.dtype, device=images.device)
            logits += w[:, None] * self._logits(teacher, images).to(logits)
        class_ids = torch.arange(self.model_cfg.num_classes, device=images.device).repeat_interleave(self.cfg.ipc)
        return SyntheticState(images, class_ids, self.cfg.lr_init, self.cfg, logits=logits,
                              set_on=self.memory.set_on)

    def health(self, state: SyntheticState, labels: torch.Tensor) -> tuple[list[int], list[int], list[float]]:
        """Argmax and entropy (nats) per image of a teacher's softmax, or of learned logits
        (softmaxed first: this student's labels are logits exactly when it learns them)."""
        with torch.no_grad():
            probs = labels.detach().float()
            if self.learned:
                probs = F.softmax(probs, dim=1)
            entropy = torch.special.entr(probs).sum(dim=1)  # -p log p, 0 at p = 0
            return probs.argmax(dim=1).tolist(), state.class_ids.tolist(), entropy.tolist()

    def images(self, state: SyntheticState) -> torch.Tensor:
        return state.images.detach().clone()

    def with_images(self, state: SyntheticState, images: torch.Tensor) -> SyntheticState:
        """A shallow copy of ``state`` whose images are ``images`` and whose teacher labels
        are not made yet (they belong to other images); lr, class ids and logits are shared."""
        view = copy.copy(state)
        view.images = images
        view.soft = None
        return view

    def images_array(self, images: torch.Tensor) -> np.ndarray:
        return images.detach().cpu().numpy()

    def images_from(self, array: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), device=self.device)


class TorchGauges:
    """Previews of the set and memory samples of one device.

    Args:
        device: the run's device (memory figures).
        decode: model-space images to [0, 1] (the data's normaliser); None: no previews.
        ipc, num_classes: the set's layout (images ordered class by class).
        per_class, max_classes: the preview shows this many images of this many classes.
    """

    def __init__(self, device: torch.device | str, decode: Optional[Callable], ipc: int, num_classes: int, *,
                 per_class: int = 3, max_classes: int = 10) -> None:
        self.device = torch.device(device)
        self.decode = decode
        self.ipc = ipc
        self.num_classes = num_classes
        self.per_class = per_class
        self.max_classes = max_classes

    def memory(self, iteration: int) -> events.Memory:
        return memory_sample(self.device, iteration=iteration)

    def preview(self, state: SyntheticState, iteration: int) -> Optional[events.Preview]:
        """A small grid (classes as columns, a few images each as rows) of un-whitened images."""
        if self.decode is None:
            return None
        from torchvision.utils import make_grid

        k = min(self.per_class, self.ipc)
        classes = min(self.num_classes, self.max_classes)
        idx = [c * self.ipc + i for i in range(k) for c in range(classes)]
        with torch.no_grad():
            imgs = self.decode(state.images.detach()[idx].float().cpu()).clamp(0, 1)
            if imgs.shape[-1] > 16:  # keep the event small: at most 16 px per image
                imgs = torch.nn.functional.interpolate(imgs, size=(16, 16), mode="area")
            grid = make_grid(imgs, nrow=classes, padding=1)
        pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return events.Preview(iteration=iteration, pixels=pixels.tolist(), per_class=k)
