"""The terminal's main bar follows a bench job point by point (issue 15: it stayed at 0 until the end).

The bench services label their Progress events with the job's own name; the rich sink
moves its main bar with them instead of drawing a second bar beside a stuck one.
"""

from __future__ import annotations

import io

from rich.console import Console

from tesla.adapters.events.progress import RichProgressSink
from tesla.app.services.bench import MEMORY_JOB, memory_bench
from tesla.domain import events as ev
from tesla.domain.bench import BenchSettings
from tesla.domain.config import ModelConfig
from tests.unit.test_memory_choices import AxisProbe


def _sink() -> RichProgressSink:
    return RichProgressSink(console=Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None))


def test_the_main_bar_moves_with_each_point_of_a_bench():
    sink = _sink()
    seen = []

    class Watch:
        def emit(self, e):
            sink.emit(e)
            if e.type == "progress":
                seen.append((sink.summary()["done"], sink.summary()["total"]))

    memory_bench(BenchSettings(model=ModelConfig(width=8, image_size=8), ipc=50), probe=AxisProbe(), steps=(1, 2),
                 engines=("tesla",), micro_batches=(500, 50), sink=Watch())
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # before the end, not only at it
    assert len(sink._progress.tasks) == 1  # one bar: the job's


def test_other_progress_still_gets_a_bar_of_its_own():
    sink = _sink()
    sink.emit(ev.RunStarted(job="distill", config={}, total=10))
    sink.emit(ev.Progress(label="soft labels", done=3, total=5))
    assert sink.summary()["done"] == 0 and len(sink._progress.tasks) == 2
