"""The pipeline through the CLI (typer's runner): experts -> distill -> evaluate -> export,
on the embedded data with a tiny network, and the demo itself."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tesla.adapters.events.jsonl import read_events
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tesla.app.cli.main import app

runner = CliRunner()

DISTILL = ["--ipc", "1", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2", "--iterations", "4",
           "--checkpoint-every", "2", "--preview-every", "2", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "traj.zarr"
    r = invoke("experts", "--dataset", "demo", "--out", out, "--num-experts", "2", "--epochs", "3", "--width", "8",
               "--batch-size", "128", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_experts_command_fills_the_store(experts):
    store = open_trajectory_store(str(experts))
    assert store.expert_ids() == [0, 1] and store.num_snapshots(1) == 4
    assert store.meta.model["width"] == 8 and store.meta.dataset["name"] == "demo"


def test_distill_evaluate_export(tmp_path, experts):
    run = tmp_path / "run"
    r = invoke("distill", "-t", experts, "-o", run, *DISTILL, "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [e["iteration"] for e in lines if e["type"] == "iteration"] == [1, 2, 3, 4]
    events, _ = read_events(run / "events.jsonl")
    assert events[0].type == "run_started" and events[-1].type == "run_finished"
    assert json.loads((run / "config.json").read_text())["distill"]["ipc"] == 1
    assert len(list((run / "images").glob("class_*.png"))) == 10 and (run / "images" / "overview.png").exists()
    syn = open_synthetic_store(str(run / "synthetic.zarr")).read_set()
    assert syn.images.shape == (10, 3, 16, 16) and syn.lr > 0
    assert syn.attrs["trajectories"] == str(experts) and syn.normalizer_state

    again = invoke("distill", "-t", experts, "-o", run, *DISTILL)
    assert again.exit_code == 2 and "already holds a run" in again.output

    ev = invoke("evaluate", run / "synthetic.zarr", "--num-models", "2", "--epochs", "3", "--device", "cpu", "--json")
    assert ev.exit_code == 0, ev.output
    scores = {s["subject"]: s for s in json.loads(ev.output.strip().splitlines()[-1])}
    assert set(scores) == {"synthetic", "random-real"}
    assert all(0 <= s["mean"] <= 100 and len(s["accuracies"]) == 2 for s in scores.values())

    ex = invoke("export", run / "synthetic.zarr", tmp_path / "export")
    assert ex.exit_code == 0, ex.output
    images = torch.load(tmp_path / "export" / "images_best.pt", weights_only=True)
    labels = torch.load(tmp_path / "export" / "labels_best.pt", weights_only=True)
    lr = torch.load(tmp_path / "export" / "lr_best.pt", weights_only=True)
    assert images.shape == (10, 3, 16, 16) and labels.tolist() == list(range(10)) and float(lr) == pytest.approx(syn.lr)
    assert len(list((tmp_path / "export" / "images").glob("class_*.png"))) == 10

    info = invoke("info", run / "synthetic.zarr")
    assert info.exit_code == 0


def test_distill_resume_continues_a_stopped_run(tmp_path, experts):
    run = tmp_path / "run"
    first = invoke("distill", "-t", experts, "-o", run, *DISTILL[:-4], "--iterations", "2", "--device", "cpu", "-q")
    assert first.exit_code == 0, first.output
    more = invoke("distill", "-t", experts, "-o", run, *DISTILL[:-4], "--iterations", "4", "--device", "cpu", "-q",
                  "--resume")
    assert more.exit_code == 0, more.output
    its = [e.iteration for e in read_events(run / "events.jsonl")[0] if e.type == "iteration"]
    assert its == [1, 2, 3, 4]


@pytest.mark.parametrize("args,needle", [
    (["--ipc", "0"], "ipc"),
    (["--engine", "magic"], "engine"),
    (["--max-start-epoch", "3", "--expert-epochs", "3"], "epoch"),
    (["--labels", "teacher-epoch"], "label_epoch"),
    (["--format", "tar"], "format"),
])
def test_bad_distill_arguments_fail_fast_and_write_nothing(tmp_path, experts, args, needle):
    run = tmp_path / "run"
    r = invoke("distill", "-t", experts, "-o", run, "--device", "cpu", *args)
    assert r.exit_code == 2 and needle in r.output
    assert not run.exists()


def test_demo_beats_random_real(tmp_path):
    """The whole demo (the README's main job): the distilled IPC-1 set must beat random
    real images at the same IPC under the same evaluation protocol; the run directory
    holds its own event log (``tesla monitor demo/run``), its config, the pictures and
    the results as a chart and a table."""
    r = invoke("demo", "--out", tmp_path / "demo", "--device", "cpu", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "distilled (tesla)" in r.output and "random real" in r.output
    run = tmp_path / "demo" / "run"
    assert not (tmp_path / "demo" / "events.jsonl").exists()
    evals = [e for e in read_events(run / "events.jsonl")[0] if e.type == "evaluation"]
    by = {e.subject: e for e in evals}
    assert by["synthetic"].n == by["random-real"].n == 5
    assert by["synthetic"].mean > by["random-real"].mean + 3.0, (by["synthetic"], by["random-real"])
    assert len(list((run / "images").glob("class_*.png"))) == 10 and (run / "images" / "overview.png").exists()
    assert np.isfinite([e.loss for e in read_events(run / "events.jsonl")[0] if e.type == "iteration"]).all()
    assert json.loads((run / "config.json").read_text())["distill"]["iterations"] == 300
    assert (run / "results.png").stat().st_size > 0
    table = (run / "results.md").read_text()
    assert f"| distilled (tesla), IPC 1 | ConvNetD2 | {by['synthetic'].mean:.2f} +- {by['synthetic'].std:.2f} | 5 |" \
        in table
    kept = json.loads((run / "results.json").read_text())
    assert {s["subject"]: s["mean"] for s in kept["scores"]} == {k: e.mean for k, e in by.items()}


def test_tensorboard_without_the_package_is_a_one_line_error(tmp_path, experts):
    from tesla.adapters.events.tensorboard import available

    if available():
        pytest.skip("tensorboard is installed here")
    run = tmp_path / "run"
    r = invoke("distill", "-t", experts, "-o", run, *DISTILL, "--tensorboard", tmp_path / "tb")
    assert r.exit_code == 2 and "tesla-distill[tensorboard]" in r.output and not run.exists()
