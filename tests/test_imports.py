"""The import graph between refmem's modules has no cycle, and the registry tables sit above what they list.

Read from the source with ``ast`` (every ``import`` / ``from ... import``,
top level or inside a function): one node per module, a package's
``__init__.py`` being a module of its own, and an edge from a module to each
refmem module it names. ``from refmem.memories import delta_rule`` is an edge
to the leaf module ``refmem.memories.delta_rule``; ``from refmem.memories
import MEMORIES`` is an edge to the package's ``__init__``. Python runs a
package's ``__init__`` before a leaf of it, so with no cycle every module
imports completely whatever is imported first (no partly initialised module
is ever read).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "refmem"


def module_files() -> dict[str, Path]:
    """``{dotted name: file}`` for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")  # a module imported from its package
                elif base in modules:
                    found.add(base)  # a name defined in the module (or package __init__) ``base``
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or ``None`` (depth-first search, iterative)."""
    state = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_is_read():
    graph = import_graph()
    # known edges, so that a parser that finds nothing cannot pass
    assert "refmem.chunked.delta_rule" in graph["refmem.memories"]
    assert "refmem.memories.delta_rule" in graph["refmem.backward.delta_rule"]
    assert "refmem.memories" in graph["refmem.catalog"]


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("table", "listed"), [("refmem.memories", ("refmem.chunked", "refmem.backward")),
                                               ("refmem.nested.registry", ("refmem.nested",)),
                                               ("refmem.optimizers", ("refmem.optimizers",)),
                                               ("refmem.checks", ("refmem.checks",))])
def test_no_listed_module_imports_its_table(table, listed):
    """A registry table imports what it lists; what it lists never reads the table back."""
    graph = import_graph()
    readers = sorted(m for m, deps in graph.items()
                     if table in deps and m != table and any(m == p or m.startswith(p + ".") for p in listed))
    assert readers == [], f"{readers} import the table {table} (a check module imports refmem.checks.registry)"


def test_memories_table_is_complete_after_import_refmem():
    import refmem  # noqa: F401
    from refmem.memories import MEMORIES

    spec = MEMORIES["delta_rule"]
    assert spec.chunked is not None and spec.minibatch is not None and spec.backward is not None
