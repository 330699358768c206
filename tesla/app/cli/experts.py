"""``tesla experts``: train expert trajectories into a store (HDF5 or Zarr).

Parses the options into an :class:`~tesla.app.services.experts.ExpertsRequest` and runs
the prepared job (:func:`tesla.app.bootstrap.prepare_experts` checks everything first)
under the terminal display, in this process or as one torchrun rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tesla.app.cli.common import config_defaults, errors, run_on_ranks, show_defaults, storage_options, threads_option


def experts(
    out: str = typer.Option(..., "--out", "-o", help="Trajectory store: a .h5 file, a Zarr directory or an fsspec URL."),
    dataset: Optional[str] = typer.Option(None, help="cifar10 | cifar100 | demo | prepared."),
    data: Optional[str] = typer.Option(None, help="Folder (or prepared store) of the real data."),
    preset: Optional[str] = typer.Option(None, help="A row of the paper's table, e.g. cifar10-ipc10."),
    num_experts: Optional[int] = typer.Option(None, "--num-experts", "-n", help="Experts to train."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per expert."),
    lr: Optional[float] = typer.Option(None, help="Expert SGD lr."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    seed: Optional[int] = typer.Option(None, help="Expert i uses seed + i."),
    parallel: Optional[int] = typer.Option(None, help="Experts trained together in one process (vmap on CUDA)."),
    zca: Optional[bool] = typer.Option(None, "--zca/--no-zca", help="ZCA-whiten the images (kornia, eps 0.1)."),
    arch: Optional[str] = typer.Option(None, help="convnet | resnet18 | vit."),
    depth: Optional[int] = typer.Option(None, help="ConvNet depth (3 for 32 px, 4 for 64 px)."),
    width: Optional[int] = typer.Option(None, help="ConvNet width."),
    norm: Optional[str] = typer.Option(None, help="instancenorm | batchnorm | layernorm | groupnorm | none."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    run_dir: Optional[Path] = typer.Option(None, help="Where to write events.jsonl (follow it with `tesla monitor`)."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    json_mode: bool = typer.Option(False, "--json", help="Print events as JSON lines."),
    distributed: bool = typer.Option(False, "--distributed", help="One rank of a torchrun job: ranks split the "
                                     "experts (see docs/DISTRIBUTED.md)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Train expert trajectories (the MTT/TESLA buffer step) into a store.

    Complete experts already in the store are kept: running the same command again
    resumes an interrupted run.
    """
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.experts import ExpertsRequest
        from tesla.domain.experts import experts_configs

        bootstrap.configure_threads(threads)

        data_cfg, model_cfg, expert_cfg = experts_configs(
            preset, dataset, data, zca,
            dict(num_experts=num_experts, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, parallel=parallel),
            dict(arch=arch, depth=depth, width=width, norm=norm))
        request = ExpertsRequest(out=out, data=data_cfg, model=model_cfg, experts=expert_cfg, fit_model=not preset,
                                 depth=depth, run_dir=run_dir)
        opts = storage_options(storage_option)
        ran = run_on_ranks(lambda ctx, sink: bootstrap.prepare_experts(request, device=device, storage_options=opts,
                                                                       ctx=ctx if distributed else None, sink=sink),
                           device=device, distributed=distributed, run_dir=run_dir, quiet=quiet,
                           json_mode=json_mode, setup=True)
        result = ran.result
        if ran.is_writer and not quiet and not json_mode:
            done = f"{ran.world} ranks trained" if distributed else "trained"
            typer.echo(_summary(result, out, f"{done} {len(result.trained)}", sorted(result.final_accuracy.items())))
        if result.status != "completed":
            raise typer.Exit(1)


def _summary(result: Any, out: str, done: str, accuracies: Any) -> str:
    acc = ", ".join(f"{k}: {v:.1f}%" for k, v in accuracies)
    from tesla.domain.urls import redact_url

    return (f"{result.status}: {done} expert(s), kept {len(result.skipped)} -> {redact_url(out)}"
            + (f" (final test accuracy {acc})" if acc else ""))


def register(app: typer.Typer) -> None:
    from tesla.domain.config import ExpertConfig

    texts = config_defaults(ExpertConfig)
    texts.update(dataset="the preset's; cifar10 without", data="none: demo needs none", preset="none",
                 zca="the preset's; off without", arch="the preset's; convnet without",
                 depth="the preset's; without, fitted to the image side: 2 for 16 px, 3 for 32, 4 for 64",
                 width="the preset's; 128 without", norm="the preset's; instancenorm without",
                 run_dir="none: no event log", storage_option="none")
    app.command("experts")(show_defaults(experts, texts))
