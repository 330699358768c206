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
    """Exit 2 and one line that starts with ``error:`` (our own checks), the last; before
    it at most the progress lines of set-up steps already taken (loading the data)."""
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}"
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), res.output
    assert not any("error" in line.lower() or "Traceback" in line for line in lines[:-1]), res.output
    for n in needles:
        assert n in lines[-1], f"{n!r} not in {lines[-1]!r}"
    return lines[-1]


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
    "device-meta": (["--device", "meta"], ["'meta'", "cuda[:N]"]),
    "preview-every-negative": (["--preview-every", "-1"], ["--preview-every", ">= 0"]),
    "eval-every-negative": (["--eval-every", "-1"], ["--eval-every", ">= 0"]),
    "eval-models-0": (["--eval-every", "1", "--eval-models", "0"], ["num_models"]),
    "eval-epochs-0": (["--eval-every", "1", "--eval-epochs", "0"], ["epochs"]),
    "lr-lr-nan": (["--lr-lr", "nan"], ["lr_lr", "nan"]),
    "lr-img-inf": (["--lr-img", "inf"], ["lr_img", "inf"]),
    "max-loss-nan": (["--max-loss", "nan"], ["max_loss"]),
    # absurd sizes: refused from the configs before anything is allocated (tesla.domain.footprint)
    "ipc-beyond-memory": (["--ipc", "10000000"], ["needs at least", "GiB is free", "--ipc"]),
    "syn-steps-beyond-memory-exact": (["--syn-steps", "1000000000", "--engine", "exact"],
                                      ["stored student weight vectors", "--remake-weights"]),
    "syn-steps-beyond-memory-tesla": (["--syn-steps", "100000000000"], ["plans of", "--syn-steps"]),
    "batch-syn-beyond-memory-unrolled": (["--ipc", "100000", "--batch-syn", "1000000", "--engine", "unrolled"],
                                         ["needs at least"]),
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
    # --resume with other experts: a store elsewhere is taken only when it holds the run's
    # own experts (their fingerprint, recorded in config.json and the checkpoints)
    other = fake_trajectory_store(tmp_path / "other.zarr", experts=1)
    before = tree_snapshot(out)
    _refused(invoke(distill_args(other, out, "--resume")), "was made from the experts of")
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
    "lr-inf": (["--lr", "inf"], ["lr", "inf"]),
    "lr-nan": (["--lr", "nan"], ["lr", "nan"]),
    "device-meta": (["--device", "meta"], ["'meta'"]),
    "width-beyond-memory": (["--width", "1000000"], ["needs at least", "parameters", "--width"]),
    "parallel-wide-beyond-memory": (["--width", "20000", "--parallel", "1000"], ["needs at least", "--parallel"]),
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


# --- evaluate, export, prepare: options that used to be accepted or end in a traceback -------


