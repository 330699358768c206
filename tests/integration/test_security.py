"""Nothing the user did not create is unpickled unsafely; credentials never reach logs.

* An AST walk of the package: every ``torch.load`` passes ``weights_only=True``; no
  ``pickle.load``/``pickle.loads`` anywhere (the CIFAR and Downsampled-ImageNet batch files go
  through a restricted unpickler); every ``pickle.Unpickler`` subclass restricts ``find_class``.
* A CIFAR folder whose pickles name a code-running global is refused with one line, and the
  code does not run; the official format (dicts of numpy arrays) still reads.
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
PICKLE_ALLOWED: set = set()  # nowhere: data files go through adapters/data/safe_pickle.py


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


def test_no_pickle_load_anywhere_and_unpicklers_are_restricted():
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


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious batches.meta can do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _cifar_folder(root: Path, meta: object, *, batches: object = None) -> Path:
    """A CIFAR-10 folder in the official layout: dicts of numpy arrays, pickled."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(20)]
        batch = batches if batches is not None else {
            "batch_label": name, "labels": labels, "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            "filenames": [f"{name}-{i}.png" for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_official_cifar_pickles_of_numpy_arrays_still_read(tmp_path):
    import numpy as np

    from tesla.adapters.data.cifar import load_cifar

    names = np.array([f"class{i}" for i in range(10)])  # a numpy array: needs numpy's globals
    root = _cifar_folder(tmp_path, {"label_names": names, "num_cases_per_batch": 20})
    data = load_cifar(str(root), name="cifar10", cache_dir=str(tmp_path / "cache"))
    assert data.num_classes == 10 and data.class_names[3] == "class3"
    assert tuple(data.train_x.shape) == (100, 3, 32, 32)


@pytest.mark.parametrize("where", ["meta", "batch"])
def test_a_code_running_cifar_pickle_is_refused_and_does_not_run(tmp_path, where):
    from tesla.adapters.data.cifar import load_cifar
    from tesla.domain.errors import DataError

    marker = tmp_path / "pwned"
    evil = {"label_names": [f"c{i}" for i in range(10)], "x": _RunsCode(marker)}
    root = (_cifar_folder(tmp_path / "d", evil) if where == "meta"
            else _cifar_folder(tmp_path / "d", {"label_names": [f"c{i}" for i in range(10)]}, batches=evil))
    with pytest.raises(DataError, match="refusing to unpickle global (posix|os).system"):
        load_cifar(str(root), name="cifar10", cache_dir=str(tmp_path / "cache"))
    assert not marker.exists()


def test_a_code_running_cifar_pickle_is_one_line_through_the_cli(tmp_path):
    marker = tmp_path / "pwned"
    root = _cifar_folder(tmp_path / "d", {"label_names": [f"c{i}" for i in range(10)], "x": _RunsCode(marker)})
    res = invoke(["experts", "--dataset", "cifar10", "--data", str(root), "--out", str(tmp_path / "e.zarr"),
                  "--depth", "3", "--width", "8", "--num-experts", "1", "--epochs", "1", "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "refusing to unpickle" in res.output and "Traceback" not in res.output
    assert not marker.exists() and not (tmp_path / "e.zarr").exists()


def test_a_truncated_cifar_batch_is_one_data_error(tmp_path):
    from tesla.adapters.data.cifar import load_cifar
    from tesla.domain.errors import DataError

    root = _cifar_folder(tmp_path, {"label_names": [f"c{i}" for i in range(10)]})
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3: not a readable cifar10 batch file"):
        load_cifar(str(root), name="cifar10", cache_dir=str(tmp_path / "cache"))


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


# --- credentials inside URLs ---------------------------------------------------------------

USER, PASSWORD, TOKEN = "AKIAUSER7731", "PW-s3cr3t-9914", "TOK-77aa-0519"
CREDENTIALS = (USER, PASSWORD, TOKEN)


def _no_credential(text: str, where: str) -> None:
    for secret in CREDENTIALS:
        assert secret not in text, f"{secret} leaked into {where}: {text[-2000:]}"


def test_credentials_inside_urls_reach_no_file_no_store_object_and_no_output(tmp_path):
    """Every command on ``memory://USER:PASSWORD@...`` URLs (one with ``?token=``): prepare,
    experts, distill (with the progress display, with --json, into --store, resumed),
    info (text and --json), evaluate (table and --json), export, merge, import-mtt, and
    the refusals of each; then every byte written (run directories, exports, every store
    object) and everything printed is searched for the user, the password and the token.
    """
    pytest.importorskip("fsspec")
    import fsspec
    import torch

    from tests.faults.common import make_imagenet64

    fs = fsspec.filesystem("memory")
    base = f"memory://{USER}:{PASSWORD}@tesla-creds"
    prepared, traj, merged = f"{base}/p.zarr", f"{base}/t.zarr", f"{base}/m.zarr"
    syn = f"{base}/s.zarr?token={TOKEN}"
    opts = ["--storage-option", f"secret={PASSWORD}"]
    data = ["--dataset", "prepared", "--data", prepared]
    tiny = ["--depth", "2", "--width", "8"]
    outputs: list = []

    def run(args, code=0):
        res = invoke([*args])
        outputs.append((args[0], res.output))
        assert res.exit_code == code, (args, res.output)
        return res

    src = tmp_path / "src"
    make_imagenet64(src, files=1, per_file=60, classes=4, side=8, val=12)
    run(["data", "prepare", str(src), prepared, "--image-size", "8", "--chunk", "16", "--json"])
    run(["experts", "--out", traj, *data, *tiny, "--num-experts", "1", "--epochs", "2", "--batch-size", "64",
         "--device", "cpu", "--run-dir", str(tmp_path / "experts-run"), *opts])
    short = ["--ipc", "1", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1",
             "--checkpoint-every", "1", "--preview-every", "1", "--device", "cpu"]
    run(["distill", "-t", traj, *data, "--out", str(tmp_path / "run"), *short, "--iterations", "2"])  # display
    run(["distill", "-t", traj, *data, "--out", str(tmp_path / "run"), *short, "--iterations", "3", "--resume",
         "--json"])
    run(["distill", "-t", traj, *data, "--out", str(tmp_path / "run2"), "--store", syn, *short, "--iterations", "2",
         "--json", *opts])
    for store in (traj, syn, prepared):
        run(["info", store])
        run(["info", store, "--json"])
    run(["evaluate", syn, *data, "--num-models", "1", "--epochs", "1", "--no-random-real", "--device", "cpu"])
    run(["evaluate", syn, *data, "--num-models", "1", "--epochs", "1", "--no-random-real", "--device", "cpu",
         "--json"])
    run(["export", syn, str(tmp_path / "export")])
    run(["merge-trajectories", traj, merged])
    buffers = tmp_path / "buffers"
    buffers.mkdir()
    torch.save([[[torch.zeros(3)], [torch.ones(3)]]], buffers / "replay_buffer_0.pt")
    run(["import-mtt", str(buffers), f"{base}/imported.zarr"])
    run(["import-mtt", str(buffers), f"{base}/imported.zarr"])  # again: skipped, said so
    # refusals name the store, not its credentials
    missing = f"{base}/none.zarr?token={TOKEN}"
    run(["distill", "-t", missing, "--out", str(tmp_path / "x"), *short], code=2)
    run(["distill", "-t", traj, *data, "--out", str(tmp_path / "run"), *short, "--syn-steps", "3", "--resume"],
        code=2)
    run(["info", missing], code=2)
    run(["info", missing, "--json"], code=2)
    run(["evaluate", missing, "--device", "cpu"], code=2)
    run(["export", missing, str(tmp_path / "export2")], code=2)
    run(["merge-trajectories", missing, merged], code=2)
    run(["experts", "--out", traj, *data, *tiny, "--num-experts", "2", "--epochs", "3", "--device", "cpu"], code=2)
    run(["data", "prepare", str(tmp_path / "nothing"), prepared], code=2)

    for command, text in outputs:
        _no_credential(text, f"the output of {command}")
    assert any("memory://***@tesla-creds/s.zarr" in text for _, text in outputs)  # redacted, not dropped
    files = [f for f in tmp_path.rglob("*") if f.is_file() and f.is_relative_to(tmp_path)]
    assert len(files) > 20
    for f in files:
        _no_credential(f.read_bytes().decode("latin-1"), str(f))
    objects = fs.find("/")
    assert len(objects) > 50
    for path in objects:  # (the memory filesystem names its objects by the whole URL path, user:password included)
        _no_credential(fs.cat(path).decode("latin-1"), f"the store object {path}")
    fs.rm(f"/{USER}:{PASSWORD}@tesla-creds", recursive=True)
