"""Two-process gloo runs on CPU: collectives, experts split over ranks, distributed pass 2.

What is shown:
- the helpers of ``tesla.adapters.torch.dist`` (all-reduce, broadcast, gather, agreed
  failure) in a real 2-rank gloo group;
- experts trained by 2 ranks into one Zarr store (service) and into per-rank HDF5 files
  merged by rank 0 (``tesla experts --distributed`` under torchrun) are bitwise the
  single-process trajectories of the same seeds;
- a distillation whose pass 2 is split over 2 ranks (tesla engine, DSA) gives after each
  of 3 iterations the images/lr of a single process (float32 sums in another order:
  tight tolerance), and both ranks hold identical images; ``tesla distill --distributed``
  writes one event log (rank 0) and the same set as a single-process run.

Every rank and the in-process references use one CPU thread, so training is bitwise
reproducible across processes. One spawn (module fixture) serves several tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tesla.adapters.torch import dist as tdist
from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig, to_dict

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(num_classes=10, image_size=16, depth=2, width=8)
EXPERTS = ExpertConfig(num_experts=3, epochs=2, batch_size=64, seed=0)
DISTILL = DistillConfig(ipc=2, syn_steps=4, expert_epochs=1, max_start_epoch=2, batch_syn=10, iterations=3,
                        dsa=True, seed=0, lr_img=100.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _dataset() -> dict:
    from tesla.domain.config import DataConfig

    return to_dict(DataConfig(name="demo"))


def train_reference(url: str, model_cfg: ModelConfig = MODEL, expert_cfg: ExpertConfig = EXPERTS) -> None:
    from tesla.adapters.data.demo import load_demo
    from tesla.adapters.stores import open_trajectory_store
    from tesla.app.bootstrap import train_experts

    with open_trajectory_store(url, "a") as store:
        train_experts(model_cfg=model_cfg, expert_cfg=expert_cfg, data=load_demo(), store=store, dataset=_dataset(),
                      device="cpu")


def trajectories_of(url: str) -> dict:
    from tesla.adapters.stores import open_trajectory_store

    with open_trajectory_store(url, "r") as store:
        return {i: store.load_trajectory(i) for i in store.expert_ids()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> str:
    url = str(tmp_path_factory.mktemp("ref") / "experts.zarr")
    train_reference(url)
    return url


class Capture:
    """Records the images and lr after every iteration (the service's evaluator hook)."""

    def __init__(self) -> None:
        self.images: list = []
        self.lr: list = []

    def __call__(self, state, iteration: int) -> None:
        self.images.append(state.images.detach().cpu().numpy().copy())
        self.lr.append(state.lr_value)


def distill_once(trajectories: str, store_url: str, ctx) -> Capture:
    """distill() on this rank (or alone with the single-process context)."""
    from tesla.adapters.data.demo import load_demo
    from tesla.adapters.stores import open_synthetic_store, open_trajectory_store
    from tesla.adapters.torch.ranks import ranks_of
    from tesla.app.bootstrap import distill_in_process as distill
    from tesla.app.services.run import AgreedCancel

    capture = Capture()
    traj = open_trajectory_store(trajectories, "r")
    store = open_synthetic_store(store_url, "a")
    distill(cfg=DISTILL, model_cfg=MODEL, data=load_demo(), trajectories=traj, store=store, device=ctx.device,
            cancel=AgreedCancel(None, ranks_of(ctx)), evaluator=capture, eval_every=1, ctx=ctx)
    return capture


def cancelled_on_rank_1(trajectories: str, store_url: str, ctx) -> list:
    """Only rank 1 is asked to stop: every rank stops at the same iteration."""
    import threading

    from tesla.adapters.data.demo import load_demo
    from tesla.adapters.stores import open_synthetic_store, open_trajectory_store
    from tesla.adapters.torch.ranks import ranks_of
    from tesla.app.bootstrap import distill_in_process as distill
    from tesla.app.services.run import AgreedCancel

    local = threading.Event()
    if ctx.rank == 1:
        local.set()
    result = distill(cfg=DISTILL, model_cfg=MODEL, data=load_demo(), trajectories=open_trajectory_store(trajectories),
                     store=open_synthetic_store(store_url, "a"), device=ctx.device,
                     cancel=AgreedCancel(local, ranks_of(ctx)), ctx=ctx)
    return [result.status, result.iterations]


def _worker(rank: int, world: int, port: int, out: str, reference: str) -> None:
    """One rank of the spawned job: collectives, experts, distillation; results to files."""
    from tesla.adapters.data.demo import load_demo
    from tesla.app.bootstrap import distributed_experts

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    report: dict = {}
    with tdist.process_group("cpu", timeout_s=120) as ctx:
        t = torch.full((3,), float(rank + 1))
        ctx.all_reduce_sum_(t)
        report["sum"] = t.tolist()
        report["broadcast"] = ctx.broadcast_object({"from": ctx.rank})
        report["gathered"] = ctx.all_gather_object(ctx.rank * 10)
        b = torch.full((2,), float(rank))
        tdist.broadcast_tensor_(b, src=1)
        report["broadcast_tensor"] = b.tolist()

        def fails_on_rank_1():
            if ctx.rank == 1:
                raise ValueError("rank one says no")
            return "ok"

        try:
            ctx.agree(fails_on_rank_1)
            report["agree"] = None
        except Exception as e:  # the failure reaches every rank
            report["agree"] = [type(e).__name__, str(e), tdist.is_reported(e)]
        result = distributed_experts(ctx=ctx, out=str(Path(out) / "shared.zarr"), model_cfg=MODEL,
                                     expert_cfg=EXPERTS, data=load_demo(), dataset=_dataset())
        report["experts"] = {"status": result.status, "trained": list(result.trained)}
        capture = distill_once(reference, str(Path(out) / f"syn{rank}.zarr"), ctx)
        report["cancel"] = cancelled_on_rank_1(reference, str(Path(out) / f"stop{rank}.zarr"), ctx)
        ctx.barrier()
    np.savez(Path(out) / f"rank{rank}.npz", images=np.stack(capture.images), lr=np.asarray(capture.lr))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def spawned(tmp_path_factory, reference) -> Path:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("spawn")
    mp.spawn(_worker, args=(2, free_port(), str(out), reference), nprocs=2, join=True)
    return out


def test_split_ids_deals_round_robin():
    ids = [4, 7, 9, 12, 13]
    shares = [tdist.split_ids(ids, r, 3) for r in range(3)]
    assert shares == [[4, 12], [7, 13], [9]]
    assert sorted(sum(shares, [])) == ids
    assert tdist.split_ids(ids, 0, 1) == ids
    with pytest.raises(ValueError, match="rank 3"):
        tdist.split_ids(ids, 3, 3)


def test_launch_env_outside_torchrun_names_the_fix():
    with pytest.raises(tdist.DistributedError, match="torchrun --nproc_per_node"):
        tdist.launch_env({"RANK": "0"})
    env = tdist.launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                            "MASTER_PORT": "29500"})
    assert (env.rank, env.world, env.local_rank, env.master_port) == (1, 2, 1, 29500)


