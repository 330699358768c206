"""Child entry point: run a ``tesla`` command and SIGKILL itself right after the K-th write.

    python tests/faults/die_at.py POINT K tesla-args...

POINT names the operation counted (the kill comes just after it returns, the moment a
buffered write is most likely to be lost):

* ``prepare-task``: ``PreparedWriter.run`` (a task's data and its done-marker);
* ``expert-snapshot``: ``ExpertWriter.write`` (one snapshot of an expert);
* ``expert-finish``: ``ExpertWriter.finish`` (an expert marked complete);
* ``checkpoint``: ``SyntheticStore.write_checkpoint``.

Deterministic kill points complement the random ones of ``test_faults.py``.
"""

from __future__ import annotations

import os
import signal
import sys


def _die_after(cls: type, name: str, k: int) -> None:
    original = getattr(cls, name)
    count = [0]

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        count[0] += 1
        if count[0] >= k:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(cls, name, wrapped)


def main(argv: list[str]) -> None:
    point, k, args = argv[0], int(argv[1]), argv[2:]
    if point == "prepare-task":
        from tesla.adapters.data.prepared import PreparedWriter as cls

        _die_after(cls, "run", k)
    elif point in ("expert-snapshot", "expert-finish"):
        from tesla.adapters.stores.trajectory import ExpertWriter as cls

        _die_after(cls, "write" if point == "expert-snapshot" else "finish", k)
    elif point == "checkpoint":
        from tesla.adapters.stores.synthetic import SyntheticStore as cls

        _die_after(cls, "write_checkpoint", k)
    else:
        raise SystemExit(f"unknown point {point!r}")
    from tesla.app.cli.main import app

    app(args, prog_name="tesla")


if __name__ == "__main__":
    main(sys.argv[1:])
