"""``tesla bench memory|speed|quality``: the engines' memory (Table 4 of the paper) and speed,
and the quality of distillation recipes (``quality``, an ablation table on one set of experts).

Both commands build the same seeded synthetic problem from the options (default:
ConvNet on the CIFAR-10 shape, IPC 10, every image in every step), print a table and
write CSV and a PNG plot to ``--out``. ``memory`` also has a batch axis (``--batch-syn``
and ``--micro-batch`` take lists) and prints the paper's figure beside a measured row
when the problem is one of the paper's settings. The work is done by
:mod:`tesla.app.services.bench` on the torch probes that :mod:`tesla.app.bootstrap`
wires in; this module only parses and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tesla.app.cli.common import errors, fail, run_job

bench_app = typer.Typer(name="bench", help="Memory and speed of the gradient engines (unrolled, tesla, exact); "
                        "quality of distillation recipes.",
                        no_args_is_help=True)


# The problem's options, shared by both commands (typer reads these as each parameter's default).
WIDTH = typer.Option(128, "--model-width", help="ConvNet filters per layer.")
DEPTH = typer.Option(3, help="ConvNet blocks.")
IMAGE_SIZE = typer.Option(32, help="Image side.")
CHANNELS = typer.Option(3, help="Image channels.")
CLASSES = typer.Option(10, help="Classes.")
IPC = typer.Option(10, help="Synthetic images per class.")
BATCH_SYN = typer.Option(None, help="Images per student step (default: all).")
DEVICE = typer.Option("auto", help="auto | cpu | cuda[:N].")
DSA = typer.Option(True, "--dsa/--no-dsa", help="Replayed DSA in every step.")
CHUNK = typer.Option(10, help="Pass-2 chunk of the tesla-batched row.")
SEED = typer.Option(0, help="Seeds the network, images and steps.")
THREADS = typer.Option(None, help="torch CPU threads.")
MEMORY_BUDGET = typer.Option(None, "--memory-budget", help="Without --micro-batch: the largest micro-batch whose "
                             "step saves at most this for backward, e.g. 4GB or 4GiB (measured on the network).")
SET_ON = typer.Option("device", "--set-on", help="Where the set lives: device | host (steps gather their rows; on a "
                      "CPU both are the same memory).")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{option} must be comma-separated integers, e.g. {option} 1,10,50 (got {text!r})")
    if not values or min(values) < 1:
        fail(f"{option} needs integers >= 1, e.g. {option} 1,10,50 (got {text!r})")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _optional_ints(text: Optional[str], option: str) -> tuple[int, ...]:
    """A comma-separated list of integers >= 1, or () when the option was not given."""
    return () if text is None else _ints(text, option)


def _settings(*, width, depth, image_size, channels, classes, ipc, batch_syn, device, dsa, chunk, seed, threads,
              micro_batch=None, set_on="device"):
    from tesla.app import bootstrap
    from tesla.domain.config import ModelConfig

    model = ModelConfig(arch="convnet", width=width, depth=depth, image_size=image_size, channels=channels,
                        num_classes=classes)
    return bootstrap.bench_settings(model=model, ipc=ipc, batch_syn=batch_syn, dsa=dsa, chunk=chunk, seed=seed,
                                    device=device, threads=threads, micro_batch=micro_batch, set_on=set_on)


def _budget_micro_batches(settings, micro: tuple, budget: Optional[str]) -> tuple:
    """The micro-batch list: as given, else the one ``--memory-budget`` fits (said on a line), else ()."""
    if micro or budget is None:
        return micro
    from tesla.app import bootstrap
    from tesla.domain.memory import format_bytes, parse_bytes

    size = parse_bytes(budget)
    chosen = bootstrap.bench_budget_micro_batch(settings, size)
    typer.echo(f"--memory-budget {budget} ({format_bytes(size)}): micro-batch {chosen}", err=True)
    return (chosen,)


def _mib(v) -> str:
    return v if isinstance(v, str) else ("-" if v is None else f"{v / 2**20:.1f}")


def _print_memory(result) -> None:
    import attrs
    from rich.console import Console
    from rich.table import Table

    from tesla.app.services.bench import memory_summary, paper_comparison

    steps = sorted({p.steps for p in result.points})
    labels = list(dict.fromkeys(result.label(p) for p in result.points))
    s = result.settings
    m = s.model
    batches = sorted({result.batch_of(p) for p in result.points})
    batch = ",".join(map(str, batches)) if batches else str(s.batch)
    micro = sorted({p.micro_batch for p in result.points if p.micro_batch is not None})
    extras = _extras(attrs.evolve(s, micro_batch=None))
    extras = (f", micro-batch {','.join(map(str, micro))}" if micro else "") + extras
    where = f"{m.name} {m.channels}x{m.image_size}x{m.image_size}, {m.num_classes} classes, width {m.width}, " \
            f"IPC {s.ipc}, batch {batch}{extras}, {s.device}"
    panels = [("primary", f"peak memory, MiB ({result.measure}) - {where}")]
    if result.measure != "device peak":
        panels.append(("rss_delta", "peak RSS above the start of each point's child process, MiB" if result.isolated
                       else "peak RSS above the start, MiB (in process: cumulative, not per point)"))
    console = Console(width=max(100, Console().width))
    for field, title in panels:
        console.print(title, highlight=False)  # a line of its own: as a table title it wraps to the table's width
        table = Table()
        table.add_column("engine" if len(result.pairs) <= 1 else "engine, batch, micro-batch")
        for n in steps:
            table.add_column(str(n), justify="right")
        for label in labels:
            cells = []
            for n in steps:
                p = next((q for q in result.points if result.label(q) == label and q.steps == n), None)
                cells.append("" if p is None else _mib(p.value(field)))
            table.add_row(label, *cells)
        console.print(table)
        if field == "primary" or result.isolated:  # in one process the RSS is cumulative: no ratios
            for line in memory_summary(result, field):
                console.print(line, highlight=False)
    for line in paper_comparison(result):
        console.print(line, highlight=False)


def _extras(s) -> str:
    """The settings a figure depends on beyond the problem's shape: micro-batch, set, threads."""
    text = "" if s.micro_batch is None else f", micro-batch {s.micro_batch}"
    text += ", set in host memory" if s.set_on == "host" else ""
    return text + ("" if s.threads is None else f", {s.threads} thread{'s' if s.threads > 1 else ''}")


