"""Child entry point: distillation run directories on a small real filesystem that fills up.

    unshare -rm sh -c 'mount -t tmpfs -o size=3m tmpfs DIR && python -m tests.faults.full_run DIR TRAJECTORIES'

Run inside a private mount namespace (see ``tests/faults/full_disk.py``). Two scenarios,
each through the real CLI in a child process:

* ``resume on a full disk``: a run of 3 iterations finishes on the tmpfs (its record then
  says 12, as a resume that made it longer writes); the disk is filled to the last byte; a
  resume typing another length cannot record it (one line, exit 2, the record unchanged);
  the run resumed as recorded goes on: the event log takes what
  still fits in its last page, then cannot take a line (one warning, its earlier lines
  kept, whole lines only), the run goes on to its next
  checkpoint, which cannot be written (one ``no space left`` line, exit 2), and the
  checkpoint before stays intact;
* ``config on a full disk``: a new run whose store lives elsewhere (``--store``) on a
  full disk: ``config.json`` cannot be written, one line, exit 2, no partial file.

The last line printed is a JSON object {scenario: result}; the test reads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.faults.common import distill_args
from tests.faults.full_disk import _clear, _fill


def _cli(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tesla", *map(str, args)], capture_output=True, text=True)


def _lines(text: str, prefix: str) -> list:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def resume_on_a_full_disk(root: Path, traj: str) -> dict:
    out = root / "run"
    first = _cli(distill_args(traj, out, "--iterations", "3"))
    # the record of a run made longer before (what `--resume --iterations 12` writes)
    config = json.loads((out / "config.json").read_text())
    config["distill"]["iterations"] = 12
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    log = (out / "events.jsonl").read_bytes()
    _fill(root, leave=0)
    # a typed change must be recorded first: on a full disk that is one line, nothing changed
    longer = _cli(distill_args(traj, out, "--resume", "--iterations", "24"))
    unchanged = (out / "config.json").read_text() == json.dumps(config, indent=2, sort_keys=True)
    second = _cli(distill_args(traj, out, "--resume"))  # the record unchanged: nothing written first
    from tesla.adapters.stores.synthetic import open_synthetic_store

    after = (out / "events.jsonl").read_bytes()
    whole = all(json.loads(line) for line in after.decode().splitlines()) and after.endswith(b"\n")
    with open_synthetic_store(str(out / "synthetic.zarr"), "r") as s:
        checkpoints = s.checkpoints()
        latest = s.latest_checkpoint()
    return {"first_rc": first.returncode, "longer_rc": longer.returncode,
            "longer_errors": _lines(longer.stderr, "error:"), "config_unchanged": unchanged,
            "rc": second.returncode, "stderr": second.stderr[-2000:],
            "warnings": _lines(second.stderr, "warning:"), "errors": _lines(second.stderr, "error:"),
            "log_kept": after.startswith(log), "log_whole": whole, "checkpoints": checkpoints,
            "checkpoint_intact": latest is not None and latest[0] == 3 and latest[1]["images"].shape[0] == 10}


def config_on_a_full_disk(root: Path, traj: str) -> dict:
    store = Path(traj).parent / "elsewhere.zarr"  # on the real disk: only the run directory is full
    _fill(root, leave=0)
    res = _cli(distill_args(traj, root / "run2", "--store", store))
    return {"rc": res.returncode, "stderr": res.stderr[-2000:], "errors": _lines(res.stderr, "error:"),
            "config_exists": (root / "run2" / "config.json").exists()}


SCENARIOS = {"resume on a full disk": resume_on_a_full_disk, "config on a full disk": config_on_a_full_disk}


if __name__ == "__main__":
    root, traj = Path(sys.argv[1]), sys.argv[2]
    results = {}
    for name, scenario in SCENARIOS.items():
        _clear(root)
        try:
            results[name] = scenario(root, traj)
        except Exception as e:  # noqa: BLE001 - reported, and failed, by the test
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results))
