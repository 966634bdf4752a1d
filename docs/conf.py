"""Sphinx configuration: numpydoc docstrings, MathJax, the Markdown specs through MyST, the PyData theme.

``make docs`` builds into ``docs/_build/html`` with ``-W`` (warnings are errors).
The specs (``../specs/*.md``, with the math contract ``MATH.md``) are copied into
``docs/specs/`` and one API page per public module is written into ``docs/api/``
(both generated, not committed) on every build, so the documentation always
renders the files the tests read and a new module gets its page.
"""

import importlib
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import refmem  # noqa: E402

project = "refmem"
author = "the refmem authors"
release = refmem.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_static_path = ["_static"]
html_theme = "pydata_sphinx_theme"
html_title = f"refmem {release}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # autodoc lists the members; numpydoc would list them a second time
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()  # rendering is checked by -W; the numpydoc style guide is not enforced here

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3


def _copy_specs():
    """Mirror ../specs/*.md into docs/specs/ (a generated folder), removing stale files."""
    src, dst = os.path.join(ROOT, "specs"), os.path.join(HERE, "specs")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        if name.endswith(".md"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


# Modules that are not a public API page: ``python -m refmem`` runs the command line on import.
SKIP_MODULES = {"refmem.__main__"}


def _public_modules():
    """Every module of refmem and refmem_cupy (``_private`` ones and :data:`SKIP_MODULES` left out), sorted."""
    import pkgutil

    import refmem_cupy

    names = []
    for pkg in (refmem, refmem_cupy):
        names.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name in SKIP_MODULES or any(part.startswith("_") for part in info.name.split(".")):
                continue
            names.append(info.name)
    return sorted(names)


def _write_api_pages():
    """docs/api/<module>.rst for every public module (members of modules; a package page shows its docstring
    only, since its members are documented on the pages of the modules that define them), and docs/api/index.rst."""
    out = os.path.join(HERE, "api")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    modules = _public_modules()
    for name in modules:
        is_package = hasattr(importlib.import_module(name), "__path__")
        lines = [name, "=" * len(name), "", f".. automodule:: {name}"]
        lines += ["   :no-members:"] if is_package else ["   :members:"]
        with open(os.path.join(out, f"{name}.rst"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "index.rst"), "w") as fh:
        fh.write("API reference\n=============\n\nEvery public module, from its docstrings (numpydoc).\n\n"
                 ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   {n}\n" for n in modules))


_copy_specs()
_write_api_pages()
