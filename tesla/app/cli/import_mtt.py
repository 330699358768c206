"""``tesla import-mtt SRC_DIR STORE``: bring published MTT/TESLA expert buffers into a store.

Reads ``replay_buffer_<N>.pt`` files with ``torch.load(weights_only=True)`` (a file with
anything but tensors in lists is refused) and streams every trajectory into a
trajectory store as a complete expert. ``--model`` records the architecture and checks
the shapes; without it the tensors are named ``p0, p1, ...``.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from tesla.app.cli.common import fail, storage_options


def import_mtt_command(
    src_dir: str = typer.Argument(..., help="Folder holding replay_buffer_<N>.pt files."),
    store: str = typer.Argument(..., help="Trajectory store to write: .h5 file, Zarr directory or fsspec URL."),
    model: Optional[str] = typer.Option(
        None, "--model", help='ModelConfig fields as JSON, e.g. \'{"arch": "convnet", "num_classes": 10}\'.',
        show_default="none: the store records no model"
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Name of the data the experts were trained on.",
                                          show_default="none: not recorded"),
    zca: Optional[bool] = typer.Option(None, "--zca/--no-zca", help="Whether the experts saw ZCA-whitened data.",
                                       show_default="not recorded"),
    storage_option: Optional[list[str]] = typer.Option(
        None, "--storage-option", help="key=value fsspec option for remote URLs (repeatable).", show_default="none"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Import MTT/TESLA expert buffers (replay_buffer_<N>.pt) into a trajectory store."""
    from tesla.app import bootstrap
    from tesla.domain.config import ConfigError, ModelConfig, from_dict, to_dict
    from tesla.domain.errors import StoreError

    options = storage_options(storage_option)
    model_dict = None
    if model is not None:
        try:
            model_dict = to_dict(from_dict(ModelConfig, json.loads(model)))
        except (ValueError, TypeError) as exc:  # bad JSON or a ConfigError naming the field
            fail(f"--model: {exc}")
    data = None
    if dataset is not None or zca is not None:
        data = {k: v for k, v in (("name", dataset), ("zca", zca)) if v is not None}
    console = Console(soft_wrap=True, quiet=quiet)

    def progress(expert: int, source: str, index: int) -> None:
        console.print(f"expert {expert}: {escape(source)} trajectory {index}")

    skipped: list = []

    def skip(expert: int, source: str, index: int) -> None:
        skipped.append(expert)
        console.print(f"[dim]{escape(source)} trajectory {index} is expert {expert} already: skipped[/]")

    try:
        ids = bootstrap.import_mtt(src_dir, store, model_dict, dataset=data, storage_options=options,
                                   on_expert=progress, on_skip=skip)
    except (StoreError, ConfigError, OSError, ValueError) as exc:
        fail(str(exc) or type(exc).__name__)
    from tesla.domain.urls import redact_url

    kept = f", {len(skipped)} already there" if skipped else ""
    console.print(f"[green]imported {len(ids)} experts[/]{kept} into {escape(redact_url(store))}")


def register(app: typer.Typer) -> None:
    """Add ``import-mtt`` to ``app``."""
    app.command("import-mtt")(import_mtt_command)
