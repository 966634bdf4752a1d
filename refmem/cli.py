"""The ``refmem`` command line: ``verify``, ``list``, ``backends``, ``vectors``, ``conform``, ``bench``, ``tour``.

Each subcommand's work lives with the module it drives; this file wires them
up and checks the arguments first. A user error (a bad argument, an unknown
name, a file that cannot be written, a target that cannot be imported) prints
one line ``refmem <command>: error: ...`` naming the argument and exits 2,
before any long work starts; a check that ran and failed exits 1; a pass
exits 0. No user error shows a Python traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap

from . import __version__, backends

EXIT_CODES = "exit status: 0 pass, 1 a check failed, 2 a usage error (one line on stderr naming the argument)"


class UsageError(Exception):
    """A bad argument: printed as one line naming it, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and an epilog that may be computed only when help is shown."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self):
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def check_writable(path: str, option: str) -> None:
    """Raise :class:`UsageError` unless ``path`` can be written as a file (checked now, before the work)."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path!r}: the directory {parent!r} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path!r} cannot be written ({exc.strerror or exc})") from None
    if not existed:
        os.remove(path)


def _add_pool_options(p, *, workers: bool = True) -> None:
    """``--workers N`` (independent tasks on N processes) and ``--scheduler ADDRESS`` (on a Dask cluster)."""
    if workers:
        p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                       help="run the independent tasks on N worker processes (default 1: here); same results")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://host:8786; needs "
                        "pip install 'refmem[dask]' here and the same refmem on the workers); same results")


@contextlib.contextmanager
def _dask_client(args):
    """A client of ``--scheduler`` (closed afterwards), or ``None``; a scheduler that does not answer is a UsageError."""
    address = getattr(args, "scheduler", None)
    if address is None:
        yield None
        return
    if getattr(args, "workers", None) not in (None, 1):
        raise UsageError("--workers and --scheduler exclude each other (the cluster's workers run the tasks)")
    from .distributed import connect

    try:
        client = connect(address)
    except (ImportError, ValueError, TypeError) as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def _unknown(option: str, given, known) -> UsageError:
    return UsageError(f"{option} {given!r}: no such {option.lstrip('-')}; known: {', '.join(sorted(known))}")


def _describe(*paragraphs: str) -> str:
    """Paragraphs filled to 79 columns (the help keeps the epilog's own line breaks, so it fills these itself)."""
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EXIT_CODES


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """The options several subcommands take, as argparse parent parsers; :func:`_check_shared_options` checks them."""
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--backend", default="numpy", help="backend to run on (default numpy; see `refmem backends`)")
    json_rows = argparse.ArgumentParser(add_help=False)
    json_rows.add_argument("--json", metavar="PATH", help="also write the rows (full names, numbers) as a JSON list")
    return {"backend": backend, "json": json_rows}


SHARED = _shared_options()


def _check_shared_options(args) -> None:
    """Before any work: ``--json`` can be written, ``--backend`` is usable (a :class:`UsageError` or ``BackendError``)."""
    if getattr(args, "json", None):
        check_writable(args.json, "--json")
    if getattr(args, "backend", None) is not None:
        backends.get_backend(args.backend)


# ---------------------------------------------------------------- verify


def _add_verify(sub):
    p = sub.add_parser(
        "verify", help="run every registered check and print a table", parents=[SHARED["backend"], SHARED["json"]],
        description=_describe("Run every check registered in refmem/checks/ (closed form against iterative solver, recurrent "
                    "against chunked, hand derivatives against finite differences, ...) and print one row per "
                    "check: its spec, its name, the largest error found, the tolerance it must stay under, and "
                    "the time it took."),
        epilog=_examples("refmem verify", "refmem verify --spec delta_rule --spec l2",
                         "refmem verify --backend array_api_strict --json rows.json", "refmem verify --workers 2"))
    _add_pool_options(p)
    p.add_argument("--spec", action="append", metavar="NAME", help="only the checks of this spec (exact name; repeatable)")

    def run(args):
        from .checks import CHECKS
        from .verify import main as verify_main

        known = {c.spec for c in CHECKS}
        for s in args.spec or []:
            if s not in known:
                raise _unknown("--spec", s, known)
        with _dask_client(args) as client:
            return verify_main(args, client=client)

    p.set_defaults(func=run)


# ---------------------------------------------------------------- list


def _add_list(sub):
    p = sub.add_parser(
        "list", help="every spec: kind, forms, whether it has test vectors, its spec file",
        description=_describe("List every registered spec: memories (with their recurrent / chunked / mini-batch forms and "
                    "whether `refmem vectors generate` writes cases for them), objectives, retentions, and every "
                    "other spec that a check or a spec file names."),
        epilog=_examples("refmem list", "refmem list --kind memory"))
    p.add_argument("--kind", metavar="KIND", help="only this kind (memory, objective, retention, optimiser, ...)")

    def run(args):
        from .catalog import format_catalog, spec_catalog

        rows = spec_catalog()
        if args.kind is not None:
            kinds = {r["kind"] for r in rows}
            if args.kind not in kinds:
                raise _unknown("--kind", args.kind, kinds)
            rows = [r for r in rows if r["kind"] == args.kind]
        print(format_catalog(rows))
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------- backends


def _add_backends(sub):
    p = sub.add_parser(
        "backends", help="list every backend, whether it is usable, and why not",
        description=_describe("List every array backend refmem knows (NumPy, array_api_strict, plugins such as refmem_cupy), "
                    "whether it is usable on this machine, and the reason when it is not."),
        epilog=_examples("refmem backends"))

    def run(args):
        rows = backends.available()
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            mark = "usable" if r["usable"] else "NOT usable"
            print(f"{r['name']:<{w}}  {mark:<10}  {r['reason']}" + (f"  -- {r['description']}" if r["description"] else ""))
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------- vectors


def _memory_names():
    """Every spec with test vectors: the memories and the flat-convention references (CMS, HOPE)."""
    from .vectors import registry

    return sorted(registry())


def _add_vectors(sub):
    p = sub.add_parser(
        "vectors", help="write or verify the test vectors (deterministic reference cases per memory)",
        description=_describe("Test vectors: deterministic reference cases of every registered memory, with sha256 and size "
                    "of every file in DIR/manifest.json (format in specs/README.md)."),
        epilog=_examples("refmem vectors generate --out vectors --spec delta_rule", "refmem vectors verify vectors"))
    vsub = p.add_subparsers(dest="vectors_command", required=True, metavar="{generate,verify}")
    g = vsub.add_parser(
        "generate", help="write DIR/manifest.json and DIR/<spec>/<case>.npz",
        description=_describe("Write the cases of every registered memory (or those named) under DIR; byte-identical when "
                    "run again on the same machine, with any --workers or on a Dask cluster (--scheduler: the cases are "
                    "computed by the cluster's workers, the files written here)."),
        epilog=_examples("refmem vectors generate --out vectors", "refmem vectors generate --out v --spec titans",
                         "refmem vectors generate --out vectors --workers 2",
                         "refmem vectors generate --out vectors --scheduler tcp://10.0.0.5:8786"))
    g.add_argument("--out", required=True, metavar="DIR", help="directory to write (created if missing)")
    g.add_argument("--spec", action="append", metavar="NAME",
                   help="only this memory (repeatable; default every registered memory)")
    _add_pool_options(g)
    v = vsub.add_parser(
        "verify", help="check the manifest and every file, recompute every case, compare",
        description=_describe("Check the manifest (schema, every path inside DIR, the complete case list), every file "
                    "(size, sha256, format), recompute every case with this refmem and compare under the float64 "
                    "tolerance. Exit 1 names the first file and check that failed."),
        epilog=_examples("refmem vectors verify vectors", "refmem vectors verify vectors --spec delta_rule"))
    v.add_argument("dir", metavar="DIR")
    v.add_argument("--spec", default=None, metavar="NAME", help="only this memory")

    def run(args):
        from . import vectors

        known = _memory_names()
        specs = args.spec if args.vectors_command == "generate" else ([args.spec] if args.spec else [])
        for s in specs or []:
            if s not in known:
                raise _unknown("--spec", s, known)
        if args.vectors_command == "generate":
            _check_out_dir(args.out)
            with _dask_client(args) as client:
                return vectors.main_generate(args, client=client)
        if not os.path.isdir(args.dir):
            raise UsageError(f"DIR {args.dir!r} is not a directory")
        return vectors.main_verify(args)

    p.set_defaults(func=run)


def _check_out_dir(out: str, option: str = "--out") -> None:
    """``option`` (``--out``) is (or can be made) a directory we can write files in."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"{option} {out!r} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".refmem-write-probe")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"{option} {out!r} cannot be written ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- conform


def _conform_epilog() -> str:
    from .conform import kernel_gates
    from .gate_meanings import gate_meaning

    lines = ["layouts (what your function is called with; specs/kernel_layouts.md):",
             "  refmem  fn(q, k, v, **gates, initial_state=M0) -> (o, M_T)",
             "          q, k [..., T, d_k], v [..., T, d_v], gates [..., T] or [..., T, d], M [..., d_v, d_k];",
             "          o_t = M_t q_t (after the write), no scale on q",
             "  fla     fn(q, k, v, **gates, initial_state=S0, output_final_state=True) -> (o, S_T)",
             "          q, k, v [B, T, H, d], gates [B, T, H] (per channel [B, T, H, K]), S = M^T [B, H, K, V];",
             "          gates by meaning: g = log(fraction of the state kept) (gk per key channel); other gates",
             "          keep their names (beta after the sigmoid); q arrives times sqrt(K) (fla applies 1/sqrt(K))",
             "",
             "layout options (any combination; a case an option cannot express is skipped, with the reason):",
             "  --state-v-first / --state-k-first   states [..., V, K] / [..., K, V]",
             "  --gate-space log|linear             fla: g = log(kept) (default) or g = kept",
             "  --value-heads-per-qk G              fla: q, k [B, T, H, K]; v, gates, states with HV = G H heads;",
             "                                      value head j reads q, k head j // G (case grouped_heads)",
             "  --cu-seqlens                        fla: B = 1, sequences packed along T, cu_seqlens [N+1] int64,",
             "                                      initial_state / final state [N, H, K, V] (case varlen; other",
             "                                      cases as their B rows packed)",
             "  --use-qk-l2norm-in-kernel           q, k sent un-normalised (unit vectors times 1e4..4e4) with",
             "                                      use_qk_l2norm_in_kernel=True (case unit_qk)",
             "  --scale S                           scale=S passed; o expected as S M q",
             "",
             "stage oracles (--stages --chunk-size C): fn(..., chunk_size=C) -> {name: array}; names and shapes",
             "  refmem  start_states [..., N, d_v, d_k], decay [..., N, C] ([..., N, C, d_k] per channel),",
             "          A, A_inv [..., N, C, C], W [..., N, C, d_k], U~, U [..., N, C, d_v]",
             "  fla     h [B, N, H, K, V], g_cumsum [B, T, H] (log of decay), A, Ai [B, T, H, C], w [B, T, H, K],",
             "          u, v_new [B, T, H, V]; 'o' and the state may be returned in the dict too",
             "  A = strict_tril(diag(beta)(D o K K^T)), A_inv = (I + A)^-1, W = A_inv diag(beta gamma) K,",
             "  U~ = A_inv diag(beta) V, U = U~ - W M0^T (specs/kernel_layouts.md, refmem.chunked.stages)",
             "",
             "specs with vectors, and the gates a kernel receives (refmem layout | fla layout):"]
    table = kernel_gates()
    w = max(len(n) for n in table)
    for name, (ours, fla) in table.items():
        sent = [f"{f}=log(1-{g})" if gate_meaning(name, g).meaning == "forgotten" else f for g, f in zip(ours, fla)]
        lines.append(f"  {name:<{w}}  {', '.join(ours) or '-'} | {', '.join(sent) or '-'}")
    lines += ["", "outputs: 'o' (the read-outs) and 'state' (or state_0, state_1, ...); --outputs o checks only the",
              "read-out, for a kernel that returns no final state.", "",
              "gradients (--backward): after the forward check, the gradients of <do, o> + <dM_T, M_T> in every",
              "input, against refmem's VJP (vectors format version 2), one tolerance per gradient. The kernel's",
              "gradients come from --vjp MODULE:FUNCTION, called with the kernel's arguments plus the cotangents",
              "  refmem  vjp(q, k, v, **gates, initial_state=M0, do=do, dM_T=dM_T) -> {'q': dq, 'k': dk, ...,",
              "          'initial_state': dM0} (the argument names, as refmem.backward returns them)",
              "  fla     vjp(q, k, v, **gates, initial_state=h0, output_final_state=True, do=do, dht=dht)",
              "          -> {'dq', 'dk', 'dv', 'dbeta', 'dg' (or 'dgk'), 'dh0'}: fla's names and spaces",
              "          (dg = a da for g = log a, dh0 = dM_0^T, dq for the q it received)",
              "or, without --vjp, from torch autograd through the kernel (its outputs must be torch tensors that",
              "require grad; torch is imported only then; --convert torch:from_numpy gives the forward check torch",
              "inputs too). A failing kernel is told which gradient differs.",
              "The layout options apply to the gradients too, by the chain rule (the gradient of what the kernel",
              "received, in its layout; specs/kernel_layouts.md, Backward):",
              "  --state-v-first        dht, dh0 [..., V, K] (dM_T, dM_0); --state-k-first (refmem): dM_T^T, dM_0^T",
              "  --gate-space linear    dg = d(kept) (da, or -dalpha for a forgetting rate); log: dg = kept d(kept)",
              "  --value-heads-per-qk G dq, dk [B, T, H, K]: the sums over each group's G value heads",
              "  --cu-seqlens           do, dq, ... [1, sum T_i, H, d]; dht, dh0 [N, H, K, V], one per sequence",
              "                         (without it, a varlen case: one vjp call per sequence, its own cotangents)",
              "  --use-qk-l2norm-in-kernel  dq, dk of the raw x: (I - x^ x^T) du / |x|, x^ = x / |x|",
              "  --scale S              do / S sent (the kernel's loss is refmem's), dq for the q sent as it is",
              "",
              _examples("refmem conform my_kernels:delta_rule_fla --spec delta_rule --layout fla --dtype float32",
                        "refmem conform my_kernels:gla --spec gated_linear_attention --vectors vectors --outputs o",
                        "refmem conform my_kernels:chunk_delta --spec delta_rule --layout fla --convert torch:from_numpy",
                        "refmem conform my_kernels:gdn --spec gated_delta_rule --layout fla --cu-seqlens --state-v-first",
                        "refmem conform k:torch_fla --spec delta_rule --layout fla --backward --convert torch:from_numpy",
                        "refmem conform my_kernels:delta_fla --spec delta_rule --layout fla --backward "
                        "--vjp my_kernels:bwd",
                        "refmem conform my_kernels:gdn --spec gated_delta_rule --layout fla --cu-seqlens \\\n"
                        "               --state-v-first --backward --vjp my_kernels:gdn_bwd")]
    return "\n".join(lines)


def _add_conform(sub):
    p = sub.add_parser(
        "conform", help="check an external implementation (MODULE:FUNCTION) against a spec's test vectors",
        description=_describe("Run MODULE:FUNCTION on the test vectors of a spec and compare every output with refmem's "
                    "float64 reference under the dtype's derived tolerance; one row per case and output, then a "
                    "verdict per output; with --backward, then every gradient, each named. The current directory "
                    "is importable."),
        epilog_fn=_conform_epilog)
    p.add_argument("target", metavar="MODULE:FUNCTION", help="the implementation under test")
    p.add_argument("--spec", required=True, metavar="NAME", help="registered memory name (specs/<spec>.md)")
    p.add_argument("--vectors", metavar="DIR", help="vectors from `refmem vectors generate` (default: generate to a temp dir)")
    p.add_argument("--layout", choices=("refmem", "fla"), default="refmem", help="calling convention (default refmem)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="dtype of the inputs (default float64)")
    p.add_argument("--convert", metavar="MODULE:FUNCTION", help="applied to every NumPy input first (e.g. torch:from_numpy)")
    p.add_argument("--outputs", action="append", metavar="NAME",
                   help="compare only this output (repeatable; e.g. o for a kernel that returns no state)")
    g = p.add_argument_group("layout options (orthogonal; a case an option cannot express is skipped, with the reason)")
    g.add_argument("--state-v-first", dest="state_v_first", action="store_true", default=None,
                   help="states are [..., V, K] (refmem's M); default: the layout's own (refmem [V, K], fla [K, V])")
    g.add_argument("--state-k-first", dest="state_v_first", action="store_false",
                   help="states are [..., K, V] (S = M^T), also under --layout refmem")
    g.add_argument("--gate-space", choices=("log", "linear"), default=None,
                   help="fla: the forget gate g (gk) as log of the fraction kept (default) or as the fraction itself")
    g.add_argument("--value-heads-per-qk", type=int, default=1, metavar="G",
                   help="fla: grouped value heads, HV = G H; q, k [B, T, H, K], v, gates, states with HV heads")
    g.add_argument("--cu-seqlens", action="store_true",
                   help="fla: packed variable-length batches: B = 1, cu_seqlens [N+1] (int64), states [N, H, K, V]")
    g.add_argument("--use-qk-l2norm-in-kernel", action="store_true",
                   help="the kernel normalises q and k itself: they are sent un-normalised (unit_qk case only)")
    st = p.add_argument_group("stage oracles (delta_rule, gated_delta_rule, linear_attention, gated_linear_attention)")
    st.add_argument("--stages", action="store_true",
                    help="the kernel also gets chunk_size=C and returns a dict of named stage arrays, each compared "
                         "with refmem.chunked.stages; the report names the first stage that differs")
    st.add_argument("--chunk-size", type=int, default=64, metavar="C", help="chunk size of a staged check (default 64)")
    g.add_argument("--scale", type=float, default=None, metavar="S",
                   help="read-out scale passed as scale=S, expected o = S M q (default: not passed; refmem 1, fla K^-1/2)")
    p.add_argument("--backward", action="store_true",
                   help="also check the gradients (from --vjp, or torch autograd through the kernel)")
    p.add_argument("--vjp", metavar="MODULE:FUNCTION", help="the kernel's backward, returning its gradients (with --backward)")

    def run(args):
        from .conform import main as conform_main

        known = [n for n in _memory_names()]
        if args.spec not in known:
            raise _unknown("--spec", args.spec, known)
        if args.vectors is not None and not os.path.isdir(args.vectors):
            raise UsageError(f"--vectors {args.vectors!r} is not a directory")
        if args.chunk_size < 1:
            raise UsageError(f"--chunk-size must be >= 1; got {args.chunk_size}")
        if args.value_heads_per_qk < 1:
            raise UsageError(f"--value-heads-per-qk must be >= 1; got {args.value_heads_per_qk}")
        if args.layout == "refmem":
            for flag, on in (("--gate-space", args.gate_space is not None), ("--value-heads-per-qk", args.value_heads_per_qk != 1),
                             ("--cu-seqlens", args.cu_seqlens)):
                if on:
                    raise UsageError(f"{flag} applies to --layout fla only")
        if args.vjp is not None and not args.backward:
            raise UsageError("--vjp is the kernel's backward: it needs --backward")
        if args.backward:  # the forward check, then the gradients, in the layout and its options
            if args.stages:
                raise UsageError("--stages checks a chunked kernel's forward stages; it cannot be combined with "
                                 "--backward (no stage oracles for gradients)")
            from .conform_backward import main as backward_main

            return backward_main(args)
        return conform_main(args)

    p.set_defaults(func=run)


# ---------------------------------------------------------------- bench


def _add_bench(sub):
    p = sub.add_parser(
        "bench", help="throughput of the recurrent, chunked and mini-batch forms (head-tokens/s)",
        parents=[SHARED["backend"], SHARED["json"]],
        description=_describe("Time every form of every memory with a chunked form (or those named) on random inputs of "
                    "shape B x H x T x d and print one row per memory, form and dtype. Columns: head-tok/s "
                    "(B H T / seconds, best of --repeat), x recur (speed-up over the recurrent form), GFLOP/s "
                    "(useful FLOPs, structural zeros not counted, / seconds), % peak and % 1-core (that rate as a "
                    "fraction of a large matrix product on all cores / on one core, timed in the same run), % small "
                    "(as a fraction of batched small products of comparable shape), peak extra (the most memory one call allocates), "
                    "/BHTd (peak extra in units of one [B, H, T, d] array: about d for a form that keeps every "
                    "step's state, a constant for one that does not), workers (processes the form used: 1 is one "
                    "plain call here; see --workers). The memory the run needs is estimated "
                    "first; a run that cannot fit is refused with the figure. With "
                    "--scheduler every form runs as one Dask task per (batch, head) slice on that cluster (the "
                    "time includes the transfers; peak extra is then not measured)."),
        epilog=_examples("refmem bench --memory delta_rule --seq-len 256 --dtype float64",
                         "refmem bench --memory gated_delta_rule --batch 2 --seq-len 4096 --heads 8 \\\n"
                         "               --dim 64 --chunk 64 --threads 1 --json bench.json",
                         "refmem bench --memory gated_delta_rule --batch 2 --seq-len 4096 --heads 8 --workers 2",
                         "refmem bench --memory gated_delta_rule --dtype float64 --scheduler tcp://10.0.0.5:8786"))
    p.add_argument("--memory", action="append", metavar="NAME",
                   help="memory to benchmark (repeatable; default every memory with a chunked form and the "
                        "per-channel variants gated_linear_attention/per_channel, longhorn/per_channel)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size B (default 1)")
    p.add_argument("--seq-len", type=_positive_int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--heads", type=_positive_int, default=4, help="heads H (default 4)")
    p.add_argument("--dim", type=_positive_int, default=64, help="head dimension d = d_k = d_v (default 64)")
    p.add_argument("--chunk", type=_positive_int, default=64,
                   help="chunk size C (default 64; a chunk longer than T is the same computation as C = T)")
    p.add_argument("--dtype", action="append", choices=["float64", "float32", "all"],
                   help="dtype (repeatable, or 'all'; default all)")
    p.add_argument("--repeat", type=_positive_int, default=3, help="timed calls per row, best kept (default 3)")
    p.add_argument("--threads", type=_positive_int, help="BLAS threads (runs in a child process with *_NUM_THREADS set)")
    p.add_argument("--peak-size", type=_positive_int, default=2048,
                   help="n of the [n, n] @ [n, n] product that measures the machine's peak (default 2048)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="processes per form: this one and N - 1 pool processes, each computing (batch, head) slices "
                        "with BLAS on one thread (default: the pool on every core when B H >= cores and the problem "
                        "is big enough, else one plain call); the table's workers column says what each row used")
    _add_pool_options(p, workers=False)

    def run(args):
        from . import bench

        for m in args.memory or []:
            if m not in bench.bench_names():
                raise _unknown("--memory", m, bench.bench_names())
        args.chunk = min(args.chunk, args.seq_len)
        if args.backend in ("numpy", "array_api_strict"):
            need = bench.estimate_peak_bytes(args.batch, args.seq_len, args.heads, args.dim, args.chunk)
            have = bench.available_memory_bytes()
            if have is not None and need > have:
                raise UsageError(
                    f"--batch {args.batch} --seq-len {args.seq_len} --heads {args.heads} --dim {args.dim} "
                    f"--chunk {args.chunk} needs about {_gib(need)} of memory, more than the {_gib(have)} available; "
                    f"use smaller sizes")
        if bench.needs_threads_rerun(args):
            return bench.main(args)  # a child process with the BLAS thread variables set (it connects itself)
        with _dask_client(args) as client:
            return bench.main(args, client=client)

    p.set_defaults(func=run)


# ---------------------------------------------------------------- tour


def _add_tour(sub):
    p = sub.add_parser(
        "tour", help="a guided walk through Nested Learning: each idea's equation, its refmem call, both ways",
        parents=[SHARED["backend"]],
        description=_describe("A walk through the paper's ideas in its order: a trained MLP as a memory of local "
                    "surprise, momentum as a two-level memory, sequence memories (linear attention, delta rule, "
                    "Longhorn, Titans), retention, optimisers as memories (Adam, Muon), nested levels (CMS, "
                    "HOPE). Each stop prints the equation in plain text and the refmem call that implements it, "
                    "then runs the registered checks that compute it both ways (closed form and iterative, or "
                    "recurrent and chunked) on a small seeded problem and prints the agreement."),
        epilog=_examples("refmem tour", "refmem tour --list", "refmem tour --stop delta_rule",
                         "refmem tour --plots figures   (needs the plot extra: pip install 'refmem[plot]')"))
    p.add_argument("--list", action="store_true", help="list the stops and stop")
    p.add_argument("--stop", metavar="NAME", help="run only this stop (see --list)")
    p.add_argument("--plots", metavar="DIR", help="write the tour's figures as PNGs into DIR (created) instead")

    def run(args):
        from . import tour

        if args.stop is not None and args.stop not in tour.stop_names():
            raise _unknown("--stop", args.stop, tour.stop_names())
        if args.plots is not None:
            from . import plots

            try:
                plots._pyplot()
            except plots.PlotExtraMissing as exc:
                raise UsageError(f"--plots: {exc}") from None
            _check_out_dir(args.plots, "--plots")
            for path in plots.write_figures(args.plots):
                print(path)
            return 0
        return tour.main(args)

    p.set_defaults(func=run)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


SUBCOMMANDS = [_add_verify, _add_list, _add_backends, _add_vectors, _add_conform, _add_bench, _add_tour]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="refmem", description=_describe("Reference implementation of nested associative memories: checks, specs, "
                                   "test vectors, a conformance runner for other implementations, benchmarks."),
        epilog=_examples("refmem verify", "refmem list", "refmem conform --help"))
    parser.add_argument("--version", action="version", version=f"refmem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"refmem {args.command}" + (f" {args.vectors_command}" if getattr(args, "vectors_command", None) else "")
    try:
        _check_shared_options(args)
        return int(args.func(args) or 0)
    except (UsageError, backends.BackendError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that could be written when checked but not at the end (disk full, removed)
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `refmem list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
