"""The ImageNet path at toy size, through the CLI: Downsampled-ImageNet .npz batches ->
`tesla data prepare` -> experts on the on-disk prepared store (64 px, ConvNetD4) ->
TESLA distillation with soft labels from the teacher at the target epoch and synthetic
mini-batches -> evaluation beside random real images."""

import json

import numpy as np
from typer.testing import CliRunner

from tesla.adapters.data.imagenet64 import write_npz_batch
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.app.cli.main import app

runner = CliRunner()
K = 5


def _batches(root, seed=0):
    """Images whose colour depends on the class (so the task is learnable), 1-based labels."""
    rng = np.random.default_rng(seed)
    for b, n in ((1, 60), (2, 60)):
        labels = rng.integers(0, K, n)
        base = (labels[:, None, None, None] * 50 + 20).astype(np.int64)
        data = np.clip(base + rng.integers(-20, 20, (n, 3, 64, 64)), 0, 255).astype(np.uint8)
        write_npz_batch(root / f"train_data_batch_{b}.npz", data, labels + 1)
    labels = np.arange(25) % K
    data = np.clip((labels[:, None, None, None] * 50 + 20) + rng.integers(-20, 20, (25, 3, 64, 64)), 0, 255)
    write_npz_batch(root / "val_data.npz", data.astype(np.uint8), labels + 1)


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_prepared_imagenet_shaped_pipeline(tmp_path):
    src = tmp_path / "imagenet64"
    src.mkdir()
    _batches(src)
    prepared = tmp_path / "in64.zarr"
    invoke("data", "prepare", src, prepared, "--chunk", "32", "-q")
    traj = tmp_path / "experts.zarr"
    invoke("experts", "--dataset", "prepared", "--data", prepared, "--out", traj, "--num-experts", "1",
           "--epochs", "3", "--depth", "4", "--width", "8", "--batch-size", "32", "--lr", "0.05", "--device", "cpu",
           "-q")
    info = json.loads(invoke("info", traj, "--json").output)
    assert "ConvNetD4" in json.dumps(info) or info.get("model", {}).get("depth") == 4
    run = tmp_path / "run"
    invoke("distill", "-t", traj, "-o", run, "--ipc", "2", "--syn-steps", "3", "--expert-epochs", "1",
           "--max-start-epoch", "2", "--batch-syn", "4", "--labels", "teacher-target", "--iterations", "3",
           "--min-label-agreement", "0",
           "--lr-img", "100", "--device", "cpu", "-q")
    syn = open_synthetic_store(str(run / "synthetic.zarr")).read_set()
    assert syn.images.shape == (K * 2, 3, 64, 64)
    assert syn.soft_labels.shape == (K * 2, K) and np.allclose(syn.soft_labels.sum(1), 1, atol=1e-5)
    assert syn.attrs["label_source"]["kind"] == "teacher" and syn.attrs["model"]["depth"] == 4
    ev = invoke("evaluate", run / "synthetic.zarr", "--num-models", "1", "--epochs", "2", "--device", "cpu", "--json")
    scores = json.loads(ev.output.strip().splitlines()[-1])
    assert {s["subject"] for s in scores} == {"synthetic", "random-real"}
