"""The experts, evaluation, merge, bench, demo, prepare, info and export services stand on
ports alone: they import no adapter, no tensor or storage library and not the
composition root, so they (and their unit tests on fakes) run where torch, numpy,
h5py, zarr, kornia, torchvision and matplotlib cannot even be imported."""

import ast
import os
import pathlib
import subprocess
import sys

import tesla.app.services

SERVICES = ("experts", "evaluate", "merge", "bench", "demo", "prepare", "info", "export")
BLOCKED = ("torch", "torchvision", "kornia", "h5py", "zarr", "numpy", "matplotlib", "fsspec")
FORBIDDEN = BLOCKED + ("tesla.adapters", "tesla.app.bootstrap")
HERE = pathlib.Path(__file__).parent
UNIT_TESTS = ("test_experts_service.py", "test_evaluate_service.py", "test_bench_service.py",
              "test_prepare_service.py")
SERVICE_DIR = pathlib.Path(tesla.app.services.__file__).parent


def _imports(path: pathlib.Path):
    """Every module a file imports, at the top or inside a function, absolute or relative."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "tesla.app.services." + (node.module or "")
            else:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_the_services_import_no_adapter_no_framework_and_not_the_composition_root():
    bad = [(s, n) for s in SERVICES for n in _imports(SERVICE_DIR / f"{s}.py") if _forbidden(n)]
    assert bad == []


BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError(f'{{name}} is blocked in this test')
        return None
sys.meta_path.insert(0, Blocked())
"""


def test_the_services_and_their_unit_tests_run_with_the_frameworks_unimportable():
    code = BLOCKER + f"""
import importlib
for s in {SERVICES!r}:
    importlib.import_module('tesla.app.services.' + s)
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{[str(HERE / t) for t in UNIT_TESTS]!r}]))
"""
    # no plugin autoload: installed plugins (zarr's among them) would import what is blocked
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parents[1], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_the_blocker_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import numpy"], capture_output=True, text=True)
    assert proc.returncode != 0 and "numpy is blocked" in proc.stderr
