"""The distillation set-up and the ranks' null objects, on fakes.

One process and the ranks of a distributed run take the same path: what differs is
chosen once (:class:`~tesla.domain.ports.SingleProcess` or real ranks, a writer or a
follower role), never tested as a flag in the loop. Shown here: the null objects do
nothing and cost nothing, the agreed cancel reads every rank, a follower rank writes
nothing, and the set-up checks and refuses before any work.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import attrs
import pytest

from tesla.app.services.distill import DistillRun, distill, no_evaluation
from tesla.app.services.run import (AgreedCancel, DistillRequest, Follower, FollowerStore, Writer,
                                    prepare_distillation)
from tesla.domain.config import DistillConfig, ModelConfig, to_dict
from tesla.domain.engines import FirstOrder, from_config
from tesla.domain.errors import DistillError, RunDirError, StoreError
from tesla.domain.ports import ListSink, NoGauges, NullSink, SingleProcess
from tests.unit.fakes import (FakeData, FakeParts, FakeRanks, FakeRunFiles, FakeSetStore, FakeStudent,
                              FakeTrajectories, StopAfter)

MODEL = ModelConfig(depth=1, width=2, channels=1, image_size=2, num_classes=2)
CFG = DistillConfig(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=2, iterations=4, checkpoint_every=2,
                    lr_img=0.1, lr_lr=1e-3, lr_init=0.05, seed=1)


def _traj() -> FakeTrajectories:
    return FakeTrajectories.random(model=to_dict(MODEL), dataset={"name": "demo"})


def _request(**kw) -> DistillRequest:
    base = dict(trajectories="experts.zarr", out=Path("/runs/a"), cfg=CFG, preview_every=0)
    base.update(kw)
    return DistillRequest(**base)


# --- the null objects -------------------------------------------------------------------


def test_a_single_process_is_rank_0_of_1_and_its_collectives_are_the_identity():
    one = SingleProcess()
    value = [1.0, 2.0]
    assert one.shard == (0, 1) and one.is_writer
    assert one.sum(value) is value and one.any(True) and not one.any(False)
    assert one.agree(lambda: 7) == 7 and one.agree(lambda: 8, only_writer=True) == 8


def test_the_agreed_cancel_stops_every_rank_when_any_rank_is_asked():
    local = threading.Event()
    ranks = FakeRanks(others_cancel=True)
    assert AgreedCancel(local, ranks).is_set() and ranks.calls == ["any"]
    assert not AgreedCancel(None, FakeRanks()).is_set()
    alone = AgreedCancel(None, SingleProcess())
    assert not alone.is_set()
    alone.set()
    assert alone.is_set()


def test_a_run_stops_at_once_when_another_rank_was_cancelled():
    store = FakeSetStore()
    run = DistillRun(cfg=CFG, model=MODEL, data=FakeData(), trajectories=_traj(), store=store,
                     student=FakeStudent(CFG), engine=from_config(CFG))
    result = distill(run, cancel=AgreedCancel(None, FakeRanks(others_cancel=True)))
    assert result.status == "cancelled" and result.iterations == 0
    assert [c.iteration for c in store.checkpoints] == [0]


def test_ranks_sum_the_image_gradient_once_per_iteration_and_shard_pass_two():
    ranks = FakeRanks(rank=1, world=2)
    engine = from_config(CFG, shard=ranks.shard)
    assert engine == FirstOrder(chunk=1, shard=(1, 2))
    run = DistillRun(cfg=CFG, model=MODEL, data=FakeData(), trajectories=_traj(), store=FakeSetStore(),
                     student=FakeStudent(CFG), engine=engine, ranks=ranks)
    distill(run)
    assert ranks.calls == ["sum"] * CFG.iterations  # the label gradient too, where labels are learned


def test_a_follower_store_reads_checkpoints_and_writes_nothing():
    backing = FakeSetStore()
    distill(DistillRun(cfg=CFG, model=MODEL, data=FakeData(), trajectories=_traj(), store=backing,
                       student=FakeStudent(CFG), engine=from_config(CFG)), cancel=StopAfter(2))
    follower = FollowerStore(lambda: backing)
    assert follower.last_checkpoint() == backing.checkpoints[-1] and backing.closed  # opened, read, closed
    written = list(backing.checkpoints)
    result = distill(DistillRun(cfg=CFG, model=MODEL, data=FakeData(), trajectories=_traj(), store=follower,
                                student=FakeStudent(CFG), engine=from_config(CFG), resume=True))
    assert result.status == "completed" and result.iterations == 4  # it resumed from rank 0's checkpoint
    assert backing.checkpoints == written and backing.sets == []

    def missing():
        raise StoreError("no such store")

    assert FollowerStore(missing).last_checkpoint() is None


def test_the_follower_role_shows_nothing_and_the_writer_passes_its_sink_on():
    follower = Follower(store=FollowerStore(FakeSetStore), run_dir=Path("/runs/a"))
    sink = ListSink()
    assert isinstance(follower.sink(sink), NullSink) and isinstance(follower.gauges, NoGauges)
    assert follower.evaluator(None, sink) is no_evaluation and follower.completed() is None
    parts = FakeParts(_traj())
    writer = Writer(parts=parts, store=FakeSetStore(), run_dir=Path("/runs/a"), gauges=NoGauges(), req=_request())
    assert writer.sink(sink) is sink and isinstance(writer.sink(None), NullSink)
    assert writer.evaluator(None, sink) is no_evaluation  # eval_every 0
    writer.completed()
    assert parts.exported == ["/runs/a/images"]


# --- the set-up -----------------------------------------------------------------------------


def test_prepare_records_the_config_and_the_job_runs_and_exports_the_images():
    parts = FakeParts(_traj())
    prepared = prepare_distillation(_request(), parts)
    recorded = json.loads(parts.files.files["/runs/a/config.json"])
    assert recorded == prepared.config and recorded["model"] == to_dict(MODEL)
    assert recorded["trajectories"] == "experts.zarr" and recorded["data"]["name"] == "demo"
    assert "store" not in recorded and "distributed" not in recorded
    assert parts.opened == [("/runs/a/synthetic.zarr", True)]
    sink = ListSink()
    result = prepared.job(sink, threading.Event())
    assert result.status == "completed" and parts.exported == ["/runs/a/images"]
    assert sink.events[0].config == prepared.config
    final = parts.store.sets[0]
    assert final.attrs["class_names"] == ["class0", "class1"] and final.attrs["trajectories"] == "experts.zarr"


def test_prepare_refuses_a_store_that_holds_checkpoints_without_resume():
    parts = FakeParts(_traj())
    prepare_distillation(_request(), parts).job(None, StopAfter(1))
    again = FakeParts(_traj(), store=parts.store, files=FakeRunFiles(dirs=["/runs/b"]))
    with pytest.raises(DistillError, match=r"/runs/b/synthetic.zarr already holds checkpoints: pass --resume or "
                                           r"choose another --out"):
        prepare_distillation(_request(out=Path("/runs/b")), again)
    assert parts.store.closed
    with pytest.raises(DistillError, match="choose another --store"):
        prepare_distillation(_request(out=Path("/runs/c"), store_url="memory://x.zarr"), again)


def test_prepare_refuses_a_changed_resume_before_any_work():
    parts = FakeParts(_traj())
    prepare_distillation(_request(), parts).job(None, StopAfter(1))
    changed = DistillConfig(ipc=3, syn_steps=3, expert_epochs=1, max_start_epoch=2, iterations=4, lr_img=0.1,
                            lr_init=0.05, seed=1)
    with pytest.raises(DistillError, match="different ipc"):
        prepare_distillation(_request(cfg=changed, resume=True), FakeParts(_traj(), store=parts.store,
                                                                            files=parts.files))


def test_prepare_refuses_a_run_directory_that_holds_another_run():
    files = FakeRunFiles(files={"/runs/a/config.json": "{}"})
    with pytest.raises(RunDirError, match="already holds a run: pass --resume"):
        prepare_distillation(_request(), FakeParts(_traj(), files=files))


def test_other_engines_cannot_split_their_steps_across_ranks():
    exact = DistillConfig(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=2, engine="exact")
    parts = FakeParts(_traj(), ranks=FakeRanks(world=2))
    with pytest.raises(DistillError, match="engine 'exact' cannot split its steps across processes"):
        prepare_distillation(_request(cfg=exact), parts)
    assert parts.students == []  # refused before anything was built


def test_a_follower_rank_opens_no_run_directory_and_writes_nothing():
    backing = FakeSetStore()
    parts = FakeParts(_traj(), ranks=FakeRanks(rank=1, world=2), store=backing)
    prepared = prepare_distillation(_request(store_url="s3://key:secret@bucket/run.zarr"), parts)
    assert parts.files.files == {} and parts.opened == []  # rank 0 makes them
    assert prepared.config["distributed"] == {"world": 2} and prepared.config["store"] == "s3://***@bucket/run.zarr"
    sink = ListSink()
    result = prepared.job(sink, threading.Event())
    assert result.status == "completed" and sink.events == [] and backing.checkpoints == backing.sets == []
    assert parts.exported == [] and parts.opened == []  # a fresh run: no checkpoint to read either


# --- refusals before anything is written, the run directory's lock, the experts it was made from ---


def _stopped_run(**kw) -> FakeParts:
    """A run of one iteration in /runs/a (a checkpoint and config.json written)."""
    parts = FakeParts(_traj(), **kw)
    prepare_distillation(_request(), parts).job(None, StopAfter(1))
    return parts


def test_config_json_is_written_after_the_store_checks_and_the_lock_is_held_for_the_job():
    parts = FakeParts(_traj())
    prepared = prepare_distillation(_request(), parts)
    assert "/runs/a/config.json" in parts.files.files and parts.files.locks == ["/runs/a"]
    prepared.job(None, StopAfter(1))
    assert parts.files.locks == []  # released when the job ends
    # a refused attempt on a fresh directory leaves neither config nor directory behind
    held = FakeParts(_traj(), store=parts.store)
    with pytest.raises(DistillError, match="already holds checkpoints"):
        prepare_distillation(_request(out=Path("/runs/fresh"), store_url="memory://x.zarr"), held)
    assert held.files.files == {} and held.files.dirs == set() and held.files.locks == []


def test_a_run_directory_held_by_another_process_is_refused_before_its_store_is_opened():
    parts = _stopped_run()
    parts.files.locked_by_others.add("/runs/a")
    again = FakeParts(_traj(), store=parts.store, files=parts.files)
    before = dict(parts.files.files)
    with pytest.raises(RunDirError, match="being written by process 4242"):
        prepare_distillation(_request(resume=True), again)
    assert again.opened == [] and parts.files.files == before


def test_a_resume_with_other_experts_is_refused_before_any_work():
    parts = _stopped_run()
    recorded = parts.store.checkpoints[-1].attrs["trajectories"]
    assert recorded == {"url": "experts.zarr", "fingerprint": _traj().fingerprint(), "experts": 2}
    assert json.loads(parts.files.files["/runs/a/config.json"])["trajectory_identity"] == recorded
    other = FakeTrajectories.random(seed=7, model=to_dict(MODEL), dataset={"name": "demo"})
    again = FakeParts(other, store=parts.store, files=parts.files)
    with pytest.raises(DistillError, match=r"made from the experts of experts.zarr \(2 experts, fingerprint "):
        prepare_distillation(_request(resume=True, trajectories="s3://key:secret@b/other.zarr"), again)
    assert parts.files.locks == [] and len(parts.store.checkpoints) == 1
    # the loop refuses the same (a caller that assembles its own run)
    run = DistillRun(cfg=CFG, model=MODEL, data=FakeData(), trajectories=other, store=parts.store,
                     student=FakeStudent(CFG), engine=from_config(CFG), resume=True,
                     trajectory_identity={"url": "o", "fingerprint": other.fingerprint(), "experts": 2})
    with pytest.raises(DistillError, match="holds other experts"):
        distill(run)
    # the same experts from another place resume (a copied store)
    result = prepare_distillation(_request(resume=True, trajectories="/copy/experts.zarr"),
                                  FakeParts(_traj(), store=parts.store, files=parts.files)).job(None, None)
    assert result.status == "completed"


def test_a_checkpoint_from_before_identities_were_kept_still_resumes():
    parts = _stopped_run()
    old = parts.store.checkpoints[-1]
    parts.store.checkpoints[-1] = type(old)(iteration=old.iteration, arrays=old.arrays,
                                             attrs={k: v for k, v in old.attrs.items() if k != "trajectories"})
    result = prepare_distillation(_request(resume=True), FakeParts(_traj(), store=parts.store,
                                                                   files=parts.files)).job(None, None)
    assert result.status == "completed"


@pytest.mark.parametrize("files,match", [
    (FakeRunFiles(files={"/runs/a/zarr.json": "{}"}), "/runs/a is a store"),
    (FakeRunFiles(files={"/runs/zarr.json": "{}"}), "/runs/a lies inside the store /runs"),
    (FakeRunFiles(dirs=["/runs/a", "/runs/a/synthetic.h5"]),
     "holds synthetic.h5, a run in the h5 format: resume it with --format h5"),
])
def test_run_directories_that_cannot_take_this_run_are_refused_writing_nothing(files, match):
    before = (dict(files.files), set(files.dirs))
    parts = FakeParts(_traj(), files=files)
    with pytest.raises(RunDirError, match=match):
        prepare_distillation(_request(resume=True), parts)
    assert (files.files, files.dirs) == before and parts.opened == [] and files.locks == []


@pytest.mark.parametrize("kw,match", [(dict(preview_every=-1), "--preview-every must be an integer >= 0"),
                                      (dict(eval_every=-2), "--eval-every must be an integer >= 0"),
                                      (dict(eval_every=1, eval_models=0), "num_models must be an integer >= 1"),
                                      (dict(eval_every=1, eval_epochs=0), "epochs must be an integer >= 1")])
def test_bad_request_values_are_refused_before_anything_is_opened(kw, match):
    from tesla.domain.errors import ConfigError

    parts = FakeParts(_traj())
    with pytest.raises(ConfigError, match=match):
        prepare_distillation(_request(**kw), parts)
    assert parts.students == [] and parts.opened == [] and parts.files.files == {}


def test_a_set_that_cannot_fit_is_refused_before_the_student_is_built():
    from tesla.domain.errors import ResourceError
    from tests.unit.test_footprint import FakeMemory

    parts = FakeParts(_traj(), memory=FakeMemory(host=2**20))
    huge = DistillConfig(ipc=10**6, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_init=0.05)
    with pytest.raises(ResourceError, match=r"the largest part is .*: lower --"):
        prepare_distillation(_request(cfg=huge), parts)
    assert parts.students == [] and parts.opened == [] and parts.files.files == {}


# --- resuming from the run's record ------------------------------------------------------------


def test_resume_takes_the_recorded_settings_and_only_the_typed_resumable_changes():
    parts = FakeParts(_traj())
    prepare_distillation(_request(set_name="synthetic.h5"), parts).job(None, StopAfter(1))
    # what the command line builds from `-o /runs/a --resume --iterations 6`: defaults elsewhere
    typed = DistillRequest(trajectories=None, out=Path("/runs/a"), cfg=DistillConfig(iterations=6), resume=True,
                           typed=frozenset({"iterations"}), preview_every=0)
    again = FakeParts(_traj(), store=parts.store, files=parts.files)
    prepared = prepare_distillation(typed, again)
    assert prepared.config["distill"] == to_dict(attrs.evolve(CFG, iterations=6))
    assert prepared.config["trajectories"] == "experts.zarr" and prepared.config["set"] == "synthetic.h5"
    assert again.opened == [("/runs/a/synthetic.h5", True)]
    # the record now says 6: a later plain --resume continues to 6
    assert json.loads(parts.files.files["/runs/a/config.json"])["distill"]["iterations"] == 6
    assert prepared.job(None, threading.Event()).iterations == 6


def test_resume_refuses_a_typed_change_that_is_not_resumable_and_writes_nothing():
    parts = FakeParts(_traj())
    prepare_distillation(_request(), parts).job(None, StopAfter(1))
    before = dict(parts.files.files)
    typed = DistillRequest(trajectories=None, out=Path("/runs/a"), cfg=DistillConfig(syn_steps=5), resume=True,
                           typed=frozenset({"syn_steps"}))
    with pytest.raises(DistillError, match="--syn-steps 5: the run was made with different syn_steps"):
        prepare_distillation(typed, FakeParts(_traj(), store=parts.store, files=parts.files))
    # another store is taken when it holds the same experts (a copy), refused when it does not
    other = DistillRequest(trajectories="other.zarr", out=Path("/runs/a"), cfg=DistillConfig(), resume=True,
                           typed=frozenset({"trajectories"}))
    elsewhere = FakeTrajectories.random(seed=7, model=to_dict(MODEL), dataset={"name": "demo"})
    with pytest.raises(DistillError, match=r"made from the experts of experts.zarr \(2 experts"):
        prepare_distillation(other, FakeParts(elsewhere, store=parts.store, files=parts.files))
    assert parts.files.files == before


def test_a_request_without_trajectories_needs_a_run_to_resume():
    with pytest.raises(DistillError, match="pass --trajectories"):
        prepare_distillation(_request(trajectories=None), FakeParts(_traj()))
    with pytest.raises(DistillError, match=r"/runs/a holds no run to resume \(no config.json\): pass --trajectories"):
        prepare_distillation(_request(trajectories=None, resume=True), FakeParts(_traj()))