def test_single_process_context_is_the_identity():
    ctx = tdist.single_process("cpu")
    t = torch.ones(3)
    assert ctx.all_reduce_sum_(t) is t and t.tolist() == [1.0, 1.0, 1.0]
    assert ctx.broadcast_object(5) == 5 and ctx.all_gather_object(2) == [2]
    assert ctx.is_writer and ctx.shard == (0, 1)
    with pytest.raises(KeyError):
        ctx.agree(lambda: {}["x"])


def test_collectives_two_ranks(spawned):
    reports = [json.loads((spawned / f"rank{r}.json").read_text()) for r in range(2)]
    for r, rep in enumerate(reports):
        assert rep["sum"] == [3.0, 3.0, 3.0]
        assert rep["broadcast"] == {"from": 0}
        assert rep["gathered"] == [0, 10]
        assert rep["broadcast_tensor"] == [1.0, 1.0]
    assert reports[0]["agree"] == ["DistributedError", "rank 1 failed: ValueError: rank one says no", True]
    assert reports[1]["agree"] == ["ValueError", "rank one says no", True]
    assert reports[0]["cancel"] == reports[1]["cancel"] == ["cancelled", 0]


def test_two_ranks_train_disjoint_experts_into_one_zarr_store(spawned, reference):
    reports = [json.loads((spawned / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(rep["experts"] == {"status": "completed", "trained": [0, 1, 2]} for rep in reports)
    got, want = trajectories_of(str(spawned / "shared.zarr")), trajectories_of(reference)
    assert sorted(got) == [0, 1, 2]
    for i in want:  # expert i has seed + i whichever rank trained it: bitwise the same
        np.testing.assert_array_equal(got[i], want[i])


def test_distributed_pass_two_matches_one_process(spawned, reference, tmp_path, one_thread):
    ranks = [np.load(spawned / f"rank{r}.npz") for r in range(2)]
    # every rank applies the same all-reduced update: identical images and lr, bit for bit
    np.testing.assert_array_equal(ranks[0]["images"], ranks[1]["images"])
    np.testing.assert_array_equal(ranks[0]["lr"], ranks[1]["lr"])
    single = distill_once(reference, str(tmp_path / "syn.zarr"), tdist.single_process("cpu"))
    want_images, want_lr = np.stack(single.images), np.asarray(single.lr)
    assert ranks[0]["images"].shape == want_images.shape == (3, 20, 3, 16, 16)
    for k in range(3):  # after 1, 2 and 3 iterations; the sums differ only in their order
        np.testing.assert_allclose(ranks[0]["images"][k], want_images[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ranks[0]["lr"], want_lr, rtol=1e-5)
    assert not np.array_equal(want_images[0], want_images[-1])  # the images did move


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tesla", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cli_experts_hdf5_rank_files_are_merged(tmp_path, reference):
    out = tmp_path / "experts.h5"
    proc = _torchrun(["experts", "--distributed", "--dataset", "demo", "--out", str(out), "-n", "3", "--epochs", "2",
                      "--batch-size", "64", "--width", "8", "--seed", "0", "--device", "cpu",
                      "--run-dir", str(tmp_path / "log")], tmp_path)
    assert proc.stdout.count("completed: 2 ranks trained 3 expert(s)") == 1  # rank 0 alone prints
    assert sorted(trajectories_of(str(tmp_path / "experts.rank0.h5"))) == [0, 2]
    assert sorted(trajectories_of(str(tmp_path / "experts.rank1.h5"))) == [1]
    got, want = trajectories_of(str(out)), trajectories_of(reference)
    assert sorted(got) == [0, 1, 2]
    for i in want:
        np.testing.assert_array_equal(got[i], want[i])
    log = _events(tmp_path / "log" / "events.jsonl")
    assert [e["type"] for e in log].count("run_started") == 1 and log[-1]["type"] == "run_finished"
    assert log[-1]["summary"]["trained"] == [0, 1, 2]
    assert log[-1]["summary"]["merged"]["into"] == str(out) and log[-1]["summary"]["merged"]["experts"] == 3


def test_cli_distill_distributed_matches_single_process(tmp_path, reference, one_thread):
    from typer.testing import CliRunner
    import typer

    from tesla.adapters.stores import open_synthetic_store
    from tesla.app.cli import distill as distill_cli

    args = ["--trajectories", reference, "--ipc", "2", "--syn-steps", "4", "--expert-epochs", "1",
            "--max-start-epoch", "2", "--batch-syn", "10", "--iterations", "3", "--lr-img", "100", "--seed", "0",
            "--device", "cpu", "--checkpoint-every", "2", "--preview-every", "1"]
    _torchrun(["distill", "--distributed", "--out", str(tmp_path / "dist"), *args], tmp_path)
    app = typer.Typer()
    distill_cli.register(app)
    app.command("noop")(lambda: None)  # keep `distill` a subcommand
    result = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "single"), *args])
    assert result.exit_code == 0, result.output
    with open_synthetic_store(str(tmp_path / "dist" / "synthetic.zarr")) as a, \
            open_synthetic_store(str(tmp_path / "single" / "synthetic.zarr")) as b:
        sa, sb = a.read_set(), b.read_set()
        np.testing.assert_allclose(sa.images, sb.images, rtol=1e-5, atol=1e-5)
        assert sa.lr == pytest.approx(sb.lr, rel=1e-5)
    log = _events(tmp_path / "dist" / "events.jsonl")
    kinds = [e["type"] for e in log]
    assert kinds.count("run_started") == 1 and kinds.count("iteration") == 3 and kinds.count("run_finished") == 1
    assert json.loads((tmp_path / "dist" / "config.json").read_text())["distributed"] == {"world": 2}
    assert (tmp_path / "dist" / "images").is_dir()


def _store_with(url: str, experts: dict, model: dict | None = None, incomplete: int | None = None) -> None:
    from tesla.adapters.stores import open_trajectory_store

    with open_trajectory_store(url, "a") as store:
        store.initialize(model or {"arch": "convnet", "width": 4}, [("w", [2, 3]), ("b", [2])], 8, {"name": "demo"})
        for eid, traj in experts.items():
            store.add_expert(traj, {"seed": 100 + eid, "test_accuracy": [None] * (len(traj) - 1) + [50.0 + eid]},
                             expert_id=eid)
        if incomplete is not None:
            store.begin_expert(incomplete, 1, {}).write(0, np.zeros(8))


def test_merge_trajectories_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tesla.adapters.stores import open_trajectory_store
    from tesla.app.cli import merge

    app = typer.Typer()
    merge.register(app)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    rng = np.random.default_rng(0)
    trajs = {i: rng.standard_normal((3, 8)).astype(np.float32) for i in range(3)}
    _store_with(str(tmp_path / "a.rank0.h5"), {0: trajs[0], 2: trajs[2]})
    _store_with(str(tmp_path / "a.rank1.zarr"), {1: trajs[1]}, incomplete=3)
    dest = str(tmp_path / "a.h5")
    srcs = [str(tmp_path / "a.rank0.h5"), str(tmp_path / "a.rank1.zarr")]
    result = runner.invoke(app, ["merge-trajectories", *srcs, dest])
    assert result.exit_code == 0, result.output
    assert "merged 3 expert(s) from 2 store(s), 1 incomplete left out" in result.output
    with open_trajectory_store(dest, "r") as store:
        assert store.expert_ids() == [0, 1, 2]
        for i, traj in trajs.items():
            np.testing.assert_array_equal(store.load_trajectory(i), traj)
            a = store.expert_attrs(i)
            assert a["seed"] == 100 + i and a["test_accuracy"] == [None, None, 50.0 + i]
    again = runner.invoke(app, ["merge-trajectories", *srcs, dest])  # idempotent
    assert again.exit_code == 0 and "merged 0 expert(s) from 2 store(s), 3 already there" in again.output
    _store_with(str(tmp_path / "other.h5"), {0: trajs[1]})
    clash = runner.invoke(app, ["merge-trajectories", str(tmp_path / "other.h5"), dest])
    assert clash.exit_code == 2 and "expert 0" in clash.output and "differs" in clash.output
    _store_with(str(tmp_path / "wide.h5"), {5: trajs[0]}, model={"arch": "convnet", "width": 5})
    foreign = runner.invoke(app, ["merge-trajectories", str(tmp_path / "wide.h5"), dest])
    assert foreign.exit_code == 2 and "use a new store path" in foreign.output
    lonely = runner.invoke(app, ["merge-trajectories", dest])
    assert lonely.exit_code == 2 and "SRC and a DEST" in lonely.output
