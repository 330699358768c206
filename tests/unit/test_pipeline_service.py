"""``tesla run``'s set-up on fakes (:func:`tesla.app.services.pipeline.prepare_pipeline`):
what it refuses before writing anything, what it says while it works, what it records,
and how a rerun takes the recorded plan. The stages themselves are the experts,
distillation and evaluation services (their own tests; the whole run: tests/e2e)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from tesla.app.services.pipeline import PipelinePorts, RunRequest, prepare_pipeline
from tesla.domain.errors import DataError, RunDirError
from tesla.domain.ports import ListSink
from tesla.domain.sizing import Wishes
from tests.unit.fakes import FakeRunFiles


@attrs.define
class SizedFakeData:
    num_classes: int = 3
    image_shape: tuple = (3, 16, 16)
    num_train: int = 30
    num_test: int = 12


class Ports:
    """The pipeline's ports on fakes; records what was called."""

    def __init__(self, kind: str = "imagefolder", data: SizedFakeData | None = None, complete: bool = True,
                 files: FakeRunFiles | None = None) -> None:
        self.kind, self.data, self.complete = kind, data or SizedFakeData(), complete
        self.calls: list = []
        self.files = files or FakeRunFiles()

    def ports(self, sink: ListSink | None = None) -> PipelinePorts:
        def find(data):
            if data == "missing":
                raise DataError("missing: no such file or folder")
            return self.kind, f"/data/{data}"

        def prepare(src, dest, *, fmt, image_size, sink, should_stop):
            self.calls.append(("prepare", src, dest, fmt, image_size))
            return SimpleNamespace(complete=self.complete and not should_stop())

        def load(cfg):
            self.calls.append(("load", cfg.name, cfg.root, [e.label for e in (sink.events if sink else [])]))
            return self.data

        speed = SimpleNamespace(seconds_per_image=lambda model: self.calls.append(("speed", model.name)) or 1e-4)
        return PipelinePorts(find_data=find, prepare_data=prepare, load_data=load, speed=speed, experts=None,
                             distill=None, evaluation=None, read_set=None, files=self.files)


def _request(**kw):
    base = dict(data="tree", out=Path("/runs/r"), wishes=Wishes(ipc=1, minutes=2), image_size=16,
                typed=frozenset({"ipc", "minutes", "image_size"}))
    base.update(kw)
    return RunRequest(**base)


def test_a_source_is_prepared_into_the_run_then_sized_and_the_plan_recorded():
    fake, sink = Ports(), ListSink()
    prepared = prepare_pipeline(_request(), fake.ports(sink), sink, threading.Event())
    assert fake.calls[0] == ("prepare", "/data/tree", "/runs/r/data.zarr", "imagefolder", 16)
    load = fake.calls[1]
    assert load[:3] == ("load", "prepared", "/runs/r/data.zarr")
    assert load[3] == ["load prepared data from /runs/r/data.zarr"]  # said before the load began
    assert fake.calls[2] == ("speed", "ConvNetD2")
    assert prepared.status == "ready" and prepared.job is not None and not prepared.resumed
    assert prepared.facts.num_train == 30 and prepared.plan.model.num_classes == 3
    record = json.loads(fake.files.files["/runs/r/plan.json"])
    assert record["image_size"] == 16 and record["wishes"]["ipc"] == 1 and record["data"]["name"] == "prepared"
    assert "| student steps N |" in fake.files.files["/runs/r/plan.md"]


def test_a_rerun_takes_the_recorded_plan_without_measuring_again():
    fake = Ports()
    first = prepare_pipeline(_request(), fake.ports(), None, None)
    again = Ports(files=fake.files)
    rerun = prepare_pipeline(_request(wishes=Wishes(ipc=1, minutes=99), typed=frozenset()), again.ports(), None, None)
    assert rerun.resumed and rerun.plan == first.plan
    assert [c[0] for c in again.calls] == ["prepare"]  # the store is confirmed; no load, no measurement
    assert again.calls[0][4] == 16  # the recorded image size, not the default


@pytest.mark.parametrize("kw,needle", [
    (dict(wishes=Wishes(ipc=2, minutes=2)), "--ipc 2 (the run was planned with 1)"),
    (dict(image_size=32), "--image-size 32 (the run was planned with 16)"),
    (dict(data="other"), "holds a run on tree, not other"),
])
def test_a_rerun_with_other_settings_is_refused_before_any_work(kw, needle):
    fake = Ports()
    prepare_pipeline(_request(), fake.ports(), None, None)
    before = dict(fake.files.files)
    again = Ports(files=fake.files)
    with pytest.raises(RunDirError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        prepare_pipeline(_request(**kw), again.ports(), None, None)
    assert again.calls == [] and fake.files.files == before


def test_bad_arguments_write_nothing():
    fake = Ports()
    with pytest.raises(DataError, match="no such file"):
        prepare_pipeline(_request(data="missing"), fake.ports(), None, None)
    files = FakeRunFiles(files={"/runs/r": "notes"})
    with pytest.raises(RunDirError, match="/runs/r exists and is not a directory"):
        prepare_pipeline(_request(), Ports(files=files).ports(), None, None)
    no_test = Ports(kind="cifar10", data=SizedFakeData(num_test=0))
    with pytest.raises(DataError, match="holds no test images"):
        prepare_pipeline(_request(), no_test.ports(), None, None)
    assert fake.calls == [] and fake.files.files == {} and no_test.files.files == {}


def test_a_stop_while_preparing_the_data_leaves_no_plan():
    fake = Ports(complete=False)
    stopped = prepare_pipeline(_request(), fake.ports(), None, threading.Event())
    assert stopped.status == "cancelled" and stopped.job is None and "/runs/r/plan.json" not in fake.files.files


def test_data_that_needs_no_preparation_is_used_where_it_is():
    fake = Ports(kind="cifar10")
    prepared = prepare_pipeline(_request(data="c10"), fake.ports(), None, None)
    assert fake.calls[0][:3] == ("load", "cifar10", "/data/c10") and prepared.facts.dataset == "cifar10"
