"""``tesla bench memory|speed`` end to end on the CPU at a tiny size (CliRunner).

The commands must print their tables and write CSV (and the memory PNG) naming every
engine and step; an out-of-memory point is a table cell, not a crash. No timing is
asserted.
"""

import csv

from typer.testing import CliRunner

from tesla.app.cli.main import app

TINY = ["--model-width", "8", "--image-size", "8", "--ipc", "2", "--device", "cpu", "--threads", "1"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_memory_writes_table_csv_and_png(tmp_path):
    out = tmp_path / "mem"
    result = CliRunner().invoke(app, ["bench", "memory", "--steps", "1,2", "--in-process", "--out", str(out),
                                      *TINY])
    assert result.exit_code == 0, result.output
    assert "unrolled" in result.output and "exact" in result.output
    rows = _rows(out / "memory.csv")
    assert {(r["engine"], int(r["steps"])) for r in rows} == {(e, n) for e in ("unrolled", "tesla", "exact")
                                                              for n in (1, 2)}
    assert all(r["status"] == "ok" and int(r["saved_peak"]) > 0 for r in rows)
    saved = {(r["engine"], int(r["steps"])): int(r["saved_peak"]) for r in rows}
    assert saved["unrolled", 2] > 1.5 * saved["unrolled", 1]  # unrolled grows with the steps
    assert saved["tesla", 2] < 1.1 * saved["tesla", 1]
    png = (out / "memory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_memory_child_out_of_memory_is_a_cell(tmp_path):
    out = tmp_path / "oom"
    result = CliRunner().invoke(app, ["bench", "memory", "--steps", "2", "--engines", "unrolled",
                                      "--max-rss-gb", "0.001", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "OOM" in result.output
    assert [(r["engine"], r["steps"], r["status"]) for r in _rows(out / "memory.csv")] == [("unrolled", "2", "OOM")]
    assert (out / "memory.png").exists()


def test_bench_speed_writes_csv_with_every_engine(tmp_path):
    out = tmp_path / "speed"
    result = CliRunner().invoke(app, ["bench", "speed", "--steps", "1,2", "--repeats", "1", "--warmup", "0",
                                      "--chunk", "2", "--precision", "fp32,bf16", "--channels-last",
                                      "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "speed.csv")
    keys = {(r["engine"], r["precision"], r["channels_last"], int(r["steps"])) for r in rows}
    assert keys == {(e, p, c, n) for e in ("unrolled", "tesla", "exact", "tesla-batched") for p in ("fp32", "bf16")
                    for c in ("False", "True") for n in (1, 2)}
    by = {(r["engine"], r["precision"], r["channels_last"], int(r["steps"])): r for r in rows}
    assert float(by["unrolled", "fp32", "False", 2]["ratio_to_unrolled"]) == 1.0
    assert float(by["tesla", "fp32", "False", 2]["grad_error"]) == 0.0
    assert float(by["tesla-batched", "fp32", "False", 2]["grad_error"]) < 1e-4  # batched = one at a time
    assert 0 < float(by["tesla", "bf16", "False", 2]["grad_error"]) < 1.0
    assert all(float(r["median_s"]) > 0 for r in rows)


def test_bench_rejects_bad_options(tmp_path):
    runner = CliRunner()
    bad_steps = runner.invoke(app, ["bench", "memory", "--steps", "1,x", "--out", str(tmp_path), *TINY])
    assert bad_steps.exit_code == 2 and "--steps" in bad_steps.output
    bad_engine = runner.invoke(app, ["bench", "speed", "--engines", "tesla,fast", "--out", str(tmp_path), *TINY])
    assert bad_engine.exit_code == 2 and "fast" in bad_engine.output
    bad_precision = runner.invoke(app, ["bench", "speed", "--precision", "fp8", "--out", str(tmp_path), *TINY])
    assert bad_precision.exit_code == 2 and "precision" in bad_precision.output


def test_bench_speed_out_of_memory_is_a_row(tmp_path):
    # unrolled at 10 steps saves ~0.8 GiB for backward at this size, tesla ~0.1 GiB: under a
    # 0.45 GiB limit unrolled must become an OOM row, not the end of the run. In a fresh
    # process: the limit counts address space beyond what the process maps at the start,
    # and heap that earlier tests freed (still mapped) would be reused under it. Unrolled
    # runs last: the heap glibc keeps after the failed iteration counts against the limit.
    import subprocess
    import sys

    out = tmp_path / "speed-oom"
    proc = subprocess.run([sys.executable, "-m", "tesla", "bench", "speed", "--steps", "10",
                           "--engines", "tesla,exact,unrolled", "--repeats", "1", "--warmup", "0", "--no-dsa",
                           "--max-memory-gb", "0.45", "--model-width", "16", "--device", "cpu", "--threads", "1",
                           "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OOM" in proc.stdout
    status = {r["engine"]: r["status"] for r in _rows(out / "speed.csv")}
    assert status == {"tesla": "ok", "unrolled": "OOM", "exact": "ok"}


def test_host_memory_limit_refuses_past_it_and_is_lifted_after():
    import resource

    import pytest
    import torch

    from tesla.adapters.torch.bench import _is_oom, host_memory_limit

    before = resource.getrlimit(resource.RLIMIT_AS)
    with host_memory_limit(0.05):
        with pytest.raises(BaseException) as info:
            torch.empty(512 * 2**20, dtype=torch.uint8).fill_(1)
        assert _is_oom(info.value)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert int(torch.empty(512 * 2**20, dtype=torch.uint8).fill_(1)[-1]) == 1
    with pytest.raises(Exception, match="max_memory_gb"):
        from tesla.app.bootstrap import speed_bench
        from tesla.domain.bench import BenchSettings

        speed_bench(BenchSettings(), max_memory_gb=0)
