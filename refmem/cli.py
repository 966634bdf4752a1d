"""The ``refmem`` command line: ``refmem verify``, ``refmem backends``, and the later subcommands.

Each subcommand lives with the module it drives; this file only wires them up.
"""

from __future__ import annotations

import argparse
import sys

from . import backends


def _add_verify(sub):
    p = sub.add_parser("verify", help="run every registered check and print a table")
    p.add_argument("--backend", default="numpy", help="backend to run on (default numpy)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list")
    p.add_argument("--spec", action="append", help="only checks whose spec contains this (repeatable)")

    def run(args):
        from .verify import main as verify_main

        return verify_main(args)

    p.set_defaults(func=run)


def _add_backends(sub):
    p = sub.add_parser("backends", help="list every backend, whether it is usable, and why not")

    def run(args):
        rows = backends.available()
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            mark = "usable" if r["usable"] else "NOT usable"
            print(f"{r['name']:<{w}}  {mark:<10}  {r['reason']}" + (f"  -- {r['description']}" if r["description"] else ""))
        return 0

    p.set_defaults(func=run)


SUBCOMMANDS = [_add_verify, _add_backends]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refmem", description="Reference implementation of nested associative memories.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except backends.BackendError as exc:
        print(f"refmem: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