def _print_speed(result) -> None:
    from rich.console import Console
    from rich.table import Table

    s, m = result.settings, result.settings.model
    table = Table(title=f"seconds per iteration, median of {result.repeats} (interleaved) - {m.name} "
                        f"{m.channels}x{m.image_size}x{m.image_size}, width {m.width}, IPC {s.ipc}, "
                        f"batch {s.batch_syn or 'all'}{_extras(s)}, {s.device}")
    for col in ("engine", "steps", "median s", "x unrolled", "grad rel. error vs fp32"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for r in result.rows:
        name = r.label + (f" (k={s.chunk})" if r.engine == "tesla-batched" else "")
        table.add_row(name, str(r.steps), "OOM" if r.median is None else f"{r.median:.4f}",
                      "-" if r.ratio is None else f"{r.ratio:.3f}",
                      "-" if r.grad_error is None else f"{r.grad_error:.2e}")
    Console(width=max(100, Console().width)).print(table)


def memory(
    steps: str = typer.Option("1,10,20,30,40,50,60,70,80,90,100", help="Matching steps N, comma-separated."),
    engines: str = typer.Option("unrolled,tesla,exact",
                                help="Rows: unrolled,tesla,exact,tesla-batched,exact-remake."),
    model_width: int = WIDTH,
    depth: int = DEPTH,
    image_size: int = IMAGE_SIZE,
    channels: int = CHANNELS,
    classes: int = CLASSES,
    ipc: int = IPC,
    batch_syn: Optional[str] = typer.Option(None, "--batch-syn", help="Images per student step, comma-separated "
                                            "(a batch axis), e.g. 100,500 (default: all)."),
    device: str = DEVICE,
    dsa: bool = DSA,
    chunk: int = CHUNK,
    seed: int = SEED,
    threads: Optional[int] = THREADS,
    max_rss_gb: Optional[float] = typer.Option(
        None, "--max-rss-gb", help="CPU: GiB each child may map beyond its imports (RLIMIT_AS); more is OOM."),
    in_process: bool = typer.Option(False, "--in-process",
                                    help="CPU: measure every point in this process (fast; RSS then cumulative)."),
    out: Path = typer.Option(Path("bench"), "--out", help="Folder for memory.csv and memory.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    json_mode: bool = typer.Option(False, "--json", help="Events as JSON lines, then the result as one JSON object."),
    micro_batch: Optional[str] = typer.Option(None, "--micro-batch", help="Images per piece of a step, "
                                              "comma-separated (each measured at every --batch-syn), e.g. "
                                              "500,100,50 (default: whole batches)."),
    memory_budget: Optional[str] = MEMORY_BUDGET,
    set_on: str = SET_ON,
) -> None:
    """Peak memory of one iteration by matching steps (the paper's Table 4), batch and micro-batch."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.bench import as_json

        ns, es = _ints(steps, "--steps"), _names(engines)
        bs, ms = _optional_ints(batch_syn, "--batch-syn"), _optional_ints(micro_batch, "--micro-batch")
        s = _settings(width=model_width, depth=depth, image_size=image_size, channels=channels, classes=classes,
                      ipc=ipc, batch_syn=bs[0] if len(bs) == 1 else None, device=device, dsa=dsa, chunk=chunk,
                      seed=seed, threads=threads, set_on=set_on)
        ms = _budget_micro_batches(s, ms, memory_budget)
        result = run_job(lambda sink, cancel: bootstrap.memory_bench(
            s, steps=ns, engines=es, batches=bs, micro_batches=ms, in_process=in_process, max_rss_gb=max_rss_gb,
            sink=sink, cancel=cancel), run_dir=None, quiet=quiet, json_mode=json_mode)
        files = bootstrap.memory_report(result, out)
        if json_mode:
            typer.echo(as_json(result, files))
            return
        _print_memory(result)
        typer.echo(f"wrote {files['csv']} and {files['png']}")


def speed(
    steps: str = typer.Option("50", help="Matching steps N, comma-separated."),
    engines: str = typer.Option("unrolled,tesla,exact,tesla-batched",
                                help="Engines to time (also: exact-remake)."),
    repeats: int = typer.Option(5, help="Timed rounds (each configuration once per round, interleaved)."),
    warmup: int = typer.Option(1, help="Untimed rounds first."),
    precision: str = typer.Option("fp32", help="Comma-separated: fp32,tf32,bf16."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Also time channels-last images."),
    model_width: int = WIDTH,
    depth: int = DEPTH,
    image_size: int = IMAGE_SIZE,
    channels: int = CHANNELS,
    classes: int = CLASSES,
    ipc: int = IPC,
    batch_syn: Optional[int] = BATCH_SYN,
    device: str = DEVICE,
    dsa: bool = DSA,
    chunk: int = CHUNK,
    seed: int = SEED,
    threads: Optional[int] = THREADS,
    max_memory_gb: Optional[float] = typer.Option(
        None, "--max-memory-gb",
        help="CPU: GiB the iterations may map (RLIMIT_AS; default 90% of available); more is an OOM row."),
    out: Path = typer.Option(Path("bench"), "--out", help="Folder for speed.csv and speed.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    json_mode: bool = typer.Option(False, "--json", help="Events as JSON lines, then the result as one JSON object."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Compute each step in pieces of at most "
                                              "this many images (default: whole batches)."),
    memory_budget: Optional[str] = MEMORY_BUDGET,
    set_on: str = SET_ON,
) -> None:
    """Seconds per iteration of each engine, interleaved; medians and ratios to unrolled."""
    with errors():
        from tesla.app import bootstrap
        from tesla.app.services.bench import as_json

        s = _settings(width=model_width, depth=depth, image_size=image_size, channels=channels, classes=classes,
                      ipc=ipc, batch_syn=batch_syn, device=device, dsa=dsa, chunk=chunk, seed=seed, threads=threads,
                      micro_batch=micro_batch, set_on=set_on)
        if micro_batch is None and memory_budget is not None:
            import attrs

            s = attrs.evolve(s, micro_batch=_budget_micro_batches(s, (), memory_budget)[0]).check()
        ns, es, ps = _ints(steps, "--steps"), _names(engines), _names(precision)
        result = run_job(lambda sink, cancel: bootstrap.speed_bench(
            s, steps=ns, engines=es, repeats=repeats, warmup=warmup, precisions=ps, channels_last=channels_last,
            max_memory_gb=max_memory_gb, sink=sink, cancel=cancel), run_dir=None, quiet=quiet, json_mode=json_mode)
        files = bootstrap.speed_report(result, out)
        if json_mode:
            typer.echo(as_json(result, files))
            return
        _print_speed(result)
        typer.echo(f"wrote {files['csv']} and {files['png']}")


bench_app.command("memory")(memory)
bench_app.command("speed")(speed)


# --- quality: the ablation table of recipes ------------------------------------------------------


def _print_quality(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from tesla.app.services.quality import caption, table, verdicts

    def pm(mean, std) -> str:
        return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"

    def pts(x) -> str:
        return "-" if x is None else f"{x:+.2f}"

    t = Table(title=f"bench quality - {caption(result)}")
    for col in ("recipe", "changes", "status", "model", "distilled %", "random real %", "vs real", "vs baseline",
                "label agreement"):
        t.add_column(col, justify="left" if col in ("recipe", "changes", "status", "model") else "right",
                     overflow="fold")
    for r in table(result):
        t.add_row(r.recipe, r.changes, r.status, r.model, pm(r.mean, r.std), pm(r.real_mean, r.real_std),
                  pts(r.vs_real), pts(r.vs_baseline), "-" if r.agreement is None else f"{r.agreement:.0%}")
    console = Console(width=max(140, Console().width))
    console.print(t)
    for line in verdicts(result):
        console.print(line, highlight=False, markup=False)


def quality(
    trajectories: str = typer.Option(..., "--trajectories", "-t", help="The experts every recipe distils from."),
    out: Path = typer.Option(Path("bench/quality"), "--out", help="Folder for recipes/<name>/ runs, quality.csv "
                             "and quality.png (runs there are resumed)."),
    preset: Optional[str] = typer.Option(None, help="The base config every recipe changes, e.g. demo."),
    recipe: Optional[list[str]] = typer.Option(None, "--recipe", help="name (a built-in) or name:key=value,... "
                                               "(DistillConfig fields), repeated; default: the built-in list "
                                               "(tesla, exact, teacher-target, learned-teacher, window, ema, pad, "
                                               "datm, datm+ema, all)."),
    baseline: str = typer.Option("tesla", help="The recipe the others are compared with."),
    base: Optional[str] = typer.Option(None, "--base", help="key=value,... changes of the base config (after "
                                       "--preset and the options below), e.g. syn_steps=10,lr_img=50."),
    ipc: Optional[int] = typer.Option(None, help="Synthetic images per class (base config)."),
    iterations: Optional[int] = typer.Option(None, help="Distillation iterations (base config)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every distillation (base config)."),
    eval_models: int = typer.Option(3, help="Evaluation networks per set (and for random real)."),
    eval_epochs: int = typer.Option(300, help="Epochs per evaluation network."),
    eval_lr: Optional[float] = typer.Option(None, help="Evaluation lr (default: each set's learned lr; random "
                                            "real 0.01)."),
    eval_seed: int = typer.Option(0, help="Network i of every evaluation uses seed + i."),
    dataset: Optional[str] = typer.Option(None, help="Override the dataset recorded in the store."),
    data: Optional[str] = typer.Option(None, help="Override the data folder recorded in the store."),
    device: str = DEVICE,
    threads: Optional[int] = THREADS,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    json_mode: bool = typer.Option(False, "--json", help="Events as JSON lines, then the table as one JSON object."),
) -> None:
    """Distil and evaluate a list of recipes on the same experts and seeds: distilled vs random real."""
    with errors():
        import attrs

        from tesla.app import bootstrap
        from tesla.app.cli.distill import distill_config
        from tesla.app.services.quality import QualityRequest, quality_json
        from tesla.domain.config import EvalConfig
        from tesla.domain.quality import BUILTIN, parse_overrides, parse_recipe

        cfg = distill_config(preset, dict(ipc=ipc, iterations=iterations, seed=seed))
        if base:
            cfg = attrs.evolve(cfg, **dict(parse_overrides(base)))
        recipes = tuple(parse_recipe(r) for r in recipe) if recipe else BUILTIN
        evaluation = EvalConfig(num_models=eval_models, epochs=eval_epochs, lr=eval_lr, seed=eval_seed)
        request = QualityRequest(trajectories=trajectories, out=out, base=cfg, recipes=recipes, evaluation=evaluation,
                                 baseline=baseline, dataset=dataset, data=data)
        prepared = bootstrap.prepare_quality(request, device=device, threads=threads)
        result = run_job(prepared.job, run_dir=None, quiet=quiet, json_mode=json_mode)
        files = bootstrap.quality_report(result, out)
        if json_mode:
            typer.echo(quality_json(result, files))
        else:
            _print_quality(result)
            typer.echo(f"wrote {files['csv']} and {files['png']}")
        if result.status != "completed":
            raise typer.Exit(1)


bench_app.command("quality")(quality)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
