"""Bytes saved for backward by one pass-2 step, by micro-batch (issue #16's table).

One first-order VJP step (the ``tesla`` engine's pass 2) and one exact VJP step (with the
Hessian-vector product) of a float32 ConvNet on a batch of ``--batch`` random images
with DSA, at each micro-batch, measured with
:class:`~tesla.adapters.torch.saved.SavedTensorsMeter` (device independent: the
activation memory a GPU would hold for the step). Also printed: the step's seconds and
the process's peak RSS so far (micro-batches run smallest first, so each row's peak is
its own unless an earlier row's was larger).

Shapes: ``cifar`` = ConvNet width 128 depth 3, 32 px, 10 classes; ``imagenet`` =
ConvNetD4 width 128, 64 px, 1,000 classes.

Usage:
    OMP_NUM_THREADS=1 python scripts/measure_microbatch.py --shape cifar --micro 50,100,500
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.compute import TorchCompute
from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.saved import SavedTensorsMeter
from tesla.domain.config import ModelConfig
from tesla.domain.ports import Step

SHAPES = {
    "cifar": ModelConfig(width=128, depth=3, image_size=32, num_classes=10),
    "imagenet": ModelConfig(width=128, depth=4, image_size=64, num_classes=1000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cifar")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--micro", default="50,100,500", help="comma-separated micro-batch sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SHAPES[args.shape]
    view = FlatView(build_model(cfg, seed=0))
    w = view.flatten()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, cfg.channels, cfg.image_size, cfg.image_size, generator=gen)
    labels = torch.arange(args.batch) % cfg.num_classes
    v = 1e-3 * torch.randn(w.shape, generator=gen)
    step = Step(index=0, batch=tuple(range(args.batch)), aug_seed=1)
    print(f"{args.shape}: {cfg.name}, {cfg.image_size} px, batch {args.batch}, float32, DSA, "
          f"{args.threads} thread(s)")
    print(f"{'engine':<12}{'micro':>6}{'saved MiB':>12}{'x micro=batch':>15}{'seconds':>9}{'peak RSS MiB':>14}")
    for engine, wrt_weights in (("first-order", False), ("exact", True)):
        rows = []
        for micro in sorted(int(m) for m in args.micro.split(",")):
            compute = TorchCompute(view, images, labels, augment=DSA(), micro_batch=micro)
            t0 = time.perf_counter()
            with SavedTensorsMeter() as meter:
                compute.vjp(w, step, v, wrt_weights=wrt_weights)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((micro, meter.peak, time.perf_counter() - t0, rss))
        whole = max(rows, key=lambda r: r[0])[1]
        for micro, peak, seconds, rss in rows:
            print(f"{engine:<12}{micro:>6}{peak / 2**20:>12.1f}{peak / whole:>15.3f}{seconds:>9.1f}{rss:>14.0f}")


if __name__ == "__main__":
    main()
