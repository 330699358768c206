"""Resuming a run from its record (:mod:`tesla.domain.resume`): the recorded settings, the
typed resumable changes, and one line naming any other typed change."""

from __future__ import annotations

import pytest

from tesla.domain.errors import DistillError
from tesla.domain.resume import option_name, resumed_distill, resumed_value

RECORDED = {"ipc": 1, "syn_steps": 3, "iterations": 4, "lr_img": 50.0, "seed": 3, "labels": "hard"}
DEFAULTS = {"ipc": 10, "syn_steps": 30, "iterations": 5000, "lr_img": 1000.0, "seed": 0, "labels": "hard"}
RESUMABLE = {"iterations", "lr_img"}


def test_fields_not_typed_take_the_recorded_value_not_the_default():
    assert resumed_distill(RECORDED, DEFAULTS, set(), resumable=RESUMABLE) == RECORDED


def test_typed_resumable_changes_replace_the_recorded_value():
    typed = {**DEFAULTS, "iterations": 8, "lr_img": 25.0}
    assert resumed_distill(RECORDED, typed, {"iterations", "lr_img"}, resumable=RESUMABLE) == {
        **RECORDED, "iterations": 8, "lr_img": 25.0}


def test_a_typed_setting_equal_to_the_recorded_one_is_accepted():
    typed = {**DEFAULTS, "syn_steps": 3}
    assert resumed_distill(RECORDED, typed, {"syn_steps"}, resumable=RESUMABLE) == RECORDED


def test_a_typed_setting_that_is_not_resumable_and_differs_is_refused_naming_it():
    typed = {**DEFAULTS, "syn_steps": 5}
    with pytest.raises(DistillError, match=r"^--syn-steps 5: the run was made with different syn_steps \(3, "
                                           r"recorded in config.json\), which cannot change on --resume"):
        resumed_distill(RECORDED, typed, {"syn_steps"}, resumable=RESUMABLE)


def test_a_preset_must_agree_on_what_is_not_resumable_and_changes_nothing_else():
    preset = {**DEFAULTS, "ipc": 1, "syn_steps": 3, "seed": 3}  # the preset's own iterations and lr_img
    assert resumed_distill(RECORDED, preset, set(), resumable=RESUMABLE, preset="p") == RECORDED
    with pytest.raises(DistillError, match="--preset p sets ipc 10 but the run was made with 1"):
        resumed_distill(RECORDED, DEFAULTS, set(), resumable=RESUMABLE, preset="p")


def test_all_typed_is_the_strict_comparison_a_script_asks_for():
    with pytest.raises(DistillError, match="different ipc"):
        resumed_distill(RECORDED, DEFAULTS, None, resumable=RESUMABLE)
    assert resumed_distill(RECORDED, {**RECORDED, "iterations": 9}, None, resumable=RESUMABLE)["iterations"] == 9


def test_fields_a_newer_version_added_take_the_requested_value():
    assert resumed_distill(RECORDED, {**DEFAULTS, "new": 1}, set(), resumable=RESUMABLE)["new"] == 1


def test_recorded_values_that_are_not_config_fields():
    assert resumed_value("--trajectories", "a.zarr", None) == "a.zarr"
    assert resumed_value("--trajectories", "a.zarr", "a.zarr") == "a.zarr"
    assert resumed_value("--trajectories", "a.zarr", "/abs/a.zarr", same=True) == "/abs/a.zarr"
    assert resumed_value("--trajectories", None, "b.zarr") == "b.zarr"
    with pytest.raises(DistillError, match="--trajectories b.zarr: the run was made with a.zarr"):
        resumed_value("--trajectories", "a.zarr", "b.zarr")
    assert option_name("max_start_epoch") == "--max-start-epoch"
