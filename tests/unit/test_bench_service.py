"""The bench service on fake probes: the order of points and rounds, OOM cells and rows,
ratios, gradient errors, refusals and the CSV files (no torch)."""

from __future__ import annotations

import csv

import pytest

from tesla.app.services.bench import memory_bench, memory_report, memory_summary, speed_bench, speed_report
from tesla.domain.bench import OOM, BenchSettings, bench_engine
from tesla.domain.config import ModelConfig
from tesla.domain.engines import Exact, FirstOrder, Unrolled
from tesla.domain.errors import BenchError
from tesla.domain.ports import ListSink
from tests.unit.service_fakes import FakeMemoryProbe, FakeSpeedProbe, StopAfter

S = BenchSettings(model=ModelConfig(width=8, image_size=8), ipc=2, device="cpu")


def test_memory_points_go_steps_first_and_an_oom_is_a_cell():
    probe, sink = FakeMemoryProbe(oom=[("unrolled", 20)], max_rss_gb=1.5), ListSink()
    result = memory_bench(S, probe=probe, steps=(10, 20), engines=("unrolled", "tesla"), sink=sink)
    assert probe.asked == [("unrolled", 10), ("tesla", 10), ("unrolled", 20), ("tesla", 20)]
    assert [(p.engine, p.steps) for p in result.points] == [("unrolled", 10), ("unrolled", 20), ("tesla", 10),
                                                            ("tesla", 20)]
    assert result.table() == {"unrolled": {10: 10000, 20: OOM}, "tesla": {10: 1000, 20: 1000}}
    assert result.measure == "saved for backward" and result.isolated
    assert [e.message for e in sink.of("warning")] == ["unrolled ran out of memory at 20 steps"]
    assert len(sink.of("progress")) == 4 and sink.events[0].config["max_rss_gb"] == 1.5
    assert sink.events[-1].summary == {"memory": {"unrolled": {"10": 10000, "20": OOM},
                                                  "tesla": {"10": 1000, "20": 1000}}}
    assert memory_summary(result) == ["tesla (saved for backward): at 20 steps 1.000 x its value at 10 steps; "
                                      "unrolled at 20 steps: OOM"]


def test_memory_on_cuda_reports_the_device_peak_and_a_cancel_stops_early():
    cuda = BenchSettings(device="cuda:0")
    result = memory_bench(cuda, probe=FakeMemoryProbe(), steps=(1, 2), engines=("tesla",), cancel=StopAfter(1))
    assert result.measure == "device peak" and not result.isolated and len(result.points) == 1


def test_memory_refuses_unknown_engines_and_bad_steps_before_measuring():
    probe = FakeMemoryProbe()
    with pytest.raises(BenchError, match="unknown engine 'fast'"):
        memory_bench(S, probe=probe, steps=(1,), engines=("tesla", "fast"))
    with pytest.raises(BenchError, match="steps must be"):
        memory_bench(S, probe=probe, steps=(0,), engines=("tesla",))
    assert probe.asked == []


def test_memory_report_writes_the_csv_and_asks_for_the_plot(tmp_path):
    result = memory_bench(S, probe=FakeMemoryProbe(oom=[("tesla", 1)]), steps=(1,), engines=("unrolled", "tesla"))
    drawn = []
    files = memory_report(result, tmp_path / "out", lambda r, p: drawn.append((r, p)) or p)
    assert drawn == [(result, tmp_path / "out" / "memory.png")]
    rows = list(csv.DictReader(open(files["csv"])))
    assert [(r["engine"], r["status"], r["saved_peak"]) for r in rows] == [("unrolled", "ok", "1000"),
                                                                         ("tesla", OOM, "")]


def test_speed_interleaves_rounds_skips_warmup_and_compares_with_unrolled_fp32():
    probe, sink = FakeSpeedProbe(), ListSink()
    result = speed_bench(S, probe=probe, steps=(2,), engines=("unrolled", "tesla", "tesla-batched"), repeats=2,
                         warmup=1, precisions=("fp32", "bf16"), sink=sink)
    runs = probe.session_.runs
    assert len(runs) == 3 * 6 and runs[:6] == runs[6:12] == runs[12:]  # A B C A B C ...
    by = {(r.engine, r.precision): r for r in result.rows}
    assert by["tesla", "fp32"].times == (2.0, 2.0)  # the warm-up's extra second is not counted
    assert by["unrolled", "fp32"].ratio == 1.0 and by["tesla", "fp32"].ratio == pytest.approx(0.25)
    assert by["tesla", "fp32"].grad_error == 0.0 and by["tesla", "bf16"].grad_error == pytest.approx(0.01)
    assert by["tesla-batched", "fp32"].grad_error == pytest.approx(0.001)  # against tesla fp32
    assert probe.limits == [9.0]  # 90% of the available memory on a CPU
    assert len(sink.of("progress")) == 18 and sink.events[-1].type == "run_finished"


def test_speed_adds_the_fp32_references_and_an_oom_is_a_row():
    probe = FakeSpeedProbe(oom=[("unrolled", "bf16", False, 3)])
    result = speed_bench(S, probe=probe, steps=(3,), engines=("unrolled", "exact"), repeats=1, warmup=0,
                         precisions=("bf16",), max_memory_gb=2.0)
    keys = [(r.engine, r.precision) for r in result.rows]
    assert keys == [("unrolled", "fp32"), ("exact", "fp32"), ("unrolled", "bf16"), ("exact", "bf16")]
    oom = result.rows[2]
    assert oom.status == OOM and oom.median is None and oom.grad_error is None
    assert probe.limits == [2.0]


def test_speed_refusals_come_before_any_iteration(tmp_path):
    probe = FakeSpeedProbe()
    for kw, needle in [(dict(precisions=("fp8",)), "precision"), (dict(repeats=0), "repeats"),
                       (dict(max_memory_gb=0), "max_memory_gb"), (dict(engines=("tesla", "fast")), "fast")]:
        with pytest.raises(BenchError, match=needle):
            speed_bench(S, probe=probe, **kw)
    assert probe.session_.runs == []
    result = speed_bench(BenchSettings(device="cuda"), probe=probe, steps=(1,), engines=("tesla",), repeats=1,
                         warmup=0, max_memory_gb=0)  # no host limit on CUDA
    assert probe.limits == [None]
    rows = list(csv.DictReader(open(speed_report(result, tmp_path)["csv"])))
    assert rows[0]["engine"] == "tesla" and float(rows[0]["median_s"]) == 2.0


def test_bench_rows_map_to_the_domain_engines():
    assert bench_engine("tesla-batched", 4) == FirstOrder(chunk=4) and bench_engine("tesla", 4) == FirstOrder()
    assert bench_engine("exact-remake", 4) == Exact(remake_weights=True) and bench_engine("exact", 4) == Exact()
    assert bench_engine("unrolled", 4) == Unrolled()
    with pytest.raises(BenchError):
        bench_engine("fast", 1)
    with pytest.raises(BenchError, match="--batch-syn 50 is larger"):
        BenchSettings(ipc=2, batch_syn=50).check()
    with pytest.raises(BenchError, match="--chunk must be"):
        BenchSettings(chunk=0).check()
