"""Memory choices as pure functions, and the memory bench's batch axis on a fake probe (no torch).

A budget's micro-batch from a measured step cost (the probe is a fake: only the numbers
matter), when it is asked for at all, where the set lives, the config fields that carry
them, and the bench: the (batch, micro-batch) axis, the summary lines (growth from the
first point, the micro-batch's share, flat in the batch), the paper's figures beside a
measured row, the CSV's new columns and the Progress events that move the main bar.
"""

from __future__ import annotations

import csv

import attrs
import pytest

from tesla.app.services.bench import MEMORY_JOB, memory_bench, memory_report, memory_summary, paper_comparison
from tesla.domain.bench import OOM, BenchSettings, MemoryPoint, MemoryResult, batch_axis, paper_figures, set_bytes
from tesla.domain.config import DistillConfig, ModelConfig, from_dict, to_dict
from tesla.domain.errors import BenchError, ConfigError, DistillError
from tesla.domain.memory import (StepCost, choose_set_on, format_bytes, micro_batch_for, parse_bytes,
                                 resolve_micro_batch, soft_label_chunk)
from tesla.domain.ports import ListSink

# --- budgets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("4GB", 4 * 10**9), ("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20),
                                        ("1.5 gb", 1_500_000_000), ("2e9", 2 * 10**9), (123, 123),
                                        ("10kb", 10_000), (None, None)])
def test_budgets_parse_in_decimal_and_binary_units(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["4 furlongs", "GB", "-1GB", "0", 0, True, "nan"])
def test_bad_budgets_are_refused_naming_the_form(bad):
    with pytest.raises(ConfigError, match="memory_budget must be"):
        parse_bytes(bad)


def test_a_budget_fits_the_largest_micro_batch():
    cost = StepCost(fixed=100, per_image=30)
    assert cost.bytes_for(30) == 1000
    assert micro_batch_for(1000, cost) == 30 and micro_batch_for(999, cost) == 29
    assert micro_batch_for(10, cost) == 1  # never zero: one image always runs


class Probe:
    """A fake step-cost probe that counts its calls."""

    def __init__(self, cost: StepCost) -> None:
        self.cost, self.calls = cost, 0

    def __call__(self) -> StepCost:
        self.calls += 1
        return self.cost


def test_the_micro_batch_is_explicit_else_the_budgets_else_whole_batches():
    probe = Probe(StepCost(fixed=1000, per_image=100))
    assert resolve_micro_batch(None, None, 500, probe) is None and probe.calls == 0  # no budget: whole batches
    assert resolve_micro_batch(50, 10**9, 500, probe) == 50 and probe.calls == 0  # explicit wins, nothing measured
    assert resolve_micro_batch(None, 6000, 500, probe) == 50 and probe.calls == 1  # (6000 - 1000) // 100
    # a micro-batch that does not split the batch is no micro-batch (batch norm is fine then)
    assert resolve_micro_batch(None, 10**9, 500, probe) is None
    assert resolve_micro_batch(500, None, 500, probe) is None and resolve_micro_batch(499, None, 500, probe) == 499


def test_the_soft_label_chunk_is_capped_by_the_budgets_micro_batch_only():
    assert soft_label_chunk(1000, 50, 4 * 10**9) == 50
    assert soft_label_chunk(1000, 50, None) == 1000  # an explicit micro-batch without budget leaves it
    assert soft_label_chunk(20, 50, 4 * 10**9) == 20 and soft_label_chunk(1000, None, 4 * 10**9) == 1000


def test_set_on_auto_weighs_the_set_against_the_device():
    gib = 2**30
    assert choose_set_on("auto", on_cpu=True, needed=100 * gib, device_total=None) == "device"  # one memory
    assert choose_set_on("auto", on_cpu=False, needed=2 * gib, device_total=80 * gib) == "device"
    assert choose_set_on("auto", on_cpu=False, needed=21 * gib, device_total=80 * gib) == "host"  # > a quarter
    assert choose_set_on("host", on_cpu=True, needed=1, device_total=None) == "host"  # asked: kept
    assert choose_set_on("device", on_cpu=False, needed=79 * gib, device_total=80 * gib) == "device"
    with pytest.raises(ConfigError, match="set_on must be one of"):
        choose_set_on("gpu", on_cpu=False, needed=1, device_total=1)


def test_the_imagenet_set_with_gradient_and_momentum_is_seven_gigabytes():
    # 50,000 images of 3x64x64 float32: 2.46 GB each for the images, gradient and momentum
    s = BenchSettings(model=ModelConfig(depth=4, image_size=64, num_classes=1000), ipc=50)
    assert set_bytes(s) == 3 * 4 * 50_000 * 3 * 64 * 64
    assert format_bytes(set_bytes(s)) == "6.9 GiB" and format_bytes(None) == "-" and format_bytes(5) == "5 B"


