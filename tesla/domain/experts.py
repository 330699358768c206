"""Expert runs: the configs of a ``tesla experts`` call, and the experts each rank trains.

Without a preset the experts get a model for the named dataset (its classes, its image
side, a depth that ends at 4x4 features), later shaped to the data actually loaded
(:func:`tesla.domain.data.model_for_data`); with one, the preset's model and recipe.
Command-line overrides win either way. Experts are independent, so ranks of a
distributed run deal the ones still to train round robin (:func:`split_ids`); expert
``i`` is seeded ``seed + i`` whichever rank trains it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import attrs

from tesla.domain import presets
from tesla.domain.config import DataConfig, ExpertConfig, ModelConfig

# classes of the datasets a model can be guessed for without a preset (others: 10)
CLASSES = {"cifar100": 100, "imagenet64": 1000, "demo": 10}


def default_model(dataset: str) -> ModelConfig:
    """The ConvNet for ``dataset`` without a preset: its classes, 16 px and depth 2 for the
    embedded demo, 32 px and depth 3 otherwise (shaped to the data once it is loaded)."""
    demo = dataset == "demo"
    return ModelConfig(num_classes=CLASSES.get(dataset, 10), image_size=16 if demo else 32, depth=2 if demo else 3)


def experts_configs(preset: Optional[str], dataset: Optional[str], root: Optional[str], zca: Optional[bool],
                    overrides: Mapping[str, object], model_overrides: Mapping[str, object]
                    ) -> tuple[DataConfig, ModelConfig, ExpertConfig]:
    """(data, model, experts) configs of an experts run; None overrides are left out."""
    if preset:
        p = presets.get(preset)
        model, experts = p.model, p.experts
        data = DataConfig(name=dataset or p.dataset, root=root, zca=p.zca if zca is None else zca)
    else:
        name = dataset or "cifar10"
        model, experts = default_model(name), ExpertConfig()
        data = DataConfig(name=name, root=root, zca=bool(zca))
    model = attrs.evolve(model, **{k: v for k, v in model_overrides.items() if v is not None})
    experts = attrs.evolve(experts, **{k: v for k, v in overrides.items() if v is not None})
    return data, model, experts


def split_ids(ids: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``ids``: every ``world``-th one from position ``rank``.

    Round robin rather than contiguous blocks, so ranks get shares that differ by at
    most one item, and the ids stay in their given order.

    Example:
        >>> split_ids([0, 1, 2, 3, 4], 1, 2)
        [1, 3]
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(ids)[rank::world]


# --- one store, one recipe --------------------------------------------------------------------

# what makes two experts' trajectories alike: their training recipe. The count, the
# evaluation cadence and how many train together change nothing in a trajectory.
RECIPE_FIELDS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "dsa", "seed")
# what of the data changes what the experts saw
DATA_FIELDS = ("name", "zca", "image_size")


def recipe_mismatch(recorded: Mapping[int, Optional[Mapping]], wanted: ExpertConfig) -> Optional[str]:
    """The first recipe field in which the store's complete experts differ from ``wanted``,
    as ``"lr 0.01 (expert 0) vs 0.05"``; None when they agree. An expert that records no
    recipe (imported from MTT buffers, or older stores), or a field it leaves empty, is
    not compared.

    Args:
        recorded: expert id -> its recorded ``train_config`` (None when it has none).
        wanted: the recipe of the experts about to be trained into the store.
    """
    want = attrs.asdict(wanted)
    for expert, train in sorted(recorded.items()):
        if not isinstance(train, Mapping):
            continue
        for field in RECIPE_FIELDS:
            if train.get(field) is not None and train[field] != want[field]:  # None: not recorded
                return f"{field} {train[field]!r} (expert {expert}) vs {want[field]!r}"
    return None


def check_one_recipe(url: str, recorded: Mapping[int, Optional[Mapping]], wanted: ExpertConfig) -> None:
    """Refuse (ExpertsError) experts of another recipe into a store: a store holds one
    recipe, which is what its readers (``tesla info``, distillation, the published
    settings) take it to hold."""
    from tesla.domain.errors import ExpertsError

    differs = recipe_mismatch(recorded, wanted)
    if differs:
        raise ExpertsError(f"{url} holds experts trained with {differs} asked for now: a store holds experts of "
                           "one recipe; train with the same settings or into another --out")


def data_mismatch(recorded: Mapping, wanted: Mapping) -> Optional[str]:
    """The first field of :data:`DATA_FIELDS` set on both sides that differs, e.g.
    ``"zca False vs True"``; None when they agree."""
    for field in DATA_FIELDS:
        have, want = recorded.get(field), wanted.get(field)
        if have is not None and want is not None and have != want:
            return f"{field} {have!r} vs {want!r}"
    return None
