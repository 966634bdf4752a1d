"""Every registered name has a spec file in ``specs/``, and every spec file points at real code.

Registered names: every memory (``refmem.memories.MEMORIES``), every objective
and retention (the registries plus every concrete class defined in their
packages, registered or not), every ``refmem verify`` check's ``spec``, and
every optimiser module (which must be named by some spec's ``Implementation:``).
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

SPECS = Path(__file__).resolve().parent.parent / "specs"
SECTIONS = ("## Problem (P)", "## Conventions", "## Closed form", "## Iterative method", "## Tolerance", "## Errata")
LINE = re.compile(r"^(Spec|Kind|Implementation|Planned|Vectors|Tests):\s*(\S.*?)\s*$", re.M)
TESTS = Path(__file__).resolve().parent
KINDS = {"memory", "objective", "retention", "optimiser", "infrastructure"}


def _import_package(name):
    pkg = importlib.import_module(name)
    mods = [pkg]
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{name}.{info.name}"))
    return pkg, mods


def _concrete_names(package, base_name):
    """``name`` of every concrete subclass of the package's base class defined in the package."""
    pkg, mods = _import_package(package)
    base = getattr(pkg, base_name)
    names = set()
    for m in mods:
        for _, cls in inspect.getmembers(m, inspect.isclass):
            if issubclass(cls, base) and cls is not base and not inspect.isabstract(cls) and cls.__module__.startswith(package):
                names.add(cls.name)
    return names


def registered_names() -> dict[str, str]:
    """Every registered spec name -> where it is registered."""
    from refmem.checks import CHECKS
    from refmem.memories import MEMORIES
    from refmem.nested.registry import NESTED_SYSTEMS
    from refmem.objectives import OBJECTIVES
    from refmem.retentions import RETENTIONS

    names = {}
    for n in MEMORIES:
        names[n] = "memory registry"
    for n in set(OBJECTIVES) | _concrete_names("refmem.objectives", "Objective"):
        names.setdefault(n, "objective")
    for n in set(RETENTIONS) | _concrete_names("refmem.retentions", "Retention"):
        names.setdefault(n, "retention")
    for c in CHECKS:
        names.setdefault(c.spec, f"check {c.name!r}")
    for n, system in NESTED_SYSTEMS.items():
        names.setdefault(system.spec, f"nested system {n!r}")
    return names


def spec_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPECS.glob("*.md")) if p.name not in ("README.md", "MATH.md")}


def parse(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    header = text.split("\n## ", 1)[0]  # the machine-readable lines stand above the first section
    fields = {}
    for key, value in LINE.findall(header):
        fields.setdefault(key, []).append(value)
    return {"text": text, **fields}


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name is not None and not ".".join(parts[:i]).startswith(exc.name):
                raise  # a real import error inside an existing module
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_registered_name_has_a_spec_file():
    files = spec_files()
    missing = {n: where for n, where in registered_names().items() if n not in files}
    assert not missing, f"specs/ has no file for: {missing} (write specs/<name>.md, see specs/README.md)"


@pytest.mark.parametrize("name", sorted(spec_files()))
def test_spec_file_is_complete_and_points_at_real_code(name):
    spec = parse(spec_files()[name])
    assert spec.get("Spec") == [name], f"specs/{name}.md: first field must be 'Spec: {name}'"
    assert spec.get("Kind", [None])[0] in KINDS, f"specs/{name}.md: Kind must be one of {sorted(KINDS)}"
    for section in SECTIONS:
        assert f"\n{section}\n" in spec["text"], f"specs/{name}.md: missing section {section!r}"
    impls = spec.get("Implementation", [])
    assert impls or spec.get("Planned"), f"specs/{name}.md: names no Implementation (or Planned) function"
    for dotted in impls:
        try:
            obj = resolve(dotted)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"specs/{name}.md: Implementation {dotted} does not exist ({type(exc).__name__}: {exc})")
        assert callable(obj), f"specs/{name}.md: Implementation {dotted} is not callable"


def test_vectors_field_matches_the_memory_registry():
    from refmem.vectors import registry

    with_vectors = registry()  # the memories and the flat-convention references (CMS, HOPE)
    for name, path in spec_files().items():
        vec = parse(path).get("Vectors", ["no"])[0]
        if name in with_vectors:
            assert vec == "yes", f"specs/{name}.md: a spec with test vectors says 'Vectors: yes'"
        else:
            assert vec == "no", f"specs/{name}.md: 'Vectors: yes' but {name!r} has no test vectors"


