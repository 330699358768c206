"""``tesla run DATA --ipc K`` through the CLI on a small ImageFolder tree made here: it
prepares the tree, says what it chose, trains experts, distils, evaluates and draws;
stopped by Ctrl-C it continues with the same command; bad arguments are one line."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from tesla.adapters.events.jsonl import read_events
from tesla.app.cli.main import app
from tests.faults.common import one_thread, tree_snapshot  # noqa: F401 - one_thread: autouse fixture

runner = CliRunner()
CLASSES = ("apple", "brick", "cloud")
SMALL = ["--ipc", "1", "--image-size", "16", "--minutes", "1", "--threads", "1", "--device", "cpu", "--num-experts",
         "2", "--iterations", "4", "--eval-models", "1", "--eval-epochs", "3", "--width", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/<class>/*.png (10 a class) and val/<class>/*.png (4 a class), 20 px, each
    class its own colour under noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((20, 20, 3))
                base[..., c] = 200
                pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


class CtrlCAt:
    """Sends this process SIGINT after distillation iteration ``at`` (the CLI's own handler
    turns it into a cancel, as a user's Ctrl-C would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def emit(self, event) -> None:
        if getattr(event, "type", "") == "iteration" and event.iteration == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_run_goes_end_to_end_stops_and_continues(tree, tmp_path, monkeypatch):
    from tesla.app import bootstrap
    from tesla.domain.ports import FanOut

    out = tmp_path / "run"
    real = bootstrap.event_sinks

    def with_ctrl_c(run_dir, **kwargs):
        sink, closers = real(run_dir, **kwargs)
        return (FanOut(sink, CtrlCAt(2)) if run_dir is not None else sink), closers

    monkeypatch.setattr(bootstrap, "event_sinks", with_ctrl_c)
    first = invoke("run", tree, "-o", out, *SMALL)
    monkeypatch.setattr(bootstrap, "event_sinks", real)
    assert first.exit_code == 1, first.output
    assert "what it chose (and why)" in first.output and "stopped during the distill stage" in first.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["facts"]["num_classes"] == 3 and plan["facts"]["num_train"] == 30 and plan["facts"]["num_test"] == 12
    assert plan["facts"]["image_shape"] == [3, 16, 16] and plan["data"]["name"] == "prepared"
    assert "| iterations | 4 | asked for |" in (out / "plan.md").read_text()
    assert not (out / "results.json").exists()

    again = invoke("run", tree, "-o", out, *SMALL)
    assert again.exit_code == 0, again.output
    assert "continues the run planned" in again.output and "results" in again.output
    log = read_events(out / "events.jsonl")[0]
    assert [e.iteration for e in log if e.type == "iteration"] == [1, 2, 3, 4]  # continued, not redone
    started = [(e.job, e.total) for e in log if e.type == "run_started"]
    epochs = plan["plan"]["experts"]["epochs"]
    assert epochs == plan["plan"]["distill"]["max_start_epoch"] + plan["plan"]["distill"]["expert_epochs"]
    assert started[:2] == [("experts", 2 * epochs), ("distill", 4)] and ("experts", 0) in started  # experts kept
    kept = json.loads((out / "results.json").read_text())
    assert {s["subject"] for s in kept["scores"]} == {"synthetic", "random-real"}
    assert all(0 <= s["mean"] <= 100 and len(s["accuracies"]) == 1 for s in kept["scores"])
    for name in ("results.png", "results.md", "images/overview.png", "config.json", "synthetic.zarr", "experts.zarr",
                 "data.zarr"):
        assert (out / name).exists(), name
    assert len(list((out / "images").glob("class_*.png"))) == 3

    done = invoke("run", tree, "-o", out, "--json")  # nothing left: the kept results again
    assert done.exit_code == 0, done.output
    last = json.loads(done.output.strip().splitlines()[-1])
    assert last["status"] == "completed" and last["stage"] == "done"
    assert sorted(s["mean"] for s in last["scores"]) == sorted(s["mean"] for s in kept["scores"])


def test_a_rerun_with_other_settings_is_refused(tree, tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "plan.json").write_text(json.dumps({"data_arg": str(tree), "wishes": {"ipc": 1}, "plan": {}, "facts": {}}))
    before = tree_snapshot(out)
    r = invoke("run", tree, "-o", out, "--ipc", "2", "--device", "cpu")
    assert r.exit_code == 2 and "--ipc 2 (the run was planned with 1)" in r.output, r.output
    assert tree_snapshot(out) == before


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "absent", "no such file or folder"),
    (lambda p: (p / "train" / "a").mkdir(parents=True) or p, "needs held-out images"),
    (lambda p: (p / "notes.txt").write_text("x") and p, "cannot tell what it holds"),
])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, make, needle):
    data = make(_mkdir(tmp_path / "d"))
    out = tmp_path / "out"
    r = invoke("run", data, "-o", out, "--device", "cpu")
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not out.exists()


def _mkdir(path):
    path.mkdir()
    return path
