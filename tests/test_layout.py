"""The house rules of ``ingest/`` that a reader of the tree relies on:

* no import cycle, counting every import (module level, inside functions,
  under ``TYPE_CHECKING``, ``importlib.import_module("…")``), so each module
  can be read after the ones it uses;
* nothing in the shipped package imports ``bench``, ``load`` or ``tests``,
  which are not in the wheel;
* a module over :data:`LONG_MODULE_LINES` lines says in its first lines why
  it earns its size: its docstring holds the words :data:`SIZE_MARKER` within
  the file's first :data:`MARKER_WITHIN_LINES` lines.

Found by reading the sources with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ingest"
OUTSIDE_THE_WHEEL = frozenset({"bench", "load", "tests"})
# STYLE.md: split a module that outgrows ~400 lines, unless it says why not.
LONG_MODULE_LINES = 400
SIZE_MARKER = "earns its size"
MARKER_WITHIN_LINES = 10


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path) -> Iterator[str]:
    return _imports(name, path.read_text(), is_package=path.name == "__init__.py")


def _imports(name: str, source: str, *, is_package: bool) -> Iterator[str]:
    """Every module name module ``name`` imports, absolute, wherever in
    ``source`` the import is."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: from the package this module is in (or is).
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod, if there is one.
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"})
            )
        ):
            yield node.args[0].value


def _graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    return {
        name: {target for target in _imported(name, path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = _a_cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _a_cycle(graph) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None


def test_every_kind_of_import_is_read() -> None:
    """The graph is only as good as what it reads."""
    source = """
import os, ingest.errors
from . import codec
from .values import Event
from ..kafka import publish
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from ingest.store.base import Store

def later():
    from ingest.store import sqlite
    import importlib
    return importlib.import_module("bench.write")
"""
    assert set(_imports("ingest.records.split", source, is_package=False)) == {
        "os",
        "ingest.errors",
        "ingest.records.codec",
        "ingest.records.values",
        "ingest.kafka.publish",
        "typing",
        "ingest.store.base",
        "ingest.store.sqlite",
        "importlib",
        "bench.write",
    }
    assert set(_imports("ingest.records", "from . import codec", is_package=True)) == {"ingest.records.codec"}


def test_the_package_imports_nothing_outside_the_wheel() -> None:
    offenders = sorted(
        f"{name} imports {target}"
        for name, path in MODULES.items()
        for target in _imported(name, path)
        if target.split(".")[0] in OUTSIDE_THE_WHEEL
    )
    assert offenders == []


def test_every_long_module_says_why_it_earns_its_size() -> None:
    unexplained = []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines <= LONG_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text), clean=False) or ""
        head = "\n".join(text.splitlines()[:MARKER_WITHIN_LINES])
        if SIZE_MARKER not in docstring or SIZE_MARKER not in head:
            unexplained.append(f"{name} ({lines} lines)")
    assert not unexplained, (
        f'over {LONG_MODULE_LINES} lines without "{SIZE_MARKER}" in the first lines of the docstring: '
        + ", ".join(unexplained)
    )
