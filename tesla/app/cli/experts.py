"""``tesla experts``: train expert trajectories into a store (HDF5 or Zarr)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs
import typer

from tesla.app.cli.common import errors, fail, run_job, storage_options


def build_configs(preset: Optional[str], dataset: Optional[str], data: Optional[str], zca: Optional[bool],
                  overrides: dict, model_overrides: dict):
    from tesla.domain import presets
    from tesla.domain.config import DataConfig, ExpertConfig, ModelConfig

    if preset:
        p = presets.get(preset)
        model, experts = p.model, p.experts
        data_cfg = DataConfig(name=dataset or p.dataset, root=data, zca=p.zca if zca is None else zca)
    else:
        name = dataset or "cifar10"
        classes = {"cifar100": 100, "imagenet64": 1000, "demo": 10}.get(name, 10)
        size = 16 if name == "demo" else 32
        model = ModelConfig(num_classes=classes, image_size=size, depth=2 if name == "demo" else 3)
        experts = ExpertConfig()
        data_cfg = DataConfig(name=name, root=data, zca=bool(zca))
    model = attrs.evolve(model, **{k: v for k, v in model_overrides.items() if v is not None})
    experts = attrs.evolve(experts, **{k: v for k, v in overrides.items() if v is not None})
    return data_cfg, model, experts


def adapt_model(model_cfg, source, preset: Optional[str], depth: Optional[int]):
    """Without a preset the model takes its classes and input shape from the data (and a
    depth that ends at 4x4 features: 2 for 16 px, 3 for 32 px, 4 for 64 px, unless given)."""
    if preset:
        return model_cfg
    channels, size = int(source.image_shape[0]), int(source.image_shape[1])
    auto_depth = {16: 2, 32: 3, 64: 4}.get(size, model_cfg.depth)
    return attrs.evolve(model_cfg, num_classes=int(source.num_classes), channels=channels, image_size=size,
                        depth=depth if depth is not None else auto_depth)


def check_data_fits(source, model_cfg) -> None:
    """Refuse data whose classes or image shape the model cannot take."""
    from tesla.domain.config import ConfigError

    if source.num_classes != model_cfg.num_classes:
        raise ConfigError(f"the data has {source.num_classes} classes but the model outputs "
                          f"{model_cfg.num_classes}: pick the preset or dataset the data belongs to")
    want = (model_cfg.channels, model_cfg.image_size, model_cfg.image_size)
    if tuple(source.image_shape) != want:
        raise ConfigError(f"the data's images are {tuple(source.image_shape)} but the model expects {want}: "
                          "pick the preset or dataset the data belongs to")


def check_store_fits(store, model_cfg, data_cfg) -> None:
    """Refuse an existing store of another model or dataset before anything is written."""
    if not store.initialized:
        return
    from tesla.adapters.torch.functional import FlatView
    from tesla.adapters.torch.models import build_model
    from tesla.domain.config import to_dict

    view = FlatView(build_model(model_cfg))
    store.check_compatible(to_dict(model_cfg), view.layout, view.num_params, to_dict(data_cfg))


def experts(
    out: str = typer.Option(..., "--out", "-o", help="Trajectory store: a .h5 file, a Zarr directory or an fsspec URL."),
    dataset: Optional[str] = typer.Option(None, help="cifar10 | cifar100 | demo | prepared."),
    data: Optional[str] = typer.Option(None, help="Folder (or prepared store) of the real data."),
    preset: Optional[str] = typer.Option(None, help="A row of the paper's table, e.g. cifar10-ipc10."),
    num_experts: Optional[int] = typer.Option(None, "--num-experts", "-n", help="Experts to train (default 10)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per expert (default 50)."),
    lr: Optional[float] = typer.Option(None, help="Expert SGD lr (default 0.01)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 256)."),
    seed: Optional[int] = typer.Option(None, help="Expert i uses seed + i."),
    parallel: Optional[int] = typer.Option(None, help="Experts trained together in one process (vmap on CUDA)."),
    zca: Optional[bool] = typer.Option(None, "--zca/--no-zca", help="ZCA-whiten the images (kornia, eps 0.1)."),
    arch: Optional[str] = typer.Option(None, help="convnet | resnet18 | vit."),
    depth: Optional[int] = typer.Option(None, help="ConvNet depth (3 for 32 px, 4 for 64 px)."),
    width: Optional[int] = typer.Option(None, help="ConvNet width (default 128)."),
    norm: Optional[str] = typer.Option(None, help="instancenorm | batchnorm | layernorm | groupnorm | none."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    run_dir: Optional[Path] = typer.Option(None, help="Where to write events.jsonl (follow it with `tesla monitor`)."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    json_mode: bool = typer.Option(False, "--json", help="Print events as JSON lines."),
    distributed: bool = typer.Option(False, "--distributed", help="One rank of a torchrun job: ranks split the "
                                     "experts (see docs/DISTRIBUTED.md)."),
) -> None:
    """Train expert trajectories (the MTT/TESLA buffer step) into a store.

    Complete experts already in the store are kept: running the same command again
    resumes an interrupted run.
    """
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.experts import train_experts
        from tesla.domain.config import to_dict

        data_cfg, model_cfg, expert_cfg = build_configs(
            preset, dataset, data, zca,
            dict(num_experts=num_experts, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, parallel=parallel),
            dict(arch=arch, depth=depth, width=width, norm=norm))
        opts = storage_options(storage_option)
        if distributed:
            run_ranked_experts(out, data_cfg, model_cfg, expert_cfg, device, opts, run_dir, quiet, json_mode,
                               adapt=lambda m, src: adapt_model(m, src, preset, depth))
            return
        dev = bootstrap.resolve_device(device)
        # every check before anything is written: the data, then an existing store, then
        # the run directory; a new store is created last
        source = bootstrap.load_data(data_cfg, storage_options=opts)
        model_cfg = adapt_model(model_cfg, source, preset, depth)
        check_data_fits(source, model_cfg)
        local = "://" not in str(out) or str(out).startswith("file://")
        store = None
        if not local or Path(str(out).removeprefix("file://")).exists():
            store = bootstrap.open_trajectories(out, "a", opts)
            check_store_fits(store, model_cfg, data_cfg)
        config = {"experts": to_dict(expert_cfg), "model": to_dict(model_cfg), "data": to_dict(data_cfg)}
        if run_dir is not None:
            bootstrap.prepare_run_dir(run_dir, config, resume=True, compare_keys=("model", "data"))
        if store is None:
            store = bootstrap.open_trajectories(out, "a", opts)
        result = run_job(lambda sink, cancel: train_experts(
            model_cfg=model_cfg, expert_cfg=expert_cfg, data=source, store=store, dataset=to_dict(data_cfg),
            sink=sink, device=dev, cancel=cancel, run_config=config), run_dir=run_dir, quiet=quiet,
            json_mode=json_mode)
        if not quiet and not json_mode:
            acc = ", ".join(f"{k}: {v:.1f}%" for k, v in result.final_accuracy.items())
            typer.echo(f"{result.status}: trained {len(result.trained)} expert(s), kept {len(result.skipped)}"
                       f" -> {out}" + (f" (final test accuracy {acc})" if acc else ""))
        if result.status != "completed":
            raise typer.Exit(1)


def run_ranked_experts(out, data_cfg, model_cfg, expert_cfg, device, opts, run_dir, quiet, json_mode, *,
                       adapt=lambda m, src: m) -> None:
    """``--distributed``: this process is one torchrun rank; rank 0 alone prints and logs."""
    from tesla.adapters.torch.dist import DistributedError, is_reported, process_group
    from tesla.app import bootstrap
    from tesla.app.cli.common import cancel_on_signals
    from tesla.app.services.distributed import distributed_experts
    from tesla.domain.config import to_dict
    from tesla.domain.ports import NullSink

    try:
        with process_group(device) as ctx:
            try:
                source = ctx.agree(lambda: bootstrap.load_data(data_cfg, storage_options=opts))
                model_cfg = adapt(model_cfg, source)
                check_data_fits(source, model_cfg)
                config = {"experts": to_dict(expert_cfg), "model": to_dict(model_cfg), "data": to_dict(data_cfg)}
                if run_dir is not None:
                    ctx.agree(lambda: bootstrap.prepare_run_dir(run_dir, config, resume=True,
                                                                compare_keys=("model", "data")), only_writer=True)

                def job(sink, cancel):
                    return distributed_experts(ctx=ctx, out=out, model_cfg=model_cfg, expert_cfg=expert_cfg,
                                               data=source, dataset=to_dict(data_cfg), storage_options=opts, sink=sink,
                                               cancel=cancel, run_config=config)

                if ctx.is_writer:
                    result = run_job(job, run_dir=run_dir, quiet=quiet, json_mode=json_mode)
                else:
                    with cancel_on_signals() as cancel:
                        result = job(NullSink(), cancel)
            except Exception as e:
                if not ctx.is_writer and is_reported(e):  # every rank knows it: rank 0 alone prints it
                    raise typer.Exit(2) from None
                raise
    except DistributedError as e:  # no torchrun environment, or another rank failed
        fail(str(e))
    if ctx.is_writer and not quiet and not json_mode:
        acc = ", ".join(f"{k}: {v:.1f}%" for k, v in sorted(result.final_accuracy.items()))
        typer.echo(f"{result.status}: {ctx.world} ranks trained {len(result.trained)} expert(s), kept "
                   f"{len(result.skipped)} -> {out}" + (f" (final test accuracy {acc})" if acc else ""))
    if result.status != "completed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("experts")(experts)
