"""``tesla evaluate``: a stored synthetic set under a protocol, beside its references.

Parses the options into an :class:`~tesla.app.services.evaluate.EvaluateRequest`, runs
the prepared job under the terminal display (progress from the start, or JSON lines with
``--json``) and prints the scores as a table, or as one JSON line last with ``--json``.
See docs/EVALUATION.md for the protocols and DD-Ranking's scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from tesla.app.cli.common import errors, run_job, storage_options


def evaluate(
    synthetic: str = typer.Argument(..., help="Synthetic store (run/synthetic.zarr or .h5)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated: convnet,resnet18,vit (default convnet, "
                                         "or the preset's)."),
    num_models: Optional[int] = typer.Option(None, help="Fresh networks per model (default 5)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs of every network (default: mtt 1000, lr x0.1 "
                                         "at half; relabel 300)."),
    lr: Optional[float] = typer.Option(None, help="The protocol's lr (mtt: student SGD lr, default the set's "
                                       "learned lr; relabel: AdamW lr, default 0.001)."),
    batch_size: Optional[int] = typer.Option(None, help="The protocol's batch size (default: mtt 256, relabel 50)."),
    dsa: bool = typer.Option(True, "--dsa/--no-dsa", help="mtt: DSA on every batch."),
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
    json_mode: bool = typer.Option(False, "--json", help="Print events as JSON lines, then the results as one."),
    protocol: str = typer.Option("mtt", help="mtt (stored labels, SGD, DSA) | relabel (a teacher relabels every "
                                 "augmented batch: KL, AdamW, crop/flip/CutMix)."),
    teacher: str = typer.Option("real", help="relabel: real | real:ARCH (trained on the real data, cached) | "
                                "expert:I\\[@EPOCH] (a snapshot of the trajectory store)."),
    trajectories: Optional[str] = typer.Option(None, help="relabel: the trajectory store of --teacher expert:... "
                                               "(default: the one the set records)."),
    teacher_epochs: int = typer.Option(50, help="relabel: epochs of a real-data teacher."),
    temperature: float = typer.Option(20.0, help="relabel: softmax temperature of the KL."),
    cutmix: bool = typer.Option(True, "--cutmix/--no-cutmix", help="relabel: CutMix every batch."),
    scores: bool = typer.Option(False, "--scores", help="Also DD-Ranking's LRS and ARS (adds the set with hard "
                                "labels, both without/with augmentation, and the whole training set)."),
    score_weight: float = typer.Option(0.5, help="--scores: LRS weight of IOR (DD-Ranking's lrs_lambda)."),
    ars_weight: float = typer.Option(0.5, help="--scores: ARS weight of the augmented gain (ars_lambda)."),
    score_convention: str = typer.Option("documented", help="--scores: documented (accuracy fractions, scores in "
                                         "[0, 1]) | ddranking-0.2.0 (percent, as the package computes)."),
    record: Optional[bool] = typer.Option(None, "--record/--no-record", help="Write the results into the set's "
                                          "provenance (default: with --scores)."),
    parallel: Optional[int] = typer.Option(None, help="Networks trained together (vmap on CUDA; default all)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Train (mtt protocol) and test in pieces "
                                              "of at most K images: activation memory bounded by K, the same "
                                              "gradients to rounding (networks with batch norm keep whole "
                                              "batches) [default: whole batches]."),
    preset: Optional[str] = typer.Option(None, help="Take models, networks, epochs, batch and lr from a preset's "
                                         "evaluation (e.g. imagenet1k-ipc10: ConvNetD4 and ResNet-18)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where to write events.jsonl (follow it with `tesla monitor`)."),
) -> None:
    """Train fresh networks on a synthetic set; report mean +- std beside random real (same protocol)."""
    with errors():
        from tesla.app import bootstrap

        request = build_request(**locals())
        if micro_batch is not None and (isinstance(micro_batch, bool) or micro_batch < 1):
            from tesla.domain.errors import ConfigError

            raise ConfigError(f"--micro-batch must be an integer >= 1 (got {micro_batch})")
        prepared = bootstrap.prepare_evaluation(request, device=device, storage_options=storage_options(storage_option),
                                                parallel=parallel, micro_batch=micro_batch)
        result = run_job(prepared.job, run_dir=run_dir, quiet=quiet or json_mode, json_mode=json_mode)
        if json_mode:
            typer.echo(json.dumps(result.to_json()))
        else:
            show(synthetic, prepared.set, result)
        if result.status != "completed":
            raise typer.Exit(1)


def build_request(*, synthetic: str, models: Optional[str], num_models: Optional[int], epochs: Optional[int],
                  lr: Optional[float], batch_size: Optional[int], dsa: bool, hard: bool, random_real: bool,
                  full_real: bool, full_epochs: Optional[int], dataset: Optional[str], data: Optional[str], seed: int,
                  protocol: str, teacher: str, trajectories: Optional[str], teacher_epochs: int, temperature: float,
                  cutmix: bool, scores: bool, score_weight: float, ars_weight: float, score_convention: str,
                  record: Optional[bool], preset: Optional[str], **_: Any) -> Any:
    """The request the options describe (ConfigError naming the option on bad input)."""
    import attrs

    from tesla.app.services.evaluate import PROTOCOLS, EvaluateRequest, ScoreSettings
    from tesla.domain import presets
    from tesla.domain.config import ConfigError, EvalConfig
    from tesla.domain.relabel import RelabelConfig, TeacherChoice

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    base = presets.get(preset).evaluate if preset else EvalConfig()
    relabel = protocol == "relabel"
    given = {"models": tuple(m.strip() for m in models.split(",") if m.strip()) if models is not None else None,
             "num_models": num_models, "epochs": epochs, "lr": None if relabel else lr,
             "batch_size": None if relabel else batch_size}
    cfg = attrs.evolve(base, dsa=dsa, seed=seed, **{k: v for k, v in given.items() if v is not None})
    relabel_given = {"epochs": epochs, "lr": lr if relabel else None, "batch_size": batch_size if relabel else None}
    relabel_cfg = RelabelConfig(temperature=temperature, cutmix=cutmix,
                                **{k: v for k, v in relabel_given.items() if v is not None})
    return EvaluateRequest(synthetic=synthetic, cfg=cfg, hard=hard, random_real=random_real, full_real=full_real,
                           full_epochs=full_epochs, dataset=dataset, data=data, protocol=protocol,
                           relabel=relabel_cfg, teacher=TeacherChoice.parse(teacher), teacher_epochs=teacher_epochs,
                           trajectories=trajectories, scores=scores,
                           score_settings=ScoreSettings(weight=score_weight, ars_weight=ars_weight,
                                                        convention=score_convention),
                           record=scores if record is None else record)


def _pm(mean: float, std: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def caption(protocol: dict) -> str:
    """One line on how the networks trained (the relabel teacher, when there was one)."""
    if protocol.get("name") != "relabel":
        return "protocol mtt: SGD on the stored labels, DSA, lr x0.1 at half time"
    t = protocol.get("teacher", {})
    acc = t.get("test_accuracy")
    who = (f"expert {t.get('expert')} @ epoch {t.get('epoch')} ({t.get('model')})" if t.get("kind") == "expert"
           else f"{t.get('model')} trained on the real data for {t.get('epochs')} epochs"
           + (" (cached)" if t.get("cached") else ""))
    return (f"protocol relabel: teacher {who}" + (f", test {acc:.2f} %" if isinstance(acc, (int, float)) else "")
            + f"; T {protocol.get('temperature'):g}, AdamW lr {protocol.get('lr'):g}, {protocol.get('epochs')} epochs,"
            + f" batch {protocol.get('batch_size')}, cutmix {'on' if protocol.get('cutmix') else 'off'}")


def show(synthetic: str, syn: Any, result: Any) -> None:
    """The results table (one row per run and model) and DD-Ranking's scores."""
    from rich.console import Console
    from rich.table import Table

    from tesla.domain.urls import redact_url

    console = Console()
    lr = "no learned lr" if syn.lr is None else f"lr {syn.lr:.4g}"
    table = Table(title=f"{redact_url(synthetic)}: IPC {syn.ipc}, {syn.labels_kind} labels, {lr}",
                  caption=caption(result.protocol))
    table.add_column("model", no_wrap=True)
    table.add_column("trained on", no_wrap=True)
    table.add_column("protocol, labels")
    table.add_column("lr", no_wrap=True)
    table.add_column("top-1 % (mean +- std)", no_wrap=True)
    table.add_column("n", no_wrap=True)
    for s in result.scores:
        how = f"{s.protocol}, {s.labels}" + ("" if s.augment else ", no aug")
        table.add_row(s.model, s.subject, how, "-" if s.lr is None else f"{s.lr:.4g}", str(s), str(len(s.accuracies)))
    console.print(table)
    if result.robustness:
        conv = result.robustness[0].label.convention
        scores = Table(title=f"DD-Ranking scores (per round, mean +- population std; convention {conv})")
        for col in ("model", "HLR (points)", "IOR (points)", "LRS", "aug gain", "no-aug gain", "ARS"):
            scores.add_column(col)
        for r in result.robustness:
            lab, aug = r.label, r.augmentation
            scores.add_row(r.model, _pm(lab.hlr.mean, lab.hlr.std), _pm(lab.ior.mean, lab.ior.std),
                           _pm(lab.lrs.mean, lab.lrs.std, 4), _pm(aug.aug_gain.mean, aug.aug_gain.std),
                           _pm(aug.naug_gain.mean, aug.naug_gain.std), _pm(aug.ars.mean, aug.ars.std, 4))
        console.print(scores)
    if result.status != "completed":
        console.print(f"[yellow]evaluation {result.status}: the table shows the runs that finished[/]")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
