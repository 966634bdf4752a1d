"""``refmem verify``: run every registered check on a backend and report a table."""

from __future__ import annotations

import json
import math
import textwrap
import time

from . import backends
from .checks import CHECKS


def run_checks(backend_name: str = "numpy", *, spec_filter: list[str] | None = None) -> list[dict]:
    """Run the registered checks on ``backend_name``; one row per check.

    A check that raises is a failing row whose ``error`` field holds the exception.
    ``spec_filter`` keeps the checks whose spec is exactly one of the names; an
    unknown name is a ``ValueError`` listing the known ones.
    """
    checks = CHECKS
    if spec_filter:
        known = {c.spec for c in checks}
        unknown = [s for s in spec_filter if s not in known]
        if unknown:
            raise ValueError(f"spec_filter {unknown}: no such spec; known: {', '.join(sorted(known))}")
    rows = []
    with backends.backend(backend_name) as xp:
        for c in checks:
            if spec_filter and c.spec not in spec_filter:
                continue
            t0 = time.perf_counter()
            err, tol, msg = math.nan, c.tolerance, ""
            try:
                out = c.fn(xp)
                if isinstance(out, tuple):
                    err, tol = float(out[0]), float(out[1])
                else:
                    err = float(out)
            except Exception as exc:  # a crashing check is a failing row, not a crashed run
                msg = f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            ok = tol is not None and math.isfinite(err) and err <= tol and not msg
            rows.append({
                "spec": c.spec,
                "check": c.name,
                "max_error": err,
                "tolerance": tol,
                "status": "pass" if ok else "fail",
                "seconds": round(seconds, 4),
                "backend": backend_name,
                "error": msg,
            })
    return rows


WIDTH = 100  # the table fits a 100-column terminal; --json keeps the full names


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``~`` when cut."""
    return text if len(text) <= width else text[: width - 1] + "~"


def format_table(rows: list[dict], width: int = WIDTH) -> str:
    """The rows as a table at most ``width`` columns wide (long spec and check names are cut, marked ``~``)."""
    head = ("spec", "check", "max error", "tolerance", "status", "seconds")
    numbers = [
        (f"{r['max_error']:.2e}", "-" if r["tolerance"] is None else f"{r['tolerance']:.1e}",
         r["status"].upper() if r["status"] == "fail" else r["status"], f"{r['seconds']:.3f}")
        for r in rows
    ]
    num_w = [max(len(h), *(len(n[i]) for n in numbers)) if numbers else len(h) for i, h in enumerate(head[2:])]
    room = width - sum(num_w) - 2 * (len(head) - 1)  # what is left for the two name columns
    spec_w = min(max([len(head[0])] + [len(r["spec"]) for r in rows]), max(8, room // 3))
    check_w = min(max([len(head[1])] + [len(r["check"]) for r in rows]), room - spec_w)
    widths = [spec_w, check_w] + num_w
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths))]
    out += [line((_fit(r["spec"], spec_w), _fit(r["check"], check_w)) + n) for r, n in zip(rows, numbers)]
    for r in rows:
        if r["error"]:
            out += textwrap.wrap(f"! {r['spec']} / {r['check']}: {r['error']}", width, initial_indent="  ",
                                 subsequent_indent="    ")
    n_fail = sum(r["status"] == "fail" for r in rows)
    out.append(f"{len(rows) - n_fail} passed, {n_fail} failed")
    return "\n".join(out)


def main(args) -> int:
    rows = run_checks(args.backend, spec_filter=args.spec)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, allow_nan=True)
    return 1 if any(r["status"] == "fail" for r in rows) or not rows else 0
