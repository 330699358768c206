"""Memory sampling on the CPU (the CUDA figures are checked where a GPU exists)."""

from __future__ import annotations

import pytest
import torch

from tesla.adapters.torch.memory import host_rss, memory_sample, peak_rss, reset_peak
from tesla.domain import events as ev


def test_host_rss_is_plausible_and_tracks_allocation():
    before = host_rss()
    assert 1 << 20 < before < 1 << 40
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so it is resident
    after = host_rss()
    assert after - before > 32 * 2**20
    assert peak_rss() >= after * 0.9  # ru_maxrss is sampled by the kernel; allow rounding
    del block


def test_cpu_sample_has_no_device_figures():
    sample = memory_sample("cpu", iteration=7)
    assert isinstance(sample, ev.Memory)
    assert sample.device_allocated is None and sample.device_peak is None
    assert sample.host_rss > 0 and sample.iteration == 7
    reset_peak("cpu")  # a no-op off CUDA
    assert memory_sample(torch.device("cpu")).iteration is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_sees_allocations():
    reset_peak("cuda")
    base = memory_sample("cuda")
    x = torch.empty(16 * 2**20, device="cuda")  # 64 MiB
    mid = memory_sample("cuda", iteration=1)
    del x
    end = memory_sample("cuda")
    assert mid.device_allocated - base.device_allocated >= 64 * 2**20
    assert end.device_peak >= mid.device_allocated > end.device_allocated


def test_saved_tensors_meter_counts_each_storage_once_while_held():
    from tesla.adapters.torch.saved import SavedTensorsMeter

    x = torch.randn(1000, dtype=torch.float32, requires_grad=True)
    with SavedTensorsMeter() as meter:
        y = x.exp()  # ExpBackward keeps y
        z = (y * y).sum()  # MulBackward keeps y twice: one storage, 4000 bytes in all
        assert meter.current == 4000
        z.backward()
        assert meter.current == 0  # the graph is freed: nothing held
    assert meter.peak == 4000
    w = torch.randn(100, requires_grad=True)
    with SavedTensorsMeter() as meter:
        (w[:50] * w[50:]).sum().backward()  # two views of one 400-byte storage
    assert meter.peak == 400
