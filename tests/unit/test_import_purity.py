"""The domain imports no framework: it must work on what the ports hand it.

Walks every module under tesla/domain, parses its imports (static check), and also
imports the package in a fresh interpreter to see which modules it actually pulls in.
"""

import ast
import pathlib
import subprocess
import sys

import tesla.domain

FORBIDDEN = {"torch", "torchvision", "kornia", "h5py", "zarr", "textual", "typer", "numpy", "rich", "fsspec",
             "textual_plotext", "matplotlib", "tesla.adapters", "tesla.app"}
DOMAIN = pathlib.Path(tesla.domain.__file__).parent


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_domain_modules_import_no_framework_statically():
    files = sorted(DOMAIN.rglob("*.py"))
    assert len(files) >= 5
    bad = [(p.name, n) for p in files for n in _imports(p) if _forbidden(n)]
    assert bad == []


def test_importing_the_domain_loads_no_framework():
    names = [p.stem for p in DOMAIN.glob("*.py") if p.stem != "__init__"]
    code = ("import sys, importlib\n"
            f"for n in {names!r}: importlib.import_module('tesla.domain.' + n)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in out if _forbidden(m)] == []
