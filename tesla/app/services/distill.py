"""The distillation service: the loop that turns expert trajectories into a synthetic set.

Per iteration (NOTES §1): draw an expert and a start epoch, read the start and target
snapshots, decide the labels (hard, teacher softmax, learned), plan the student steps
(batches and augmentation seeds), ask the domain's engine for the loss and gradients
through the torch compute, guard against NaN/inf, update the images and the learned lr,
and publish an ``Iteration`` event. Every ``checkpoint_every`` iterations, and when
cancelled, the whole state (images, lr, logits, momentum buffers, the run's RNG state)
is written atomically to the synthetic store, so ``resume`` continues to the same result
as an uninterrupted run.

Everything is checked before the first iteration: the store's layout against the
model, the stored epochs against ``max_start_epoch + expert_epochs``, the data's classes
and image shape against the model. The service knows nothing of terminals: it talks
through an :class:`~tesla.domain.ports.EventSink` and stops when ``cancel`` is set.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Optional

import attrs
import numpy as np
import torch

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.memory import memory_sample
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.synthetic import SyntheticState, soft_labels
from tesla.domain import events, matching, sampling
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.errors import DistillError, NumericalError
from tesla.domain.labels import plan_labels
from tesla.domain.ports import EventSink, NullSink




# fields that may differ when a run is resumed (the usual fixes and the run length)
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "lr_img", "lr_lr", "lr_label", "max_grad_norm", "max_loss",
                     "remake_weights"}  # memory only: the same numbers either way


@attrs.frozen
class DistillResult:
    status: str  # completed | cancelled
    iterations: int
    loss: Optional[float]
    lr: float
    label_source: dict


def rng_state_to_json(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_state_from_json(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])


def check_inputs(cfg: DistillConfig, model_cfg: ModelConfig, data: Any, trajectories: Any, view: FlatView) -> list[int]:
    """Refuse, before any work, what cannot run; returns the usable expert ids."""
    meta = trajectories.meta
    if meta.num_params != view.num_params:
        raise DistillError(f"the trajectory store holds {meta.num_params}-parameter experts but the model "
                           f"{model_cfg.name} has {view.num_params}: pass the model the experts were trained with")
    if data.num_classes != model_cfg.num_classes:
        raise DistillError(f"the data has {data.num_classes} classes but the model outputs {model_cfg.num_classes}")
    shape = tuple(data.image_shape)
    if shape != (model_cfg.channels, model_cfg.image_size, model_cfg.image_size):
        raise DistillError(f"the data's images are {shape} but the model expects "
                           f"{(model_cfg.channels, model_cfg.image_size, model_cfg.image_size)}")
    ids = trajectories.expert_ids()
    if not ids:
        raise DistillError("the trajectory store holds no complete expert: run `tesla experts` first")
    needed = cfg.last_epoch_needed
    short = [e for e in ids if trajectories.num_snapshots(e) - 1 < needed]
    if short:
        have = min(trajectories.num_snapshots(e) for e in short) - 1
        raise DistillError(f"max_start_epoch + expert_epochs needs epoch {needed} but expert {short[0]} stops at "
                           f"epoch {have}: lower --max-start-epoch/--expert-epochs or train longer experts")
    n = cfg.ipc * data.num_classes
    if cfg.batch_syn is not None and cfg.batch_syn > n:
        raise DistillError(f"batch_syn {cfg.batch_syn} is larger than the synthetic set ({n} images)")
    return ids


def default_compute(cfg: DistillConfig) -> Callable:
    """The plain compute, or the batched one when a chunked pass 2 or another precision is asked."""
    import functools

    if cfg.second_pass_chunk > 1 or cfg.precision != "fp32" or cfg.channels_last:
        from tesla.adapters.torch.batched import BatchedTorchCompute

        return functools.partial(BatchedTorchCompute, precision=cfg.precision, channels_last=cfg.channels_last,
                                 offload=cfg.offload_weights)
    return functools.partial(TorchCompute, offload=cfg.offload_weights)


def check_resumable(cfg: DistillConfig, checkpoint_attrs: dict) -> None:
    """Refuse to resume a checkpoint made with other settings than the usual fixes."""
    saved = checkpoint_attrs.get("distill", {})
    now = to_dict(cfg)
    changed = sorted(k for k in saved if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise DistillError(f"the checkpoint in the output was made with different {', '.join(changed)}: "
                           "resume with the same settings or choose a new --out")


def _preview(state_images: torch.Tensor, decode: Callable, ipc: int, num_classes: int, iteration: int,
             per_class: int = 3, max_classes: int = 10) -> events.Preview:
    """A small grid (classes as columns, a few images each as rows) of un-whitened images."""
    from torchvision.utils import make_grid

    k = min(per_class, ipc)
    classes = min(num_classes, max_classes)
    idx = [c * ipc + i for i in range(k) for c in range(classes)]
    with torch.no_grad():
        imgs = decode(state_images.detach()[idx].float().cpu()).clamp(0, 1)
        if imgs.shape[-1] > 16:  # keep the event small: at most 16 px per image
            imgs = torch.nn.functional.interpolate(imgs, size=(16, 16), mode="area")
        grid = make_grid(imgs, nrow=classes, padding=1)
    pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return events.Preview(iteration=iteration, pixels=pixels.tolist(), per_class=k)


def distill(*, cfg: DistillConfig, model_cfg: ModelConfig, data: Any, trajectories: Any, store: Any,
            sink: EventSink | None = None, device: torch.device | str = "cpu", cancel: threading.Event | None = None,
            resume: bool = False, run_config: Optional[dict] = None, decode: Optional[Callable] = None,
            preview_every: int = 0, memory_every: int = 10, evaluator: Optional[Callable] = None,
            eval_every: int = 0, provenance: Optional[dict] = None,
            stop_after: Optional[int] = None, compute_factory: Optional[Callable] = None,
            shard: tuple[int, int] = (0, 1), all_reduce: Optional[Callable] = None,
            is_writer: bool = True) -> DistillResult:
    """Run (or resume) a distillation; see the module docstring.

    Args:
        cfg, model_cfg: the run's configs.
        data: a DataSource (real-image initialisation).
        trajectories: an open trajectory store.
        store: an open synthetic store (checkpoints and the final set).
        sink: where events go.
        cancel: set it to stop after the current iteration with a checkpoint.
        resume: continue from the store's latest checkpoint.
        decode: maps model-space images to [0, 1] for previews.
        evaluator: ``evaluator(state, iteration)`` called every ``eval_every`` iterations
            (it emits its own Evaluation events).
        stop_after: stop (as if cancelled) after this many iterations of this call; for tests.
        compute_factory: builds the Compute (default :class:`TorchCompute`); e.g. a batched one.
        shard, all_reduce: distributed pass 2 (``tesla`` engine): this rank's (rank, world)
            and a function summing a tensor over ranks in place. Every rank then applies
            the same update, so all hold identical images.
        is_writer: this process writes checkpoints and the set (rank 0 only).
    """
    sink = sink or NullSink()
    device = torch.device(device)
    model = build_model(model_cfg, seed=cfg.seed).to(device)
    view = FlatView(model)
    expert_ids = check_inputs(cfg, model_cfg, data, trajectories, view)
    learned = cfg.labels == "learned"
    augment = DSA() if cfg.dsa else None
    rng = random.Random(cfg.seed)
    first = 0
    checkpoint = store.latest_checkpoint() if resume else None
    if checkpoint is not None:
        first, arrays, attrs_ = checkpoint
        check_resumable(cfg, attrs_)
        state = SyntheticState.from_arrays(arrays, cfg, device)
        rng.setstate(rng_state_from_json(attrs_["rng"]))
    else:
        state = SyntheticState.initialise(data, cfg, num_classes=model_cfg.num_classes, device=device,
                                            learned_labels=learned)
    total = cfg.iterations
    n_images = state.images.shape[0]
    sink.emit(events.RunStarted(job="distill", config=run_config or {"distill": to_dict(cfg),
                                                                      "model": to_dict(model_cfg)},
                                total=total))
    if checkpoint is not None:
        sink.emit(events.Warning(message=f"resumed from the checkpoint at iteration {first}", iteration=first))

    label_source: dict = {"kind": "hard" if not learned else "learned", "expert": None, "epoch": None}
    if checkpoint is not None:
        label_source = dict(checkpoint[2].get("label_source") or label_source)
    last_soft: Optional[torch.Tensor] = None
    loss: Optional[float] = None

    def write_checkpoint(done: int) -> None:
        if not is_writer:
            return
        arrays = state.to_arrays()
        attrs_ = {"iteration": done, "rng": rng_state_to_json(rng), "distill": to_dict(cfg),
                  "model": to_dict(model_cfg), "label_source": label_source}
        where = store.write_checkpoint(done, arrays, attrs_)
        sink.emit(events.Checkpoint(path=str(where), iteration=done))

    status = "completed"
    it = first
    ran = 0
    while it < total:
        if (cancel is not None and cancel.is_set()) or (stop_after is not None and ran >= stop_after):
            status = "cancelled"
            break
        t0 = time.perf_counter()
        expert, start_epoch = sampling.sample_trajectory_point(rng, expert_ids, cfg.max_start_epoch)
        start = torch.as_tensor(trajectories.load(expert, start_epoch), device=device)
        target = torch.as_tensor(trajectories.load(expert, start_epoch + cfg.expert_epochs), device=device)
        plan = plan_labels(cfg.labels, expert=expert, start_epoch=start_epoch, expert_epochs=cfg.expert_epochs,
                           num_snapshots=trajectories.num_snapshots(expert), fixed_epoch=cfg.label_epoch)
        if plan.kind == "teacher":
            teacher = torch.as_tensor(trajectories.load(expert, plan.epoch), device=device)
            labels = soft_labels(view, teacher, state.images, cfg.soft_label_chunk)
        elif plan.kind == "learned":
            labels = state.logits
        else:
            labels = state.class_ids
        steps = sampling.make_steps(n_images, cfg.syn_steps, cfg.batch_syn, rng, augment=augment is not None)
        make = compute_factory or default_compute(cfg)
        compute = make(view, state.images, labels, augment=augment, learned_labels=learned)
        extra = {}
        if cfg.engine == "tesla":
            extra = {"shard": shard, "chunk": cfg.second_pass_chunk}
        elif cfg.engine == "exact" and cfg.remake_weights:
            extra = {"segment": matching.sqrt_segment(len(steps))}
        if cfg.engine != "tesla" and shard[1] > 1:
            raise DistillError(f"engine {cfg.engine!r} cannot split its steps across processes: use --engine tesla")
        out = matching.match(compute, start, target, state.lr_value, steps, cfg.engine, **extra)
        images_grad, logits_grad = compute.data_grad()
        if all_reduce is not None:
            all_reduce(images_grad)
            if logits_grad is not None:
                all_reduce(logits_grad)
        bad = None
        if not np.isfinite(out.loss):
            bad = "the loss"
        elif not torch.isfinite(images_grad).all():
            bad = "the image gradient"
        elif not np.isfinite(out.lr_grad):
            bad = "the lr gradient"
        kept = it  # the state before this update is good: checkpoint it ...
        already = state.finite()
        if already is not None:  # ... unless it was not (NaN data, a bad resumed state)
            bad, kept = f"the {already} (before any update of this run)", None
        diverged = bad is None and out.loss > cfg.max_loss
        if diverged:  # finite, but the images that gave this loss are not a good state either
            bad, kept = "the loss", None
        if bad is None:
            grad_norm = state.apply(images_grad, out.lr_grad, logits_grad)
            broken = state.finite()
            if broken is not None:  # the update itself overflowed: the last checkpoint stays the good state
                bad = f"the {broken} after the update"
                kept = None
        if bad is not None:
            if kept is not None:
                write_checkpoint(it)
            else:
                last = store.latest_checkpoint()
                kept = last[0] if last is not None else 0
            what = (f"the matching loss {out.loss:.4g} at iteration {it + 1} is above max_loss {cfg.max_loss:g} "
                    "(the run diverged)" if diverged
                    else f"{bad} became NaN/inf at iteration {it + 1} (loss {out.loss})")
            msg = (f"{what}; the last good state (after iteration {kept}) is kept in the checkpoint: "
                   "lower --lr-img or --lr-lr (or set --max-grad-norm" + (", or raise --max-loss" if diverged else "")
                   + ") and continue with --resume")
            sink.emit(events.Error(message=msg, iteration=it))
            sink.emit(events.RunFinished(status="failed", summary={"iteration": it, "error": msg}))
            raise NumericalError(msg)
        loss = out.loss
        if plan.kind == "teacher":
            label_source = plan.provenance()
            state.soft = labels
        it += 1
        ran += 1
        sink.emit(events.Iteration(iteration=it, total=total, loss=loss, lr=state.lr_value, expert=expert,
                                   start_epoch=start_epoch, seconds=time.perf_counter() - t0, grad_norm=grad_norm))
        if memory_every and (it == first + 1 or it % memory_every == 0):
            sink.emit(memory_sample(device, iteration=it))
        if preview_every and decode is not None and (it % preview_every == 0 or it == first + 1):
            sink.emit(_preview(state.images, decode, cfg.ipc, model_cfg.num_classes, it))
        if it % cfg.checkpoint_every == 0 and it < total:
            write_checkpoint(it)
        if evaluator is not None and eval_every and it % eval_every == 0:
            evaluator(state, it)

    write_checkpoint(it)
    if status == "completed" and is_writer:
        if label_source.get("kind") == "teacher":
            # the stored labels are the last teacher's softmax on the *final* images (the ones
            # stored beside them), made from the recorded teacher, so a run resumed after its
            # last checkpoint stores exactly what an uninterrupted one does
            teacher = torch.as_tensor(trajectories.load(label_source["expert"], label_source["epoch"]), device=device)
            last_soft = soft_labels(view, teacher, state.images, cfg.soft_label_chunk)
        arrays = {"images": state.images.detach().cpu().numpy(), "lr": np.asarray(state.lr_value)}
        arrays.update(state.labels_for_store(last_soft))
        attrs_ = {"iteration": it, "distill": to_dict(cfg), "model": to_dict(model_cfg),
                  "label_source": label_source, "seed": cfg.seed, "num_classes": model_cfg.num_classes,
                  "ipc": cfg.ipc}
        attrs_.update(provenance or {})
        store.write_set(arrays, attrs_)
    sink.emit(events.RunFinished(status=status, summary={"iterations": it, "loss": loss, "lr": state.lr_value}))
    return DistillResult(status=status, iterations=it, loss=loss, lr=state.lr_value, label_source=label_source)
