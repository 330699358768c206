"""NaN/inf stops a distillation with a message that says what and when, keeps the last
good checkpoint, and suggests the usual fixes; the learned lr stays positive."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tesla.adapters.stores.errors import StoreError
from tesla.adapters.stores.synthetic import open_synthetic_store
from tests.faults.common import one_thread, distill_args, fake_trajectory_store, invoke  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> str:
    return fake_trajectory_store(tmp_path_factory.mktemp("nan") / "t.zarr")


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_huge_lr_img_stops_with_what_when_and_the_fix_and_keeps_a_good_checkpoint(traj, tmp_path):
    out = tmp_path / "run"
    res = invoke(distill_args(traj, out, "--lr-img", "1e38", "--checkpoint-every", "1"))
    assert res.exit_code == 3, res.output
    line = " ".join(res.output.split())
    assert re.search(r"(images|loss|gradient).* became NaN/inf at iteration \d+", line), line
    assert "--lr-img" in line and "--lr-lr" in line and "--resume" in line
    failed = [e for e in _events(out) if e["type"] == "run_finished"][-1]
    assert failed["status"] == "failed"
    with open_synthetic_store(str(out / "synthetic.zarr"), "r") as s:
        it, arrays, _ = s.latest_checkpoint()
        assert not s.has_set()
    assert all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))
    # the kept checkpoint is the state before the failing iteration
    assert it == int(re.search(r"at iteration (\d+)", line).group(1)) - 1


def test_nan_written_into_a_checkpoint_is_refused_on_resume(traj, tmp_path):
    out = tmp_path / "run"
    assert invoke(distill_args(traj, out, "--iterations", "6")).exit_code == 0
    url = out / "synthetic.zarr"
    with open_synthetic_store(str(url), "a") as s:
        it, arrays, attrs = s.latest_checkpoint()
        arrays["images"][0, 0, 0, 0] = np.nan
        s.write_checkpoint(it + 1, arrays, attrs)  # a checkpoint that was never a good state
    res = invoke(distill_args(traj, out, "--iterations", "12", "--resume"))
    assert res.exit_code == 2, res.output
    assert "'images' holds NaN or inf" in res.output and "checkpoints/00000007" in res.output
    with pytest.raises(StoreError, match="NaN"):
        open_synthetic_store(str(url), "r").latest_checkpoint()


def test_learned_lr_is_kept_positive(traj, tmp_path):
    out = tmp_path / "run"
    res = invoke(distill_args(traj, out, "--lr-lr", "1000", "--iterations", "6"))
    assert res.exit_code in (0, 3), res.output
    lrs = [e["lr"] for e in _events(out) if e["type"] == "iteration"]
    assert lrs and all(lr > 0 for lr in lrs)


class _NaNData:
    """A data source whose real images are NaN (a broken decoder, a bad normaliser)."""

    def __init__(self):
        from tesla.adapters.data.demo import load_demo

        self._demo = load_demo()
        self.num_classes, self.image_shape = self._demo.num_classes, self._demo.image_shape
        self.class_names, self.normalizer = self._demo.class_names, self._demo.normalizer

    def sample_class(self, c: int, n: int, seed: int) -> torch.Tensor:
        return torch.full((n, *self.image_shape), float("nan"))


def _run_with_nan_data(traj, tmp_path):
    from tesla.adapters.stores.trajectory import open_trajectory_store
    from tesla.app.bootstrap import distill_in_process as distill
    from tesla.app.services.distill import NumericalError
    from tesla.domain.config import DistillConfig, ModelConfig

    cfg = DistillConfig(ipc=1, syn_steps=2, expert_epochs=1, max_start_epoch=2, iterations=4, checkpoint_every=2)
    model = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
    store = open_synthetic_store(str(tmp_path / "s.zarr"), "a")
    with pytest.raises(NumericalError) as e:
        distill(cfg=cfg, model_cfg=model, data=_NaNData(), trajectories=open_trajectory_store(traj, "r"),
                store=store, device="cpu")
    return str(e.value), store


def test_nan_images_from_the_data_stop_the_run_at_iteration_1(traj, tmp_path):
    msg, _ = _run_with_nan_data(traj, tmp_path)
    assert "at iteration 1" in msg and "--lr-img" in msg


def test_nan_images_from_the_data_are_named_and_not_checkpointed(traj, tmp_path):
    msg, store = _run_with_nan_data(traj, tmp_path)
    assert "images" in msg.split("became")[0]
    assert store.checkpoints() == []


def test_a_finite_loss_above_max_loss_stops_the_run_and_keeps_the_last_checkpoint(traj, tmp_path):
    # a healthy run first: its losses tell where to put the limit so that iteration 1 is fine
    out = tmp_path / "run"
    assert invoke(distill_args(traj, out, "--iterations", "2", "--checkpoint-every", "1")).exit_code == 0
    losses = [e["loss"] for e in _events(out) if e["type"] == "iteration"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # the same run with a limit under iteration 1's loss stops there and writes no set
    low = tmp_path / "low"
    res = invoke(distill_args(traj, low, "--iterations", "2", "--max-loss", f"{losses[0] * 0.5}"))
    assert res.exit_code == 3, res.output
    line = " ".join(res.output.split())
    assert "above max_loss" in line and "at iteration 1" in line and "--max-loss" in line and "--resume" in line
    assert [e["status"] for e in _events(low) if e["type"] == "run_finished"] == ["failed"]
    with open_synthetic_store(str(low / "synthetic.zarr"), "r") as s:
        assert not s.has_set()
    # raising the limit on resume is allowed (a usual fix), and the run then completes
    res = invoke(distill_args(traj, low, "--iterations", "2", "--max-loss", "inf", "--resume"))
    assert res.exit_code == 0, res.output
    with open_synthetic_store(str(low / "synthetic.zarr"), "r") as s:
        assert s.has_set()


def test_max_loss_must_be_positive(traj, tmp_path):
    res = invoke(distill_args(traj, tmp_path / "run", "--max-loss", "0"))
    assert res.exit_code == 2 and "max_loss" in res.output
