"""Reading the package's imports without running it: what the import-graph tests share."""

from __future__ import annotations

import ast
import pathlib

import tesla

PACKAGE = pathlib.Path(tesla.__file__).parent


def module_name(path: pathlib.Path) -> str:
    """``tesla/app/services/run.py`` -> ``tesla.app.services.run`` (a package: its name)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only:
    they never run, so they make no import cycle)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            todo.append(child)
