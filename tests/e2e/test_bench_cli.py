"""``tesla bench memory|speed|quality`` end to end on the CPU at a tiny size (CliRunner).

The commands must print their tables and write CSV (and the memory PNG) naming every
engine and step; an out-of-memory point is a table cell, not a crash. No timing is
asserted. ``quality`` distils and evaluates recipes on tiny experts of the embedded data:
the table, CSV and PNG, a recipe the health guard stops named with its reason, and
refusals in one line; ``distill`` stops collapsed labels with exit 3.
"""

import csv
import json

import pytest

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


# --- tesla bench quality ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_experts(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "traj.zarr"
    r = CliRunner().invoke(app, ["experts", "--dataset", "demo", "--out", str(out), "--num-experts", "2", "--epochs",
                                 "2", "--width", "8", "--depth", "2", "--batch-size", "128", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    return out


QUALITY = ["--preset", "demo", "--iterations", "2", "--base", "syn_steps=2,expert_epochs=1,max_start_epoch=1",
           "--eval-models", "2", "--eval-epochs", "2", "--device", "cpu", "--threads", "1"]


def test_bench_quality_prints_the_table_writes_csv_and_png_and_names_the_stopped(tmp_path, demo_experts):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["bench", "quality", "-t", str(demo_experts), "--out", str(out), *QUALITY,
                                      "--recipe", "tesla", "--recipe", "ema",
                                      "--recipe", "sla:labels=teacher-target,min_label_agreement=1,"
                                                  "collapse_iterations=1", "--recipe", "learned-teacher"])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "quality.csv")
    assert [(r["recipe"], r["status"]) for r in rows] == [("tesla", "completed"), ("ema", "completed"),
                                                          ("sla", "stopped"), ("learned-teacher", "completed")]
    done = [r for r in rows if r["status"] == "completed"]
    assert all(0 <= float(r["mean"]) <= 100 and r["n"] == "2" and float(r["random_real_mean"]) > 0 for r in done)
    assert rows[0]["vs_baseline"] == "0" and rows[2]["reason"].startswith("the labels collapsed")
    text = " ".join(result.output.split())
    assert "completed: tesla, ema, learned-teacher" in text and "stopped by the guard: sla: the labels collapsed" in text
    assert "random real" in text and (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "recipes" / "ema" / "events.jsonl").exists()  # each recipe is a run directory of its own
    again = CliRunner().invoke(app, ["bench", "quality", "-t", str(demo_experts), "--out", str(out), *QUALITY,
                                     "--recipe", "tesla", "--json", "-q"])
    assert again.exit_code == 0, again.output
    data = json.loads(again.output.strip().splitlines()[-1])
    assert data["rows"][0]["recipe"] == "tesla" and data["rows"][0]["mean"] == float(rows[0]["mean"])


@pytest.mark.parametrize("args,needle", [
    (["--recipe", "x:no_such=1"], "recipe key 'no_such' is not a distillation setting"),
    (["--recipe", "x:ema_decay=3", "--baseline", "x"], "recipe 'x': ema_decay must be"),
    (["--recipe", "ema"], "the baseline 'tesla' is not among the recipes"),
    (["--base", "max_start_epoch=5"], "recipe 'tesla' needs expert epoch 6 but the experts stop at epoch 2"),
])
def test_bench_quality_refuses_bad_recipes_in_one_line_and_writes_nothing(tmp_path, demo_experts, args, needle):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["bench", "quality", "-t", str(demo_experts), "--out", str(out), *QUALITY, *args])
    assert result.exit_code == 2 and needle in " ".join(result.output.split())
    assert not out.exists()


def test_distill_stops_collapsed_labels_with_exit_3_and_says_what_to_change(tmp_path, demo_experts):
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["distill", "-t", str(demo_experts), "-o", str(run), "--ipc", "1", "--syn-steps",
                                 "2", "--expert-epochs", "1", "--max-start-epoch", "1", "--iterations", "6",
                                 "--checkpoint-every", "2", "--labels", "teacher-target", "--min-label-agreement",
                                 "1", "--collapse-iterations", "3", "--device", "cpu", "--preview-every", "0"])
    assert r.exit_code == 3
    text = " ".join(r.output.split())
    assert "the labels collapsed" in text and "lower --lr-img" in text and "--labels learned-teacher" in text
    assert "the last checkpoint (after iteration 2) is kept for --resume" in text
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    its = [e for e in events if e["type"] == "iteration"]
    assert [e["low_agreement"] for e in its] == [1, 2, 3] and all(0 <= e["agreement"] < 1 for e in its)
    assert events[-1]["type"] == "run_finished" and events[-1]["summary"]["health"] == "collapsed"
