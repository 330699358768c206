"""The relabel protocol's settings: published defaults, named refusals, the lr schedules."""

import math

import attrs
import pytest

from tesla.domain.config import ConfigError, from_dict, to_dict
from tesla.domain.relabel import RelabelConfig, lr_factor


def test_defaults_are_the_published_ones():
    cfg = RelabelConfig()
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.betas) == (300, 1e-3, 0.01, (0.9, 0.999))
    assert (cfg.temperature, cfg.scale_loss, cfg.schedule) == (20.0, False, "half-cosine")
    assert cfg.crop and cfg.flip and cfg.cutmix and cfg.crop_scale == (0.08, 1.0)


def test_without_augmentation_turns_every_op_off():
    cfg = RelabelConfig(temperature=4.0).without_augmentation()
    assert not cfg.augments and cfg.temperature == 4.0
    assert RelabelConfig(crop=False, flip=False).augments   # CutMix alone still augments


def test_round_trips_through_plain_json():
    cfg = RelabelConfig(crop_scale=(0.5, 1.0), betas=(0.8, 0.99))
    assert from_dict(RelabelConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("temperature", -1.0), ("weight_decay", -0.1),
    ("schedule", "step"), ("crop_scale", (0.0, 1.0)), ("crop_scale", (0.9, 0.5)), ("betas", (0.9, 1.0)),
    ("cutmix", "yes"), ("cutmix_beta", 0.0),
])
def test_bad_values_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        RelabelConfig(**{field: value})


def test_schedules():
    # RDED / DD-Ranking: 0.5 (1 + cos(pi e / 2E)): 1 at the start, 0.5 at the end
    assert lr_factor("half-cosine", 0, 300) == 1.0
    assert lr_factor("half-cosine", 150, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("half-cosine", 300, 300) == pytest.approx(0.5)
    # SRe2L: 0.5 (1 + cos(pi e / E)): 1 -> 0
    assert lr_factor("cosine", 150, 300) == pytest.approx(0.5)
    assert lr_factor("cosine", 300, 300) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 123, 300) == 1.0
    with pytest.raises(ConfigError, match="schedule"):
        lr_factor("step", 1, 10)


def test_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RelabelConfig().epochs = 3
