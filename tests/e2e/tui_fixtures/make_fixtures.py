"""Writes the recorded runs the TUI tests replay (run once; the outputs are committed).

    python tests/e2e/tui_fixtures/make_fixtures.py

Deterministic: fixed timestamps and closed-form values, so the snapshots stay stable.
``distill_run``: a distillation of 50 iterations with memory samples, a random-real
baseline, two evaluations of the synthetic set, a preview (laid out as the distill
service's ``make_grid``: 10 classes as columns, 3 images of 16 px each, 1 px border), a
warning and a checkpoint; its teacher labels' agreement drifts down and ends below twice
chance for the last 6 iterations (run health).
``single_eval_run``: a short distillation whose only synthetic evaluation comes at its
end, with random-real and full-real references and a cancelled finish.
``evaluate_run``: what ``tesla evaluate`` writes for two models: synthetic, random-real
and full-real results without iterations, after progress events.
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
                "labels": "teacher-target", "seed": 0, "checkpoint_every": 25, "min_label_agreement": None,
                "collapse_iterations": 10, "stall_iterations": 100, "stall_tolerance": 0.05},
}


def preview_pixels(classes: int = 10, per_class: int = 3, size: int = 16, pad: int = 1) -> list:
    """A make_grid-like picture: class c in column c, ``per_class`` images down it, black
    borders; each image a hue per class, a soft blob moving with the image's index and a
    dark bar, so scaling mistakes show."""
    height, width = per_class * (size + pad) + pad, classes * (size + pad) + pad
    grid = [[[0, 0, 0] for _ in range(width)] for _ in range(height)]
    for c in range(classes):
        for k in range(per_class):
            top, left = pad + k * (size + pad), pad + c * (size + pad)
            ci, cj = size / 2 - 0.5 + 2 * (k - 1), size / 2 - 0.5 - 2 * (k - 1)
            for i in range(size):
                for j in range(size):
                    d = math.hypot(i - ci, j - cj) / (size / 2)
                    v = 0.1 if i == size - 3 else max(0.15, 1.0 - 0.8 * d)
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
            agreement = 0.9 - 0.1 * (i // 10) if i < 45 else 0.15  # drifting, then below twice chance
            sink.emit(ev.Iteration(iteration=i, total=50, loss=round(loss, 6), lr=round(lr, 6), expert=i % 7,
                                   start_epoch=(3 * i) % 20, seconds=seconds, grad_norm=1.0 / i,
                                   agreement=round(agreement, 6), label_entropy=round(0.8 + 0.02 * i, 6),
                                   low_agreement=max(0, i - 44), stalled=0, time=t))
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
                sink.emit(ev.Preview(iteration=25, pixels=preview_pixels(), per_class=3, time=t + 6))
                t += 6
        sink.emit(ev.Evaluation(model="ConvNet", subject="synthetic", mean=63.1, std=0.4, n=3,
                                iteration=50, accuracies=(62.6, 63.2, 63.5), time=t + 5))


def write_single_eval(path: Path) -> None:
    path.unlink(missing_ok=True)
    config = dict(DISTILL_CONFIG, distill=dict(DISTILL_CONFIG["distill"], iterations=30, ipc=1, labels="hard"))
    with JsonlSink(path) as sink:
        sink.emit(ev.RunStarted(job="distill", config=config, run_dir="runs/one-eval", total=30, time=T0))
        sink.emit(ev.Evaluation(model="ConvNet", subject="random-real", mean=14.9, std=0.8, n=3,
                                iteration=0, accuracies=(14.1, 14.9, 15.7), time=T0 + 1))
        sink.emit(ev.Evaluation(model="ConvNet", subject="full-real", mean=84.6, std=0.3, n=3,
                                accuracies=(84.3, 84.6, 84.9), time=T0 + 2))
        t = T0 + 2
        for i in range(1, 31):
            t += 0.25
            sink.emit(ev.Iteration(iteration=i, total=30, loss=round(0.9 - 0.01 * i, 6), lr=0.01, expert=i % 3,
                                   start_epoch=i % 2, seconds=0.25, time=t))
        sink.emit(ev.Evaluation(model="ConvNet", subject="synthetic", mean=46.7, std=1.1, n=3,
                                iteration=30, accuracies=(45.6, 46.6, 47.9), time=t + 4))
        sink.emit(ev.Checkpoint(path="runs/one-eval/synthetic.zarr/checkpoints/000030", iteration=30, time=t + 5))
        sink.emit(ev.RunFinished(status="cancelled", summary={"iterations": 30}, time=t + 5))


def write_evaluate(path: Path) -> None:
    path.unlink(missing_ok=True)
    with JsonlSink(path) as sink:
        sink.emit(ev.RunStarted(job="evaluate", config={"data": {"name": "cifar10"}, "distill": {"ipc": 10}},
                                total=None, time=T0))
        t = T0
        results = {"ConvNet": (64.8, 31.2, 84.7), "ResNet18": (47.3, 27.9, 92.1)}
        done = 0
        for model, means in results.items():
            for subject, mean in zip(("synthetic", "random-real", "full-real"), means):
                for _ in range(2):
                    t += 30
                    done += 1
                    sink.emit(ev.Progress(label="networks", done=done, total=12, time=t))
                sink.emit(ev.Evaluation(model=model, subject=subject, mean=mean, std=0.5, n=2,
                                        accuracies=(mean - 0.35, mean + 0.35), time=t))
        sink.emit(ev.RunFinished(status="completed", time=t + 1))


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
    for name, write in (("distill_run", write_distill), ("single_eval_run", write_single_eval),
                        ("evaluate_run", write_evaluate), ("experts_run", write_experts)):
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        write(folder / "events.jsonl")
        print(folder / "events.jsonl")
