"""Property-based checks of config validation (hypothesis; pure domain, no frameworks).

Every integer knob is accepted exactly when it is in range and refused otherwise with a
:class:`ConfigError` naming the field; every valid config survives ``to_dict`` ->
``from_dict`` unchanged (that is how run directories and checkpoints record them); unknown
keys are refused by name.
"""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesla.domain.config import (ARCHS, ENGINES, LABELS, NORMS, ConfigError, DataConfig, DistillConfig, EvalConfig,
                                 ExpertConfig, ModelConfig, from_dict, to_dict)

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT_FIELDS = [
    (DistillConfig, "ipc", 1), (DistillConfig, "syn_steps", 1), (DistillConfig, "expert_epochs", 1),
    (DistillConfig, "max_start_epoch", 1), (DistillConfig, "iterations", 1), (DistillConfig, "checkpoint_every", 1),
    (DistillConfig, "seed", 0), (DistillConfig, "batch_syn", 1), (ExpertConfig, "num_experts", 1),
    (ExpertConfig, "epochs", 1), (ExpertConfig, "batch_size", 1), (ExpertConfig, "seed", 0),
    (EvalConfig, "num_models", 1), (EvalConfig, "epochs", 1), (ModelConfig, "num_classes", 2),
]


@pytest.mark.parametrize("cls,name,lo", INT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _ in INT_FIELDS])
@FEW
@given(value=st.integers(min_value=-10**6, max_value=10**6))
def test_integer_fields_accept_exactly_their_range(cls, name, lo, value):
    if value >= lo:
        assert getattr(cls(**{name: value}), name) == value
    else:
        with pytest.raises(ConfigError, match=name):
            cls(**{name: value})


REQUIRED = [(DistillConfig, "ipc"), (DistillConfig, "syn_steps"), (ExpertConfig, "epochs"), (DistillConfig, "lr_img"),
            (DistillConfig, "lr_lr"), (ModelConfig, "depth"), (ModelConfig, "num_classes"), (DistillConfig, "dsa"),
            (DistillConfig, "engine"), (EvalConfig, "momentum"), (DataConfig, "zca")]


@pytest.mark.parametrize("cls,name", REQUIRED, ids=[f"{c.__name__}.{n}" for c, n in REQUIRED])
@FEW
@given(value=st.one_of(st.booleans(), st.text(max_size=3), st.none(), st.floats(allow_nan=True), st.integers(-3, 3)))
def test_wrong_types_and_none_are_refused_by_name(cls, name, value):
    """None is no default for a required field: it is refused like any wrong type."""
    extra = {"name": "demo"} if cls is DataConfig else {}
    default = attrs.fields_dict(cls)[name].default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str) and value in ENGINES
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= (2 if name == "num_classes" else 1)
    else:  # a float: lr_img (> 0, finite), lr_lr and momentum (>= 0, finite)
        lo_ok = (lambda v: v > 0) if name == "lr_img" else (lambda v: v >= 0)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and lo_ok(value)
              and value != float("inf"))
    if name == "lr_img" and ok and value <= 1e-6:
        ok = True  # any positive lr_img is valid
    if ok:
        try:
            cls(**extra, **{name: value})
        except ConfigError as e:  # only a cross-field rule may object, and it names its fields
            assert name in str(e) or "divisible" in str(e) or "min_lr" in str(e)
    else:
        with pytest.raises(ConfigError, match=name):
            cls(**extra, **{name: value})


def test_none_for_a_required_field_is_a_config_error_not_a_type_error():
    for cls, name in [(DistillConfig, "ipc"), (DistillConfig, "syn_steps"), (ExpertConfig, "epochs"),
                      (ModelConfig, "depth")]:
        with pytest.raises(ConfigError, match=name):
            cls(**{name: None})
    assert DistillConfig(batch_syn=None).batch_syn is None  # optional fields still admit None


@FEW
@given(lr=st.floats(allow_nan=True, allow_infinity=False, width=64))
def test_learning_rates_must_be_positive(lr):
    ok = lr == lr and lr > 0
    if ok and lr > 1e-6:  # lr_init must stay above min_lr
        DistillConfig(lr_img=lr, lr_init=lr)
    elif not ok:
        with pytest.raises(ConfigError):
            DistillConfig(lr_img=lr)


def _distill_config(**kw) -> DistillConfig:
    if kw["labels"] == "learned-teacher":  # it starts from real images: init 'noise' is refused by name
        kw["init"] = "real"
    return DistillConfig(**kw)


distill_configs = st.builds(
    _distill_config,
    ipc=st.integers(1, 50), syn_steps=st.integers(1, 80), expert_epochs=st.integers(1, 5),
    max_start_epoch=st.integers(1, 40), iterations=st.integers(1, 10_000),
    lr_img=st.floats(1e-3, 1e5), lr_lr=st.floats(0, 1e-2), lr_init=st.floats(1e-4, 1.0),
    engine=st.sampled_from(ENGINES), labels=st.sampled_from([x for x in LABELS if x != "teacher-epoch"]),
    init=st.sampled_from(["real", "noise"]), dsa=st.booleans(), seed=st.integers(0, 2**31),
    batch_syn=st.one_of(st.none(), st.integers(1, 500)), max_grad_norm=st.one_of(st.none(), st.floats(1e-3, 1e3)),
)
model_configs = st.builds(
    ModelConfig, arch=st.just("convnet"), depth=st.integers(1, 4), width=st.integers(1, 256),
    norm=st.sampled_from(NORMS), num_classes=st.integers(2, 1000),
    image_size=st.integers(1, 8).map(lambda k: 16 * k),
)


@FEW
@given(cfg=st.one_of(distill_configs, model_configs, st.builds(ExpertConfig, num_experts=st.integers(1, 100)),
                     st.builds(EvalConfig, models=st.lists(st.sampled_from(ARCHS), min_size=1, max_size=3)),
                     st.builds(DataConfig, name=st.just("demo"), zca=st.booleans())))
def test_valid_configs_survive_a_json_round_trip(cfg):
    data = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(type(cfg), data) == cfg
    assert to_dict(attrs.evolve(cfg)) == to_dict(cfg)


@FEW
@given(cfg=distill_configs, key=st.text(min_size=1, max_size=12).filter(lambda k: k not in attrs.fields_dict(DistillConfig)))
def test_unknown_keys_are_refused_by_name(cfg, key):
    data = {**to_dict(cfg), key: 1}
    with pytest.raises(ConfigError) as e:
        from_dict(DistillConfig, data)
    assert key in str(e.value)


@FEW
@given(cfg=distill_configs)
def test_last_epoch_needed_covers_every_start_and_target(cfg):
    # starts are drawn from [0, max_start_epoch); the target is start + expert_epochs
    assert cfg.last_epoch_needed == cfg.max_start_epoch - 1 + cfg.expert_epochs


@FEW
@given(size=st.integers(1, 256), depth=st.integers(1, 6))
def test_convnet_image_size_must_divide_by_two_to_the_depth(size, depth):
    if size % 2**depth == 0:
        ModelConfig(depth=depth, image_size=size)
    else:
        with pytest.raises(ConfigError, match="2\\*\\*depth"):
            ModelConfig(depth=depth, image_size=size)
