"""Following a growing event log in bounded reads, off the UI thread.

The TUI watches ``RUN_DIR/events.jsonl``, which may sit on a slow cluster filesystem and
may already hold tens of megabytes when a monitor starts. Reading it on the UI thread
would freeze the screen (a key press waits behind the read), so the work is split the
way toolong splits it: a :class:`LogFollower` runs in a thread of its own, reads the log
in chunks of at most ``chunk`` bytes (whole lines only), parses them, and hands each
chunk's events to a ``deliver`` callback as a :class:`Batch`. The app's callback posts a
message; the UI thread folds the events and redraws.

The follower knows nothing of Textual: ``deliver`` is any callable, which is what makes it
testable on its own. Two rules keep the UI responsive however big the log is:

* bounded reads: one read never parses more than ``chunk`` bytes (plus the rest of a
  line longer than that), so each batch the UI folds is small;
* back-pressure: at most ``in_flight`` batches are handed over and not yet confirmed by
  :meth:`LogFollower.consumed`; the reader waits for the UI before reading on, so a huge
  log is caught up at the pace the UI folds it, interleaved with key presses and
  redraws, and memory stays bounded.

A log that is replaced or truncated (a new run in the same folder) is read again from
the start, with ``Batch.reset`` set so the consumer can drop what it had. :meth:`wake`
asks for an immediate read and returns a token; the next batch whose ``wake`` is at least
that token has read everything written before the call (the app uses it to log "job
finished" only after the job's last lines).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Optional

import attrs

from tesla.adapters.events.jsonl import read_events
from tesla.domain import events as ev

CHUNK_BYTES = 256 * 2**10  # one read's budget: ~1,000 iteration events, a few ms to fold
IN_FLIGHT = 2  # batches handed over and not yet folded


@attrs.frozen
class Batch:
    """The events of one bounded read.

    Attributes:
        events: the parsed events of the complete lines read, in file order.
        start, end: byte offsets of the read (``end`` is just after its last complete line).
        reset: the log was replaced or truncated; ``events`` start its new content over.
        eof: nothing complete was left to read when this read ended (the reader has
            caught up; it now waits for the log to grow).
        wake: the :meth:`LogFollower.wake` count when this read began.
    """

    events: tuple
    start: int
    end: int
    reset: bool = False
    eof: bool = True
    wake: int = 0


class LogFollower:
    """Reads ``path`` from the start and then as it grows, in bounded chunks, until stopped.

    Args:
        path: the JSON-lines event log (it may not exist yet).
        deliver: called in the follower's thread with each :class:`Batch`; the consumer
            calls :meth:`consumed` once per batch when it has used it.
        poll: seconds between looks at a log that has not grown.
        chunk: at most this many bytes are parsed per read.
        in_flight: batches delivered and not yet consumed before the reader waits.
        read: ``read(path, offset, max_bytes=)`` -> ``(events, new_offset)``
            (:func:`~tesla.adapters.events.jsonl.read_events`; tests slow it down).
    """

    def __init__(self, path: Path | str, deliver: Callable[[Batch], object], *, poll: float = 0.25,
                 chunk: int = CHUNK_BYTES, in_flight: int = IN_FLIGHT,
                 read: Callable[..., tuple[list, int]] = read_events) -> None:
        self.path = Path(path)
        self.deliver = deliver
        self.poll = poll
        self.chunk = chunk
        self._read = read
        self._slots = threading.BoundedSemaphore(in_flight)
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._lock = threading.Lock()
        self._wakes = 0
        self._offset = 0
        self._identity: Optional[tuple[int, int]] = None
        self._sent_wake = -1  # the wake count of the last batch delivered (-1: none yet)
        self._sent_eof = False  # whether the last batch delivered said "caught up"
        self._last_error: Optional[str] = None

    # -- control (any thread) -----------------------------------------------------------------
    def stop(self) -> None:
        """End :meth:`run` soon (it never waits longer than ``poll`` to notice)."""
        self._stop.set()
        self._woken.set()

    def wake(self) -> int:
        """Read now rather than at the next poll; returns the token described above."""
        with self._lock:
            self._wakes += 1
            token = self._wakes
        self._woken.set()
        return token

    def consumed(self) -> None:
        """The consumer has used one delivered batch: the reader may hand over another."""
        self._slots.release()

    @property
    def offset(self) -> int:
        """Bytes of the log read so far (complete lines only)."""
        return self._offset

    # -- the reading loop (the follower's thread) -------------------------------------------------
    def run(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Read and deliver until :meth:`stop` (or ``cancelled()`` turns true)."""
        while not (self._stop.is_set() or cancelled()):
            with self._lock:
                token = self._wakes
                self._woken.clear()
            batch = self._read_once(token)
            if batch is not None and not self._send(batch, cancelled):
                return
            if batch is None or batch.eof:
                self._woken.wait(self.poll)

    def _send(self, batch: Batch, cancelled: Callable[[], bool]) -> bool:
        """Deliver once the consumer has room; False when stopped while waiting."""
        while not self._slots.acquire(timeout=self.poll):
            if self._stop.is_set() or cancelled():
                return False
        self._sent_wake, self._sent_eof = batch.wake, batch.eof
        self.deliver(batch)
        return True

    def _read_once(self, token: int) -> Optional[Batch]:
        """One bounded read; None when there is nothing to tell the consumer."""
        reset = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # not written yet (or being replaced): wait
            return self._idle(token)
        except OSError as err:
            return self._trouble(err, token)
        identity = (st.st_dev, st.st_ino)
        if self._identity is not None and (identity != self._identity or st.st_size < self._offset):
            self._offset, reset = 0, True
        self._identity = identity
        start = self._offset
        try:
            events, end = self._read(self.path, start, max_bytes=self.chunk) if st.st_size > start else ([], start)
        except FileNotFoundError:
            return self._idle(token)
        except OSError as err:
            return self._trouble(err, token)
        self._last_error = None
        self._offset = end
        # Caught up: the read reached the size seen, or found only a partial line.
        eof = end >= st.st_size or end == start
        if not events and not reset and token == self._sent_wake and eof <= self._sent_eof:
            return None  # nothing new to tell
        return Batch(events=tuple(events), start=start, end=end, reset=reset, eof=eof, wake=token)

    def _idle(self, token: int) -> Optional[Batch]:
        """Nothing to read: say so once per wake (the first look counts as one) and once
        after a batch that was not the end."""
        if token == self._sent_wake and self._sent_eof:
            return None
        return Batch(events=(), start=self._offset, end=self._offset, wake=token)

    def _trouble(self, err: OSError, token: int) -> Optional[Batch]:
        """A read error (permissions, a flaky mount): reported once, retried every poll."""
        message = f"cannot read {self.path.name}: {err.strerror or err}; retrying"
        if message == self._last_error:
            return self._idle(token)
        self._last_error = message
        return Batch(events=(ev.Warning(message=message),), start=self._offset, end=self._offset, wake=token)


__all__ = ["LogFollower", "Batch", "CHUNK_BYTES"]
