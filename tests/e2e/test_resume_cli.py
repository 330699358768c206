"""``tesla distill -o RUN --resume`` through the CLI: a run made with options that are not
the defaults, stopped (Ctrl-C, or a shorter --iterations) and resumed by naming its
directory alone, ends with the set an uninterrupted run stores, array for array."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from tesla.adapters.events.jsonl import read_events
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.app.cli.main import app
from tests.faults.common import one_thread, tree_snapshot  # noqa: F401 - one_thread: autouse fixture

runner = CliRunner()

# every one of these differs from the default (and the set is HDF5, not Zarr)
ORIGINAL = ["--ipc", "2", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2", "--batch-syn", "7",
            "--lr-img", "50", "--lr-init", "0.02", "--seed", "5", "--labels", "teacher-target",
            "--checkpoint-every", "3", "--format", "h5", "--preview-every", "0", "-q",
            "--min-label-agreement", "0"]  # resume is tested, not labels: a 1-epoch expert labels weakly
ITERATIONS = 5


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "traj.zarr"
    r = invoke("experts", "--dataset", "demo", "--out", out, "--num-experts", "2", "--epochs", "2", "--width", "8",
               "--batch-size", "128", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def uninterrupted(experts, tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "whole"
    r = invoke("distill", "-t", experts, "-o", run, *ORIGINAL, "--iterations", ITERATIONS)
    assert r.exit_code == 0, r.output
    return _stored(run)


def _stored(run) -> dict:
    syn = open_synthetic_store(str(run / "synthetic.h5")).read_set()
    arrays = {"images": syn.images, "labels": syn.labels, "soft_labels": syn.soft_labels, "lr": np.float64(syn.lr)}
    assert syn.soft_labels is not None  # teacher labels: the resumed run must remake them the same way
    return arrays


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


class CtrlCAt:
    """A sink that sends this process SIGINT (Ctrl-C) after iteration ``at``: the CLI's own
    handler turns it into a cancel, as a user's Ctrl-C would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def emit(self, event) -> None:
        if getattr(event, "type", "") == "iteration" and event.iteration == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_with_only_the_run_directory_ends_equal_to_an_uninterrupted_run(experts, uninterrupted, tmp_path,
                                                                               monkeypatch):
    from tesla.app import bootstrap
    from tesla.domain.ports import FanOut

    run = tmp_path / "stopped"
    real = bootstrap.event_sinks

    def with_ctrl_c(*args, **kwargs):
        sink, closers = real(*args, **kwargs)
        return FanOut(sink, CtrlCAt(2)), closers

    monkeypatch.setattr(bootstrap, "event_sinks", with_ctrl_c)
    first = invoke("distill", "-t", experts, "-o", run, *ORIGINAL, "--iterations", ITERATIONS)
    monkeypatch.setattr(bootstrap, "event_sinks", real)
    assert first.exit_code == 1, first.output  # cancelled: exit 1 (documented)
    finished = [e for e in read_events(run / "events.jsonl")[0] if e.type == "run_finished"]
    assert [(e.status, e.summary["iterations"]) for e in finished] == [("cancelled", 2)]

    resumed = invoke("distill", "-o", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    its = [e.iteration for e in read_events(run / "events.jsonl")[0] if e.type == "iteration"]
    assert its == [1, 2, 3, 4, 5]
    _assert_same(_stored(run), uninterrupted)


def test_a_run_made_longer_on_resume_records_it_and_a_later_resume_keeps_it(experts, uninterrupted, tmp_path):
    run = tmp_path / "short"
    assert invoke("distill", "-t", experts, "-o", run, *ORIGINAL, "--iterations", 2).exit_code == 0
    # the README's form: the trajectories named again, and the one change that is resumable
    longer = invoke("distill", "-t", experts, "-o", run, "--resume", "--iterations", ITERATIONS)
    assert longer.exit_code == 0, longer.output
    assert json.loads((run / "config.json").read_text())["distill"]["iterations"] == ITERATIONS
    _assert_same(_stored(run), uninterrupted)
    again = invoke("distill", "-o", run, "--resume")  # nothing left to do: the same set again
    assert again.exit_code == 0, again.output
    _assert_same(_stored(run), uninterrupted)


@pytest.mark.parametrize("args,needle", [
    (["--syn-steps", "4"], "--syn-steps 4: the run was made with different syn_steps (3"),
    (["--format", "zarr"], "holds synthetic.h5, a run in the h5 format: resume it with --format h5"),
    (["--preset", "cifar10-ipc10"], "--preset cifar10-ipc10 sets"),
])
def test_a_typed_change_that_is_not_resumable_is_one_line_and_changes_nothing(experts, tmp_path, args, needle):
    run = tmp_path / "run"
    assert invoke("distill", "-t", experts, "-o", run, *ORIGINAL, "--iterations", 2).exit_code == 0
    before = tree_snapshot(run)
    r = invoke("distill", "-o", run, "--resume", *args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert tree_snapshot(run) == before


def test_without_a_run_the_trajectories_are_required(tmp_path):
    r = invoke("distill", "-o", tmp_path / "new", "--resume")
    assert r.exit_code == 2 and "holds no run to resume" in r.output and "--trajectories" in r.output
    r = invoke("distill", "-o", tmp_path / "new")
    assert r.exit_code == 2 and "pass --trajectories (-t)" in r.output
    assert not (tmp_path / "new").exists()