def test_the_config_carries_the_memory_fields_through_json():
    cfg = DistillConfig(micro_batch=50, memory_budget="4GB", set_on="host")
    assert cfg.memory_budget == 4 * 10**9 and to_dict(cfg)["memory_budget"] == 4 * 10**9
    assert from_dict(DistillConfig, to_dict(cfg)) == cfg
    assert DistillConfig().micro_batch is None and DistillConfig().memory_budget is None
    assert DistillConfig().set_on == "auto"
    with pytest.raises(ConfigError, match="micro_batch must be an integer >= 1"):
        DistillConfig(micro_batch=0)
    with pytest.raises(ConfigError, match="set_on must be one of"):
        DistillConfig(set_on="gpu")
    with pytest.raises(ConfigError, match="memory_budget"):
        DistillConfig(memory_budget="lots")


def test_resuming_may_change_the_memory_fields_only():
    from tesla.app.services.distill import check_resumable

    saved = {"distill": to_dict(DistillConfig())}
    check_resumable(DistillConfig(micro_batch=7, memory_budget="1GB", set_on="host"), saved)
    with pytest.raises(DistillError, match="different ipc"):
        check_resumable(DistillConfig(ipc=3), saved)


# --- the bench's batch axis ------------------------------------------------------------------------

S = BenchSettings(model=ModelConfig(width=8, image_size=8), ipc=50, device="cpu")  # 500 images


def test_the_batch_axis_cuts_micro_batches_to_their_batch_and_drops_repeats():
    assert batch_axis(S, (100, 500), (500, 100, 50)) == [(100, 100), (100, 50), (500, 500), (500, 100), (500, 50)]
    assert batch_axis(S) == [(None, None)]
    assert batch_axis(attrs.evolve(S, batch_syn=100, micro_batch=10)) == [(100, 10)]
    with pytest.raises(BenchError, match="--batch-syn 600 is larger"):
        batch_axis(S, (600,), ())
    with pytest.raises(BenchError, match="--micro-batch must be >= 1"):
        batch_axis(S, (100,), (0,))


class AxisProbe:
    """Saved bytes ``1000 + 10 * images per piece`` (times the steps for unrolled, which
    keeps every piece); records the settings of each point; ``oom`` lists (engine, micro)."""

    max_rss_gb = None

    def __init__(self, oom=()) -> None:
        self.asked: list = []
        self.oom = set(oom)

    def isolated(self, settings):
        return True

    def measure(self, settings, engine, steps):
        self.asked.append((engine, steps, settings.batch_syn, settings.micro_batch))
        if (engine, settings.micro_batch) in self.oom:
            return MemoryPoint(engine, steps, OOM)
        piece = settings.micro_batch or settings.batch
        saved = 1000 + 10 * (settings.batch * steps if engine == "unrolled" else piece)
        return MemoryPoint(engine, steps, "ok", saved_peak=saved, rss_delta=2 * saved)


def test_memory_bench_measures_every_micro_batch_at_every_batch_and_moves_the_main_bar():
    probe, sink = AxisProbe(), ListSink()
    result = memory_bench(S, probe=probe, steps=(2, 10), engines=("tesla", "exact"), batches=(100, 500),
                          micro_batches=(500, 50), sink=sink)
    # steps outermost, then the axis, engines innermost
    assert probe.asked[:4] == [("tesla", 2, 100, 100), ("exact", 2, 100, 100), ("tesla", 2, 100, 50),
                               ("exact", 2, 100, 50)]
    assert len(probe.asked) == 2 * 4 * 2 and len(result.points) == 16
    assert {(p.batch_syn, p.micro_batch) for p in result.points} == {(100, 100), (100, 50), (500, 500), (500, 50)}
    started = sink.of("run_started")[0]
    assert started.job == MEMORY_JOB and started.total == 16
    assert started.config["batch_axis"] == [[100, 100], [100, 50], [500, 500], [500, 50]]
    progress = sink.of("progress")
    # labelled with the job: the terminal's main bar advances with every point
    assert [e.done for e in progress] == list(range(1, 17)) and {e.label for e in progress} == {MEMORY_JOB}
    assert "tesla batch 500 micro 50" in result.table()
    assert result.table()["tesla batch 500 micro 50"] == {2: 1500, 10: 1500}


def test_summary_compares_with_the_first_point_not_with_itself():
    result = memory_bench(S, probe=AxisProbe(), steps=(2, 10), engines=("unrolled", "tesla"), batches=(500,))
    assert memory_summary(result) == ["tesla (saved for backward): at 10 steps 1.000 x its value at 2 steps; "
                                      "1/8.5 of unrolled at 10 steps"]  # 51000 / 6000
    one = memory_bench(S, probe=AxisProbe(), steps=(10,), engines=("tesla",), batches=(500,))
    assert memory_summary(one) == []  # one step count: no growth to state


