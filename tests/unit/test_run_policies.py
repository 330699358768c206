"""The small pure policies of a run: the guard, label plans, the run directory, URLs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tesla.domain import guard
from tesla.domain.errors import RunDirError
from tesla.domain.labels import LabelPlan, plan_labels
from tesla.domain.rundir import RUN_CONFIG, prepare_run_dir
from tesla.domain.urls import is_hdf5_url, is_remote, options_for, rank_store_url, redact_url
from tests.unit.fakes import FakeRunFiles

# --- the guard ----------------------------------------------------------------------------


def _before(loss=1.0, lr_grad=0.1, grad_finite=True, state_problem=None, max_loss=1000.0, done=4):
    return guard.before_update(done, loss, lr_grad, grad_finite=grad_finite, state_problem=state_problem,
                               max_loss=max_loss)


def test_a_healthy_iteration_passes():
    assert _before() is None and guard.after_update(4, 1.0, state_problem=None) is None
    assert _before(loss=1e300, max_loss=math.inf) is None


@pytest.mark.parametrize("kw,what", [(dict(loss=math.nan), "the loss"), (dict(grad_finite=False), "the image gradient"),
                                     (dict(lr_grad=-math.inf), "the lr gradient"),
                                     (dict(loss=math.inf, grad_finite=False), "the loss")])
def test_bad_numbers_of_this_iteration_keep_the_state_before_it(kw, what):
    stop = _before(**kw)
    assert stop.what == what and stop.iteration == 5 and stop.kept == 4 and stop.checkpoint_now
    assert not stop.diverged


def test_a_set_that_was_already_bad_keeps_nothing_of_this_run():
    stop = _before(loss=math.nan, state_problem="images")
    assert stop.what == "the images (before any update of this run)" and stop.kept is None
    assert not stop.checkpoint_now


def test_divergence_is_a_finite_loss_above_the_limit_and_keeps_nothing():
    assert _before(loss=1000.0) is None  # at the limit is fine
    stop = _before(loss=1234.5)
    assert stop.diverged and stop.kept is None and stop.max_loss == 1000.0
    assert "raise --max-loss" in stop.fix


def test_an_overflowing_update_keeps_nothing():
    stop = guard.after_update(4, 0.5, state_problem="lr")
    assert stop.what == "the lr after the update" and stop.iteration == 5 and stop.kept is None


def test_the_message_says_what_when_which_state_and_the_fix():
    nan = guard.Stop(what="the loss", iteration=3, loss=math.nan, kept=2)
    assert nan.message() == ("the loss became NaN/inf at iteration 3 (loss nan); the last good state (after "
                             "iteration 2) is kept in the checkpoint: lower --lr-img or --lr-lr (or set "
                             "--max-grad-norm) and continue with --resume")
    far = guard.Stop(what="the loss", iteration=9, loss=12345.678, diverged=True, max_loss=1000.0, kept=5)
    assert far.message().startswith("the matching loss 1.235e+04 at iteration 9 is above max_loss 1000 (the run "
                                     "diverged); the last good state (after iteration 5)")


# --- label plans --------------------------------------------------------------------------


def test_label_plans_of_each_strategy():
    draw = dict(expert=3, start_epoch=5, expert_epochs=2, num_snapshots=11)
    assert plan_labels("hard", **draw) == LabelPlan("hard")
    assert plan_labels("learned", **draw) == LabelPlan("learned")
    assert plan_labels("teacher-target", **draw) == LabelPlan("teacher", expert=3, epoch=7)
    assert plan_labels("teacher-last", **draw) == LabelPlan("teacher", expert=3, epoch=10)
    assert plan_labels("teacher-epoch", fixed_epoch=4, **draw) == LabelPlan("teacher", expert=3, epoch=4)
    with pytest.raises(ValueError, match="outside expert 3's snapshots 0..10"):
        plan_labels("teacher-epoch", fixed_epoch=11, **draw)
    with pytest.raises(ValueError, match="labels must be one of"):
        plan_labels("soft", **draw)


def test_a_plan_round_trips_through_its_provenance():
    for plan in (LabelPlan("hard"), LabelPlan("learned"), LabelPlan("teacher", expert=1, epoch=4)):
        assert LabelPlan.from_provenance(plan.provenance()) == plan
        assert plan.teacher == (plan.kind == "teacher")


# --- the run directory ----------------------------------------------------------------------


def test_a_new_run_directory_records_its_config():
    files = FakeRunFiles()
    out = prepare_run_dir(files, Path("/r"), {"model": {"w": 1}}, resume=False)
    assert out == Path("/r") and files.kind(Path("/r")) == "dir"
    assert json.loads(files.files[f"/r/{RUN_CONFIG}"]) == {"model": {"w": 1}}


def test_a_run_directory_holding_a_run_is_refused_unless_resumed_with_the_same_settings():
    files = FakeRunFiles(files={"/r/config.json": json.dumps({"model": {"w": 1}, "data": {"d": 1}})})
    with pytest.raises(RunDirError, match="already holds a run: pass --resume"):
        prepare_run_dir(files, Path("/r"), {"model": {"w": 1}}, resume=False)
    with pytest.raises(RunDirError, match="a different model config"):
        prepare_run_dir(files, Path("/r"), {"model": {"w": 2}, "data": {"d": 1}}, resume=True,
                        compare_keys=("model", "data"))
    prepare_run_dir(files, Path("/r"), {"model": {"w": 1}, "data": {"d": 1}, "x": 3}, resume=True,
                    compare_keys=("model", "data"))
    assert json.loads(files.files["/r/config.json"]) == {"model": {"w": 1}, "data": {"d": 1}}  # kept as it was


def test_unusable_run_directories_are_refused_with_the_fix():
    with pytest.raises(RunDirError, match="exists and is not a directory: choose another --out"):
        prepare_run_dir(FakeRunFiles(files={"/r": "x"}), Path("/r"), {}, resume=False)
    with pytest.raises(RunDirError, match="unreadable"):
        prepare_run_dir(FakeRunFiles(files={"/r/config.json": "{not json"}), Path("/r"), {}, resume=True)
    with pytest.raises(RunDirError, match=r"cannot write to /r \(Permission denied\): choose a writable --out"):
        prepare_run_dir(FakeRunFiles(readonly=["/r"]), Path("/r"), {}, resume=False)


# --- URLs ---------------------------------------------------------------------------------


def test_url_policy():
    assert is_hdf5_url("a/b.H5") and is_hdf5_url("s3://x/y.hdf5/") and not is_hdf5_url("a/b.zarr")
    assert is_remote("s3://b/x") and not is_remote("file:///x") and not is_remote("/x")
    assert options_for("s3://b/x.zarr", {"anon": True}) == {"anon": True}
    assert options_for("/data/x.zarr", {"anon": True}) is None and options_for("s3://b", None) is None
    assert redact_url("s3://key:secret@b/x?token=t") == "s3://***@b/x" and redact_url("/a/b") == "/a/b"
    assert rank_store_url("/e/experts.h5", 1, 2) == "/e/experts.rank1.h5"
    assert rank_store_url("/e/experts.h5", 0, 1) == "/e/experts.h5"
    assert rank_store_url("/e/experts.zarr", 1, 2) == "/e/experts.zarr"


# --- credentials in text -----------------------------------------------------------------


def test_redact_text_takes_every_credential_out_of_urls_in_text():
    from tesla.domain.urls import redact_text

    line = ('{"path":"memory://u:PW1234@b/s.zarr?token=TOK5678#checkpoints/00000002","x":"s3://K:S3CR@bkt/x.h5",'
            '"y":"https://h/x?sig=SIG9&a=1"}')
    out = redact_text(line)
    assert json.loads(out) == {"path": "memory://***@b/s.zarr#checkpoints/00000002", "x": "s3://***@bkt/x.h5",
                               "y": "https://h/x"}
    # what a library prints of a URL it was given, scheme dropped
    lib = "No group found in store <FsspecStore(Wrapper, /u:PW1234@b/s.zarr?token=TOK5678)> at path ''"
    assert "PW1234" not in redact_text(lib) and "TOK5678" not in redact_text(lib)
    # text without credentials is left as it was
    plain = "checkpoint @ it 3: /tmp/run/synthetic.zarr#checkpoints/00000003 at 12:30 (a@b.com) x=1"
    assert redact_text(plain) == plain
    # secrets the caller knows of, wherever they are
    assert redact_text("key AKIAXYZ rejected", ["AKIAXYZ", "ab"]) == "key *** rejected"


def test_redact_json_and_the_secrets_of_urls_and_options():
    from tesla.domain.urls import option_secrets, redact_json, url_secrets, without_redacted_userinfo

    cfg = {"data": {"root": "s3://K:S@b/d.zarr"}, "list": ["memory://u:p@x/y?token=t", 3], "n": None}
    assert redact_json(cfg) == {"data": {"root": "s3://***@b/d.zarr"}, "list": ["memory://***@x/y", 3], "n": None}
    assert set(url_secrets("see s3://KEY:SE%2FCRET@b/x?token=TOK")) >= {"KEY", "SE/CRET", "SE%2FCRET", "TOK"}
    assert option_secrets({"key": "AKIA", "anon": True, "client_kwargs": {"aws_session_token": "zz"}}) == ["AKIA", "zz"]
    assert without_redacted_userinfo("s3://***@b/d.zarr") == "s3://b/d.zarr"


def test_a_run_directory_records_its_config_without_credentials(tmp_path):
    files = FakeRunFiles()
    cfg = {"trajectories": "s3://KEY:SECRET@b/t.zarr", "data": {"root": "memory://u:PWD1@b/p.zarr"}}
    prepare_run_dir(files, Path("/runs/a"), cfg, resume=False)
    text = files.files[str(Path("/runs/a") / RUN_CONFIG)]
    assert "SECRET" not in text and "PWD1" not in text and "s3://***@b/t.zarr" in text
    # the same run resumed with the credentials given again is the same run
    prepare_run_dir(files, Path("/runs/a"), cfg, resume=True, compare_keys=("data",))
