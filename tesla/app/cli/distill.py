"""``tesla distill``: distil a synthetic set from a trajectory store into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs
import typer

from tesla.app.cli.common import (config_defaults, errors, show_defaults, storage_options, threads_option,
                                   typed_options)

SET_NAMES = {"zarr": "synthetic.zarr", "h5": "synthetic.h5"}


def distill_config(preset: Optional[str], overrides: dict):
    from tesla.domain import presets
    from tesla.domain.config import DistillConfig

    base = presets.get(preset).distill if preset else DistillConfig()
    return attrs.evolve(base, **{k: v for k, v in overrides.items() if v is not None})


def distill(
    trajectories: Optional[str] = typer.Option(None, "--trajectories", "-t", help="Trajectory store made by "
                                               "`tesla experts` (required, except with --resume: the run's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (config, events, synthetic set, images)."),
    preset: Optional[str] = typer.Option(None, help="A row of the paper's table, e.g. cifar10-ipc10."),
    dataset: Optional[str] = typer.Option(None, help="Override the dataset recorded in the store."),
    data: Optional[str] = typer.Option(None, help="Override the data folder recorded in the store."),
    ipc: Optional[int] = typer.Option(None, help="Synthetic images per class."),
    syn_steps: Optional[int] = typer.Option(None, help="Student steps N per iteration."),
    expert_epochs: Optional[int] = typer.Option(None, help="M: the target is M epochs after the start."),
    max_start_epoch: Optional[int] = typer.Option(None, help="Start epochs are drawn from [--min-start-epoch, this)."),
    batch_syn: Optional[int] = typer.Option(None, help="Synthetic images per student step (default all)."),
    iterations: Optional[int] = typer.Option(None, help="Distillation iterations."),
    lr_img: Optional[float] = typer.Option(None, help="SGD lr of the images."),
    lr_lr: Optional[float] = typer.Option(None, help="SGD lr of the learned student lr."),
    lr_init: Optional[float] = typer.Option(None, help="Initial student lr."),
    engine: Optional[str] = typer.Option(None, help="tesla (first order) | exact (adjoint) | unrolled (MTT)."),
    labels: Optional[str] = typer.Option(None, help="hard | teacher-target | teacher-last | teacher-epoch | learned | "
                                         "learned-teacher."),
    label_epoch: Optional[int] = typer.Option(None, help="Teacher epoch for --labels teacher-epoch."),
    init: Optional[str] = typer.Option(None, help="real | noise."),
    dsa: Optional[bool] = typer.Option(None, "--dsa/--no-dsa", help="Replayed DSA augmentation."),
    seed: Optional[int] = typer.Option(None, help="Seeds every random choice of the run."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Iterations between checkpoints."),
    max_grad_norm: Optional[float] = typer.Option(None, help="Clip the image gradient to this norm."),
    max_loss: Optional[float] = typer.Option(None, help="Stop, keeping the last checkpoint, when the matching "
                                             "loss (about 1 at the start) exceeds this [1000; inf: never]."),
    second_pass_chunk: Optional[int] = typer.Option(None, help="tesla engine: pass-2 steps computed together "
                                                    "(memory bounded by this, not by the steps)."),
    precision: Optional[str] = typer.Option(None, help="Forward passes in fp32 | tf32 | bf16 (see `tesla bench speed`)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="NHWC memory format for the convolutions."),
    offload_weights: Optional[bool] = typer.Option(None, "--offload-weights/--no-offload-weights",
                                                   help="Keep pass-1 student weights in host memory (CUDA; for exact, chunked or distributed pass 2)."),
    remake_weights: Optional[bool] = typer.Option(None, "--remake-weights/--keep-weights",
                                                  help="exact engine: keep ~2 sqrt(N) student weight vectors, not N "
                                                  "(one more forward/backward per step)."),
    store_format: str = typer.Option("zarr", "--format", help="Synthetic store format: zarr | h5."),
    eval_every: int = typer.Option(0, help="Evaluate the set every k iterations (0: never during the run)."),
    eval_models: int = typer.Option(2, help="Networks per evaluation during the run."),
    eval_epochs: int = typer.Option(300, help="Epochs per evaluation network during the run."),
    preview_every: int = typer.Option(10, help="Send an image preview every k iterations."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint with the "
                                "settings it recorded (config.json); options typed must be the run's, except"),
    tui: bool = typer.Option(False, "--tui", help="Show the run in the terminal UI (c: cancel, q: quit)."),
    tensorboard: Optional[str] = typer.Option(None, "--tensorboard", help="Also log events to TensorBoard in this "
                                              "folder (needs the tensorboard package)."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    json_mode: bool = typer.Option(False, "--json", help="Print events as JSON lines."),
    store: Optional[str] = typer.Option(None, "--store", help="Synthetic store URL (e.g. s3://bucket/run.zarr) "
                                        "instead of OUT/synthetic.zarr; --storage-option applies to it."),
    distributed: bool = typer.Option(False, "--distributed", help="One rank of a torchrun job: pass 2 is split "
                                     "across ranks (tesla engine; see docs/DISTRIBUTED.md)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Compute each student step in pieces of "
                                              "at most K images: activation memory bounded by K, same numbers "
                                              "(not with batch norm) [default: from --memory-budget, else whole "
                                              "batches]."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Bytes a step's activations may take, "
                                                "e.g. 4GB or 4GiB: picks the largest micro-batch that fits (measured "
                                                "on the network) and caps the soft-label chunk [default: no budget]."),
    set_on: Optional[str] = typer.Option(None, "--set-on", help="Where the set, its gradient and momentum live: "
                                         "host | device | auto (host when they would take over a quarter of the "
                                         "GPU; on a CPU both are the same memory) [default: auto]."),
    lr_label: Optional[float] = typer.Option(None, help="SGD lr of the learned label logits (learned, "
                                             "learned-teacher) [10]."),
    label_momentum: Optional[float] = typer.Option(None, help="SGD momentum of the learned label logits "
                                                   "(default: the images' 0.5; DATM uses 0.9)."),
    sampling: Optional[str] = typer.Option(None, help="Start epochs: uniform in [min, max) (the paper) | window "
                                           "(DATM: the upper end opens from --initial-max-start-epoch to "
                                           "--max-start-epoch over --window-iterations)."),
    min_start_epoch: Optional[int] = typer.Option(None, help="Lowest start epoch drawn [0]."),
    initial_max_start_epoch: Optional[int] = typer.Option(None, help="--sampling window: the upper end at the "
                                                          "start (default: halfway from min to max)."),
    window_iterations: Optional[int] = typer.Option(None, help="--sampling window: iterations until it is fully "
                                                    "open (default: a tenth of --iterations)."),
    ema_decay: Optional[float] = typer.Option(None, help="FTD's moving average of the images (0.99-0.9995): the "
                                              "average is evaluated and stored (default: off)."),
    match_fraction: Optional[float] = typer.Option(None, help="PAD: match only about this fraction of the "
                                                   "parameters, the deepest whole layers (tesla, exact) [1: all]."),
    min_label_agreement: Optional[float] = typer.Option(None, help="Run health: stop when fewer images than this "
                                                        "have a label naming their class (teacher or learned "
                                                        "labels) [2/classes, at most 0.75; 0: never]."),
    collapse_iterations: Optional[int] = typer.Option(None, help="Run health: iterations in a row below "
                                                      "--min-label-agreement that stop the run [10]."),
    stall_iterations: Optional[int] = typer.Option(None, help="Run health: iterations in a row with the learned "
                                                   "lr at its floor and the loss near 1 that stop the run "
                                                   "[100; 0: never]."),
    stall_tolerance: Optional[float] = typer.Option(None, help="Run health: a loss above 1 - this is 'near 1' "
                                                    "[0.05]."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Distil a synthetic set by trajectory matching (TESLA, exact or MTT gradients)."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.run import DistillRequest

        bootstrap.configure_threads(threads)

        if tensorboard:
            bootstrap.check_tensorboard()
        if store_format not in SET_NAMES:
            from tesla.domain.config import ConfigError

            raise ConfigError(f"--format must be zarr or h5 (got {store_format!r})")
        cfg = distill_config(preset, dict(
            ipc=ipc, syn_steps=syn_steps, expert_epochs=expert_epochs, max_start_epoch=max_start_epoch,
            batch_syn=batch_syn, iterations=iterations, lr_img=lr_img, lr_lr=lr_lr, lr_init=lr_init, engine=engine,
            labels=labels, label_epoch=label_epoch, init=init, dsa=dsa, seed=seed,
            checkpoint_every=checkpoint_every, max_grad_norm=max_grad_norm, max_loss=max_loss, second_pass_chunk=second_pass_chunk,
            precision=precision, channels_last=channels_last, offload_weights=offload_weights,
            remake_weights=remake_weights, micro_batch=micro_batch, memory_budget=memory_budget, set_on=set_on,
            lr_label=lr_label, label_momentum=label_momentum, sampling=sampling,
            min_start_epoch=min_start_epoch, initial_max_start_epoch=initial_max_start_epoch,
            window_iterations=window_iterations, ema_decay=ema_decay, match_fraction=match_fraction,
            min_label_agreement=min_label_agreement, collapse_iterations=collapse_iterations,
            stall_iterations=stall_iterations, stall_tolerance=stall_tolerance))
        request = DistillRequest(trajectories=trajectories, out=out, cfg=cfg, dataset=dataset, data=data,
                                 set_name=SET_NAMES[store_format], device=device, resume=resume,
                                 eval_every=eval_every, eval_models=eval_models, eval_epochs=eval_epochs,
                                 preview_every=preview_every, storage_options=storage_options(storage_option),
                                 store_url=store, typed=typed_request_fields(), preset=preset)
        note_set_on(cfg.set_on, device, quiet or json_mode)
        run_ranked_distillation(request, distributed, tui, quiet, json_mode, tensorboard)


def typed_request_fields() -> frozenset:
    """The DistillConfig and request fields the user typed: on --resume these alone may
    differ from the run's recorded settings (the rest are taken from config.json)."""
    from tesla.app.services.run import DISTILL_FIELDS

    renamed = {"store_format": "set_name", "store": "store_url"}
    names = [*DISTILL_FIELDS, "trajectories", "dataset", "data", *renamed]
    return frozenset(renamed.get(n, n) for n in typed_options(names))


