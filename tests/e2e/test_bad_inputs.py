"""Every bad CLI input is refused before any work: one line, exit code 2, nothing written.

For each case the output path is either absent before the command (and must still be
absent after it) or holds something (and must be byte-for-byte and mtime unchanged).
The commands are the real CLI through typer's CliRunner.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.faults.common import (MODEL, distill_args, fake_trajectory_store, invoke, make_imagenet64,
                                 one_thread, tree_snapshot)  # noqa: F401 - one_thread: autouse fixture

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> str:
    return fake_trajectory_store(tmp_path_factory.mktemp("bad") / "t.zarr")


def _refused(res, *needles: str) -> str:
    """Exit 2 and one line that starts with ``error:`` (our own checks)."""
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}"
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


# (extra distill args, words the message must hold)
DISTILL_CASES = {
    "ipc-0": (["--ipc", "0"], ["ipc", ">= 1"]),
    "syn-steps-0": (["--syn-steps", "0"], ["syn_steps"]),
    "iterations-0": (["--iterations", "0"], ["iterations"]),
    "epochs-beyond-store": (["--max-start-epoch", "3", "--expert-epochs", "2"], ["epoch 4", "stops at epoch 3"]),
    "label-epoch-beyond-store": (["--labels", "teacher-epoch", "--label-epoch", "9"], ["epoch 9"]),
    "unknown-engine": (["--engine", "fast"], ["engine", "'fast'"]),
    "unknown-labels": (["--labels", "soft"], ["labels", "'soft'"]),
    "teacher-epoch-without-epoch": (["--labels", "teacher-epoch"], ["--label-epoch"]),
    "unknown-dataset": (["--dataset", "mnist"], ["name", "'mnist'"]),
    "missing-data-folder": (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], ["/nonexistent/cifar"]),
    "prepared-without-store": (["--dataset", "prepared", "--data", "/nonexistent/p.zarr"], ["/nonexistent/p.zarr"]),
    "lr-img-0": (["--lr-img", "0"], ["lr_img"]),
    "lr-init-negative": (["--lr-init", "-0.1"], ["lr_init"]),
    "batch-syn-too-big": (["--batch-syn", "11"], ["batch_syn 11"]),
    "unknown-format": (["--format", "npz"], ["--format"]),
    "bad-storage-option": (["--storage-option", "anon"], ["key=value"]),
    "seed-negative": (["--seed", "-1"], ["seed"]),
    "checkpoint-every-0": (["--checkpoint-every", "0"], ["checkpoint_every"]),
}
if not torch.cuda.is_available():
    DISTILL_CASES["cuda-without-gpu"] = (["--device", "cuda"], ["--device cpu"])


@pytest.mark.parametrize("case", sorted(DISTILL_CASES))
def test_bad_distill_input_writes_nothing(case, traj, tmp_path):
    extra, needles = DISTILL_CASES[case]
    out = tmp_path / "run"
    _refused(invoke(distill_args(traj, out, *extra)), *needles)
    assert not out.exists()


def test_missing_trajectory_store(tmp_path):
    out = tmp_path / "run"
    _refused(invoke(distill_args(tmp_path / "none.zarr", out)), str(tmp_path / "none.zarr"))
    _refused(invoke(distill_args(tmp_path / "none.h5", out)), str(tmp_path / "none.h5"))
    assert not out.exists() and not (tmp_path / "none.zarr").exists() and not (tmp_path / "none.h5").exists()


def test_a_trajectory_argument_that_is_not_a_store(tmp_path, traj):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    out = tmp_path / "run"
    _refused(invoke(distill_args(folder, out)), str(folder))
    assert not out.exists() and tree_snapshot(folder) is not None and len(tree_snapshot(folder)) == 1


@pytest.mark.skipif(ROOT, reason="root ignores directory permissions")
def test_unwritable_output(traj, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(invoke(distill_args(traj, locked / "run")), str(locked / "run"), "writable")
        _refused(invoke(["experts", "--out", str(locked / "t.zarr"), *MODEL, "--num-experts", "1", "--epochs", "1",
                         "--device", "cpu", "--quiet"]), str(locked / "t.zarr"))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_output_that_is_a_file(traj, tmp_path):
    out = tmp_path / "run"
    out.write_text("notes")
    before = tree_snapshot(out)
    _refused(invoke(distill_args(traj, out)), str(out))
    assert tree_snapshot(out) == before


def test_output_that_holds_another_run(traj, tmp_path):
    out = tmp_path / "run"
    res = invoke(distill_args(traj, out, "--iterations", "3"))
    assert res.exit_code == 0, res.output
    before = tree_snapshot(out)
    # the same output again without --resume
    _refused(invoke(distill_args(traj, out)), "--resume")
    # --resume with other inputs (a different run): the run's recorded trajectories are its own
    other = fake_trajectory_store(tmp_path / "other.zarr", experts=1)
    cfg = json.loads((out / "config.json").read_text())
    cfg["data"]["name"] = "cifar10"  # what a run on other data recorded
    (out / "config.json").write_text(json.dumps(cfg))
    before = tree_snapshot(out)
    _refused(invoke(distill_args(other, out, "--resume")), f"--trajectories {other}: the run was made with")
    assert tree_snapshot(out) == before


def test_resume_with_different_distill_settings_is_refused(traj, tmp_path):
    out = tmp_path / "run"
    assert invoke(distill_args(traj, out, "--iterations", "3")).exit_code == 0
    before = tree_snapshot(out)
    _refused(invoke(distill_args(traj, out, "--resume", "--syn-steps", "4")), "syn_steps")
    assert {k: v for k, v in tree_snapshot(out).items() if k != "events.jsonl"} == \
        {k: v for k, v in before.items() if k != "events.jsonl"}


# --- experts ---------------------------------------------------------------------------------

EXPERT_CASES = {
    "num-experts-0": (["--num-experts", "0"], ["num_experts"]),
    "epochs-0": (["--epochs", "0"], ["epochs"]),
    "batch-size-0": (["--batch-size", "0"], ["batch_size"]),
    "lr-negative": (["--lr", "-1"], ["lr"]),
    "unknown-dataset": (["--dataset", "mnist"], ["'mnist'"]),
    "unknown-arch": (["--arch", "vgg"], ["arch", "'vgg'"]),
    "unknown-norm": (["--norm", "weird"], ["norm"]),
    "depth-too-deep-for-16px": (["--depth", "5"], ["2**depth"]),
    "unknown-preset": (["--preset", "cifar10-ipc7"], ["cifar10-ipc7"]),
    "missing-data-folder": (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], ["/nonexistent/cifar"]),
    "data-without-folder": (["--dataset", "cifar10"], ["--data"]),
}


@pytest.mark.parametrize("case", sorted(EXPERT_CASES))
def test_bad_experts_input_writes_nothing(case, tmp_path):
    extra, needles = EXPERT_CASES[case]
    out = tmp_path / "t.zarr"
    base = ["experts", "--out", str(out), *MODEL, "--num-experts", "1", "--epochs", "1", "--device", "cpu", "--quiet"]
    _refused(invoke(base + extra), *needles)
    assert not out.exists(), f"{case}: the store was created before the input was refused"


def test_experts_into_a_folder_that_is_not_a_store(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "a.png").write_bytes(b"x")
    before = tree_snapshot(out)
    _refused(invoke(["experts", "--out", str(out), *MODEL, "--num-experts", "1", "--epochs", "1", "--device", "cpu"]),
             str(out))
    assert tree_snapshot(out) == before


# --- data prepare ----------------------------------------------------------------------------

def test_prepare_missing_source(tmp_path):
    dest = tmp_path / "p.zarr"
    _refused(invoke(["data", "prepare", str(tmp_path / "nothing"), str(dest), "--quiet"]), str(tmp_path / "nothing"))
    assert not dest.exists()


def test_prepare_unrecognised_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("hi")
    dest = tmp_path / "p.zarr"
    _refused(invoke(["data", "prepare", str(src), str(dest), "--quiet"]), "cannot tell the layout")
    assert not dest.exists()


def test_prepare_chunk_below_one(tmp_path):
    src = tmp_path / "src"
    make_imagenet64(src, files=1, per_file=8, val=4)
    dest = tmp_path / "p.zarr"
    res = invoke(["data", "prepare", str(src), str(dest), "--chunk", "0", "--quiet"])
    assert res.exit_code == 2 and "--chunk" in res.output
    assert not dest.exists()


def test_prepare_into_a_store_of_other_data(tmp_path):
    src, other = tmp_path / "src", tmp_path / "other"
    make_imagenet64(src, files=1, per_file=16, val=4, seed=0)
    make_imagenet64(other, files=1, per_file=16, val=4, seed=1)
    dest = tmp_path / "p.zarr"
    args = ["--image-size", "8", "--chunk", "8", "--quiet"]
    assert invoke(["data", "prepare", str(src), str(dest), *args]).exit_code == 0
    before = tree_snapshot(dest)
    _refused(invoke(["data", "prepare", str(other), str(dest), *args]), "other data")
    assert tree_snapshot(dest) == before


def test_prepare_into_a_folder_that_is_not_a_store(tmp_path):
    src = tmp_path / "src"
    make_imagenet64(src, files=1, per_file=8, val=4)
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "a.png").write_bytes(b"x")
    before = tree_snapshot(dest)
    _refused(invoke(["data", "prepare", str(src), str(dest), "--image-size", "8", "--quiet"]), str(dest))
    assert tree_snapshot(dest) == before


def test_output_below_a_file_cannot_be_written(traj, tmp_path):
    """Unwritable even for root: a path component is a file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    before = tree_snapshot(tmp_path)
    _refused(invoke(distill_args(traj, blocker / "run")), str(blocker / "run"))
    _refused(invoke(["experts", "--out", str(blocker / "t.zarr"), *MODEL, "--num-experts", "1", "--epochs", "1",
                     "--device", "cpu", "--quiet"]), str(blocker / "t.zarr"))
    _refused(invoke(["experts", "--out", str(tmp_path / "t.zarr"), "--run-dir", str(blocker / "r"), *MODEL,
                     "--num-experts", "1", "--epochs", "1", "--device", "cpu", "--quiet"]), str(blocker / "r"))
    assert tree_snapshot(tmp_path) == before