def test_memory_forms_are_named_by_their_spec():
    # the recurrent, chunked and mini-batch forms registered for a memory appear in its spec
    from refmem.memories import MEMORIES

    files = spec_files()
    for name, mem in MEMORIES.items():
        if name not in files:
            continue  # reported by test_every_registered_name_has_a_spec_file
        impls = set(parse(files[name]).get("Implementation", []))
        for form in ("recurrent", "chunked", "minibatch"):
            fn = getattr(mem, form)
            if fn is not None:
                dotted = f"{fn.__module__}.{fn.__qualname__}"
                assert dotted in impls, f"specs/{name}.md: the registered {form} form {dotted} is not an Implementation line"


def test_every_optimiser_module_is_specified():
    _, mods = _import_package("refmem.optimizers")
    named = {d for p in spec_files().values() for d in parse(p).get("Implementation", [])}
    for m in mods[1:]:
        assert any(d.startswith(m.__name__ + ".") for d in named), f"no spec names a function of {m.__name__}"


def homes_of(name: str, spec: dict) -> list[Path]:
    """The test modules of a spec: its ``Tests:`` lines, or else ``tests/test_<name>.py``."""
    named = spec.get("Tests") or [f"tests/test_{name}.py"]
    return [TESTS.parent / n for n in named]


def test_every_spec_has_a_test_home():
    # a reader finds the tests of specs/NAME.md in one guess: the file its Tests: line names, else tests/test_NAME.py
    for name, path in spec_files().items():
        spec = parse(path)
        names = {name} | {d.rsplit(".", 1)[-1] for d in spec.get("Implementation", [])}
        for home in homes_of(name, spec):
            assert home.parent == TESTS and home.name.startswith("test_") and home.suffix == ".py", \
                f"specs/{name}.md: Tests: {home} is not a test module in tests/"
            assert home.exists(), f"specs/{name}.md: its test home {home.name} does not exist"
            text = home.read_text(encoding="utf-8")
            assert any(n in text for n in names), f"specs/{name}.md: {home.name} names neither {name!r} nor its implementation"


def test_test_home_rule_can_fail():
    assert homes_of("no_such_spec", {}) == [TESTS / "test_no_such_spec.py"]
    assert not (TESTS / "test_no_such_spec.py").exists()
    assert homes_of("x", {"Tests": ["tests/test_titans.py"]}) == [TESTS / "test_titans.py"]


SIZE_SUFFIX = re.compile(r"_(?:[a-z]|\d+)$")  # part_a, part_b, part_2: a file split by size, not by what it holds


def named_by_size(paths):
    """The paths whose stem ends in ``_`` and one letter or a number (``checks/sequence_memories_b.py``)."""
    return [p for p in paths if SIZE_SUFFIX.search(p.stem)]


def test_no_file_is_named_by_size():
    # one concept per module, named for what it holds: a reader finds a family's code and tests in one guess
    root = TESTS.parent
    paths = [p for d in ("refmem", "refmem_cupy", "tests", "scripts", "specs", "docs") for p in (root / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".md") and "_build" not in p.parts]
    assert len(paths) > 100, "the walk found too few files to mean anything"
    assert not named_by_size(paths), f"files named by size: {named_by_size(paths)}"


def test_named_by_size_can_fail():
    hits = named_by_size([Path("checks/sequence_memories_a.py"), Path("tests/test_memories_b.py"),
                          Path("chunked/part_2.py"), Path("objectives/windowed_l2.py"), Path("optimizers/m3.py"),
                          Path("retentions/local_l2.py")])
    assert [p.name for p in hits] == ["sequence_memories_a.py", "test_memories_b.py", "part_2.py"]


def test_index_lists_every_spec_file():
    index = (SPECS / "README.md").read_text(encoding="utf-8")
    for name in spec_files():
        assert f"]({name}.md)" in index, f"specs/README.md: the index does not link {name}.md"


def test_resolve_rejects_missing_functions():
    # the checker itself can fail: a wrong name is reported, not silently accepted
    with pytest.raises(AttributeError):
        resolve("refmem.memories.delta_rule.no_such_function")
    with pytest.raises((ImportError, AttributeError)):
        resolve("refmem.no_such_module.f")
    assert callable(resolve("refmem.memories.delta_rule.delta_rule_recurrent"))
