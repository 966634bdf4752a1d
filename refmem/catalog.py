"""What exists: every spec refmem knows, read from its registries, for ``refmem list``.

A spec is named by a registry (memories, nested systems, objectives,
retentions, optimisers), by a check
that ``refmem verify`` runs, or by a file ``specs/<name>.md``. Each row gives
the spec's kind (the registry it is in, else the ``Kind:`` line of its spec
file), the forms of a memory (recurrent / chunked / mini-batch), whether
``refmem vectors generate`` writes test vectors for it, and its spec file.
"""

from __future__ import annotations

import pathlib
import re

# The specs folder of a source checkout (absent from an installed wheel: the column then reads "-").
SPECS_DIR = pathlib.Path(__file__).resolve().parents[1] / "specs"


def _spec_file_kind(path: pathlib.Path) -> str | None:
    match = re.search(r"^Kind:\s*(\S+)", path.read_text(encoding="utf-8"), flags=re.M)
    return match.group(1) if match else None


def spec_catalog() -> list[dict]:
    """One row per spec: ``name, kind, forms, vectors, spec_file`` (sorted by kind, then name)."""
    from .checks import CHECKS
    from .memories import MEMORIES
    from .nested.registry import NESTED_SYSTEMS
    from .nested.vector_cases import FLAT_VECTORS
    from .objectives import OBJECTIVES
    from .optimizers import OPTIMIZERS
    from .optimizers.vector_cases import OPTIMIZER_VECTORS
    from .retentions import RETENTIONS

    rows = {}
    for name, mem in MEMORIES.items():
        forms = [f for f, fn in (("recurrent", mem.recurrent), ("chunked", mem.chunked), ("mini-batch", mem.minibatch))
                 if fn is not None]
        rows[name, "memory"] = {"name": name, "kind": "memory", "forms": forms, "vectors": mem.make_inputs is not None}
    for name, system in NESTED_SYSTEMS.items():
        forms = [f for f, fn in (("declared", system.declare), ("recurrent", system.recurrent),
                                 ("chunked", system.chunked)) if fn is not None]
        rows[name, "nested system"] = {"name": name, "kind": "nested system", "forms": forms,
                                       "vectors": name in FLAT_VECTORS, "file": system.spec}
    for kind, table in (("objective", OBJECTIVES), ("retention", RETENTIONS), ("optimiser", OPTIMIZERS)):
        for name in table:
            rows.setdefault((name, kind), {"name": name, "kind": kind, "forms": [],
                                           "vectors": kind == "optimiser" and name in OPTIMIZER_VECTORS})
    files = {p.stem: p for p in SPECS_DIR.glob("*.md") if p.stem not in ("README", "MATH")} if SPECS_DIR.is_dir() else {}
    named = {r.get("file") for r in rows.values()}  # spec files a row already points to under another name
    files_alone = {n: p for n, p in files.items() if n not in named}
    known = {name for name, _ in rows}
    for name in {c.spec for c in CHECKS} | set(files_alone):
        if name not in known:
            kind = _spec_file_kind(files[name]) if name in files else None
            rows[name, kind or "check"] = {"name": name, "kind": kind or "check", "forms": [], "vectors": False}
    for row in rows.values():
        file = row.pop("file", row["name"])
        row["spec_file"] = f"specs/{file}.md" if file in files else None
    order = {"memory": 0, "nested system": 1, "objective": 2, "retention": 3, "optimiser": 4}
    return sorted(rows.values(), key=lambda r: (order.get(r["kind"], len(order)), r["kind"], r["name"]))


def format_catalog(rows: list[dict]) -> str:
    """The catalogue as a table (``forms`` for memories only; ``vectors`` yes / no)."""
    head = ("spec", "kind", "forms", "vectors", "spec file")
    body = [(r["name"], r["kind"], " / ".join(r["forms"]) or "-", "yes" if r["vectors"] else "no",
             r["spec_file"] or "-") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body])
