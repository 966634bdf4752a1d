"""Every citation of the math contract resolves, and the docs link only inside the repository.

The contract is ``specs/MATH.md``. Code, specs and docs cite it as ``MATH.md N``
with ``N`` a section (``0`` .. ``10``) or sub-section (``2a``), in lists
(``MATH.md 3, 5``, ``MATH.md 2a and 2b``) and ranges (``MATH.md 3-5``).
Papers are cited by the schemes of its section 10 (``NL-N``, ``NLx-N``,
``Titans eq. N``, ...). This module fails when

- a ``MATH.md N`` anywhere in the code, tests, specs, README or CONTRIBUTING
  names a section that ``specs/MATH.md`` does not have;
- a ``<Paper> eq. N`` citation names a paper that section 10 does not list;
- a reference in section 10 gives neither an arXiv identifier nor says why not;
- README, CONTRIBUTING, a spec or a docstring links or points outside the
  repository (``../shared``, an absolute file path) or to a file that does not exist.

The scanner is tested on small texts first, so a broken scanner cannot pass
silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "specs" / "MATH.md"

# "MATH.md" then a list of section ids joined by ",", "and", "-" (a range)
SECTION_ID = r"\d+(?![eE][-+]?\d)[a-z]?(?!\w|\.\d)"  # not 1e-10, not 3.5
CITATION = re.compile(rf"MATH\.md(?:'s)?\s+(?:sections?\s+)?({SECTION_ID}(?:\s*(?:,|and|-|\u2013)\s*{SECTION_ID})*)")
SECTION_HEADING = re.compile(r"^#{2,3} (\d+[a-z]?)\. ", re.M)
PAPER_EQ = re.compile(r"\b([A-Z][A-Za-z]+) eqs?\. ?\d")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
RELATIVE_PATH = re.compile(r"(?<![\w./])((?:\.\./)+[\w./-]*)")
# places a clone does not have: the author's machine, a sibling checkout
OUTSIDE = re.compile(r"(?:\.\./)+shared\b|/work/|/home/\w|file://|[A-Z]:\\\\Users")


def math_sections(text: str) -> set[str]:
    """Section ids of a MATH.md text: ``## N. Title`` and ``### Nx. Title`` headings."""
    return set(SECTION_HEADING.findall(text))


def cited_sections(text: str) -> list[str]:
    """Every section id cited as ``MATH.md N`` in ``text`` (range ends included)."""
    out = []
    for match in CITATION.finditer(text):
        out += re.findall(r"\d+[a-z]?", match.group(1))
    return out


def references_section(text: str) -> str:
    """Body of section 10 (References)."""
    part = text.split("\n## 10. ", 1)
    assert len(part) == 2, "specs/MATH.md has no '## 10. References' section"
    return part[1]


def cited_papers(text: str) -> set[str]:
    return set(PAPER_EQ.findall(text))


