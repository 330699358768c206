"""``tesla demo``: the whole pipeline on the embedded dataset (no download) in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tesla.app.cli.common import errors, run_job, threads_option


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Folder for the experts, the run and the images."),
    engine: str = typer.Option("tesla", help="tesla | exact | unrolled."),
    seed: int = typer.Option(0, help="Seed of the whole pipeline."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results table."),
    json_mode: bool = typer.Option(False, "--json", help="Print events as JSON lines."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Experts, TESLA distillation and evaluation on embedded real images; prints a results table."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.demo import DEMO_RUN
        from tesla.domain.config import ConfigError
        from tesla.domain.engines import NAMES as ENGINE_NAMES

        bootstrap.configure_threads(threads)

        if engine not in ENGINE_NAMES:
            raise ConfigError(f"engine must be tesla, exact or unrolled (got {engine!r})")
        dev = bootstrap.resolve_device(device)
        out.mkdir(parents=True, exist_ok=True)
        # the event log is the run's (inside it, as every run directory holds its own), so
        # `tesla monitor OUT/run` follows the demo; it holds the experts' events too
        result = run_job(lambda sink, cancel: bootstrap.run_demo(out, device=dev, sink=sink, cancel=cancel,
                                                                 engine=engine, seed=seed),
                         run_dir=out / DEMO_RUN, quiet=quiet, json_mode=json_mode)
        if json_mode:
            return
        from rich.console import Console
        from rich.table import Table

        from tesla.domain import presets

        p = presets.demo()
        table = Table(title=f"tesla demo: embedded CIFAR-10 ({p.model.image_size} px), IPC {p.distill.ipc}, "
                            f"{p.model.name}, {p.distill.iterations} iterations")
        for col in ("trained on", "model", "top-1 % (mean +- std)", "networks"):
            table.add_column(col)
        for s in result.scores:
            table.add_row({"synthetic": f"distilled ({engine})", "random-real": "random real"}.get(s.subject, s.subject),
                          s.model, str(s), str(len(s.accuracies)))
        console = Console()
        console.print(table)
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        console.print(f"final matching loss {result.distill_loss:.3f}, learned lr {result.lr:.4f}; {secs}")
        console.print(f"images: {result.images_dir / 'overview.png'}   results: "
                      + "  ".join(str(p) for p in result.written))
        console.print(f"events: {out / DEMO_RUN / 'events.jsonl'}   watch: tesla monitor {out / DEMO_RUN}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
