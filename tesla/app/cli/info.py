"""``tesla info STORE``: say what a trajectory or synthetic-set store holds.

The summary comes from :func:`tesla.app.services.info.summarise` (attributes and shapes
only, never the parameter or image arrays, so it is quick on a large store or an object
store); this module prints it. ``--json`` prints the same summary as one JSON
object for scripts. An unknown or damaged path is one red line and exit code 2.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.console import Console
from rich.padding import Padding
from rich.table import Table

from tesla.app.cli.common import fail, storage_options


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _model(model: dict) -> str:
    if not model:
        return "unknown (imported without a model)"
    return " ".join(f"{k}={v}" for k, v in model.items())


def _acc(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _print_trajectories(console: Console, d: dict) -> None:
    console.print(f"[bold]{d['url']}[/]: expert trajectories (format version {d['format_version']})")
    console.print(f"  model    {_model(d['model'])}")
    console.print(f"  dataset  {json.dumps(d['dataset']) if d['dataset'] else 'unknown'}")
    console.print(f"  P        {d['num_params']:,} parameters in {d['tensors']} tensors")
    console.print(f"  size     {_size(d['size_bytes'])}")
    experts = d["experts"]
    console.print(f"  experts  {len(experts)} complete" + (f", {len(d['incomplete'])} incomplete" if d["incomplete"] else ""))
    if experts:
        table = Table("id", "epochs", "final test acc", "seed", box=None, padding=(0, 2))
        for e in experts:
            table.add_row(str(e["id"]), str(e["epochs"]), _acc(e["final_accuracy"]), str(e["seed"]))
        console.print(Padding(table, (0, 0, 0, 2)))


def _print_synthetic(console: Console, d: dict) -> None:
    console.print(f"[bold]{d['url']}[/]: synthetic set (format version {d['format_version']})")
    console.print(f"  size         {_size(d['size_bytes'])}")
    ckpts = d.get("checkpoints") or []
    console.print(f"  checkpoints  {', '.join(map(str, ckpts)) if ckpts else 'none'}")
    s = d.get("set")
    if s is None:
        console.print("  set          none yet (a run writes it at the end)")
        return
    prov = dict(s["provenance"])
    lr = s["lr"]
    console.print(f"  images       {tuple(s['images'])}, {s['ipc']} per class, {s['classes']} classes")
    console.print(f"  labels       {s['labels']}")
    console.print(f"  lr           {lr:.6g}" if isinstance(lr, (int, float)) else "  lr           -")
    if s["normalizer"]:
        console.print(f"  normaliser   {_normaliser(s.get('normalizer_values') or {}, s['normalizer'])}")
    for key in ("iteration", "seed", "trajectory_store", "label_expert", "label_epoch"):
        if key in prov:
            console.print(f"  {key:<12} {prov.pop(key)}")
    names = prov.pop("class_names", None)
    if names:
        shown = ", ".join(map(str, names[:10])) + (", ..." if len(names) > 10 else "")
        console.print(f"  classes      {shown}")
    for key, value in prov.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        console.print(f"  {key:<12} {text if len(text) <= 200 else text[:197] + '...'}")


def _numbers(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return "(" + ", ".join(_numbers(v) for v in values) + ")"
    return f"{values:.4g}" if isinstance(values, float) else str(values)


def _normaliser(values: dict, names: list) -> str:
    """``meanstd: mean (0.4914, 0.4822, 0.4465), std (...)`` or ``zca: eps 0.1, matrix 3072x3072``."""
    if not values:  # an older summary: the names only
        return ", ".join(names)
    kind = values.get("kind", "?")
    parts = []
    for key, value in values.items():
        if key == "kind":
            continue
        if isinstance(value, dict) and "shape" in value:  # a big array: its shape, not 9 million numbers
            parts.append(f"{key.removeprefix('zca_')} {'x'.join(map(str, value['shape']))}")
        else:
            shown = value[0] if key == "zca_eps" and isinstance(value, list) and len(value) == 1 else value
            parts.append(f"{key.removeprefix('zca_')} {_numbers(shown)}")
    return f"{kind}: " + ", ".join(parts) if parts else str(kind)


def info(
    store: str = typer.Argument(..., help="A trajectory or synthetic-set store: .h5 file, Zarr directory or fsspec URL."),
    storage_option: Optional[list[str]] = typer.Option(
        None, "--storage-option", help="key=value fsspec option for remote URLs (repeatable).", show_default="none"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Say what a store holds: experts, model, dataset and size; a synthetic set and its provenance;
    or prepared real images (classes, counts, statistics)."""
    from tesla.app import bootstrap
    from tesla.app.services.info import summarise
    from tesla.domain.errors import StoreError

    options = storage_options(storage_option)
    try:
        summary = summarise(store, bootstrap.store_inspector(options))
    except (StoreError, OSError, ValueError) as exc:
        fail(str(exc) or type(exc).__name__)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console(soft_wrap=True)
    if summary["kind"] == "trajectories":
        _print_trajectories(console, summary)
    elif summary["kind"] == "prepared":
        _print_prepared(console, summary)
    else:
        _print_synthetic(console, summary)


def _print_prepared(console: Console, d: dict) -> None:
    console.print(f"[bold]{d['url']}[/]: prepared real images (format version {d['format_version']})")
    console.print(f"  images   {d['num_train']:,} train / {d['num_test']:,} test, {d['num_classes']} classes "
                  f"({d['per_class_min']}-{d['per_class_max']} per class), shape {tuple(d['image_shape'])}")
    mean = ", ".join(f"{v:.3f}" for v in d["mean"] or [])
    std = ", ".join(f"{v:.3f}" for v in d["std"] or [])
    console.print(f"  mean     ({mean})   std ({std})")
    console.print(f"  source   {d['source']}")
    console.print(f"  size     {_size(d['size_bytes'])}")


def register(app: typer.Typer) -> None:
    """Add ``info`` to ``app``."""
    app.command("info")(info)