@pytest.fixture(scope="module")
def finished(traj, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert invoke(distill_args(traj, out, "--iterations", "2")).exit_code == 0
    return str(out / "synthetic.zarr")


def test_bad_evaluate_and_export_options_are_one_line(finished, tmp_path):
    base = ["evaluate", finished, "--num-models", "1", "--epochs", "1", "--no-random-real"]
    _refused(invoke([*base, "--full-real", "--full-epochs", "0", "--device", "cpu"]), "--full-epochs", ">= 1")
    _refused(invoke([*base, "--device", "meta"]), "'meta'")
    _refused(invoke([*base, "--lr", "nan", "--device", "cpu"]), "lr")
    export = tmp_path / "export"
    _refused(invoke(["export", finished, str(export), "--per-row", "0"]), "--per-row", ">= 1")
    assert not export.exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = tree_snapshot(notes)
    _refused(invoke(["export", finished, str(notes)]), str(notes), "not a folder")
    assert tree_snapshot(notes) == before


def test_prepare_at_an_absurd_image_size_is_refused_before_the_store_is_made(tmp_path):
    src = tmp_path / "src"
    make_imagenet64(src, files=1, per_file=8, val=4)
    dest = tmp_path / "p.zarr"
    _refused(invoke(["data", "prepare", str(src), str(dest), "--image-size", "1000000", "--quiet"]),
             "needs at least", "--image-size")
    assert not dest.exists() and not (tmp_path / "p.zarr.work").exists()


# --- mixed inputs: what a store or run records is what is in it ------------------------------


def test_experts_of_another_recipe_or_data_are_refused_and_the_store_kept(tmp_path):
    out = tmp_path / "t.zarr"
    base = ["experts", "--out", str(out), *MODEL, "--epochs", "1", "--batch-size", "256", "--device", "cpu",
            "--quiet"]
    assert invoke([*base, "--num-experts", "1"]).exit_code == 0
    before = tree_snapshot(out)
    for extra, needle in ((["--lr", "0.05"], "lr 0.01 (expert 0) vs 0.05"), (["--epochs", "2"], "epochs 1"),
                          (["--seed", "4"], "seed 0 (expert 0) vs 4"), (["--batch-size", "128"], "batch_size"),
                          (["--zca"], "zca False vs True")):
        _refused(invoke([*base, "--num-experts", "2", *extra]), str(out), needle)
        assert tree_snapshot(out) == before, extra
    assert invoke([*base, "--num-experts", "2"]).exit_code == 0  # the same recipe appends


def test_a_resume_with_other_trajectories_or_the_other_format_is_refused_and_the_run_kept(traj, tmp_path):
    out = tmp_path / "run"
    assert invoke(distill_args(traj, out, "--iterations", "3")).exit_code == 0
    before = tree_snapshot(out)
    other = fake_trajectory_store(tmp_path / "other.zarr", seed=5)
    _refused(invoke(distill_args(other, out, "--resume", "--iterations", "6")), "holds other experts",
             "resume with the trajectory store the run started with")
    _refused(invoke(distill_args(traj, out, "--resume", "--iterations", "6", "--format", "h5")),
             "holds synthetic.zarr", "--format zarr")
    assert tree_snapshot(out) == before
    # a copy of the same store is the same experts
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(traj, copy)
    assert invoke(distill_args(copy, out, "--resume", "--iterations", "6")).exit_code == 0


def test_a_store_or_a_folder_inside_one_is_no_run_directory(traj, tmp_path):
    import shutil

    store = tmp_path / "t.zarr"
    shutil.copytree(traj, store)
    before = tree_snapshot(store)
    _refused(invoke(distill_args(traj, store)), str(store), "is a store")
    _refused(invoke(distill_args(traj, store / "run")), "lies inside the store")
    _refused(invoke(["experts", "--out", str(tmp_path / "e.zarr"), "--run-dir", str(store), *MODEL,
                     "--num-experts", "1", "--epochs", "1", "--device", "cpu", "--quiet"]), "is a store")
    assert tree_snapshot(store) == before and not (tmp_path / "e.zarr").exists()


def test_a_refused_first_attempt_leaves_no_run_directory(traj, tmp_path):
    """Refused after the store was opened (it holds another run's checkpoints): the new
    run directory is not made, so a later attempt does not meet a stale config.json."""
    first = tmp_path / "first"
    store = tmp_path / "shared.zarr"
    assert invoke(distill_args(traj, first, "--iterations", "3", "--store", store)).exit_code == 0
    second = tmp_path / "second"
    _refused(invoke(distill_args(traj, second, "--store", store)), "already holds checkpoints", "--store")
    assert not second.exists()
    assert invoke(distill_args(traj, second, "--iterations", "3")).exit_code == 0  # nothing stale in the way


def test_experts_whose_store_cannot_be_made_leave_no_run_directory(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    run_dir = tmp_path / "r"
    _refused(invoke(["experts", "--out", str(blocker / "t.zarr"), "--run-dir", str(run_dir), *MODEL,
                     "--num-experts", "1", "--epochs", "1", "--device", "cpu", "--quiet"]), str(blocker / "t.zarr"))
    assert not run_dir.exists()
