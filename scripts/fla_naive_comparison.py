"""refmem's chunked gated delta rule against flash-linear-attention's naive torch chunk reference, same inputs, same run.

Run from the repository root with the path of an fla checkout (a directory holding
``fla/ops/gated_delta_rule/naive.py``, or that file itself); a benchmark, so on an idle machine:

    .venv/bin/python scripts/fla_naive_comparison.py PATH [--batch 2] [--seq-len 4096] [--heads 8] [--dim 64]
                                                       [--chunk 64] [--repeat 3]

Needs torch and einops (``pip install torch einops``; refmem itself needs neither). Without them, or
without the path, it prints one line saying what is missing and exits 0: nothing is compared.

What it does:

- loads fla's ``naive_chunk_gated_delta_rule`` from the checkout's source, never from an installed fla
  and never copied into refmem. That reference casts its inputs to float32 itself; to compare in float64
  the source is read and its float32 casts are rewritten to float64 before it is compiled
  (``torch.float32`` and ``torch.float`` -> ``torch.float64``, ``.float()`` -> ``.double()``; the count
  of each is printed, and the function's output dtype is checked to be float64);
- draws refmem's gated delta rule inputs (``MEMORIES["gated_delta_rule"].make_inputs``, keys of norm
  about 1) at ``B, H, T, d`` and hands fla the same numbers in its layout: ``[B, T, H, d]``,
  ``g = log(alpha)``, ``beta``, ``scale = 1`` (refmem reads ``M q`` unscaled). fla's state is
  ``[d_k, d_v]``, refmem's ``[d_v, d_k]``: the final states are compared transposed;
- times each (best of ``--repeat`` rounds after one warm-up call, the two called in turn in every
  round, so that a machine whose load changes treats both alike) with one thread each: torch with
  ``torch.set_num_threads(1)``, refmem in this process (``refmem.options(workers=1)``: one plain call,
  no pool) with BLAS pinned to one thread and its input checks off (``check_finite=False``, as in
  ``refmem bench``);
- prints both times, the ratio fla / refmem (above 1: refmem is faster), and the largest relative
  differences of the outputs and final states (``refmem.metrics.rel_error``): both compute the same
  UT-transform chunked recurrence in float64, so they agree to about 1e-15 relative; a difference
  above ``1e-12`` is reported as a disagreement (exit 1).
"""

import argparse
import importlib.util
import re
import sys
import time
import types
from pathlib import Path

NAIVE = Path("fla/ops/gated_delta_rule/naive.py")
FLOAT64_REWRITES = (("torch.float32", r"torch\.float32\b", "torch.float64"),
                    ("torch.float", r"torch\.float\b", "torch.float64"), (".float()", r"\.float\(\)", ".double()"))
AGREE = 1e-12  # relative: ~4500 eps, far above float64 reordering over T = 4096 steps, far below any real difference


def _missing(path) -> str | None:
    """Why the comparison cannot run (one line), or None."""
    for module, how in (("torch", "pip install torch"), ("einops", "pip install einops")):
        if importlib.util.find_spec(module) is None:
            return f"skipped: {module} is not installed ({how}); nothing compared"
    if path is None:
        return "skipped: no fla checkout given (scripts/fla_naive_comparison.py PATH); nothing compared"
    if _naive_file(path) is None:
        return f"skipped: {path} holds no {NAIVE} (give an fla checkout or that file); nothing compared"
    return None


def _naive_file(path) -> Path | None:
    p = Path(path)
    for candidate in (p, p / NAIVE):
        if candidate.is_file():
            return candidate
    return None


def load_naive_chunk_float64(path):
    """fla's ``naive_chunk_gated_delta_rule`` compiled from its source with the float32 casts made float64; and the counts."""
    source = _naive_file(path).read_text()
    counts = {}
    for name, pattern, repl in FLOAT64_REWRITES:
        source, counts[f"{name} -> {repl}"] = re.subn(pattern, repl, source)
    module = types.ModuleType("fla_naive_gated_delta_rule_float64")
    exec(compile(source, str(_naive_file(path)), "exec"), module.__dict__)  # noqa: S102  (the checkout's own source)
    return module.naive_chunk_gated_delta_rule, counts


def alternating_best_times(calls: dict, repeat: int):
    """``{name: (best seconds, output)}``: one warm-up call each, then ``repeat`` rounds calling each in turn.

    Alternating the two in every round (instead of timing one, then the other) gives both the same
    share of a machine whose load changes during the run; the best of each is kept.
    """
    outs = {name: call() for name, call in calls.items()}  # warm-up
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for name, call in calls.items():
            t0 = time.perf_counter()
            outs[name] = call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], outs[name]) for name in calls}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", help="an fla checkout (or its fla/ops/gated_delta_rule/naive.py)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    why = _missing(args.path)
    if why is not None:
        print(why)
        return 0

    import numpy as np
    import torch

    import refmem
    from refmem.memories import MEMORIES
    from refmem.metrics import rel_error
    from refmem.parallel import pinned_blas

    naive_chunk, counts = load_naive_chunk_float64(args.path)
    B, T, H, d, C = args.batch, args.seq_len, args.heads, args.dim, args.chunk
    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(0, (B, H), T, d, d, np, "float64")  # q, k [B, H, T, d], v, alpha, beta [B, H, T]

    def fla_layout(x):  # [B, H, T, ...] -> [B, T, H, ...], a float64 torch tensor
        return torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))

    q, k, v = (fla_layout(inputs[n]) for n in ("q", "k", "v"))
    g, beta = fla_layout(np.log(inputs["alpha"])), fla_layout(inputs["beta"])

    torch.set_num_threads(1)

    def fla_call():
        with torch.no_grad():
            return naive_chunk(q, k, v, g, beta, chunk_size=C, scale=1.0, output_final_state=True)

    def refmem_call():
        with refmem.options(workers=1, check_finite=False), pinned_blas():
            return spec.chunked(**inputs, chunk_size=C)

    timed = alternating_best_times({"fla": fla_call, "refmem": refmem_call}, args.repeat)
    (fla_s, (fla_o, fla_S)), (ref_s, (o, M)) = timed["fla"], timed["refmem"]

    if fla_o.dtype != torch.float64:
        print(f"fla's reference returned {fla_o.dtype} after the float64 rewrite: its source changed; nothing compared")
        return 1
    o_fla = np.swapaxes(fla_o.numpy(), 1, 2)  # [B, T, H, d_v] -> [B, H, T, d_v]
    M_fla = np.swapaxes(fla_S.numpy(), -1, -2)  # [B, H, d_k, d_v] -> [B, H, d_v, d_k]
    err_o, err_M = rel_error(o, o_fla, np), rel_error(M, M_fla, np)
    rewrites = ", ".join(f"{what} x{n}" for what, n in counts.items())
    print(f"gated delta rule, chunked, float64, B={B} T={T} H={H} d={d} C={C}, one thread each, best of {args.repeat}")
    print(f"fla naive_chunk_gated_delta_rule (torch {torch.__version__}, float32 casts rewritten: {rewrites}): "
          f"{fla_s:.3f} s")
    print(f"refmem gated_delta_rule chunked (one process, BLAS on one thread): {ref_s:.3f} s")
    print(f"fla / refmem: {fla_s / ref_s:.2f}x; largest relative difference: outputs {err_o:.1e}, "
          f"final states {err_M:.1e} (agree below {AGREE:.0e})")
    return 0 if max(err_o, err_M) <= AGREE else 1


if __name__ == "__main__":
    sys.exit(main())
