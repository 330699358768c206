"""The JSON-lines run log: ``RUN_DIR/events.jsonl``.

A running job appends one event per line (:func:`tesla.domain.events.to_json`); the TUI,
``tesla monitor`` and scripts read the file while it grows. Two properties make that safe
without any locking between processes:

* the writer sends each whole line with a single ``write()`` on a file opened for
  appending (``O_APPEND``), so a reader sees either nothing of a line or all of it, except
  for the very end of the file while a write is under way;
* the reader only consumes *complete* lines (ending in ``\\n``) and reports the byte
  offset after the last one, so a trailing partial line is read again, whole, next time.

A corrupt line (a crash mid-write on a filesystem without atomic appends, a hand edit) is
skipped and reported as a :class:`~tesla.domain.events.Warning` event rather than ending
the reader; an unknown ``type`` (a newer writer) comes back as
:class:`~tesla.domain.events.UnknownEvent`.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from tesla.domain import events as ev
from tesla.domain.urls import redact_text

PathLike = Union[str, os.PathLike]


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: arrays and tensors (``tolist``), numpy scalars (``item``)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"event field of type {type(obj).__name__} is not JSON serialisable")


def encode_event(event: Any) -> bytes:
    """One event as a UTF-8 JSON line ending in ``\\n``.

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON dialect) so a
    diverging loss stays visible in the log instead of failing the write. Every URL in
    the line is redacted (:func:`tesla.domain.urls.redact_text`): the log, ``--json``
    and whoever follows them never see a credential, whichever event carried it.
    """
    line = json.dumps(ev.to_json(event), separators=(",", ":"), default=_jsonable)
    return (redact_text(line) + "\n").encode("utf-8")


# what a disk says when it can take no more (full, over quota, failing)
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


class JsonlSink:
    """Append-only JSON-lines event sink (an :class:`~tesla.domain.ports.EventSink`).

    Args:
        path: the log file; parent folders are created; an existing file is appended to
            (a resumed run continues its log).
        fsync: also ``os.fsync`` after every line (durable on power loss, slower).
        on_error: called once, with one line saying what happened, when a line cannot be
            written (a full disk, a quota, an I/O error).

    A failed write never stops the job: the log is what watchers read, the store holds
    the work. The part of the line that did get written is cut off again (the log stays
    whole lines, everything before it kept), ``on_error`` is told once, and the sink
    writes nothing more (a log with a gap would mislead whoever follows it). A full disk
    then stops the job where it matters, at its next checkpoint or expert, with the
    store's own one-line error and its earlier work kept.

    Thread-safe: a lock serialises ``emit`` so lines from several threads never interleave.
    """

    def __init__(self, path: PathLike, *, fsync: bool = False,
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self.on_error = on_error
        self.failed: Optional[str] = None  # why the log stopped, once it has
        # Unbuffered binary append: every emit is exactly one write(2) on an O_APPEND fd.
        self._fd: Optional[int] = None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            if on_error is None or e.errno not in _WRITE_ERRORS:  # a path the caller should not have given
                raise
            self._stop(e, None)

    def emit(self, event: Any) -> None:
        data = encode_event(event)
        with self._lock:
            if self.failed is not None:
                return
            if self._fd is None:
                raise ValueError(f"event log {self.path} is closed: open a new JsonlSink to write more")
            end = None
            try:
                end = os.fstat(self._fd).st_size
                view = memoryview(data)
                while view:  # a regular file takes it all at once; loop only for exotic filesystems
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as e:
                self._stop(e, end)

    def _stop(self, error: OSError, end: Optional[int]) -> None:
        """Cut a partly written line off, and say once that the log stops here."""
        if end is not None and self._fd is not None:
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                pass
        why = (error.strerror or str(error)).lower()
        self.failed = (f"cannot write the event log {self.path} ({why}): the run goes on without it "
                       "(its earlier lines are kept)")
        if self.on_error is not None:
            self.on_error(self.failed)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; close() is the contract
        try:
            self.close()
        except Exception:
            pass


def _parse_line(raw: bytes, start: int, path: Path) -> Any:
    """Event of one complete line, or a Warning event describing why it was skipped."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return ev.Warning(message=f"{path.name}: skipped a corrupt line at byte {start} ({err})")
    if not isinstance(data, dict):
        return ev.Warning(message=f"{path.name}: skipped a line at byte {start} that is not a JSON object")
    try:
        return ev.from_json(data)
    except (TypeError, ValueError) as err:
        kind = data.get("type", "?")
        return ev.Warning(message=f"{path.name}: skipped a {kind!r} record at byte {start} ({err})")


def read_events(path: PathLike, offset: int = 0, *, max_bytes: Optional[int] = None) -> tuple[list, int]:
    """Events of the complete lines of ``path`` from byte ``offset`` on.

    Args:
        path: the JSON-lines log. A missing file reads as empty (the job may not have
            started writing yet).
        offset: where the previous call stopped (0 for the start).
        max_bytes: read at most about this many bytes (plus the rest of a line longer
            than that), so a UI polling a huge log stays responsive; None reads all.

    Returns:
        ``(events, new_offset)``: ``new_offset`` is just after the last complete line, so a
        partial line at the end is not consumed. Corrupt lines become Warning events;
        unknown types come back as UnknownEvent.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], offset
    with f:
        f.seek(offset)
        data = f.read(max_bytes) if max_bytes else f.read()
        if max_bytes and len(data) == max_bytes and b"\n" not in data:
            data += f.readline()  # one line longer than max_bytes: take it whole
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list = []
    pos = 0
    for raw in data[: end + 1].split(b"\n")[:-1]:
        if raw.strip():
            events.append(_parse_line(raw, offset + pos, path))
        pos += len(raw) + 1
    return events, offset + end + 1


def follow(path: PathLike, stop: threading.Event, poll: float = 0.2, *, offset: int = 0) -> Iterator[Any]:
    """Yield the events of ``path`` as they are appended, until ``stop`` is set.

    Waits for the file to appear. After ``stop`` is set the lines already complete are
    still yielded, then the generator returns.
    """
    while True:
        stopping = stop.is_set()
        batch, offset = read_events(path, offset)
        yield from batch
        if stopping:
            return
        if not batch:
            stop.wait(poll)


__all__ = ["JsonlSink", "read_events", "follow", "encode_event"]
