"""The package's import graph: no cycles anywhere in ``tesla/``, and the layers point inward.

Built from the source with ``ast`` (nothing is imported): every ``import`` a module runs,
at its top or inside a function, counts; imports under ``if TYPE_CHECKING:`` (annotations
only) do not. The rules:

- no cycle among the modules of ``tesla`` (a strongly connected component of more than one
  module, or a module importing itself, fails with the modules named);
- the domain imports nothing outside the domain (and the standard library and attrs);
- a service imports no adapter, no composition root, no framework;
- adapters never import the app (services, CLI, TUI, bootstrap).
"""

from __future__ import annotations

import ast
import pathlib
import sys

import tesla
from tests.unit.import_scan import module_name, runtime_nodes

PACKAGE = pathlib.Path(tesla.__file__).parent
FRAMEWORKS = {"torch", "torchvision", "kornia", "h5py", "zarr", "numpy", "fsspec", "matplotlib", "textual",
              "textual_plotext", "typer", "rich", "PIL", "tensorboard"}
DOMAIN_ALLOWED_THIRD_PARTY = {"attrs", "attr"}


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """What ``module`` imports at run time. ``from pkg import sub`` where ``sub`` is a module
    counts as importing ``pkg.sub`` only (a parent package always runs first: counting it
    would make every package whose ``__init__`` re-exports its modules a cycle)."""
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
            subs = {f"{base}.{alias.name}" for alias in node.names}
            out |= subs
            if not subs <= _MODULE_NAMES:
                out.add(base)
    return out


_MODULE_NAMES = {module_name(p) for p in PACKAGE.rglob("*.py")}
MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
IMPORTS = {name: _imports(path, name) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    """The tesla modules ``name`` imports (a package counts as its ``__init__``)."""
    return {m for m in IMPORTS[name] if m in MODULES and m != name}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in _internal(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def test_there_is_no_import_cycle_in_the_package():
    assert _cycles() == []


def test_the_domain_imports_only_the_domain_the_standard_library_and_attrs():
    stdlib = set(sys.stdlib_module_names)
    bad = {}
    for name in MODULES:
        if not name.startswith("tesla.domain"):
            continue
        wrong = sorted(m for m in IMPORTS[name]
                       if not (m.startswith("tesla.domain") or _top(m) in stdlib or _top(m) in DOMAIN_ALLOWED_THIRD_PARTY
                               or m == "__future__"))
        if wrong:
            bad[name] = wrong
    assert bad == {}


def test_services_import_no_adapter_no_composition_root_and_no_framework():
    bad = {}
    for name in MODULES:
        if not name.startswith("tesla.app.services"):
            continue
        wrong = sorted(m for m in IMPORTS[name]
                       if m.startswith(("tesla.adapters", "tesla.app.bootstrap", "tesla.app.cli", "tesla.app.tui"))
                       or _top(m) in FRAMEWORKS)
        if wrong:
            bad[name] = wrong
    assert bad == {}


def test_adapters_never_import_the_app():
    bad = {name: sorted(m for m in IMPORTS[name] if m.startswith("tesla.app"))
           for name in MODULES if name.startswith("tesla.adapters")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_graph_sees_the_whole_package():
    # a guard against a walker that silently finds nothing
    assert len(MODULES) > 60
    assert "tesla.domain.matching" in _internal("tesla.domain.engines")
    assert any(m.startswith("tesla.adapters") for m in _internal("tesla.app.bootstrap"))
