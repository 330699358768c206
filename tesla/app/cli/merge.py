"""``tesla merge-trajectories SRC... DEST``: join trajectory stores into one.

The per-rank HDF5 files of a distributed ``tesla experts`` run (``experts.rank0.h5``,
``experts.rank1.h5`` ...) are merged automatically when rank 0 can see them all; on
nodes without a shared filesystem, copy them together and merge them with this command.
It works for any stores of the same model (HDF5 or Zarr, local or fsspec URLs) and can
be run again after an interruption.
"""

from __future__ import annotations

from typing import Optional

import typer

from tesla.app.cli.common import errors, storage_options


def merge_trajectories(
    stores: list[str] = typer.Argument(..., metavar="SRC... DEST",
                                       help="Source trajectory stores, then the destination (created if missing)."),
    storage_option: Optional[list[str]] = typer.Option(None, "--storage-option", help="key=value for fsspec URLs.",
                                                       show_default="none"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Copy every complete expert of SRC... into DEST, keeping expert ids (checksums verified)."""
    with errors():
        from tesla.app import bootstrap
        from tesla.domain.config import ConfigError
        from tesla.domain.urls import redact_url

        if len(stores) < 2:
            raise ConfigError("give at least one SRC and a DEST: tesla merge-trajectories a.rank0.h5 a.rank1.h5 a.h5")
        *srcs, dest = stores
        result = bootstrap.merge_trajectory_stores(srcs, dest, storage_options=storage_options(storage_option))
        if not quiet:
            note = f", {len(result.skipped)} already there" if result.skipped else ""
            if result.incomplete:
                note += f", {len(result.incomplete)} incomplete left out"
            typer.echo(f"merged {len(result.copied)} expert(s) from {len(srcs)} store(s){note} -> {redact_url(dest)}")


def register(app: typer.Typer) -> None:
    app.command("merge-trajectories")(merge_trajectories)
