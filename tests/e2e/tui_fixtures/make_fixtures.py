"""Writes the recorded runs the TUI tests replay (run once; the outputs are committed).

    python tests/e2e/tui_fixtures/make_fixtures.py

Deterministic: fixed timestamps and closed-form values, so the snapshots stay stable.
``distill_run``: a distillation of 50 iterations with memory samples, a random-real
baseline, two evaluations of the synthetic set, a preview, a warning and a checkpoint.
``experts_run``: two experts of three epochs each.
"""

from __future__ import annotations

import colorsys
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tesla.adapters.events.jsonl import JsonlSink  # noqa: E402
from tesla.domain import events as ev  # noqa: E402

T0 = 1_700_000_000.0
MIB = 2**20

DISTILL_CONFIG = {
    "preset": "cifar10-ipc10",
    "data": {"name": "cifar10", "root": "data/cifar10", "zca": True, "image_size": None},
    "model": {"arch": "convnet", "depth": 3, "width": 128, "norm": "instancenorm", "channels": 3,
              "image_size": 32, "num_classes": 10},
    "distill": {"ipc": 10, "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "iterations": 50,
                "lr_img": 1000.0, "lr_lr": 1e-05, "lr_init": 0.01, "engine": "tesla",
                "labels": "teacher-target", "seed": 0, "checkpoint_every": 25},
}


def preview_pixels(classes: int = 10, per_row: int = 5, size: int = 12, pad: int = 2) -> list:
    """A grid of one synthetic-looking image per class: hue per class, a soft blob."""
    rows = classes // per_row
    height, width = rows * size + (rows + 1) * pad, per_row * size + (per_row + 1) * pad
    grid = [[[0, 0, 0] for _ in range(width)] for _ in range(height)]
    for c in range(classes):
        top = pad + (c // per_row) * (size + pad)
        left = pad + (c % per_row) * (size + pad)
        for i in range(size):
            for j in range(size):
                d = math.hypot(i - size / 2 + 0.5, j - size / 2 + 0.5) / (size / 2)
                v = max(0.15, 1.0 - 0.8 * d)
                r, g, b = colorsys.hsv_to_rgb(c / classes, 0.75, v)
                grid[top + i][left + j] = [int(r * 255), int(g * 255), int(b * 255)]
    return grid


def write_distill(path: Path) -> None:
    path.unlink(missing_ok=True)
    with JsonlSink(path) as sink:
        sink.emit(ev.RunStarted(job="distill", config=DISTILL_CONFIG, run_dir="runs/cifar10-ipc10",
                                total=50, time=T0))
        sink.emit(ev.Evaluation(model="ConvNet", subject="random-real", mean=26.0, std=0.7, n=3,
                                iteration=0, accuracies=(25.1, 26.2, 26.7), time=T0 + 1))
        t = T0 + 2
        for i in range(1, 51):
            seconds = 0.5 + 0.02 * (i % 5)
            t += seconds
            loss = 0.45 + 0.5 * math.exp(-i / 15) + 0.02 * math.sin(i)
            lr = 0.01 + 0.0002 * i
            sink.emit(ev.Iteration(iteration=i, total=50, loss=round(loss, 6), lr=round(lr, 6), expert=i % 7,
                                   start_epoch=(3 * i) % 20, seconds=seconds, grad_norm=1.0 / i, time=t))
            if i % 5 == 0:
                sink.emit(ev.Memory(device_allocated=700 * MIB + (i % 3) * MIB, device_peak=1400 * MIB,
                                    host_rss=2100 * MIB + i * MIB // 10, iteration=i, time=t))
            if i == 20:
                sink.emit(ev.Warning(message="learned lr clamped to min_lr once", iteration=i, time=t))
            if i == 25:
                sink.emit(ev.Evaluation(model="ConvNet", subject="synthetic", mean=58.4, std=0.6, n=3,
                                        iteration=25, accuracies=(57.6, 58.7, 58.9), time=t + 5))
                sink.emit(ev.Checkpoint(path="runs/cifar10-ipc10/synthetic.zarr/checkpoints/000025",
                                        iteration=25, time=t + 6))
                sink.emit(ev.Preview(iteration=25, pixels=preview_pixels(), per_class=1, time=t + 6))
                t += 6
        sink.emit(ev.Evaluation(model="ConvNet", subject="synthetic", mean=63.1, std=0.4, n=3,
                                iteration=50, accuracies=(62.6, 63.2, 63.5), time=t + 5))


def write_experts(path: Path) -> None:
    path.unlink(missing_ok=True)
    config = {"data": {"name": "cifar10"}, "model": {"arch": "convnet", "depth": 3},
              "experts": {"num_experts": 2, "epochs": 3}}
    with JsonlSink(path) as sink:
        sink.emit(ev.RunStarted(job="experts", config=config, total=6, time=T0))
        t = T0
        for expert in range(2):
            for epoch in range(1, 4):
                t += 10
                sink.emit(ev.Epoch(expert=expert, epoch=epoch, epochs=3, train_loss=2.0 / epoch + 0.1 * expert,
                                   train_acc=30.0 + 10 * epoch, test_acc=25.0 + 9 * epoch, seconds=10.0, time=t))
                sink.emit(ev.Memory(device_allocated=None, device_peak=None, host_rss=900 * MIB, time=t))
            sink.emit(ev.Checkpoint(path=f"experts.h5/expert_{expert}", iteration=expert, time=t))
        sink.emit(ev.RunFinished(status="completed", summary={"experts": 2}, time=t + 1))


if __name__ == "__main__":
    for name, write in (("distill_run", write_distill), ("experts_run", write_experts)):
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        write(folder / "events.jsonl")
        print(folder / "events.jsonl")
