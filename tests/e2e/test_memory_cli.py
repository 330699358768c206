"""Memory independent of the batch through the CLI (typer's runner).

- ``tesla distill --micro-batch K`` writes the set a run without it writes, for the
  ``tesla``, ``exact`` and ``unrolled`` engines (float32: equal to rounding, see the bound);
- on experts with batch norm, ``--micro-batch`` and ``--memory-budget`` are refused with
  exit 2, one line naming the fix, and nothing written;
- ``tesla bench memory`` with a batch axis on a tiny model: the table, the summary lines,
  the CSV columns and the PNG; ``tesla bench speed`` draws its PNG.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from tesla.adapters.stores.synthetic import open_synthetic_store
from tesla.app.cli.main import app

runner = CliRunner()

DISTILL = ["--ipc", "2", "--batch-syn", "10", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2",
           "--iterations", "3", "--lr-img", "100", "--checkpoint-every", "3", "--device", "cpu", "-q"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _experts(folder, *extra):
    out = folder / "traj.zarr"
    r = invoke("experts", "--dataset", "demo", "--out", out, "--num-experts", "1", "--epochs", "2", "--width", "8",
               "--batch-size", "128", "--device", "cpu", "--quiet", *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    return _experts(tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def bn_experts(tmp_path_factory):
    return _experts(tmp_path_factory.mktemp("bn"), "--norm", "batchnorm")


@pytest.mark.parametrize("engine", ["tesla", "exact", "unrolled", "tesla-chunked"])
def test_distill_with_a_micro_batch_writes_the_set_of_whole_batches(tmp_path, experts, engine):
    # tesla-chunked: the batched pass 2 (BatchedTorchCompute.vjp_many, two steps at a time)
    options = ["--engine", "tesla", "--second-pass-chunk", "2"] if engine == "tesla-chunked" else ["--engine", engine]
    sets = {}
    for name, extra in (("whole", []), ("micro", ["--micro-batch", "3"])):
        r = invoke("distill", "-t", experts, "-o", tmp_path / name, *DISTILL, *options, *extra)
        assert r.exit_code == 0, r.output
        sets[name] = open_synthetic_store(str(tmp_path / name / "synthetic.zarr")).read_set()
    whole, micro = sets["whole"], sets["micro"]
    # float32: each step's gradient is a sum over pieces of 3, 3, 3 and 1 images instead of
    # one sum over 10, which rounds differently (float64 agrees to 1e-10:
    # tests/integration/test_microbatch.py). Measured after three iterations: at most
    # 4.8e-7 on pixels up to 2.3 (two float32 ulps), the lr equal. The bound is about
    # four times that; a piece weight 3% off moves images by ~3e-4
    # (tests/integration/test_memory_wiring.py), far outside it.
    np.testing.assert_allclose(micro.images, whole.images, rtol=0, atol=2e-6)
    assert micro.lr == pytest.approx(whole.lr, rel=1e-6)
    assert np.abs(whole.images).max() > 0.5  # pixels of order one: the bound is relative to them too


def test_distill_with_the_set_on_the_host_of_a_cpu_says_it_is_one_memory(tmp_path, experts):
    r = runner.invoke(app, ["distill", "-t", str(experts), "-o", str(tmp_path / "run"), *DISTILL[:-1],
                            "--iterations", "1", "--set-on", "host"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "on a CPU the host and the device are one memory" in " ".join(r.output.split())
    assert (tmp_path / "run" / "synthetic.zarr").exists()


def test_distill_on_batch_norm_experts_refuses_micro_batches_and_writes_nothing(tmp_path, bn_experts):
    for extra in (["--micro-batch", "3"], ["--memory-budget", "1KB"]):
        out = tmp_path / "run"
        r = invoke("distill", "-t", bn_experts, "-o", out, *DISTILL, *extra)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.strip().splitlines() if line.strip()]
        assert len(lines) <= 2 and "batch norm" in r.output and "--norm instancenorm" in r.output, r.output
        assert not out.exists()  # refused before the run directory was made


def test_distill_refuses_a_bad_budget_and_set_on_in_one_line(tmp_path, experts):
    for extra, needle in ((["--memory-budget", "lots"], "memory_budget must be a size"),
                          (["--set-on", "gpu"], "set_on must be one of"),
                          (["--micro-batch", "0"], "micro_batch must be an integer >= 1")):
        r = invoke("distill", "-t", experts, "-o", tmp_path / "run", *DISTILL, *extra)
        assert r.exit_code == 2 and needle in r.output, r.output
        assert not (tmp_path / "run").exists()


def test_bench_memory_has_a_batch_axis(tmp_path):
    out = tmp_path / "mem"
    r = invoke("bench", "memory", "--steps", "1,2", "--engines", "tesla,exact", "--batch-syn", "8,16",
               "--micro-batch", "16,4", "--no-dsa", "--in-process", "--out", out, "--model-width", "8",
               "--image-size", "8", "--ipc", "2", "--device", "cpu", "--threads", "1")
    assert r.exit_code == 0, r.output
    with open(out / "memory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {(r["engine"], int(r["steps"]), int(r["batch_syn"]), int(r["micro_batch"])) for r in rows}
    assert keys == {(e, n, b, m) for e in ("tesla", "exact") for n in (1, 2) for b, m in
                    ((8, 8), (8, 4), (16, 16), (16, 4))}
    saved = {(r["engine"], int(r["steps"]), int(r["batch_syn"]), int(r["micro_batch"])): int(r["saved_peak"])
             for r in rows}
    assert saved["tesla", 2, 16, 4] == saved["tesla", 2, 8, 4] < saved["tesla", 2, 16, 16]
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "tesla batch 16 micro 4" in text
    assert "tesla, micro-batch 4 (saved for backward) at 2 steps: batch 16 takes 1.000 x batch 8" in text
    assert "tesla, batch 16 (saved for backward) at 2 steps: micro-batch 4 takes" in text
    assert "at 2 steps" in text and "its value at 1 steps" in text  # against the first point
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_memory_budget_picks_the_micro_batch(tmp_path):
    out = tmp_path / "budget"
    r = invoke("bench", "memory", "--steps", "1", "--engines", "tesla", "--batch-syn", "8", "--memory-budget", "1KB",
               "--in-process", "--out", out, "--model-width", "8", "--image-size", "8", "--ipc", "2", "--device",
               "cpu", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "--memory-budget 1KB (1000 B): micro-batch 1" in r.output  # one image is more than 1 KB: the floor
    with open(out / "memory.csv", newline="") as f:
        assert [(row["batch_syn"], row["micro_batch"]) for row in csv.DictReader(f)] == [("8", "1")]


def test_bench_speed_draws_a_png_beside_its_csv(tmp_path):
    out = tmp_path / "speed"
    r = invoke("bench", "speed", "--steps", "1", "--engines", "tesla,unrolled", "--repeats", "1", "--warmup", "0",
               "--micro-batch", "2", "--out", out, "--model-width", "4", "--image-size", "8", "--depth", "1",
               "--ipc", "1", "--device", "cpu", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "speed.csv").exists()
    assert "micro-batch 2" in " ".join(r.output.split())  # the setting is stated beside the figures
