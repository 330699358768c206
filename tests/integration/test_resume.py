"""A resumed run equals an uninterrupted one (CPU, same seed), in-process and fast.

Distillation is stopped cleanly after k iterations (a ``cancel`` that is set after k
reads, as a Ctrl-C or SIGTERM sets it), then resumed through the CLI with
``--resume``; the final images, learned lr and labels must equal a straight run bit for
bit, in Zarr and HDF5, with hard and learned labels. A finished run extended with more
``--iterations`` equals a run that asked for that many from the start. Experts stopped
between experts resume to the same trajectories. (The kill -9 versions are in
``test_faults.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from tesla.adapters.stores.synthetic import open_synthetic_store
from tests.faults.common import distill_args, fake_trajectory_store, invoke, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> str:
    return fake_trajectory_store(tmp_path_factory.mktemp("resume") / "t.zarr")


def _set(url) -> dict:
    with open_synthetic_store(str(url), "r") as s:
        syn = s.read_set()
    return {"images": syn.images, "lr": syn.lr, "labels": syn.labels, "soft": syn.soft_labels,
            "logits": syn.label_logits}


def _same(a: dict, b: dict) -> None:
    assert a["lr"] == b["lr"]
    for key in ("images", "labels", "soft", "logits"):
        if a[key] is None:
            assert b[key] is None
        else:
            assert np.array_equal(a[key], b[key]), key


def _stopped_run(traj: str, out, stop_after: int, extra: list) -> None:
    """Run the CLI's own request, stopped after ``stop_after`` iterations (a clean stop)."""
    from tesla.app.bootstrap import run_distillation
    from tesla.app.cli.distill import SET_NAMES, distill_config
    from tesla.app.services.run import DistillRequest
    from tests.unit.fakes import StopAfter

    fmt = "h5" if "h5" in extra else "zarr"
    labels = extra[extra.index("--labels") + 1] if "--labels" in extra else None
    cfg = distill_config(None, dict(ipc=1, syn_steps=3, expert_epochs=1, max_start_epoch=2, iterations=12,
                                    checkpoint_every=3, labels=labels))
    req = DistillRequest(trajectories=traj, out=out, cfg=cfg, set_name=SET_NAMES[fmt], device="cpu",
                         preview_every=0)
    result = run_distillation(req).job(None, StopAfter(stop_after))
    assert result.status == "cancelled" and result.iterations == stop_after


VARIANTS = {"zarr-hard": [], "h5-hard": ["--format", "h5"], "zarr-learned": ["--labels", "learned"]}


@pytest.fixture(scope="module")
def straight(traj, tmp_path_factory) -> dict:
    out = {}
    for name, extra in VARIANTS.items():
        run = tmp_path_factory.mktemp(f"straight-{name}")
        res = invoke(distill_args(traj, run / "run", *extra))
        assert res.exit_code == 0, res.output
        out[name] = _set(run / "run" / ("synthetic.h5" if "h5" in extra else "synthetic.zarr"))
    return out


@pytest.mark.parametrize("stop_after", [2, 7])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stopped_then_resumed_equals_uninterrupted(variant, stop_after, traj, straight, tmp_path):
    extra = VARIANTS[variant]
    out = tmp_path / "run"
    _stopped_run(traj, out, stop_after, extra)
    res = invoke(distill_args(traj, out, *extra, "--resume"))
    assert res.exit_code == 0, res.output
    _same(_set(out / ("synthetic.h5" if "h5" in extra else "synthetic.zarr")), straight[variant])


def test_extending_a_finished_run_equals_a_longer_run(traj, tmp_path):
    short, long_ = tmp_path / "short", tmp_path / "long"
    assert invoke(distill_args(traj, short, "--iterations", "6")).exit_code == 0
    res = invoke(distill_args(traj, short, "--iterations", "9", "--resume"))
    assert res.exit_code == 0, res.output
    assert invoke(distill_args(traj, long_, "--iterations", "9")).exit_code == 0
    _same(_set(short / "synthetic.zarr"), _set(long_ / "synthetic.zarr"))


def test_resume_of_a_run_that_never_checkpointed_starts_it(traj, tmp_path, straight):
    out = tmp_path / "run"
    _stopped_run(traj, out, 0, [])  # stopped before the first iteration: checkpoint 0
    assert invoke(distill_args(traj, out, "--resume")).exit_code == 0
    _same(_set(out / "synthetic.zarr"), straight["zarr-hard"])
