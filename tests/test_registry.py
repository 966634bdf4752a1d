"""The registries are plain tables, complete as soon as ``refmem`` is imported.

Each check runs in a fresh interpreter, so nothing imported by another test
can complete a table that would be incomplete for a user.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import refmem.chunked
from refmem.checks import MODULES
from refmem.memories import MEMORIES


def _fresh(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_memories_complete_after_import_refmem():
    # the same names and the same attached forms as in this process, with nothing but `import refmem`
    out = _fresh("import refmem\n"
                 "M = refmem.memories.MEMORIES\n"
                 "print(sorted(n for n in M), sorted(n for n, s in M.items() if s.chunked is not None))")
    want = (sorted(MEMORIES), sorted(n for n, s in MEMORIES.items() if s.chunked is not None))
    assert out == f"{want[0]} {want[1]}"
    assert {"delta_rule", "titans", "mesa", "deep_memory"} <= set(MEMORIES)


def test_delta_rule_chunked_right_after_import():
    out = _fresh("from refmem.memories import MEMORIES\n"
                 "print(MEMORIES['delta_rule'].chunked.__qualname__, MEMORIES['delta_rule'].minibatch.__qualname__)")
    assert out == "delta_rule_chunked delta_rule_minibatch"


def test_importing_a_chunked_module_first_still_completes_the_table():
    out = _fresh("import refmem.chunked.titans\n"
                 "from refmem.memories import MEMORIES\n"
                 "print(MEMORIES['titans'].chunked is refmem.chunked.titans.titans_chunked)")
    assert out == "True"


def test_every_chunked_and_minibatch_form_is_in_the_table():
    # a form defined in refmem/chunked/ but missing from MEMORIES would be covered by no test
    listed = {getattr(s, form) for s in MEMORIES.values() for form in ("chunked", "minibatch")} - {None}
    for info in pkgutil.iter_modules(refmem.chunked.__path__):
        module = importlib.import_module(f"refmem.chunked.{info.name}")
        for fname, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and fname.endswith(("_chunked", "_minibatch")):
                assert fn in listed, f"{module.__name__}.{fname} is not a form of any MEMORIES entry"


def test_every_recurrent_form_names_its_memory():
    for name, spec in MEMORIES.items():
        assert spec.name == name
        assert spec.recurrent.__name__ == f"{name}_recurrent", (name, spec.recurrent.__name__)
        for form in ("chunked", "minibatch"):
            fn = getattr(spec, form)
            if fn is not None:
                assert fn.__name__ == f"{name}_{form}", (name, fn.__name__)
        assert set(spec.step_gates) <= set(spec.gates), name


def test_every_check_module_is_listed():
    import refmem.checks

    found = {info.name for info in pkgutil.iter_modules(refmem.checks.__path__) if not info.name.startswith("_")}
    found.discard("registry")  # the decorator and the list it fills, not a family of checks
    assert found == set(MODULES), f"refmem/checks/ modules not in MODULES: {found - set(MODULES)}"


def test_no_registry_is_filled_from_another_module():
    # the tables are built where they are defined: no helper that adds to them from elsewhere
    import refmem.memories
    import refmem.objectives
    import refmem.retentions

    for mod, names in ((refmem.memories, ("register_memory", "attach", "load_all")),
                       (refmem.objectives, ("register_objective",)), (refmem.retentions, ("register_retention",))):
        for n in names:
            assert not hasattr(mod, n), f"{mod.__name__}.{n}"
