"""``refmem verify``: run every registered check on a backend and report a table."""

from __future__ import annotations

import json
import math
import time

from . import backends
from .checks import CHECKS


def run_checks(backend_name: str = "numpy", *, spec_filter: list[str] | None = None) -> list[dict]:
    """Run the registered checks on ``backend_name``; one row per check.

    A check that raises is a failing row whose ``error`` field holds the exception.
    """
    rows = []
    with backends.backend(backend_name) as xp:
        for c in CHECKS:
            if spec_filter and not any(s in c.spec for s in spec_filter):
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


def format_table(rows: list[dict]) -> str:
    head = ("spec", "check", "max error", "tolerance", "status", "seconds")
    body = [
        (r["spec"], r["check"], f"{r['max_error']:.2e}", "-" if r["tolerance"] is None else f"{r['tolerance']:.1e}",
         r["status"].upper() if r["status"] == "fail" else r["status"], f"{r['seconds']:.3f}")
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body]
    for r in rows:
        if r["error"]:
            out.append(f"  ! {r['spec']} / {r['check']}: {r['error']}")
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
