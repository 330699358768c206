"""The prepare service on a fake store: task by task with progress, a clean stop that the
next call resumes, a crash that says so, and refusals before anything is opened."""

from __future__ import annotations

import pytest

from tesla.app.services.prepare import prepare
from tesla.domain.errors import PrepareError
from tesla.domain.ports import ListSink
from tests.unit.service_fakes import FakePreparedStore, FakePrepareSources


def test_every_task_runs_once_with_progress_and_the_summary_names_the_store():
    sources, sink = FakePrepareSources(FakePreparedStore(4)), ListSink()
    s = prepare("/src", "/out.zarr", sources=sources, chunk=2, sink=sink)
    assert s.complete and not s.resumed and (s.tasks_done, s.tasks_total) == (4, 4)
    assert (s.num_classes, s.num_train, s.num_test, s.image_size) == (3, 12, 6, 8)
    assert s.mean == (0.5, 0.5, 0.5) and s.format == "imagefolder" and s.dest == "/out.zarr"
    assert [(e.done, e.total) for e in sink.of("progress")] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert sink.events[0].config["chunk"] == 2 and sink.events[0].config["block"] == 16
    assert sink.events[-1].status == "completed"
    assert sources.writers[0].closed and sources.sources[0].closed


def test_a_stop_between_tasks_is_resumed_by_the_next_call():
    store = FakePreparedStore(4)
    asked = iter(range(100))
    first = prepare("/src", "/out.zarr", sources=FakePrepareSources(store), should_stop=lambda: next(asked) >= 2)
    assert not first.complete and first.tasks_done == 2 and not first.mean
    sink = ListSink()
    second = prepare("/src", "/out.zarr", sources=FakePrepareSources(store), sink=sink)
    assert second.complete and second.resumed and second.tasks_done == 4
    assert sink.of("progress")[0].done == 2  # a watcher starts from where the job stands
    third = prepare("/src", "/out.zarr", sources=FakePrepareSources(store))
    assert third.already_complete and third.complete


def test_a_crash_is_reported_and_leaves_the_store_resumable():
    store = FakePreparedStore(4, fail_at=2)
    sink = ListSink()
    with pytest.raises(OSError, match="disk full"):
        prepare("/src", "/out.zarr", sources=FakePrepareSources(store), sink=sink)
    assert "re-run to resume" in sink.of("error")[0].message and sink.events[-1].status == "failed"
    assert sink.events[-1].summary["tasks_done"] == 2
    store.fail_at = None
    assert prepare("/src", "/out.zarr", sources=FakePrepareSources(store)).complete


def test_bad_sizes_are_refused_before_the_source_is_opened():
    sources = FakePrepareSources(FakePreparedStore())
    with pytest.raises(PrepareError, match="chunk must be"):
        prepare("/src", "/out.zarr", sources=sources, chunk=0)
    with pytest.raises(PrepareError, match="image_size must be"):
        prepare("/src", "/out.zarr", sources=sources, image_size=True)
    assert sources.sources == []
