"""Nothing the user did not create is unpickled unsafely; credentials never reach logs.

* An AST walk of the package: every ``torch.load`` passes ``weights_only=True``; the only
  ``pickle.load``/``pickle.loads`` is the CIFAR reader's (the official dataset format);
  every ``pickle.Unpickler`` subclass restricts ``find_class``.
* A run with ``--storage-option secret=...`` on a ``memory://`` store: the secret appears
  in no event, no config file, no store attribute and no terminal output.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import tesla
from tests.faults.common import one_thread, DISTILL, MODEL, invoke  # noqa: F401 - autouse fixture

PACKAGE = Path(tesla.__file__).parent
PICKLE_ALLOWED = {"adapters/data/cifar.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), filename=str(path))


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_every_torch_load_passes_weights_only_true():
    offenders = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("torch.load", "load") and \
                    _dotted(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True at {offenders}"


def test_no_from_torch_import_load_that_could_hide_a_call():
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "load" not in {a.name for a in node.names}, rel


def test_pickle_load_only_in_the_cifar_reader_and_unpicklers_are_restricted():
    offenders = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("pickle.load", "pickle.loads", "cPickle.load",
                                                                      "dill.load", "joblib.load"):
                if rel not in PICKLE_ALLOWED:
                    offenders.append(f"{rel}:{node.lineno} {_dotted(node.func)}")
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill"):
                names = {a.name for a in node.names}
                if names & {"load", "loads"}:
                    offenders.append(f"{rel}:{node.lineno} from {node.module} import load")
            if isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    offenders.append(f"{rel}:{node.lineno} Unpickler {node.name} without find_class")
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("np.load"):
                kw = {k.arg: k.value for k in node.keywords}
                if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True:
                    offenders.append(f"{rel}:{node.lineno} np.load(allow_pickle=True)")
    assert not offenders, offenders


SECRET = "XYZ-not-for-logs-8841"


def test_storage_option_secrets_stay_out_of_events_configs_stores_and_output(tmp_path):
    pytest.importorskip("fsspec")
    traj = "memory://tesla-security/t.zarr"
    opts = ["--storage-option", f"secret={SECRET}", "--storage-option", f"token={SECRET}"]
    run_dir = tmp_path / "experts-run"
    res = invoke(["experts", "--out", traj, *MODEL, "--num-experts", "1", "--epochs", "2", "--batch-size", "256",
                  "--device", "cpu", "--run-dir", str(run_dir), "--json", *opts])
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    out = tmp_path / "distill-run"
    args = ["distill", "-t", traj, "--out", str(out), *DISTILL, "--iterations", "2", "--json", *opts]
    args = [a for a in args if a != "--quiet"]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    # failures must not echo it either
    res = invoke(["distill", "-t", "memory://tesla-security/none.zarr", "--out", str(tmp_path / "x"), *DISTILL, *opts])
    assert res.exit_code == 2 and SECRET not in res.output
    for root in (run_dir, out):
        for f in root.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f"the secret was written to {f}"
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in fs.find("/tesla-security"):
        assert SECRET.encode() not in fs.cat(path), f"the secret was written into the store at {path}"
    for line in (out / "events.jsonl").read_text().splitlines():
        json.loads(line)  # well-formed, and checked above for the secret
    fs.rm("/tesla-security", recursive=True)
