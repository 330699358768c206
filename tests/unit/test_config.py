"""Configs are frozen, validated on construction, and errors name the field."""

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tesla.domain.config import (ConfigError, DataConfig, DistillConfig, EvalConfig, ExpertConfig, ModelConfig,
                                 from_dict, to_dict)


@pytest.mark.parametrize("cls,field,value", [
    (DistillConfig, "ipc", 0),
    (DistillConfig, "syn_steps", 0),
    (DistillConfig, "lr_img", -1.0),
    (DistillConfig, "engine", "magic"),
    (DistillConfig, "labels", "fuzzy"),
    (DistillConfig, "batch_syn", 0),
    (ExpertConfig, "epochs", 0),
    (ExpertConfig, "lr", 0.0),
    (ModelConfig, "norm", "weird"),
    (ModelConfig, "arch", "alexnet"),
    (ModelConfig, "num_classes", 1),
    (EvalConfig, "num_models", 0),
])
def test_bad_field_is_named(cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cls(**{field: value})


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(depth=4, image_size=40)
    with pytest.raises(ConfigError, match="label_epoch"):
        DistillConfig(labels="teacher-epoch")
    with pytest.raises(ConfigError, match="root"):
        DataConfig(name="cifar10")
    with pytest.raises(ConfigError, match="models"):
        EvalConfig(models=("lenet",))
    assert DataConfig(name="demo").root is None


def test_frozen_and_evolve():
    cfg = DistillConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.ipc = 3  # type: ignore[misc]
    assert attrs.evolve(cfg, ipc=3).ipc == 3
    with pytest.raises(ConfigError):
        attrs.evolve(cfg, ipc=-3)


def test_last_epoch_needed():
    assert DistillConfig(max_start_epoch=20, expert_epochs=2).last_epoch_needed == 21
    assert DistillConfig(labels="teacher-epoch", label_epoch=40).last_epoch_needed == 40


def test_model_names():
    assert ModelConfig().name == "ConvNet"
    assert ModelConfig(depth=4, image_size=64).name == "ConvNetD4"


@settings(max_examples=60, deadline=None)
@given(ipc=st.integers(-5, 60), steps=st.integers(-5, 120), lr=st.one_of(st.floats(-10, 10), st.just(float("nan"))),
       engine=st.sampled_from(["tesla", "exact", "unrolled", "bogus"]))
def test_distill_config_accepts_exactly_the_valid_values(ipc, steps, lr, engine):
    valid = ipc >= 1 and steps >= 1 and lr > 0 and engine != "bogus"
    try:
        cfg = DistillConfig(ipc=ipc, syn_steps=steps, lr_img=lr, engine=engine)
    except ConfigError:
        assert not valid
    else:
        assert valid
        assert from_dict(DistillConfig, to_dict(cfg)) == cfg


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 5), size=st.integers(1, 130), classes=st.integers(2, 1000))
def test_model_config_round_trips_through_json_dicts(depth, size, classes):
    try:
        cfg = ModelConfig(depth=depth, image_size=size, num_classes=classes)
    except ConfigError as e:
        assert "divisible" in str(e)
        assert size % (2 ** depth) != 0
    else:
        assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="bogus"):
        from_dict(DistillConfig, {"bogus": 1})


def test_remake_weights_is_for_the_exact_engine_only():
    assert DistillConfig(engine="exact", remake_weights=True).remake_weights
    with pytest.raises(ConfigError, match="remake_weights applies to engine 'exact' only"):
        DistillConfig(engine="tesla", remake_weights=True)


RECIPE_FIELDS = ("label_momentum", "sampling", "min_start_epoch", "initial_max_start_epoch", "window_iterations",
                 "ema_decay", "match_fraction", "min_label_agreement", "collapse_iterations", "stall_iterations",
                 "stall_tolerance")


def test_configs_recorded_before_the_recipe_fields_still_load_and_mean_the_same():
    old = {k: v for k, v in to_dict(DistillConfig(labels="learned", ipc=3)).items() if k not in RECIPE_FIELDS}
    cfg = from_dict(DistillConfig, old)
    assert cfg == DistillConfig(labels="learned", ipc=3)
    # the defaults are today's behaviour: uniform starts from 0, no average, every parameter matched
    assert (cfg.sampling, cfg.min_start_epoch, cfg.ema_decay, cfg.match_fraction, cfg.label_sgd_momentum) == (
        "uniform", 0, None, 1.0, cfg.momentum)


@pytest.mark.parametrize("field,value", [
    ("sampling", "random"), ("min_start_epoch", -1), ("initial_max_start_epoch", 0), ("window_iterations", 0),
    ("ema_decay", 1.0), ("match_fraction", 0.0), ("match_fraction", 1.01), ("label_momentum", -0.5),
    ("min_label_agreement", 2.0), ("collapse_iterations", 0), ("stall_iterations", -3), ("stall_tolerance", -1.0),
])
def test_bad_recipe_field_is_named(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**{field: value})


def test_recipe_fields_round_trip():
    cfg = DistillConfig(labels="learned-teacher", label_epoch=9, label_momentum=0.9, sampling="window",
                        initial_max_start_epoch=12, window_iterations=300, ema_decay=0.999, match_fraction=0.5,
                        min_label_agreement=0.3, collapse_iterations=4, stall_iterations=0, stall_tolerance=0.01,
                        engine="exact")
    assert from_dict(DistillConfig, to_dict(cfg)) == cfg
