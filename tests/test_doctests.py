"""The ``>>>`` examples in refmem's docstrings run as written, and docstrings with math are raw strings.

Examples are part of the documentation a reader copies from; running them
here keeps them true. ``KEY_FUNCTIONS`` are the public entry points that must
carry an example; ``MODULES`` are the modules whose examples are run (every
module holding one of them, plus any other module with an example).
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

KEY_FUNCTIONS = [
    "refmem.level.Level",
    "refmem.level.solve",
    "refmem.objectives.l2.sherman_morrison_step",
    "refmem.memories.linear_attention.linear_attention_recurrent",
    "refmem.memories.delta_rule.delta_rule_recurrent",
    "refmem.chunked.delta_rule.delta_rule_chunked",
    "refmem.memories.titans.titans_recurrent",
    "refmem.optimizers.momentum.momentum_step",
    "refmem.conform.check",
    "refmem.backends.use",
    "refmem.backends.backend",
    "refmem.optimizers.make",
]


def package_modules() -> list[str]:
    """Every module of ``refmem`` and ``refmem_cupy`` by dotted name (``__main__`` excluded: importing it runs the CLI)."""
    names = []
    for package in ("refmem", "refmem_cupy"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _source(module: str) -> str:
    path = (ROOT / Path(*module.split("."))).with_suffix(".py")
    if not path.exists():
        path = ROOT / Path(*module.split(".")) / "__init__.py"
    return path.read_text(encoding="utf-8")


MODULES = [m for m in package_modules() if ">>>" in _source(m)]


def _resolve(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("dotted", KEY_FUNCTIONS)
def test_key_function_has_an_example(dotted):
    doc = _resolve(dotted).__doc__ or ""
    assert ">>>" in doc and "Examples\n" in doc, f"{dotted}: the docstring needs an 'Examples' section with a >>> example"


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(mod, module) if t.examples]
    assert tests, f"{module}: holds '>>>' but no example was collected"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} examples failed (output above)"


def test_every_key_function_module_is_run():
    assert {k.rsplit(".", 1)[0] for k in KEY_FUNCTIONS} <= set(MODULES)


def _docstring_literals(path: Path):
    """(line, literal source, value) of every module, class and function docstring in ``path``."""
    src = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                yield first.lineno, ast.get_source_segment(src, first.value), first.value.value


def test_docstrings_with_backslashes_are_raw_strings():
    # a docstring that holds a backslash (LaTeX: \eta, \|k\|) is written r"""...""", never with doubled backslashes
    bad = []
    for package in ("refmem", "refmem_cupy", "tests", "scripts"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, literal, value in _docstring_literals(path):
                if "\\" in value and literal[:1] not in "rR":
                    bad.append(f"{path.relative_to(ROOT)}:{line}")
    assert not bad, f"docstrings holding backslashes must be raw strings (r\"\"\"...\"\"\"): {bad}"


def test_raw_docstring_check_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('def f():\n    """:math:`\\\\eta`"""\n\n\ndef g():\n    r""":math:`\\eta`"""\n', encoding="utf-8")
    found = [(line, literal[:1] in "rR") for line, literal, value in _docstring_literals(f) if "\\" in value]
    assert found == [(2, False), (6, True)]
