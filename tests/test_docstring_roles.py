r"""Every Sphinx cross-reference role in refmem's docstrings names something that exists.

A docstring that cites ``:data:`RTOL_CEILING``` when no such constant exists sends the reader
to nothing. Each ``:func:``, ``:class:``, ``:meth:``, ``:attr:``, ``:data:``, ``:mod:`` and
``:exc:`` target in a module, class or function docstring of ``refmem/`` is resolved the way a
reader would: as a dotted name from the top (``refmem.solvers.minimize``), else from the
module that holds the docstring (its own names, imports and submodules), else a sibling module
of the same package, else inside the class the docstring belongs to (attributes, dataclass
fields, ``self.x`` set in its methods) or, for ``:meth:``/``:attr:``, any class of the module,
else from the ``refmem`` package; a target written ``.name`` (Sphinx: search everywhere) may
live in any refmem module.
"""

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "refmem"
ROLE = re.compile(r":(func|class|meth|attr|data|mod|exc|obj):`~?(\.?)([A-Za-z_][\w.]*)`")
OPTIONAL = ("refmem_cupy",)  # plugins not installed in CI: their names cannot be imported here


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _instance_attributes(tree):
    """``{class name: names assigned as self.x in its methods}``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = out.setdefault(node.name, set())
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self" \
                        and isinstance(sub.ctx, ast.Store):
                    names.add(sub.attr)
    return out


def _docstrings(tree):
    """``(docstring, class name or None)`` for the module and every class and function in it."""
    out = [(ast.get_docstring(tree), None)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            out.append((ast.get_docstring(node), node.name))
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((ast.get_docstring(item), node.name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((ast.get_docstring(node), None))
    return [(d, c) for d, c in out if d]


def _lookup(obj, names):
    for n in names:
        if not hasattr(obj, n):
            fields = getattr(obj, "__dataclass_fields__", {})
            if n in fields or n in getattr(obj, "__annotations__", {}):
                return True  # a dataclass field without a class-level default
            return False
        obj = getattr(obj, n)
    return True


def _resolves(target: str, module, cls, instance_attrs=None, role="", dotted=False) -> bool:
    parts = target.split(".")
    prefixes = ["", module.__name__ + ".", module.__name__.rpartition(".")[0] + "."]
    for prefix in prefixes:  # absolute, a submodule of the module, a sibling module
        full = (prefix + target).split(".")
        for i in range(len(full), 0, -1):  # the longest importable module prefix, then attributes
            try:
                mod = importlib.import_module(".".join(full[:i]))
            except ImportError:
                continue
            if _lookup(mod, full[i:]):
                return True
            break
    classes = [getattr(module, cls)] if cls and hasattr(module, cls) else []
    if role in ("meth", "attr") and len(parts) == 1:  # a method or attribute of a class of this module
        classes += [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    bases = [module] + classes + [importlib.import_module("refmem")]
    if any(_lookup(b, parts) for b in bases):
        return True
    if cls and instance_attrs and len(parts) == 1 and parts[0] in instance_attrs.get(cls, ()):
        return True
    if dotted:  # ".name": any refmem module
        return any(_lookup(m, parts) for n, m in list(sys.modules.items()) if n.startswith("refmem") and m)
    return False


def _all_roles():
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        attrs = _instance_attributes(tree)
        for doc, cls in _docstrings(tree):
            for role, dot, target in ROLE.findall(doc):
                yield _module_name(path), cls, attrs, role, bool(dot), target


def test_every_docstring_role_names_something_that_exists():
    missing = []
    seen = 0
    for modname, cls, attrs, role, dotted, target in _all_roles():
        if target.startswith(OPTIONAL):
            continue
        seen += 1
        module = importlib.import_module(modname)
        if not _resolves(target, module, cls, attrs, role, dotted):
            missing.append(f"{modname}{'.' + cls if cls else ''}: :{role}:`{target}`")
    assert seen > 100  # the walk found the docstrings
    assert not missing, "\n".join(missing)


def test_the_check_finds_a_role_that_names_nothing():
    import refmem.solvers.dispatch as dispatch

    assert _resolves("refmem.solvers.problem.rtol_ceiling", dispatch, None)
    assert _resolves("rtol_ceiling", dispatch, None)
    assert not _resolves("RTOL_CEILING", dispatch, None)
    assert not _resolves("refmem.solvers.NOPE", dispatch, None)
