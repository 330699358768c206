"""Stores on fsspec URLs, configured from the CLI, and the secrets that must not leak.

A full ``tesla experts`` + ``tesla distill`` runs in-process through typer's CliRunner
(so ``memory://`` is one filesystem for both) with the trajectory store and the
synthetic store on ``memory://`` URLs and a credential-like ``--storage-option``; the
same with ``file://`` URLs. S3 runs only when s3fs is installed and
``TESLA_TEST_S3_URL`` (e.g. ``s3://bucket/prefix``) names a writable place, with options
as JSON in ``TESLA_TEST_S3_OPTIONS``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tesla.adapters.stores import open_synthetic_store, open_trajectory_store
from tesla.app.cli import distill as distill_cli
from tesla.app.cli import experts as experts_cli
from tesla.domain.urls import options_for, redact_url

SECRET = "s3cr3t-Value-0042"
EXPERT_ARGS = ["--dataset", "demo", "-n", "2", "--epochs", "2", "--batch-size", "64", "--width", "8",
               "--device", "cpu", "-q"]
DISTILL_ARGS = ["--ipc", "1", "--syn-steps", "4", "--expert-epochs", "1", "--max-start-epoch", "2",
                "--iterations", "3", "--no-dsa", "--device", "cpu", "--preview-every", "1", "-q"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread is as fast, and far faster on a busy machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    experts_cli.register(a)
    distill_cli.register(a)
    return a


@pytest.fixture
def memory_root():
    """A fresh folder on the process-wide memory filesystem, removed afterwards."""
    import fsspec

    fs = fsspec.filesystem("memory")
    name = f"tesla-test-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def _ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def _memory_bytes(root: str) -> bytes:
    import fsspec

    fs = fsspec.filesystem("memory")
    prefix = "/" + root.split("://", 1)[1]
    return b"".join(fs.cat_file(p) for p in fs.find(prefix))


def _run_dir_bytes(run: Path) -> bytes:
    return b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())


def test_experts_and_distill_on_memory_urls_keep_secrets_out(app, tmp_path, memory_root):
    runner = CliRunner()
    traj, syn = f"{memory_root}/experts.zarr", f"{memory_root}/run/synthetic.zarr"
    opts = ["--storage-option", f"token={SECRET}", "--storage-option", "anon=false"]
    _ok(runner.invoke(app, ["experts", "--out", traj, "--run-dir", str(tmp_path / "elog"), *EXPERT_ARGS, *opts]))
    with open_trajectory_store(traj, "r", storage_options={"token": SECRET}) as store:
        assert store.expert_ids() == [0, 1] and store.num_snapshots(0) == 3
    run = tmp_path / "run"
    _ok(runner.invoke(app, ["distill", "-t", traj, "--out", str(run), "--store", syn, *DISTILL_ARGS, *opts]))
    with open_synthetic_store(syn, "r") as store:
        s = store.read_set()
        assert s.images.shape == (10, 3, 16, 16) and np.isfinite(s.images).all() and s.lr > 0
        assert s.attrs["trajectories"] == traj
    config = json.loads((run / "config.json").read_text())
    assert config["store"] == syn and config["trajectories"] == traj
    assert sorted(p.name for p in run.iterdir()) >= ["config.json", "events.jsonl", "images"]
    assert not (run / "synthetic.zarr").exists()  # the set went to --store
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("iteration") == 3
    # the credential reached the stores' filesystem but was written nowhere
    for blob in (_run_dir_bytes(run), _run_dir_bytes(tmp_path / "elog"), _memory_bytes(memory_root)):
        assert SECRET.encode() not in blob


def test_experts_and_distill_on_file_urls(app, tmp_path):
    runner = CliRunner()
    traj, syn = tmp_path / "experts.zarr", tmp_path / "sets" / "synthetic.zarr"
    _ok(runner.invoke(app, ["experts", "--out", traj.as_uri(), *EXPERT_ARGS]))
    with open_trajectory_store(str(traj), "r") as store:  # the same store as a plain path
        assert store.expert_ids() == [0, 1]
    _ok(runner.invoke(app, ["distill", "-t", traj.as_uri(), "--out", str(tmp_path / "run"), "--store", syn.as_uri(),
                            *DISTILL_ARGS]))
    with open_synthetic_store(str(syn), "r") as store:
        assert store.read_set().images.shape == (10, 3, 16, 16)
    assert (tmp_path / "run" / "images").is_dir()


def test_distill_store_refuses_a_second_fresh_run(app, tmp_path, memory_root):
    runner = CliRunner()
    traj, syn = f"{memory_root}/experts.zarr", f"{memory_root}/syn.zarr"
    _ok(runner.invoke(app, ["experts", "--out", traj, *EXPERT_ARGS]))
    _ok(runner.invoke(app, ["distill", "-t", traj, "--out", str(tmp_path / "a"), "--store", syn, *DISTILL_ARGS]))
    result = runner.invoke(app, ["distill", "-t", traj, "--out", str(tmp_path / "b"), "--store", syn, *DISTILL_ARGS])
    assert result.exit_code == 2
    assert "already holds checkpoints" in result.output and "--store" in result.output
    assert not (tmp_path / "b" / "events.jsonl").exists()


def test_stores_take_storage_options_unchanged(memory_root):
    opts = {"token": SECRET}
    with open_trajectory_store(f"{memory_root}/t.zarr", "a", storage_options=opts) as t:
        t.initialize({"arch": "convnet"}, [("w", [2, 3])], 6, {"name": "demo"})
        t.add_expert(np.arange(12, dtype=np.float32).reshape(2, 6), {"seed": 1})
    with open_trajectory_store(f"{memory_root}/t.zarr", "r", storage_options=opts) as t:
        np.testing.assert_array_equal(t.load(0, 1), np.arange(6, 12, dtype=np.float32))
    with open_synthetic_store(f"{memory_root}/s.zarr", "a", storage_options=opts) as s:
        s.write_checkpoint(3, {"images": np.ones((2, 1, 2, 2), np.float32)}, {"note": "x"})
    with open_synthetic_store(f"{memory_root}/s.zarr", "r", storage_options=opts) as s:
        it, arrays, attrs_ = s.latest_checkpoint()
        assert it == 3 and arrays["images"].shape == (2, 1, 2, 2)
    assert SECRET.encode() not in _memory_bytes(memory_root)


def test_options_go_to_remote_urls_only_and_urls_are_redacted():
    assert options_for("s3://b/x.zarr", {"anon": True}) == {"anon": True}
    assert options_for("/data/x.zarr", {"anon": True}) is None
    assert options_for("file:///data/x.zarr", {"anon": True}) is None
    assert options_for("s3://b/x.zarr", None) is None
    assert redact_url("s3://key:secret@bucket/x.zarr?token=abc") == "s3://***@bucket/x.zarr"
    assert redact_url("https://host/x.zarr?sig=abc") == "https://host/x.zarr"
    assert redact_url("/local/x.zarr") == "/local/x.zarr"
    assert redact_url("memory://a/b.zarr") == "memory://a/b.zarr"


@pytest.mark.skipif(not os.environ.get("TESLA_TEST_S3_URL"), reason="set TESLA_TEST_S3_URL=s3://bucket/prefix")
def test_experts_and_distill_on_s3(app, tmp_path):
    pytest.importorskip("s3fs")
    base = os.environ["TESLA_TEST_S3_URL"].rstrip("/") + f"/tesla-test-{uuid.uuid4().hex[:8]}"
    opts = []
    for k, v in json.loads(os.environ.get("TESLA_TEST_S3_OPTIONS", "{}")).items():
        opts += ["--storage-option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    runner = CliRunner()
    _ok(runner.invoke(app, ["experts", "--out", f"{base}/experts.zarr", *EXPERT_ARGS, *opts]))
    _ok(runner.invoke(app, ["distill", "-t", f"{base}/experts.zarr", "--out", str(tmp_path / "run"),
                            "--store", f"{base}/synthetic.zarr", *DISTILL_ARGS, *opts]))
    assert (tmp_path / "run" / "images").is_dir()
