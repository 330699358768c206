"""``tesla export``: a stored set to the published layout (.pt files) and pictures (OUT/images/), or DD-Ranking's
files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tesla.app.cli.common import errors, storage_options


def export(
    synthetic: str = typer.Argument(..., help="Synthetic store (run/synthetic.zarr or .h5)."),
    out: Path = typer.Argument(..., help="Folder to write into."),
    published: bool = typer.Option(True, "--published/--no-published",
                                   help="images_best.pt, labels_best.pt, lr_best.pt (MTT/TESLA layout)."),
    png: bool = typer.Option(True, "--png/--no-png", help="Pictures in OUT/images/: overview.png and one per class "
                             "(un-whitened, upscaled, named)."),
    per_row: int = typer.Option(10, help="Images per grid row."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs.",
                                                       show_default="none"),
    layout: str = typer.Option("mtt", help="mtt (the published .pt files and PNG grids) | ddranking (images.pt, "
                               "labels.pt, lr.pt for DD-Ranking's evaluators, with a README of the call)."),
    dataset: Optional[str] = typer.Option(None, help="--layout ddranking: DD-Ranking's dataset (CIFAR10, "
                                          "CIFAR100, TinyImageNet, ImageNet1K ...; default: the set's)."),
) -> None:
    """Export a synthetic set for other tools and for looking at."""
    with errors():
        from tesla.app import bootstrap
        from tesla.domain.errors import ConfigError

        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out} exists and is not a folder: choose another output folder")
        written = bootstrap.export_set(synthetic, out, storage_options=storage_options(storage_option),
                                       published=published, png=png, per_row=per_row, layout=layout,
                                       dataset=dataset)
        if layout != "mtt":
            typer.echo(f"wrote {len(written)} file(s) to {out}")
            return
        # the layout of a run directory: the set's files in OUT, its pictures in OUT/images/
        tensors = [Path(p).name for p in written if p.endswith(".pt")]
        pictures = [p for p in written if p.endswith(".png")]
        if tensors:
            typer.echo(f"wrote {', '.join(tensors)} to {out}")
        if pictures:
            typer.echo(f"wrote {len(pictures)} pictures to {Path(pictures[0]).parent} (overview.png, class_*.png)")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
