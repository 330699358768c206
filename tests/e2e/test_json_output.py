"""Every long command speaks JSON for scripts: events as JSON lines, then a result object."""

import json

import numpy as np
from typer.testing import CliRunner

from tesla.adapters.data.imagenet64 import write_npz_batch
from tesla.app.cli.main import app

runner = CliRunner()


def _objects(output):
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_bench_memory_and_speed_json(tmp_path):
    common = ["--device", "cpu", "--model-width", "4", "--image-size", "8", "--depth", "1", "--ipc", "1",
              "--steps", "1,2", "--out", str(tmp_path), "--json"]
    r = runner.invoke(app, ["bench", "memory", *common, "--in-process"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    objs = _objects(r.output)
    assert objs[0]["type"] == "run_started" and any(o.get("type") == "run_finished" for o in objs)
    result = objs[-1]
    assert {(p["engine"], p["steps"]) for p in result["points"]} == {(e, n) for e in ("unrolled", "tesla", "exact")
                                                                     for n in (1, 2)}
    assert result["files"]["csv"].endswith("memory.csv")
    r = runner.invoke(app, ["bench", "speed", *common, "--repeats", "1", "--warmup", "0", "--engines", "tesla,unrolled"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {row["engine"] for row in _objects(r.output)[-1]["rows"]} >= {"tesla", "unrolled"}


def test_data_prepare_json(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    write_npz_batch(src / "train_data_batch_1.npz", rng.integers(0, 255, (12, 3, 8, 8), dtype=np.uint8),
                    [1, 2, 3] * 4)
    write_npz_batch(src / "val_data.npz", rng.integers(0, 255, (6, 3, 8, 8), dtype=np.uint8), [1, 2, 3] * 2)
    r = runner.invoke(app, ["data", "prepare", str(src), str(tmp_path / "p.zarr"), "--image-size", "8", "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    objs = _objects(r.output)
    assert any(o.get("type") == "progress" for o in objs)
    assert objs[-1]["complete"] is True and objs[-1]["dest"].endswith("p.zarr")
    info = runner.invoke(app, ["info", str(tmp_path / "p.zarr"), "--json"], catch_exceptions=False)
    assert info.exit_code == 0, info.output
    d = json.loads(info.output)
    assert d["kind"] == "prepared" and d["num_classes"] == 3 and d["num_train"] == 12 and d["num_test"] == 6
    assert d["image_shape"] == [3, 8, 8] and d["per_class_min"] == d["per_class_max"] == 4
    text = runner.invoke(app, ["info", str(tmp_path / "p.zarr")], catch_exceptions=False)
    assert text.exit_code == 0 and "prepared real images" in text.output


def test_experts_speak_from_the_start(tmp_path):
    """``tesla experts --json``: the set-up (loading the data, checking the store) is said
    before the training starts, and a finished expert is "saved", not a checkpoint."""
    args = ["experts", "--dataset", "demo", "--out", str(tmp_path / "t.zarr"), "--num-experts", "1", "--epochs", "1",
            "--width", "4", "--batch-size", "256", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    objs = _objects(r.output)
    assert [(o["type"], o["label"], o["done"]) for o in objs[:2]] == [("progress", "load demo data", 0),
                                                                      ("progress", "load demo data", 1)]
    assert objs[2]["type"] == "run_started" and objs[-1]["type"] == "run_finished"
    again = runner.invoke(app, [*args, "--num-experts", "2"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert any("already holds 1 complete expert(s) (0): kept; 1 to train" in line for line in lines)
    assert any("expert 1 saved" in line for line in lines) and not any("checkpoint @" in line for line in lines)
