"""The demo: the whole pipeline on the embedded real dataset, no download, minutes on a CPU.

Experts on the embedded 16 px CIFAR-10 images, a TESLA distillation from their
trajectories, then the evaluation protocol on the distilled set beside random real
images at the same IPC, and an image grid on disk. Every stage is the real service
used by the CLI; only the sizes (the ``demo`` preset) are small.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import attrs
import torch

from tesla.domain import presets
from tesla.domain.config import DataConfig, to_dict


@attrs.frozen
class DemoResult:
    scores: tuple
    distill_loss: Optional[float]
    lr: float
    seconds: dict
    images_dir: Path
    run_dir: Path


def run_demo(out: Path, *, sink: Any = None, cancel: Optional[threading.Event] = None, device: Any = "cpu",
             engine: str = "tesla", seed: int = 0, preset: Optional[presets.Preset] = None) -> DemoResult:
    from tesla.adapters.stores.export import default_decode, export_png_grid
    from tesla.app import bootstrap
    from tesla.app.services.evaluate import evaluate_set
    from tesla.app.services.experts import train_experts

    p = preset or presets.demo()
    expert_cfg = attrs.evolve(p.experts, seed=seed)
    distill_cfg = attrs.evolve(p.distill, engine=engine, seed=seed)
    eval_cfg = attrs.evolve(p.evaluate, seed=seed)
    data_cfg = DataConfig(name="demo")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = bootstrap.load_data(data_cfg)
    seconds = {}

    t = time.perf_counter()
    store = bootstrap.open_trajectories(str(out / "trajectories.zarr"), "a")
    experts = train_experts(model_cfg=p.model, expert_cfg=expert_cfg, data=data, store=store,
                            dataset=to_dict(data_cfg), sink=sink, device=device, cancel=cancel)
    seconds["experts"] = time.perf_counter() - t
    if experts.status != "completed":
        raise KeyboardInterrupt("demo cancelled during expert training")

    run_dir = out / "run"
    run_dir.mkdir(exist_ok=True)
    syn_store = bootstrap.open_synthetic(str(run_dir / "synthetic.zarr"), "a")
    t = time.perf_counter()
    result = bootstrap.distill_in_process(
        cfg=distill_cfg, model_cfg=p.model, data=data, trajectories=store, store=syn_store, sink=sink, device=device,
        cancel=cancel, resume=True, decode=data.normalizer.decode, preview_every=20,
        provenance={"dataset": to_dict(data_cfg), "trajectories": str(out / "trajectories.zarr"),
                    "class_names": list(data.class_names), "normalizer_state": data.normalizer.to_state()})
    seconds["distill"] = time.perf_counter() - t
    if result.status != "completed":
        raise KeyboardInterrupt("demo cancelled during distillation")

    syn = syn_store.read_set()
    images_dir = run_dir / "images"
    export_png_grid(syn, str(images_dir), decode=default_decode(syn))
    t = time.perf_counter()
    labels = torch.as_tensor(syn.soft_labels if syn.soft_labels is not None else syn.labels)
    scores = evaluate_set(torch.as_tensor(syn.images), labels, syn.lr, data, model_cfg=p.model, cfg=eval_cfg,
                          ipc=distill_cfg.ipc, random_real=True, device=device, sink=sink,
                          iteration=result.iterations)
    seconds["evaluate"] = time.perf_counter() - t
    return DemoResult(scores=tuple(scores), distill_loss=result.loss, lr=result.lr, seconds=seconds,
                      images_dir=images_dir, run_dir=run_dir)
