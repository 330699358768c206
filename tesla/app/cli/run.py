"""``tesla run DATA --ipc K``: one's own data to a distilled set, its evaluation and pictures.

Parses the options into a :class:`~tesla.app.services.pipeline.RunRequest`, lets the
pipeline check the arguments, prepare the data and size the run (showing each step),
prints the plan (what it chose and why), runs the stages under the terminal display,
and prints the results table and where the pictures are. The same command again
continues a stopped run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from tesla.app.cli.common import cancel_on_signals, errors, run_job, threads_option, typed_options

SIZED = "sized to the data and --minutes"
WISHES = ("ipc", "minutes", "seed", "engine", "zca", "width", "num_experts", "max_start_epoch", "syn_steps",
          "batch_syn", "iterations", "eval_models", "eval_epochs")


def run(
    data: str = typer.Argument(..., help="demo | a CIFAR-10/100 folder | an ImageFolder tree (train/<class>/ and "
                                         "val/ or test/) | a store made by `tesla data prepare`."),
    ipc: int = typer.Option(10, "--ipc", help="Distilled images per class."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (the plan, the data, the experts, "
                                       "the run, the pictures, the results).", show_default="run-<DATA>-ipc<K>"),
    minutes: float = typer.Option(30.0, "--minutes", help="Time budget the stages are sized to (an estimate from "
                                  "this machine's measured speed)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Side the images of a source folder are "
                                             "stored at.", show_default="32"),
    engine: str = typer.Option("tesla", help="tesla | exact | unrolled."),
    seed: int = typer.Option(0, help="Seeds the experts, the distillation and the evaluation."),
    zca: Optional[bool] = typer.Option(None, "--zca/--no-zca", help="ZCA-whiten (CIFAR folders).",
                                       show_default="as the paper's CIFAR row for the IPC; off otherwise"),
    width: Optional[int] = typer.Option(None, help="ConvNet width.", show_default="128 on a GPU, 32 on a CPU"),
    num_experts: Optional[int] = typer.Option(None, help="Experts to train.", show_default="10 on a GPU, 5 on a CPU"),
    max_start_epoch: Optional[int] = typer.Option(None, help="Start epochs are drawn from [0, this); the experts "
                                                  "train this + 2 epochs.", show_default=f"about 2 x IPC, {SIZED}"),
    syn_steps: Optional[int] = typer.Option(None, help="Student steps N per iteration.", show_default=SIZED),
    batch_syn: Optional[int] = typer.Option(None, help="Distilled images per student step.",
                                            show_default="all, up to 256"),
    iterations: Optional[int] = typer.Option(None, help="Distillation iterations.", show_default=SIZED),
    eval_models: Optional[int] = typer.Option(None, help="Networks per evaluation.",
                                              show_default="5 on a GPU, 3 on a CPU"),
    eval_epochs: Optional[int] = typer.Option(None, help="Epochs per evaluation network.", show_default=SIZED),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results."),
    json_mode: bool = typer.Option(False, "--json", help="Print the plan, every event and the results as JSON lines."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Prepare, train experts, distil, evaluate: one command from one's own data, sized to it and the machine.

    It prints what it chose and why first; the same command continues a stopped run."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.pipeline import RunRequest
        from tesla.domain.sizing import Wishes

        bootstrap.configure_threads(threads)
        wishes = Wishes(ipc=ipc, minutes=minutes, seed=seed, engine=engine, zca=zca, width=width,
                        num_experts=num_experts, max_start_epoch=max_start_epoch, syn_steps=syn_steps,
                        batch_syn=batch_syn, iterations=iterations, eval_models=eval_models, eval_epochs=eval_epochs)
        out = out or Path(f"run-{_stem(data)}-ipc{ipc}")
        request = RunRequest(data=data, out=out, wishes=wishes, image_size=image_size,
                             typed=typed_options((*WISHES, "image_size")))
        sink, closers = bootstrap.event_sinks(None, quiet=quiet, json_mode=json_mode)
        try:
            with cancel_on_signals() as cancel:
                prepared = bootstrap.prepare_pipeline(request, device=device, sink=sink, cancel=cancel)
        finally:  # the set-up's display ends before the plan or an error line
            for close in closers:
                close()
        if prepared.job is None:
            typer.echo("stopped while preparing the data: run the same command again to continue")
            raise typer.Exit(1)
        _show_plan(prepared, quiet, json_mode)
        result = run_job(prepared.job, run_dir=out, quiet=quiet, json_mode=json_mode)
        _show_result(result, out, json_mode)
        if result.status != "completed":
            raise typer.Exit(1)


def _stem(data: str) -> str:
    name = Path(data.rstrip("/")).name or "data"
    for suffix in (".zarr", ".h5", ".hdf5"):
        name = name.removesuffix(suffix)
    return name


def _show_plan(prepared: Any, quiet: bool, json_mode: bool) -> None:
    from tesla.domain.sizing import plan_to_dict

    plan, facts = prepared.plan, prepared.facts
    if json_mode:
        typer.echo(json.dumps({"plan": plan_to_dict(plan), "out": str(prepared.out), "resumed": prepared.resumed}))
        return
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    verb = "continues the run planned" if prepared.resumed else "chose"
    table = Table(title=f"tesla run: what it {verb} (and why), for {facts.name}: {facts.num_classes} classes, "
                        f"{facts.num_train:,} train / {facts.num_test:,} test images, "
                        f"{'x'.join(map(str, facts.image_shape))}", title_justify="left")
    for col in ("setting", "value", "why"):
        table.add_column(col)
    for c in plan.choices:
        table.add_row(c.setting, c.value, c.why)
    console = Console()
    console.print(table)
    console.print(f"recorded in {prepared.out / 'plan.md'}; the same command continues a stopped run", highlight=False)


def _show_result(result: Any, out: Path, json_mode: bool) -> None:
    if json_mode:
        typer.echo(json.dumps({"status": result.status, "stage": result.stage,
                               "scores": [{"model": s.model, "subject": s.subject, "mean": s.mean, "std": s.std,
                                           "accuracies": list(s.accuracies)} for s in result.scores],
                               "files": [str(p) for p in result.written]}))
        return
    if result.status != "completed":
        typer.echo(f"stopped during the {result.stage} stage: run the same command again to continue")
        return
    from rich.console import Console
    from rich.table import Table

    from tesla.domain.report import SUBJECTS

    table = Table(title=f"tesla run: results ({out})", title_justify="left")
    for col in ("trained on", "model", "top-1 % (mean +- std)", "networks"):
        table.add_column(col)
    for s in result.scores:
        table.add_row(SUBJECTS.get(s.subject, s.subject), s.model, str(s), str(len(s.accuracies)))
    console = Console()
    console.print(table)
    pictures = result.images / "overview.png" if result.images else None
    console.print(f"pictures: {pictures} (and class_*.png beside it)   results: "
                  + "  ".join(str(p) for p in result.written), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
