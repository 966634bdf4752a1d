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


def _add_vectors(sub):
    p = sub.add_parser("vectors", help="write or verify the test vectors (deterministic reference cases per memory)")
    vsub = p.add_subparsers(dest="vectors_command", required=True)
    g = vsub.add_parser("generate", help="write DIR/manifest.json and DIR/<spec>/<case>.npz")
    g.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    g.add_argument("--spec", action="append", help="only this memory (repeatable; default every registered memory)")
    v = vsub.add_parser("verify", help="check sha256, sizes and format of every file, recompute every case, compare")
    v.add_argument("dir", metavar="DIR")
    v.add_argument("--spec", default=None, help="only this memory")

    def run(args):
        from . import vectors

        return vectors.main_generate(args) if args.vectors_command == "generate" else vectors.main_verify(args)

    p.set_defaults(func=run)


def _add_conform(sub):
    p = sub.add_parser("conform", help="check an external implementation (MODULE:FUNCTION) against a spec's test vectors")
    p.add_argument("target", metavar="MODULE:FUNCTION", help="the implementation under test")
    p.add_argument("--spec", required=True, help="registered memory name (specs/<spec>.md)")
    p.add_argument("--vectors", metavar="DIR", help="vectors from `refmem vectors generate` (default: generate to a temp dir)")
    p.add_argument("--layout", choices=("refmem", "fla"), default="refmem", help="calling convention (default refmem)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="dtype of the inputs (default float64)")
    p.add_argument("--convert", metavar="MODULE:FUNCTION", help="applied to every NumPy input first (e.g. torch:from_numpy)")

    def run(args):
        from .conform import main as conform_main

        return conform_main(args)

    p.set_defaults(func=run)


def _add_bench(sub):
    p = sub.add_parser("bench", help="throughput of the recurrent, chunked and mini-batch forms (head-tokens/s)")
    p.add_argument("--memory", action="append", metavar="NAME",
                   help="memory to benchmark (repeatable; default every memory with a chunked form)")
    p.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    p.add_argument("--seq-len", type=int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--heads", type=int, default=4, help="heads H (default 4)")
    p.add_argument("--dim", type=int, default=64, help="head dimension d = d_k = d_v (default 64)")
    p.add_argument("--chunk", type=int, default=64, help="chunk size C (default 64)")
    p.add_argument("--dtype", action="append", choices=["float64", "float32", "all"],
                   help="dtype (repeatable, or 'all'; default all)")
    p.add_argument("--backend", default="numpy", help="backend to run on (default numpy)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per row, best kept (default 3)")
    p.add_argument("--threads", type=int, help="BLAS threads (runs in a child process with *_NUM_THREADS set)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list")

    def run(args):
        from .bench import main as bench_main

        return bench_main(args)

    p.set_defaults(func=run)


SUBCOMMANDS = [_add_verify, _add_backends, _add_vectors, _add_conform, _add_bench]


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
