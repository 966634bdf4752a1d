"""``refmem verify``: run every registered check on a backend and report a table."""

from __future__ import annotations

import json
import math
import textwrap
import time
from functools import partial

from . import backends
from .checks import CHECKS
from .pool import run_tasks


def check_row(key: tuple, *, backend_name: str) -> dict:
    """Run the registered check ``key = (spec, name)`` on ``backend_name``: its row (a check that raises is a failing row).

    The check is found by its names in the registry of the process that runs it
    (a worker process imports the same registry), since a check's function may be
    a closure that cannot be sent to another process.
    """
    found = [c for c in CHECKS if (c.spec, c.name) == key]
    if not found:  # e.g. a check registered at run time, sent to a fresh worker process
        raise LookupError(f"check {key} is not registered in this process; a check registered at run time "
                          f"runs with workers=1 only")
    check = found[0]
    with backends.backend(backend_name) as xp:
        t0 = time.perf_counter()
        err, tol, msg = math.nan, check.tolerance, ""
        try:
            out = check.fn(xp)
            if isinstance(out, tuple):
                err, tol = float(out[0]), float(out[1])
            else:
                err = float(out)
        except Exception as exc:  # a crashing check is a failing row, not a crashed run
            msg = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
    ok = tol is not None and math.isfinite(err) and err <= tol and not msg
    return {
        "spec": check.spec,
        "check": check.name,
        "max_error": err,
        "tolerance": tol,
        "status": "pass" if ok else "fail",
        "seconds": round(seconds, 4),
        "backend": backend_name,
        "error": msg,
    }


def run_checks(backend_name: str = "numpy", *, spec_filter: list[str] | None = None, workers: int = 1,
               client=None, desc: str | None = None) -> list[dict]:
    """Run the registered checks on ``backend_name``; one row per check, in registration order.

    A check that raises is a failing row whose ``error`` field holds the exception.
    ``spec_filter`` keeps the checks whose spec is exactly one of the names; an
    unknown name is a ``ValueError`` listing the known ones. The checks are
    independent tasks of :func:`refmem.pool.run_tasks`: ``workers`` processes
    (default 1: here, one after another) or a Dask ``client``; every check runs
    with one BLAS thread, so the errors are identical for every ``workers``.
    ``desc`` labels a progress bar (shown on a terminal only).
    """
    checks = CHECKS
    if spec_filter:
        known = {c.spec for c in checks}
        unknown = [s for s in spec_filter if s not in known]
        if unknown:
            raise ValueError(f"spec_filter {unknown}: no such spec; known: {', '.join(sorted(known))}")
    backends.get_backend(backend_name)
    selected = [(c.spec, c.name) for c in checks if not spec_filter or c.spec in spec_filter]
    return run_tasks(partial(check_row, backend_name=backend_name), selected, workers=workers, client=client,
                     desc=desc)


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


def main(args, client=None) -> int:
    rows = run_checks(args.backend, spec_filter=args.spec, workers=args.workers, client=client, desc="verify")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, allow_nan=True)
    return 1 if any(r["status"] == "fail" for r in rows) or not rows else 0
