"""The package's shape, read from its source (no import runs): no import cycle between modules,
no GUI toolkit in ``clara_napari/core``, no module above 400 lines without a stated reason.

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a lazy
import that closes a cycle still ties the two modules together); only imports under
``if TYPE_CHECKING:`` are left out, since they never run. An import names the module it loads:
``from .a import b`` is an edge to ``a.b`` when that is a module, else to ``a``.
"""
from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "clara_napari"
#: GUI toolkits (top-level names) that clara_napari/core must never import, and the package's own GUI layer
GUI_TOOLKITS = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")
GUI_MODULES = (f"{PACKAGE}.napari",)
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines because"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under ``root``) by its dotted name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """All import statements, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(name: str, path: Path) -> set[str]:
    """The absolute dotted names a module imports (``from x import y`` gives both ``x`` and ``x.y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ``modules`` that importing ``name`` loads (its longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(name, path):
            if imported == package or imported.startswith(package + "."):
                target = _resolve(imported, modules)
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) for each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:   # recursion depth is bounded by the number of modules (< 200)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A concrete cycle through the group's first module (breadth-first: a shortest one)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")   # a strongly connected group has one


def gui_imports(root: Path, package: str, layer: str) -> list[str]:
    """``module: name`` for each GUI toolkit (or GUI module of the package) a module of ``layer`` imports."""
    found = []
    for name, path in module_files(root, package).items():
        if name != layer and not name.startswith(layer + "."):
            continue
        for imported in sorted(imported_names(name, path)):
            if imported.split(".")[0] in GUI_TOOLKITS or any(
                    imported == gui or imported.startswith(gui + ".") for gui in GUI_MODULES):
                found.append(f"{name}: {imported}")
    return found


def long_modules(root: Path, package: str) -> list[str]:
    """``module (N lines)`` for each module above :data:`MAX_LINES` whose docstring gives no reason."""
    found = []
    for name, path in module_files(root, package).items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            found.append(f"{name} ({lines} lines)")
    return found


# -- the package ----------------------------------------------------------------------------
def test_no_import_cycle_between_modules():
    cycles = find_cycles(import_graph(ROOT, PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_core_imports_no_gui_toolkit():
    found = gui_imports(ROOT, PACKAGE, f"{PACKAGE}.core")
    assert not found, "clara_napari/core imports a GUI toolkit:\n" + "\n".join(found)


def test_no_module_above_400_lines_without_a_reason():
    found = long_modules(ROOT, PACKAGE)
    assert not found, (f"modules above {MAX_LINES} lines whose docstring does not say "
                       f"'{LONG_REASON} ...':\n" + "\n".join(found))


def test_the_graph_sees_the_known_edges():
    """The reader finds real edges (relative, nested, lazy): the checks above are not vacuous."""
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 50
    assert f"{PACKAGE}.cli" in graph[f"{PACKAGE}.__main__"]
    assert f"{PACKAGE}.core.volume" in graph[f"{PACKAGE}.core.operator"]


# -- the checks themselves, on a package made up for them -----------------------------------
def _make_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_a_cycle_through_a_lazy_relative_import_is_found(tmp_path):
    _make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import g\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from . import a\n",      # into the cycle, not part of it
    })
    cycles = find_cycles(import_graph(tmp_path, "pkg"))
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_type_checking_imports_make_no_cycle(tmp_path):
    _make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "from .a import A\n",
    })
    assert find_cycles(import_graph(tmp_path, "pkg")) == []


@pytest.mark.parametrize("statement", ["import qtpy.QtWidgets", "from napari.layers import Labels",
                                       "def f():\n    from magicgui import magicgui\n", "from ..napari import x"])
def test_a_gui_import_in_core_is_found(tmp_path, statement):
    _make_package(tmp_path, {"clara_napari/__init__.py": "", "clara_napari/core/__init__.py": "",
                             "clara_napari/napari/__init__.py": "",
                             "clara_napari/core/view.py": statement + "\n"})
    assert {line.split(":")[0] for line in gui_imports(tmp_path, "clara_napari", "clara_napari.core")} \
        == {"clara_napari.core.view"}


def test_a_long_module_needs_its_reason(tmp_path):
    body = "x = 1\n" * MAX_LINES
    _make_package(tmp_path, {"pkg/__init__.py": "", "pkg/short.py": '"""Short."""\n' + "x = 1\n" * 10,
                             "pkg/long.py": '"""Long."""\n' + body,
                             "pkg/reasoned.py": f'"""{LONG_REASON} it is one table."""\n' + body})
    assert long_modules(tmp_path, "pkg") == [f"pkg.long ({MAX_LINES + 1} lines)"]
