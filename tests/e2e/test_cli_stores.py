"""`tesla info` and `tesla import-mtt` through typer's CliRunner on a small app of their own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tesla.adapters.stores import open_synthetic_store, open_trajectory_store
from tesla.app.cli import import_mtt, info
from tesla.adapters.stores.trajectory import FORMAT_VERSION


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    info.register(a)
    import_mtt.register(a)
    return a


runner = CliRunner()


def _output(result) -> str:
    text = result.stdout
    try:
        text += result.stderr
    except (ValueError, AttributeError):  # stderr mixed into stdout
        pass
    return text


def _trajectories(url: str) -> None:
    with open_trajectory_store(url, "a") as store:
        store.initialize({"arch": "convnet", "width": 4}, [("w", [8, 4]), ("b", [8])], 40, {"name": "demo"})
        rng = np.random.default_rng(0)
        store.add_expert(rng.standard_normal((3, 40)), {"seed": 3, "test_accuracy": [None, 20.0, 31.25]})
        store.add_expert(rng.standard_normal((3, 40)), {"seed": 4})
        store.begin_expert(None, 2, {}).write(0, np.zeros(40))  # left incomplete


@pytest.mark.parametrize("name", ["t.h5", "t.zarr"])
def test_info_trajectories(app, tmp_path, name):
    url = str(tmp_path / name)
    _trajectories(url)
    result = runner.invoke(app, ["info", url])
    assert result.exit_code == 0, _output(result)
    out = result.stdout
    assert "expert trajectories" in out and "convnet" in out and "40 parameters" in out
    assert "2 complete, 1 incomplete" in out and "31.25%" in out and "demo" in out
    result = runner.invoke(app, ["info", url, "--json"])
    assert result.exit_code == 0
    d = json.loads(result.stdout)
    assert d["kind"] == "trajectories" and d["num_params"] == 40 and d["format_version"] == FORMAT_VERSION
    assert [e["final_accuracy"] for e in d["experts"]] == [31.25, None] and d["incomplete"] == [2]
    assert d["size_bytes"] > 0


def test_info_synthetic(app, tmp_path):
    url = str(tmp_path / "s.zarr")
    store = open_synthetic_store(url, "a")
    store.write_checkpoint(50, {"images": np.zeros((4, 3, 4, 4), np.float32)}, {})
    labels = np.repeat(np.arange(2), 2)
    store.write_set(
        {"images": np.zeros((4, 3, 4, 4), np.float32), "labels": labels, "soft_labels": np.full((4, 2), 0.5, np.float32)},
        {"lr": 0.0123, "iteration": 50, "seed": 1, "label_expert": 3, "label_epoch": 7,
         "trajectory_store": "/x/experts.zarr", "class_names": ["a", "b"], "config": {"ipc": 2}},
        normalizer_state={"kind": "meanstd", "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    result = runner.invoke(app, ["info", url])
    assert result.exit_code == 0, _output(result)
    out = result.stdout
    for text in ("synthetic set", "(4, 3, 4, 4)", "2 per class", "soft", "0.0123", "label_expert", "/x/experts.zarr", "50"):
        assert text in out, (text, out)
    assert "normaliser   meanstd: mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25)" in out, out  # values, not names
    d = json.loads(runner.invoke(app, ["info", url, "--json"]).stdout)
    assert d["kind"] == "synthetic" and d["set"]["ipc"] == 2 and d["set"]["provenance"]["label_epoch"] == 7
    assert d["checkpoints"] == [50]
    zca = str(tmp_path / "z.zarr")
    open_synthetic_store(zca, "a").write_set(
        {"images": np.zeros((4, 3, 4, 4), np.float32), "labels": labels}, {"lr": 0.01},
        normalizer_state={"kind": "zca", "zca_mean": np.zeros(48, np.float32), "zca_matrix": np.eye(48, dtype=np.float32),
                          "zca_inverse": np.eye(48, dtype=np.float32), "zca_eps": [0.1]})
    out = runner.invoke(app, ["info", zca]).stdout
    assert "normaliser   zca: eps 0.1, inverse 48x48, matrix 48x48, mean 48" in out, out


def test_info_on_bad_paths_is_one_line_and_exit_2(app, tmp_path):
    damaged = tmp_path / "d.h5"
    damaged.write_bytes(b"\0" * 64)
    for path in (str(tmp_path / "missing.zarr"), str(tmp_path / "missing.h5"), str(damaged)):
        result = runner.invoke(app, ["info", path])
        assert result.exit_code == 2
        text = _output(result).strip()
        assert "error" in text and path in text and len(text.splitlines()) == 1, text
    result = runner.invoke(app, ["info", str(damaged)])
    assert "damaged" in _output(result)
    result = runner.invoke(app, ["info", str(tmp_path / "x.zarr"), "--storage-option", "nonsense"])
    assert result.exit_code == 2


def test_import_mtt_command(app, tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "buffers"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    torch.save([[[torch.randn(3, 2, generator=g), torch.randn(3, generator=g)] for _ in range(4)] for _ in range(2)],
               src / "replay_buffer_0.pt")
    url = str(tmp_path / "imported.zarr")
    result = runner.invoke(app, ["import-mtt", str(src), url, "--dataset", "cifar10", "--zca"])
    assert result.exit_code == 0, _output(result)
    assert "imported 2 experts" in result.stdout
    d = json.loads(runner.invoke(app, ["info", url, "--json"]).stdout)
    assert d["num_params"] == 9 and [e["epochs"] for e in d["experts"]] == [3, 3]
    assert d["dataset"] == {"name": "cifar10", "zca": True}
    result = runner.invoke(app, ["import-mtt", str(tmp_path / "nowhere"), url])
    assert result.exit_code == 2 and "not a folder" in _output(result)
    result = runner.invoke(app, ["import-mtt", str(src), url, "--model", "{not json"])
    assert result.exit_code == 2 and "--model" in _output(result)
    result = runner.invoke(app, ["import-mtt", str(src), url, "--model", '{"arch": "mlp"}'])
    assert result.exit_code == 2 and "arch" in _output(result)
