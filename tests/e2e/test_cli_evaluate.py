"""``tesla evaluate`` and ``tesla export --layout ddranking`` through the CLI (typer's runner)
on a tiny set distilled from the embedded data: progress from the start, the relabel
protocol with its teacher, DD-Ranking's scores in the JSON and the store, refusals, the
title's lr, and the DD-Ranking export read back equal."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from tesla.adapters.stores.export_ddranking import read_ddranking_export
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.app.cli.main import app

runner = CliRunner()
TINY = ["--num-models", "2", "--epochs", "2", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """experts (2, width 8) -> a 4-iteration IPC-1 distillation of the demo data."""
    root = tmp_path_factory.mktemp("evaluate")
    experts = root / "traj.zarr"
    r = invoke("experts", "--dataset", "demo", "--out", experts, "--num-experts", "2", "--epochs", "3", "--width", "8",
               "--batch-size", "128", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("distill", "-t", experts, "-o", root / "run", "--ipc", "1", "--syn-steps", "3", "--expert-epochs", "1",
               "--max-start-epoch", "2", "--iterations", "4", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESLA_CACHE", str(tmp_path / "cache"))


def _json_lines(output: str) -> list:
    return [json.loads(line) for line in output.splitlines() if line.startswith(("{", "["))]


def test_evaluate_emits_progress_from_the_start(run):
    r = invoke("evaluate", run / "run" / "synthetic.zarr", *TINY, "--json")
    assert r.exit_code == 0, r.output
    lines = _json_lines(r.output)
    events, results = lines[:-1], lines[-1]
    assert [e["type"] for e in events[:3]] == ["run_started", "progress", "progress"]
    assert events[0]["job"] == "evaluate" and events[0]["config"]["protocol"] == {"name": "mtt"}
    assert (events[1]["label"], events[1]["done"], events[1]["total"]) == ("networks", 0, 4)
    assert (events[2]["label"], events[2]["done"], events[2]["total"]) == ("epochs", 0, 8)
    networks = [e["done"] for e in events if e["type"] == "progress" and e["label"] == "networks"]
    assert networks == [0, 1, 2, 3, 4]  # one event per network
    first_eval = next(i for i, e in enumerate(events) if e["type"] == "evaluation")
    assert first_eval > 3 and events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    assert [(e["subject"], e["protocol"]) for e in events if e["type"] == "evaluation"] == [
        ("synthetic", "mtt"), ("random-real", "mtt")]
    assert isinstance(results, list) and [s["subject"] for s in results] == ["synthetic", "random-real"]
    assert all(s["protocol"] == "mtt" and len(s["accuracies"]) == 2 for s in results)


def test_the_table_says_the_protocol_and_prints_the_lr_briefly(run):
    r = invoke("evaluate", run / "run" / "synthetic.zarr", *TINY)
    assert r.exit_code == 0, r.output
    lr = re.search(r"labels,\s+lr (\S+)", r.output).group(1)
    syn = open_synthetic_store(str(run / "run" / "synthetic.zarr")).read_set()
    assert lr == f"{syn.lr:.4g}" and len(lr.replace("0.", "").replace("e-", "")) <= 6
    assert "protocol mtt" in r.output and "random-real" in r.output and "mtt, hard" in r.output


def test_relabel_with_scores_end_to_end_and_recorded(run, tmp_path):
    url = run / "run" / "synthetic.zarr"
    args = ["evaluate", url, *TINY, "--protocol", "relabel", "--teacher-epochs", "1", "--scores", "--full-epochs", "1",
            "--temperature", "4", "--json"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    lines = _json_lines(r.output)
    out = lines[-1]
    teacher_progress = [e for e in lines[:-1] if e.get("label") == "teacher epochs"]
    assert teacher_progress and lines[0]["type"] == "run_started" and lines[1]["label"] == "teacher epochs"
    rows = [(s["subject"], s["protocol"], s["labels"], s["augment"]) for s in out["results"]]
    assert rows == [("synthetic", "relabel", "teacher", True), ("random-real", "relabel", "teacher", True),
                    ("synthetic hard", "mtt", "hard", True), ("synthetic no-aug", "relabel", "teacher", False),
                    ("random-real no-aug", "relabel", "teacher", False), ("full-real", "mtt", "hard", True)]
    (scores,) = out["scores"]
    by = {s["subject"]: s["accuracies"] for s in out["results"]}
    hlr = [f - h for f, h in zip(by["full-real"], by["synthetic hard"])]
    ior = [s - r for s, r in zip(by["synthetic"], by["random-real"])]
    assert scores["hlr"]["values"] == pytest.approx(hlr) and scores["ior"]["values"] == pytest.approx(ior)
    e1 = np.exp(-1.0)
    lrs = [(np.exp((0.5 * o - 0.5 * h) / 100) - e1) / (np.e - e1) for h, o in zip(hlr, ior)]
    assert scores["lrs"]["values"] == pytest.approx(lrs) and scores["convention"] == "documented"
    assert out["protocol"]["teacher"]["kind"] == "real" and out["protocol"]["teacher"]["cached"] is False
    assert out["protocol"]["temperature"] == 4.0

    # --scores records the results in the set's provenance
    syn = open_synthetic_store(str(url)).read_set()
    record = syn.attrs["evaluations"][-1]
    assert record["scores"][0]["lrs"]["values"] == pytest.approx(lrs) and record["protocol"]["name"] == "relabel"
    assert [s["subject"] for s in record["results"]] == [s["subject"] for s in out["results"]]

    # the real-data teacher is cached: the second evaluation uses the same one
    again = _json_lines(invoke(*args[:-1], "--no-record", "--json").output)[-1]
    assert again["protocol"]["teacher"]["cached"] is True
    assert again["results"][0]["accuracies"] == out["results"][0]["accuracies"]
    assert len(open_synthetic_store(str(url)).read_set().attrs["evaluations"]) == len(syn.attrs["evaluations"])

    table = invoke(*args[:-1], "--no-record")
    assert table.exit_code == 0 and "DD-Ranking scores" in table.output and "teacher" in table.output


def test_relabel_with_an_expert_teacher_from_the_recorded_store(run):
    r = invoke("evaluate", run / "run" / "synthetic.zarr", *TINY, "--protocol", "relabel", "--teacher", "expert:1@2",
               "--json")
    assert r.exit_code == 0, r.output
    out = _json_lines(r.output)[-1]
    assert [s["protocol"] for s in out] == ["relabel", "relabel"]


@pytest.mark.parametrize("args,needle", [
    (["--protocol", "kd"], "--protocol 'kd'"),
    (["--protocol", "relabel", "--teacher", "expert:7"], "no complete expert 7"),
    (["--protocol", "relabel", "--teacher", "teacher"], "expert:I[@EPOCH]"),
    (["--scores", "--score-weight", "2"], "--score-weight"),
    (["--scores", "--score-convention", "percent"], "--score-convention"),
    (["--micro-batch", "0"], "--micro-batch must be an integer >= 1"),
])
def test_bad_evaluate_options_are_one_line_and_exit_2(run, args, needle):
    url = run / "run" / "synthetic.zarr"
    before = open_synthetic_store(str(url)).read_set().attrs.get("evaluations")
    r = invoke("evaluate", url, *TINY, *args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2  # one message (wrapped at most once)
    assert open_synthetic_store(str(url)).read_set().attrs.get("evaluations") == before


def test_export_for_ddranking_round_trips_through_the_cli(run, tmp_path):
    url = run / "run" / "synthetic.zarr"
    out = tmp_path / "dd"
    r = invoke("export", url, out, "--layout", "ddranking")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "images.pt", "labels.pt", "lr.pt", "meta.json"]
    syn = open_synthetic_store(str(url)).read_set()
    back = read_ddranking_export(str(out))
    order = np.argsort(syn.labels, kind="stable")
    assert np.array_equal(back.images, syn.images[order]) and np.array_equal(back.labels, syn.labels[order])
    assert back.lr == pytest.approx(syn.lr, rel=1e-7) and back.meta["ipc"] == 1
    assert "no dataset matching" in (out / "README.md").read_text()  # the demo data is not one of DD-Ranking's

    cifar = invoke("export", url, tmp_path / "dd10", "--layout", "ddranking", "--dataset", "CIFAR10")
    assert cifar.exit_code == 0, cifar.output
    meta = read_ddranking_export(str(tmp_path / "dd10")).meta
    assert meta["ddranking_dataset"] == "CIFAR10" and "LabelRobustScoreHard" in (tmp_path / "dd10" / "README.md").read_text()

    bad = invoke("export", url, tmp_path / "bad", "--layout", "tar")
    assert bad.exit_code == 2 and "--layout 'tar'" in bad.output and not (tmp_path / "bad").exists()
    wrong = invoke("export", url, tmp_path / "wrong", "--dataset", "CIFAR10")
    assert wrong.exit_code == 2 and "--layout ddranking" in wrong.output


def test_a_run_dir_gets_the_events_for_the_monitor(run, tmp_path):
    from tesla.adapters.events.jsonl import read_events

    r = invoke("evaluate", run / "run" / "synthetic.zarr", *TINY, "--run-dir", tmp_path / "ev", "-q")
    assert r.exit_code == 0, r.output
    events, _ = read_events(tmp_path / "ev" / "events.jsonl")
    assert events[0].type == "run_started" and events[0].job == "evaluate"
    assert events[1].type == "progress" and events[1].done == 0 and events[-1].type == "run_finished"
    assert [e.subject for e in events if e.type == "evaluation"] == ["synthetic", "random-real"]