def run_ranked_distillation(request, distributed: bool, tui: bool, quiet: bool, json_mode: bool,
                            tensorboard: Optional[str] = None) -> None:
    """Validate, then run in this process, or as one torchrun rank with ``--distributed``
    (rank 0 alone prints and logs)."""
    from tesla.app import bootstrap
    from tesla.app.cli.common import run_on_ranks
    from tesla.domain.urls import redact_url

    ran = run_on_ranks(lambda ctx: bootstrap.prepare_distillation(request, ctx), device=request.device,
                       distributed=distributed, run_dir=request.out, quiet=quiet, json_mode=json_mode, tui=tui,
                       tensorboard=tensorboard)
    result = ran.result
    if result is None:
        raise typer.Exit(1)
    if ran.is_writer and not quiet and not json_mode:
        loss = "-" if result.loss is None else f"{result.loss:.4f}"
        where = redact_url(request.store_url) if request.store_url else request.out / request.set_name
        health = getattr(result, "health", None)
        agree = "" if not health else f", labels name their class for {health['agreement']:.0%} of the images"
        typer.echo(f"{result.status} at iteration {result.iterations}: loss {loss}, lr {result.lr:.5f}{agree} "
                   f"-> {where}")
    if result.status != "completed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    import inspect

    from tesla.app.services.distill import RESUMABLE_CHANGES
    from tesla.domain.config import DistillConfig
    from tesla.domain.resume import option_name

    texts = config_defaults(DistillConfig, none={
        "batch_syn": "all", "max_grad_norm": "off", "label_epoch": "none", "ema_decay": "off",
        "micro_batch": "from --memory-budget, else whole batches", "memory_budget": "no budget",
        "label_momentum": "the images' momentum", "initial_max_start_epoch": "halfway from min to max",
        "window_iterations": "a tenth of --iterations", "min_label_agreement": "2/classes, at most 0.75"})
    texts.update(preset="none", dataset="the store's", data="the store's", store="OUT/synthetic.zarr|h5",
                 tensorboard="off", storage_option="none")
    resume = inspect.signature(distill).parameters["resume"].default
    if not resume.help.endswith("."):  # the changes a resumed run may make, named once (RESUMABLE_CHANGES)
        resume.help += " " + ", ".join(option_name(f) for f in sorted(RESUMABLE_CHANGES)) + "."
    app.command("distill")(show_defaults(distill, texts))


def note_set_on(set_on: str, device: str, quiet: bool) -> None:
    """Say that ``--set-on host`` moves nothing on a CPU, where host and device are one memory."""
    if set_on != "host" or quiet:
        return
    from tesla.app import bootstrap

    if bootstrap.resolve_device(device).type == "cpu":
        typer.echo("note: on a CPU the host and the device are one memory: --set-on host changes the code path "
                   "(rows gathered per step), not where the set lives", err=True)
