"""``tesla data prepare SRC DEST``: convert real images once into a class-sorted array store.

Only parses options, calls :func:`tesla.app.services.prepare.prepare` (through
:func:`tesla.app.bootstrap.prepare`) under bootstrap's progress bar (an ETA from its
Progress events, or JSON lines), and prints a summary. Ctrl-C (or
SIGTERM) stops after the current block; running the same command again resumes. A bad
SRC or DEST is one red line and exit code 2.
"""

from __future__ import annotations

import enum
from typing import Any, Optional

import typer
from rich.console import Console

from tesla.app.cli.common import cancel_on_signals, fail, storage_options


class SourceFormat(str, enum.Enum):
    imagenet64 = "imagenet64"
    imagefolder = "imagefolder"
    tiny_imagenet = "tiny-imagenet"


def _print_summary(console: Console, s: Any) -> None:
    if not s.complete:
        console.print(f"[yellow]stopped[/] after {s.tasks_done}/{s.tasks_total} tasks; "
                      "run the same command again to resume", highlight=False)
        return
    what = "already complete" if s.already_complete else ("resumed and finished" if s.resumed else "prepared")
    console.print(f"[green]{what}[/] [bold]{s.dest}[/] from {s.source} ({s.format})", highlight=False)
    console.print(f"  classes  {s.num_classes}", highlight=False)
    console.print(f"  images   {s.num_train:,} train, {s.num_test:,} test at {s.image_size} px", highlight=False)
    if s.mean:
        console.print("  mean     " + ", ".join(f"{m:.4f}" for m in s.mean), highlight=False)
        console.print("  std      " + ", ".join(f"{m:.4f}" for m in s.std), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (``tesla data prepare``) to ``app``."""
    data_app = typer.Typer(help="Real image data: convert once into on-disk arrays.", no_args_is_help=True)

    @data_app.command("prepare")
    def prepare_cmd(
        src: str = typer.Argument(
            ..., help="Source folder: Downsampled-ImageNet batches, an ImageFolder tree or Tiny-ImageNet."),
        dest: str = typer.Argument(..., help="Store to write: DIR.zarr or a URL (Zarr v3), or FILE.h5 (HDF5)."),
        fmt: Optional[SourceFormat] = typer.Option(None, "--format", help="Source layout.",
                                                   show_default="detected from what SRC holds"),
        image_size: int = typer.Option(64, "--image-size", min=1, help="Side of the stored images in pixels."),
        chunk: int = typer.Option(
            1024, "--chunk", min=1, help="Images per stored chunk (smaller mixes classes better when training)."),
        storage_option: Optional[list[str]] = typer.Option(
            None, "--storage-option", help="fsspec option key=value for a remote DEST (repeatable).",
            show_default="none"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        json_mode: bool = typer.Option(False, "--json", help="Events as JSON lines, then the summary as JSON."),
    ) -> None:
        """Convert SRC once into a class-sorted uint8 array store at DEST (resumable)."""
        from tesla.app import bootstrap

        options = storage_options(storage_option)
        sink, closers = bootstrap.progress_bar_sinks(quiet=quiet or json_mode, json_mode=json_mode)
        try:
            try:
                with cancel_on_signals() as cancel:
                    summary = bootstrap.prepare(src, dest, fmt=fmt.value if fmt else None, image_size=image_size,
                                                chunk=chunk, sink=sink, storage_options=options,
                                                should_stop=cancel.is_set)
            finally:  # the bar ends before any error line
                for close in closers:
                    close()
        except (ValueError, OSError) as e:  # every UserError, the writer's checks, missing files
            fail(str(e) or type(e).__name__)
        if json_mode:
            import json

            import attr

            typer.echo(json.dumps(attr.asdict(summary, retain_collection_types=False), default=str))
        else:
            _print_summary(Console(), summary)
        if not summary.complete:
            raise typer.Exit(130)

    app.add_typer(data_app, name="data")
