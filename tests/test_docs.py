"""The documentation: docstrings whose math renders, and the Sphinx site built with warnings as errors.

The build test runs ``sphinx-build -W`` (every warning an error: a broken
cross-reference, a docstring that does not parse, a Markdown spec MyST cannot
read) into a temporary directory and checks that the API reference has a
page for every module found by walking the source tree (an independent
listing, not the one ``docs/conf.py`` computes). It needs the ``docs``
packages, which the ``test`` extra installs.
"""

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import refmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
    """Every module under refmem/ and refmem_cupy/, from the file tree (``_private`` parts and ``__main__`` left out)."""
    names = []
    for pkg in ("refmem", "refmem_cupy"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
            if "__pycache__" in rel or any(p.startswith("_") for p in rel.split(".")):
                continue
            for f in files:
                if not f.endswith(".py") or f == "__main__.py":
                    continue
                name = rel if f == "__init__.py" else f"{rel}.{f[:-3]}"
                if not any(p.startswith("_") for p in name.split(".")):
                    names.append(name)
    return sorted(names)


def _docstrings():
    for info in pkgutil.walk_packages(refmem.__path__, "refmem."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        yield info.name, mod.__doc__ or ""
        for name, obj in inspect.getmembers(mod, lambda o: inspect.isfunction(o) or inspect.isclass(o)):
            if getattr(obj, "__module__", None) == mod.__name__:
                yield f"{info.name}.{name}", obj.__doc__ or ""


def test_no_docstring_has_a_doubled_backslash_before_a_command():
    # "\\operatorname" in a docstring is a non-raw string's escape that leaked: MathJax would show a line break
    bad = [(name, m.group(0)) for name, doc in _docstrings() for m in re.finditer(r"\\\\[A-Za-z]+", doc)]
    assert bad == []


def test_every_math_block_has_an_indented_body():
    bad = []
    for name, doc in _docstrings():
        lines = doc.expandtabs().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == ".. math::":
                indent = len(line) - len(line.lstrip())
                body = [ln for ln in lines[i + 1:i + 4] if ln.strip()]
                if not body or len(body[0]) - len(body[0].lstrip()) <= indent:
                    bad.append(name)
    assert bad == []


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    for mod in ("sphinx", "numpydoc", "myst_parser", "pydata_sphinx_theme"):
        pytest.importorskip(mod, reason=f"{mod} (the docs extra) is not installed")
    out = tmp_path / "html"
    p = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                        "-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs"), str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-4000:]
    index = (out / "api" / "index.html").read_text()
    missing = [m for m in _modules() if not (out / "api" / f"{m}.html").exists() or f"{m}.html" not in index]
    assert missing == []
    for page in ("tour", "check_your_kernel", "specs/MATH", "specs/delta_rule"):
        assert (out / f"{page}.html").stat().st_size > 1000, page
    tour = (out / "tour.html").read_text()
    for fig in ("recall_vs_pairs", "momentum_weights", "delta_step_stability", "cms_timeline", "newton_schulz",
                "chunked_vs_recurrent"):
        assert f"{fig}.png" in tour and (out / "_images" / f"{fig}.png").exists(), fig
