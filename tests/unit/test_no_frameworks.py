"""The unit suite and the distillation services need no framework.

A child interpreter puts a finder at the head of ``sys.meta_path`` that refuses torch,
torchvision, numpy, h5py, zarr and kornia, then imports the distillation service and
its set-up, and runs the whole of ``tests/unit`` (this module left out): the loop, the
guard, the set-up and the domain are all tested on fakes, so nothing may reach for a
framework. The static rules (no service imports an adapter, no import cycle) are
checked on the source with ``ast``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import tesla
from tests.unit.import_scan import module_name, runtime_nodes

BLOCKED = ("torch", "torchvision", "numpy", "h5py", "zarr", "kornia")
ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = pathlib.Path(tesla.__file__).parent
# the service modules that are torch-free today; the others join as they are moved onto ports
PURE_SERVICES = ("tesla.app.services.distill", "tesla.app.services.run")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"{{name}} is blocked: the unit suite must not need it")
            return None

    sys.meta_path.insert(0, Blocked())
""")


def _child(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_the_distillation_service_and_set_up_import_without_frameworks():
    proc = _child(f"""
        import importlib, sys
        for name in {PURE_SERVICES!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_the_unit_suite_passes_with_the_frameworks_unimportable():
    proc = _child("""
        import sys, pytest
        # zarr installs a pytest plugin (zarr.testing) that imports zarr: leave it out
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:zarr", "tests/unit", "-k", "not unimportable"]))
    """)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "error" not in proc.stdout.splitlines()[-1]


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """Every module ``path`` imports at run time, at the top or inside a function (relative
    ones resolved; ``if TYPE_CHECKING:`` blocks left out)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_the_pure_services_import_no_adapter_framework_or_composition_root():
    graph = _graph()
    for name in PURE_SERVICES:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        bad = sorted(m for m in _imports(path, name)
                     if m.split(".")[0] in BLOCKED or m.startswith(("tesla.adapters", "tesla.app.bootstrap")))
        assert bad == [], name
        # and nothing they import (transitively, inside tesla) does either
        seen, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert sorted(m for m in seen if m.startswith(("tesla.adapters", "tesla.app.bootstrap"))) == [], name


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str]:
    """A path start -> ... -> start in ``graph``, or []."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for dep in graph[node]:
            if dep == start:
                return path + [start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return []


def test_the_distillation_modules_sit_on_no_import_cycle():
    graph = _graph()
    for name in (*PURE_SERVICES, "tesla.app.bootstrap", "tesla.app.cli.distill", "tesla.adapters.torch.student",
                 "tesla.domain.ports"):
        assert _cycle_through(graph, name) == [], name
