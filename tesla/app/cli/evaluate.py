"""``tesla evaluate``: the evaluation protocol on a stored synthetic set, beside its references.

Parses the options into an :class:`~tesla.app.services.evaluate.EvaluateRequest`, runs
the prepared job and prints the scores as a table (or JSON).
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from tesla.app.cli.common import errors, run_job, storage_options


def evaluate(
    synthetic: str = typer.Argument(..., help="Synthetic store (run/synthetic.zarr or .h5)."),
    models: str = typer.Option("convnet", help="Comma-separated: convnet,resnet18,vit."),
    num_models: int = typer.Option(5, help="Fresh networks per model."),
    epochs: int = typer.Option(1000, help="Training epochs (lr x0.1 at half)."),
    lr: Optional[float] = typer.Option(None, help="Student lr (default: the set's learned lr)."),
    batch_size: int = typer.Option(256, help="Batch size."),
    dsa: bool = typer.Option(True, "--dsa/--no-dsa", help="DSA on every batch."),
    hard: bool = typer.Option(False, "--hard", help="Train on class ids even if the set has soft labels."),
    random_real: bool = typer.Option(True, "--random-real/--no-random-real", help="Also random real images, same IPC."),
    full_real: bool = typer.Option(False, "--full-real", help="Also the whole real training set."),
    full_epochs: Optional[int] = typer.Option(None, help="Epochs of the full-real reference (default epochs/10)."),
    dataset: Optional[str] = typer.Option(None, help="Override the dataset recorded with the set."),
    data: Optional[str] = typer.Option(None, help="Override the data folder recorded with the set."),
    seed: int = typer.Option(0, help="Network i uses seed + i."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results."),
    json_mode: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Train fresh networks on a synthetic set; report mean +- std beside random real and full real."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.evaluate import EvaluateRequest
        from tesla.domain.config import EvalConfig

        cfg = EvalConfig(models=tuple(m.strip() for m in models.split(",") if m.strip()), num_models=num_models,
                         epochs=epochs, lr=lr, batch_size=batch_size, dsa=dsa, seed=seed)
        request = EvaluateRequest(synthetic=synthetic, cfg=cfg, hard=hard, random_real=random_real,
                                  full_real=full_real, full_epochs=full_epochs, dataset=dataset, data=data)
        prepared = bootstrap.prepare_evaluation(request, device=device, storage_options=storage_options(storage_option))
        syn = prepared.set
        scores = run_job(prepared.job, run_dir=None, quiet=True, json_mode=False)
        if json_mode:
            typer.echo(json.dumps([{"model": s.model, "subject": s.subject, "mean": s.mean, "std": s.std,
                                    "accuracies": list(s.accuracies)} for s in scores]))
            return
        from rich.console import Console
        from rich.table import Table

        from tesla.domain.urls import redact_url

        table = Table(title=f"{redact_url(synthetic)}: IPC {syn.ipc}, {syn.labels_kind} labels, lr {syn.lr}")
        for col in ("model", "trained on", "top-1 % (mean +- std)", "n"):
            table.add_column(col)
        for s in scores:
            table.add_row(s.model, s.subject, str(s), str(len(s.accuracies)))
        Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