def test_summary_states_the_micro_batchs_share_and_flatness_in_the_batch():
    result = memory_bench(S, probe=AxisProbe(), steps=(2,), engines=("tesla",), batches=(100, 500),
                          micro_batches=(500, 100, 50))
    lines = memory_summary(result)
    assert "tesla, batch 500 (saved for backward) at 2 steps: micro-batch 50 takes 0.250 x micro-batch 500 " \
           "(the whole batch)" in lines  # 1500 / 6000
    assert "tesla, micro-batch 50 (saved for backward) at 2 steps: batch 500 takes 1.000 x batch 100" in lines
    assert "tesla, micro-batch 100 (saved for backward) at 2 steps: batch 500 takes 1.000 x batch 100" in lines
    rss = memory_summary(result, "rss_delta")
    assert any(line.startswith("tesla, batch 500 (peak RSS)") and "0.250 x" in line for line in rss)


def test_an_oom_cell_gives_no_ratio():
    result = memory_bench(S, probe=AxisProbe(oom=[("tesla", 50)]), steps=(2,), engines=("tesla",),
                          batches=(500,), micro_batches=(500, 50))
    assert [p.status for p in result.points] == ["ok", OOM]
    assert memory_summary(result) == []


def test_the_csv_has_the_batch_axis_columns(tmp_path):
    result = memory_bench(S, probe=AxisProbe(), steps=(2,), engines=("tesla",), micro_batches=(500, 50))
    files = memory_report(result, tmp_path, lambda r, p: p)
    rows = list(csv.DictReader(open(files["csv"])))
    assert [(r["engine"], r["batch_syn"], r["micro_batch"], r["saved_peak"]) for r in rows] == [
        ("tesla", "500", "500", "6000"), ("tesla", "500", "50", "1500")]  # batch "all" is written as 500


IMAGENET = BenchSettings(model=ModelConfig(depth=4, width=128, image_size=64, num_classes=1000), ipc=50,
                         device="cpu")


def test_the_papers_imagenet_figure_is_printed_beside_a_measured_row():
    result = MemoryResult(settings=IMAGENET, measure="saved for backward", points=(
        MemoryPoint("tesla", 2, "ok", saved_peak=600 * 2**20, batch_syn=500, micro_batch=50),
        MemoryPoint("tesla", 2, OOM, batch_syn=500, micro_batch=500),
        MemoryPoint("exact", 2, "ok", saved_peak=600 * 2**20, batch_syn=500, micro_batch=50)))
    assert [f.gigabytes for f in paper_figures(result)] == [13.9, 79.9]
    lines = paper_comparison(result)
    assert lines[0].startswith("paper, ImageNet-1K IPC 50, TESLA (ConvNetD4 width 128, batch 500, 100 steps") \
        and lines[0].endswith("13.9 GB")
    held = set_bytes(IMAGENET)
    assert lines[1] == (f"  here, tesla, batch 500, micro-batch 50, 2 steps: 600.0 MiB saved for backward + "
                        f"6.9 GiB set, gradient and momentum (on a GPU: on the device unless --set-on host) = "
                        f"{(600 * 2**20 + held) / 1e9:.1f} GB ({(600 * 2**20 + held) / 13.9e9:.2f} x the paper's)")
    assert lines[2] == "  here, tesla, batch 500, micro-batch 500, 2 steps: OOM"
    assert lines[3].startswith("paper, ImageNet-1K IPC 50, MTT") and len(lines) == 4  # no unrolled row measured
    other = attrs.evolve(result, settings=attrs.evolve(IMAGENET, ipc=10))
    assert paper_comparison(other) == []  # not the paper's setting: nothing to compare


def test_on_cuda_the_paper_row_adds_only_what_the_device_peak_leaves_out():
    peak = MemoryPoint("tesla", 2, "ok", device_peak=3 * 10**9, batch_syn=500, micro_batch=50)
    on_device = MemoryResult(settings=attrs.evolve(IMAGENET, device="cuda"), measure="device peak", points=(peak,))
    images = set_bytes(IMAGENET) // 3  # the gradient accumulator is made inside the measured peak
    line = paper_comparison(on_device)[1]
    assert line.endswith(f"+ 4.6 GiB set and momentum on the device = {(3e9 + 2 * images) / 1e9:.1f} GB "
                         f"({(3e9 + 2 * images) / 13.9e9:.2f} x the paper's)"), line
    host = MemoryResult(settings=attrs.evolve(IMAGENET, device="cuda", set_on="host"), measure="device peak",
                        points=(peak,))
    assert paper_comparison(host)[1] == ("  here, tesla, batch 500, micro-batch 50, 2 steps: 2.8 GiB device peak = "
                                         "3.0 GB (0.22 x the paper's)")