def outside_pointers(text: str, where: Path) -> list[str]:
    """Links and paths in ``text`` (a file at ``where``) that leave the repository or do not exist."""
    bad = [m.group(0) for m in OUTSIDE.finditer(text)]
    targets = RELATIVE_PATH.findall(text)
    if where.suffix == ".md":  # in Python, ``a[i](x)`` is a call, not a link
        targets += [t for t in MD_LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    for target in targets:
        path = (where.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            bad.append(target)
    return bad


def source_files() -> list[Path]:
    """Code, tests and docs of the repository (not the virtual environment or build outputs)."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "specs").glob("*.md"))]
    for package in ("refmem", "refmem_cupy", "tests", "scripts", "docs"):
        files += sorted((ROOT / package).rglob("*.py")) + sorted((ROOT / package).rglob("*.md"))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]  # this file cites wrong sections on purpose


def doc_files() -> list[Path]:
    """Files a reader follows links from: README, CONTRIBUTING, the specs, the package sources (docstrings)."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "specs").glob("*.md"))]
    files += sorted((ROOT / "refmem").rglob("*.py")) + sorted((ROOT / "refmem_cupy").rglob("*.py"))
    return [f for f in files if f.is_file()]


# --- the scanner itself ---------------------------------------------------------------------------

def test_scanner_reads_lists_ranges_and_line_breaks():
    text = ("see MATH.md 3, 5 and MATH.md 2a and 2b; MATH.md 3-5. MATH.md's 4 row, MATH.md\n    8, "
            "MATH.md 3, p = 3; MATH.md's default; MATH.md's 1e-10; MATH.md section 7")
    assert cited_sections(text) == ["3", "5", "2a", "2b", "3", "5", "4", "8", "3", "7"]


def test_scanner_finds_sections_and_reports_missing_ones():
    text = "# t\n\n## 0. Conventions\n\n## 2. Two\n\n### 2b. Sub\n\n#### 2b1. not a section\n"
    sections = math_sections(text)
    assert sections == {"0", "2", "2b"}
    assert [s for s in cited_sections("MATH.md 2b, 2c and MATH.md 9") if s not in sections] == ["2c", "9"]


def test_scanner_flags_pointers_outside_the_repository():
    where = ROOT / "specs" / "x.md"
    assert outside_pointers("The contract is `../shared/MATH.md`.", ROOT / "README.md")
    assert outside_pointers("see [m](../../elsewhere.md)", where)
    assert outside_pointers("see [m](missing_file.md)", where)
    assert outside_pointers("data in /work/main/specs", where)
    assert outside_pointers("see [m](MATH.md#5-sequence-memories) and [w](https://arxiv.org/abs/2501.00663)", where) == []
    assert outside_pointers("see [readme](../README.md)", where) == []


# --- the repository ----------------------------------------------------------------------------

def test_math_contract_exists_with_its_sections():
    sections = math_sections(MATH.read_text(encoding="utf-8"))
    assert {str(n) for n in range(11)} <= sections, f"specs/MATH.md lacks top-level sections: {sorted(sections)}"


def test_every_math_citation_names_an_existing_section():
    sections = math_sections(MATH.read_text(encoding="utf-8"))
    missing, count = [], 0
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for sec in cited_sections(text):
            count += 1
            if sec not in sections:
                missing.append(f"{path.relative_to(ROOT)}: MATH.md {sec}")
    assert count > 0, "no MATH.md citation found: the scanner is broken"
    assert not missing, f"citations of sections specs/MATH.md does not have: {missing}"


def test_every_paper_equation_citation_names_a_listed_paper():
    refs = references_section(MATH.read_text(encoding="utf-8"))
    listed = set(re.findall(r"^\| ([A-Z][A-Za-z]+) eq\. N", refs, re.M))
    assert {"Titans", "Miras", "Atlas", "Longhorn"} <= listed
    unknown = []
    for path in source_files():
        for paper in cited_papers(path.read_text(encoding="utf-8")) - listed:
            unknown.append(f"{path.relative_to(ROOT)}: {paper} eq.")
    assert not unknown, f"equation citations of papers not in specs/MATH.md section 10: {unknown}"


def test_every_reference_has_an_identifier_or_says_why_not():
    refs = references_section(MATH.read_text(encoding="utf-8"))
    rows = [r for r in refs.splitlines() if r.startswith("| ") and not r.startswith("| scheme")]
    assert len(rows) >= 20
    for row in rows:
        ident = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert re.fullmatch(r"arXiv:\d{4}\.\d{4,5}", ident) or ident in (
            "NeurIPS 2025 proceedings", "NeurIPS 2017 proceedings", "no arXiv id", "unpublished lecture"), row


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_point_only_inside_the_repository(path):
    bad = outside_pointers(path.read_text(encoding="utf-8"), path)
    assert not bad, f"{path.relative_to(ROOT)} points outside the repository or at a missing file: {bad}"


# --- module docstrings name their paper; no words of the project's own process --------------------

# Packages whose modules implement something from a paper; every public module's docstring names it.
PAPER_PACKAGES = ("memories", "chunked", "objectives", "retentions", "optimizers", "nested")
# Short names a docstring may use, each of which section 10 of specs/MATH.md must list.
PAPER_NAMES = ("Nested Learning", "NL-", "NLx-", "Titans", "Miras", "Moneta", "Yaad", "Memora", "Atlas", "Omega",
               "Longhorn", "Mesa", "DeltaNet", "GLA", "RetNet", "Mamba2", "Katharopoulos", "Vaswani", "TTT",
               "Muon", "Adam", "AdaGrad", "RMSProp")
# Words that only mean something inside the project's planning: issue numbers, parts of a task, the
# working material the contract grew from. A reader of the code has none of it.
PROCESS_WORDS = re.compile(r"(?i)\bissues? #?\d+|\bparts? \d+[a-z]?\b|\bseed's\b|\bthe seed\b(?! of)|working copy|"
                           r"\bpreamble\b|\bhelper session\b|seed_examples")


def test_paper_names_are_listed_in_the_references():
    refs = references_section(MATH.read_text(encoding="utf-8"))
    for name in PAPER_NAMES:
        assert name.rstrip("-") in refs, f"{name!r} is not in specs/MATH.md section 10"


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_module_docstring_names_its_paper(package):
    import ast

    missing = []
    for path in sorted((ROOT / "refmem" / package).glob("*.py")):
        if path.name.startswith("_") and path.name != "__init__.py":
            continue  # private helpers: the public module that uses them names the paper
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not any(name in doc for name in PAPER_NAMES):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"module docstrings that name no paper (one of {PAPER_NAMES}): {missing}"


def test_no_process_words():
    found = []
    for path in source_files():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PROCESS_WORDS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not found, f"words of the project's planning in code or docs: {found}"


def test_process_word_pattern_can_fail():
    hits = [t for t in ("see issue 3 part 4", "the seed's examples", "the seed of a case", "random seed 0",
                        "part 2b of the plan", "the smooth part") if PROCESS_WORDS.search(t)]
    assert hits == ["see issue 3 part 4", "the seed's examples", "part 2b of the plan"]


# --- the errata table is honest: what it says shows an erratum exists ------------------------------

def errata_rows(text: str) -> list[str]:
    body = text.split("\n## 9. ", 1)[1].split("\n## 10. ", 1)[0]
    return [r for r in body.splitlines() if r.startswith("| ") and not r.startswith("| where")]


def test_every_erratum_names_where_it_is_shown():
    from refmem.checks import CHECKS

    names = [c.name for c in CHECKS]
    rows = errata_rows(MATH.read_text(encoding="utf-8"))
    assert len(rows) >= 10
    for row in rows:
        shown = row.rstrip(" |").rsplit("|", 1)[1]
        for quoted in re.findall(r'check "([^"]+)"', shown):
            assert any(quoted in n for n in names), f"specs/MATH.md 9: no registered check named like {quoted!r}"
        for path, func in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", shown):
            assert f"def {func}(" in (ROOT / path).read_text(encoding="utf-8"), f"specs/MATH.md 9: {path}::{func} does not exist"
        for module in re.findall(r"`(refmem(?:\.\w+)+)`", shown):
            assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists(), f"specs/MATH.md 9: no module {module}"
