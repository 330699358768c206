"""The experts service on fakes: what is trained, skipped, written and said, and what is
refused before anything is written (no torch, no files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesla.app.services.experts import (ExpertsPorts, ExpertsRequest, data_label, distributed_experts, prepare_experts,
                                        train_experts)
from tesla.app.services.merge import merge_trajectory_stores
from tesla.domain.config import DataConfig, ExpertConfig, ModelConfig, to_dict
from tesla.domain.errors import DataMismatchError, ExpertsError, RunDirError, StoreError
from tesla.domain.ports import ListSink
from tests.unit.service_fakes import (FakeData, FakeExpertTraining, FakeLoadData, FakeRunDirs, FakeStores,
                                      FakeTrajectoryStore, OneRank, StopAfter)

MODEL = ModelConfig(depth=2, width=8, image_size=16, num_classes=10)
DATA = {"name": "demo"}


def _train(store, cfg, *, training=None, sink=None, cancel=None, data=None):
    return train_experts(model_cfg=MODEL, expert_cfg=cfg, data=data or FakeData(), store=store, dataset=DATA,
                         training=training or FakeExpertTraining(), sink=sink, cancel=cancel)


def test_every_expert_is_written_snapshot_by_snapshot_and_announced():
    store, sink, training = FakeTrajectoryStore(), ListSink(), FakeExpertTraining()
    result = _train(store, ExpertConfig(num_experts=3, epochs=2, seed=5), training=training, sink=sink)
    assert result.status == "completed" and result.trained == (0, 1, 2) and result.skipped == ()
    assert training.groups == [[5], [6], [7]]  # expert i is seeded seed + i, one at a time by default
    assert store.expert_ids() == [0, 1, 2] and not store.begun
    assert store.experts[1][0] == [(6, 0), (6, 1), (6, 2)]  # init and every epoch
    assert store.expert_attrs(1)["seed"] == 6 and store.expert_attrs(1)["test_accuracy"] == [6.0, 16.0, 26.0]
    assert store.meta.model == to_dict(MODEL) and store.meta.num_params == 4 and store.meta.dataset == DATA
    assert result.final_accuracy == {0: 25.0, 1: 26.0, 2: 27.0}
    types = [e.type for e in sink.events]
    assert types[0] == "run_started" and sink.events[0].total == 6 and types[-1] == "run_finished"
    assert types.count("epoch") == 6 and [e.path for e in sink.of("checkpoint")] == [
        "mem://experts#expert-0", "mem://experts#expert-1", "mem://experts#expert-2"]
    assert sink.events[-1].summary == {"trained": [0, 1, 2], "skipped": [], "final_accuracy": result.final_accuracy}


def test_complete_experts_are_skipped_so_a_rerun_resumes():
    store = FakeTrajectoryStore()
    _train(store, ExpertConfig(num_experts=2, epochs=1))
    training = FakeExpertTraining()
    again = _train(store, ExpertConfig(num_experts=4, epochs=1), training=training)
    assert again.trained == (2, 3) and again.skipped == (0, 1)
    assert training.groups == [[2], [3]]  # the complete ones are not trained again


def test_experts_train_in_groups_of_parallel():
    training = FakeExpertTraining()
    result = _train(FakeTrajectoryStore(), ExpertConfig(num_experts=5, epochs=1, parallel=2), training=training)
    assert training.groups == [[0, 1], [2, 3], [4]] and result.trained == (0, 1, 2, 3, 4)


def test_cancel_during_a_group_leaves_it_incomplete_and_the_rerun_redoes_it_from_its_seed():
    cfg = ExpertConfig(num_experts=3, epochs=3)
    whole = FakeTrajectoryStore()
    _train(whole, cfg)
    store, sink = FakeTrajectoryStore(), ListSink()
    # expert 0 trains whole (1 group check + 3 epoch checks), expert 1 is stopped after its epoch 1
    result = _train(store, cfg, sink=sink, cancel=StopAfter(1 + 3 + 1 + 1))
    assert result.status == "cancelled" and result.trained == (0,)
    assert store.expert_ids() == [0] and store.incomplete_ids() == [1]
    assert sink.of("warning") and "expert(s) 1 stopped" in sink.of("warning")[0].message
    assert sink.events[-1].type == "run_finished" and sink.events[-1].status == "cancelled"
    again = _train(store, cfg)
    assert again.status == "completed" and again.trained == (1, 2) and again.skipped == (0,)
    for e in range(3):  # the redone expert is the one an uninterrupted run wrote
        assert store.experts[e][0] == whole.experts[e][0]


def test_cancel_before_a_group_trains_nothing_more():
    store, training = FakeTrajectoryStore(), FakeExpertTraining()
    result = _train(store, ExpertConfig(num_experts=3, epochs=1), training=training, cancel=StopAfter(0))
    assert result.status == "cancelled" and result.trained == () and training.groups == [] and not store.begun


def test_data_that_does_not_fit_the_model_is_refused_before_the_store_is_touched():
    store = FakeTrajectoryStore()
    with pytest.raises(DataMismatchError, match="100 classes but the model outputs 10"):
        _train(store, ExpertConfig(num_experts=1, epochs=1), data=FakeData(num_classes=100))
    with pytest.raises(DataMismatchError, match=r"\(3, 32, 32\) but the model expects \(3, 16, 16\)"):
        _train(store, ExpertConfig(num_experts=1, epochs=1), data=FakeData(image_shape=(3, 32, 32)))
    assert store.writes == 0 and not store.initialized


# --- request -> prepared job ---------------------------------------------------------------------


def _ports(data=None, stores=None, run_dirs=None, training=None):
    return ExpertsPorts(load_data=FakeLoadData(data or FakeData()), stores=stores or FakeStores(),
                        training=training or FakeExpertTraining(), run_dirs=run_dirs or FakeRunDirs())


def _request(**kw):
    base = dict(out="mem://t.zarr", data=DataConfig(name="demo"), model=MODEL,
                experts=ExpertConfig(num_experts=2, epochs=1), run_dir=Path("/runs/r"))
    base.update(kw)
    return ExpertsRequest(**base)


def test_prepared_job_records_the_run_and_trains_into_the_store():
    ports = _ports()
    prepared = prepare_experts(_request(), ports)
    assert ports.training.groups == []  # nothing trained yet
    assert ports.run_dirs.calls == [(Path("/runs/r"), prepared.config, True, ("model", "data"))]
    assert prepared.config == {"experts": to_dict(ExpertConfig(num_experts=2, epochs=1)), "model": to_dict(MODEL),
                               "data": to_dict(DataConfig(name="demo"))}
    sink = ListSink()
    result = prepared.job(sink, StopAfter(100))
    assert result.trained == (0, 1) and ports.stores.stores["mem://t.zarr"].expert_ids() == [0, 1]
    assert sink.events[0].config == prepared.config


def test_without_a_preset_the_model_takes_the_datas_classes_and_shape():
    data = FakeData(num_classes=100, image_shape=(3, 64, 64))
    prepared = prepare_experts(_request(fit_model=True), _ports(data=data))
    assert (prepared.model.num_classes, prepared.model.image_size, prepared.model.depth) == (100, 64, 4)
    deeper = prepare_experts(_request(fit_model=True, depth=5), _ports(data=data))
    assert deeper.model.depth == 5


def test_mismatched_data_is_refused_before_any_store_or_run_directory():
    ports = _ports(data=FakeData(num_classes=100))
    with pytest.raises(DataMismatchError, match="pick the preset or dataset"):
        prepare_experts(_request(), ports)
    assert ports.stores.opened == [] and ports.run_dirs.calls == []


def test_an_existing_store_of_another_model_is_refused_before_the_run_directory():
    other = FakeTrajectoryStore("mem://t.zarr")
    other.initialize({"width": 64}, [("w", [9])], 9, DATA)
    ports = _ports(stores=FakeStores(t=other))
    with pytest.raises(StoreError, match="another model"):
        prepare_experts(_request(), ports)
    assert ports.run_dirs.calls == [] and other.writes == 1 and other.closed


def test_a_refused_run_directory_creates_no_store():
    ports = _ports(run_dirs=FakeRunDirs(refuse=RunDirError("/runs/r holds a run with a different model config")))
    with pytest.raises(RunDirError):
        prepare_experts(_request(), ports)
    assert ports.stores.opened == [] and ports.stores.stores == {}


def test_one_rank_runs_the_same_experts_and_says_so():
    ports, sink = _ports(), ListSink()
    prepared = prepare_experts(_request(out="mem://t.zarr"), ports, OneRank())
    result = prepared.job(sink, StopAfter(100))
    assert result.status == "completed" and result.trained == (0, 1)
    assert sink.events[0].config["distributed"] == {"world": 1} and sink.events[-1].summary["world"] == 1


def test_distributed_experts_into_per_rank_files_skips_what_a_merged_file_holds():
    stores = FakeStores()
    training = FakeExpertTraining()
    merged = stores.add(FakeTrajectoryStore("x.h5"))
    _train(merged, ExpertConfig(num_experts=1, epochs=1))  # expert 0 merged by an earlier run

    class TwoRanksSeenFromRankZero(OneRank):
        world = 2

        def all_gather(self, obj):
            return [obj, obj if isinstance(obj, list) else ("completed", [], {})]

    result = distributed_experts(ranks=TwoRanksSeenFromRankZero(), out="x.h5", model_cfg=MODEL,
                                 expert_cfg=ExpertConfig(num_experts=3, epochs=1), data=FakeData(), dataset=DATA,
                                 stores=stores, training=training, merge=False)
    assert training.groups == [[1]]  # experts 1 and 2 remain; rank 0 deals itself the first
    assert stores.stores["x.rank0.h5"].expert_ids() == [1] and result.skipped == (0,)


# --- merging -------------------------------------------------------------------------------------


def _store_with(url, ids, seed=0):
    store = FakeTrajectoryStore(url)
    _train(store, ExpertConfig(num_experts=max(ids) + 1, epochs=1, seed=seed))
    for i in set(store.experts) - set(ids):
        del store.experts[i]
    return store


def test_merge_copies_skips_equal_experts_and_refuses_different_ones():
    stores = FakeStores(a=_store_with("a", [0, 2]), b=_store_with("b", [1]))
    stores.stores["b"].begin_expert(3, 1, {})  # left unfinished
    sink = ListSink()
    result = merge_trajectory_stores(["a", "b"], "dest", stores=stores, sink=sink)
    assert sorted(e for _, e in result.copied) == [0, 1, 2] and result.incomplete == (("b", 3),)
    dest = stores.stores["dest"]
    assert dest.expert_ids() == [0, 1, 2] and dest.experts[1][0] == stores.stores["b"].experts[1][0]
    assert dest.expert_attrs(2)["test_accuracy"] == stores.stores["a"].expert_attrs(2)["test_accuracy"]
    assert len(sink.of("checkpoint")) == 3
    again = merge_trajectory_stores(["a", "b"], "dest", stores=stores)
    assert again.copied == () and len(again.skipped) == 3
    stores.add(_store_with("c", [0], seed=9))
    with pytest.raises(StoreError, match="expert 0 from c differs"):
        merge_trajectory_stores(["c"], "dest", stores=stores)
    with pytest.raises(StoreError, match="both a source and the destination"):
        merge_trajectory_stores(["a", "dest"], "dest", stores=stores)
    with pytest.raises(StoreError, match="at least one SRC"):
        merge_trajectory_stores([], "dest", stores=stores)


# --- one recipe per store ------------------------------------------------------------------------


@pytest.mark.parametrize("change", [dict(lr=0.05), dict(epochs=2), dict(seed=3), dict(batch_size=64),
                                    dict(momentum=0.9), dict(weight_decay=5e-4), dict(dsa=False)])
def test_experts_of_another_recipe_are_refused_before_the_store_or_run_directory_is_touched(change):
    store = FakeTrajectoryStore("mem://t.zarr")
    _train(store, ExpertConfig(num_experts=1, epochs=1))
    writes, ports = store.writes, _ports(stores=FakeStores(t=store))
    field = next(iter(change))
    wanted = {"num_experts": 3, "epochs": 1, **change}
    with pytest.raises(ExpertsError, match=rf"mem://t.zarr holds experts trained with {field} .* \(expert 0\) vs "):
        prepare_experts(_request(experts=ExpertConfig(**wanted)), ports)
    assert ports.run_dirs.calls == [] and store.writes == writes and store.expert_ids() == [0] and store.closed


def test_more_experts_of_the_same_recipe_and_other_cadences_are_welcome():
    store = FakeTrajectoryStore("mem://t.zarr")
    _train(store, ExpertConfig(num_experts=1, epochs=1))
    ports = _ports(stores=FakeStores(t=store))
    same = ExpertConfig(num_experts=3, epochs=1, eval_every=0, parallel=2)  # count, cadence, grouping: not a recipe
    result = prepare_experts(_request(experts=same), ports).job(ListSink(), StopAfter(100))
    assert result.trained == (1, 2) and result.skipped == (0,)


def test_imported_experts_without_a_recipe_take_any_and_zca_must_agree():
    from tesla.domain.experts import check_one_recipe, data_mismatch

    check_one_recipe("s", {0: None, 1: {"seed": None}}, ExpertConfig())  # MTT imports record none
    assert data_mismatch({"name": "cifar10", "zca": True}, {"name": "cifar10", "zca": False}) == "zca True vs False"
    assert data_mismatch({"name": "cifar10"}, {"name": "cifar10", "zca": True}) is None  # unknown: not compared
    store = FakeTrajectoryStore("mem://t.zarr")
    store.initialize(to_dict(MODEL), [("w", [4])], 4, {"name": "demo", "zca": False})
    with pytest.raises(StoreError, match="other data"):
        prepare_experts(_request(data=DataConfig(name="demo", zca=True)), _ports(stores=FakeStores(t=store)))


def test_a_network_too_big_for_the_machine_is_refused_before_it_is_built():
    from tesla.domain.errors import ResourceError
    from tests.unit.test_footprint import FakeMemory

    training = FakeExpertTraining()
    ports = ExpertsPorts(load_data=FakeLoadData(FakeData()), stores=FakeStores(), training=training,
                         run_dirs=FakeRunDirs(), memory=FakeMemory(host=2**30))
    huge = ModelConfig(depth=2, width=100_000, image_size=16, num_classes=10)
    with pytest.raises(ResourceError, match=r"needs at least .* GiB .* but 1.0 GiB is free; .*lower --width"):
        prepare_experts(_request(model=huge), ports)
    assert ports.stores.opened == [] and ports.run_dirs.calls == [] and training.layouts == []


def test_a_store_that_cannot_be_made_leaves_no_run_directory():
    class Unwritable(FakeStores):
        def open(self, url):
            raise StoreError(f"{url}: cannot write here")

    ports = _ports(stores=Unwritable())
    with pytest.raises(StoreError, match="cannot write here"):
        prepare_experts(_request(), ports)
    assert ports.run_dirs.checks == [(Path("/runs/r"), ports.run_dirs.checks[0][1], True, ("model", "data"))]
    assert ports.run_dirs.calls == []  # checked, never made


def test_the_set_up_says_each_step_as_it_starts_so_loading_data_is_not_silent():
    sink = ListSink()
    seen_while_loading: list = []

    class Loading(FakeLoadData):
        def __call__(self, cfg):
            seen_while_loading.extend(sink.events)  # what a watcher had seen when the load began
            return super().__call__(cfg)

    store = FakeTrajectoryStore("mem://t.zarr")
    _train(store, ExpertConfig(num_experts=1, epochs=1))  # one expert already complete
    stores = FakeStores(t=store)
    ports = ExpertsPorts(load_data=Loading(FakeData()), stores=stores, training=FakeExpertTraining(),
                         run_dirs=FakeRunDirs())
    prepare_experts(_request(), ports, sink=sink)
    load = "load demo data"
    assert [(e.label, e.done, e.total) for e in seen_while_loading] == [(load, 0, 1)]
    assert [(e.type, getattr(e, "label", None), getattr(e, "done", None)) for e in sink.events] == [
        ("progress", load, 0), ("progress", load, 1),
        ("progress", "check the trajectory store mem://t.zarr", 0),
        ("progress", "check the trajectory store mem://t.zarr", 1), ("warning", None, None)]
    assert sink.events[-1].message == "mem://t.zarr already holds 1 complete expert(s) (0): kept; 1 to train"
    assert data_label(DataConfig(name="cifar10", root="/data/c10", zca=True)) == (
        "load cifar10 data from /data/c10 and fit ZCA (cached after the first time)")


def test_a_failed_set_up_step_is_not_reported_done():
    sink = ListSink()
    with pytest.raises(DataMismatchError):
        prepare_experts(_request(), _ports(data=FakeData(num_classes=100)), sink=sink)
    assert [(e.label, e.done) for e in sink.of("progress")] == [("load demo data", 0), ("load demo data", 1)]
    other = FakeTrajectoryStore("mem://t.zarr")
    other.initialize({"width": 64}, [("w", [9])], 9, DATA)
    sink = ListSink()
    with pytest.raises(StoreError):
        prepare_experts(_request(), _ports(stores=FakeStores(t=other)), sink=sink)
    assert [(e.label, e.done) for e in sink.of("progress")][-1] == ("check the trajectory store mem://t.zarr", 0)
