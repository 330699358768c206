"""The paper's hyperparameter table (NOTES §9, appendix A.12) as named presets.

Each preset is a function returning the full set of configs a run needs, so the CLI's
``--preset cifar10-ipc10`` and a script's ``presets.get("cifar10-ipc10")`` build the
same thing; any field can then be changed with ``attrs.evolve``.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from tesla.domain.config import ConfigError, DataConfig, DistillConfig, EvalConfig, ExpertConfig, ModelConfig


@attrs.frozen
class Preset:
    """The configs of one row of the table (data root left for the caller)."""

    name: str
    dataset: str
    zca: bool
    model: ModelConfig
    experts: ExpertConfig
    distill: DistillConfig
    evaluate: EvalConfig

    def data(self, root: Optional[str]) -> DataConfig:
        return DataConfig(name=self.dataset, root=root, zca=self.zca,
                          image_size=self.model.image_size)


# (dataset, ipc): (syn_steps, expert_epochs, max_start_epoch, batch_syn, zca)
_TABLE: dict[tuple[str, int], tuple[int, int, int, Optional[int], bool]] = {
    ("cifar10", 1): (50, 2, 3, None, True),
    ("cifar10", 10): (30, 2, 20, None, True),
    ("cifar10", 50): (30, 3, 40, None, False),
    ("cifar100", 1): (20, 3, 20, None, True),
    ("cifar100", 10): (15, 3, 30, None, False),
    ("cifar100", 50): (50, 2, 40, 100, True),
    ("imagenet64", 1): (10, 3, 6, 100, False),
    ("imagenet64", 2): (15, 3, 10, 100, False),
    ("imagenet64", 10): (20, 3, 10, 500, False),
    ("imagenet64", 50): (100, 3, 25, 500, False),
}
_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet64": 1000}


def _row(dataset: str, ipc: int) -> Preset:
    steps, epochs, max_start, batch_syn, zca = _TABLE[(dataset, ipc)]
    imagenet = dataset == "imagenet64"
    model = ModelConfig(depth=4 if imagenet else 3, image_size=64 if imagenet else 32,
                        num_classes=_CLASSES[dataset])
    distill = DistillConfig(
        ipc=ipc, syn_steps=steps, expert_epochs=epochs, max_start_epoch=max_start, batch_syn=batch_syn,
        iterations=5000 if imagenet else 5000,
        lr_img=10000.0 if imagenet else 1000.0,
        lr_lr=1e-4 if imagenet else 1e-5,
        lr_init=0.01,
        labels="teacher-target" if imagenet else "hard",
    )
    return Preset(name=f"{dataset.replace('imagenet64', 'imagenet1k')}-ipc{ipc}", dataset=dataset, zca=zca,
                  model=model, experts=ExpertConfig(), distill=distill, evaluate=EvalConfig())


def demo() -> Preset:
    """The embedded demo: 16 px CIFAR-10 images, a small ConvNet, minutes on a laptop CPU."""
    model = ModelConfig(depth=2, width=32, image_size=16, num_classes=10)
    return Preset(
        name="demo", dataset="demo", zca=False, model=model,
        experts=ExpertConfig(num_experts=5, epochs=10, lr=0.02, batch_size=128, eval_every=2),
        distill=DistillConfig(ipc=1, syn_steps=15, expert_epochs=2, max_start_epoch=6, iterations=300,
                              lr_img=100.0, lr_lr=1e-5, lr_init=0.02, checkpoint_every=100),
        evaluate=EvalConfig(num_models=5, epochs=300, batch_size=128),
    )


PRESETS: dict[str, Callable[[], Preset]] = {
    f"{d.replace('imagenet64', 'imagenet1k')}-ipc{i}": (lambda d=d, i=i: _row(d, i)) for (d, i) in _TABLE
}
PRESETS["demo"] = demo


def get(name: str) -> Preset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(sorted(PRESETS))}") from None
