"""A real distillation inside the TUI: it follows the run, and cancelling from the TUI
stops the job cleanly with a checkpoint that ``--resume`` continues."""

import asyncio
import threading

import attrs
import pytest

from tesla.adapters.data.demo import load_demo
from tesla.adapters.events.jsonl import read_events
from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.adapters.stores.trajectory import open_trajectory_store
from tesla.app.cli.common import logged_job
from tesla.app.bootstrap import run_distillation, train_experts
from tesla.app.services.run import DistillRequest
from tesla.app.tui.app import TeslaApp
from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig
from tesla.domain.ports import ListSink


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("tui") / "traj.zarr")
    train_experts(model_cfg=ModelConfig(depth=2, width=8, image_size=16, num_classes=10),
                  expert_cfg=ExpertConfig(num_experts=1, epochs=2, batch_size=256), data=load_demo(),
                  store=open_trajectory_store(url, "a"), dataset={"name": "demo"})
    return url


def _iterations(run):
    path = run / "events.jsonl"
    return [e for e in read_events(path)[0] if e.type == "iteration"] if path.exists() else []


async def _wait(pilot, predicate, timeout=120.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return True
        await pilot.pause(0.1)
    return False


def test_cancel_from_the_tui_leaves_a_resumable_checkpoint(tmp_path, experts):
    run = tmp_path / "run"
    cfg = DistillConfig(ipc=1, syn_steps=2, expert_epochs=1, max_start_epoch=1, iterations=10_000,
                        checkpoint_every=10_000, lr_img=10.0, dsa=False)
    req = DistillRequest(trajectories=experts, out=run, cfg=cfg, device="cpu", preview_every=2)
    box: dict = {}
    app = TeslaApp(run, job=logged_job(run_distillation(req).job, run, box), poll_interval=0.1)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            assert await _wait(pilot, lambda: len(_iterations(run)) >= 3)
            await pilot.press("c")
            assert app.cancel_event.is_set()
            assert await _wait(pilot, lambda: "result" in box or "error" in box)
            await pilot.pause(0.5)
            return app.state.iteration, len(app.state.losses), app.state.total

    seen, losses, total = asyncio.run(drive())
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.status == "cancelled" and 3 <= result.iterations < 10_000
    assert seen == result.iterations and losses == result.iterations and total == 10_000  # the TUI followed it
    done, arrays, _ = open_synthetic_store(str(run / "synthetic.zarr")).latest_checkpoint()
    assert done == result.iterations
    events = read_events(run / "events.jsonl")[0]
    assert events[-1].type == "run_finished" and events[-1].status == "cancelled"

    more = attrs.evolve(req, resume=True, cfg=attrs.evolve(cfg, iterations=done + 2))
    finished = run_distillation(more).job(ListSink(), threading.Event())
    assert finished.status == "completed" and finished.iterations == done + 2
