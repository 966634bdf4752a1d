"""Chunk size C = 32, 64, 128 for the chunked gated delta rule (B=2, H=8, T=4096, d=64, float64).

Run from the repository root (a benchmark: needs an idle machine):

    .venv/bin/python scripts/chunk_size_study.py [--repeat 3]

For each C: the useful FLOPs per head-token (``refmem.bench.form_flops``, structural zeros
not counted), the FLOPs the implementation performs (full products, the triangular solve),
the best time of one plain call on one core (``refmem.options(workers=1)``, BLAS on one thread)
and its useful rate, the batched small-product rate at that C (``refmem.bench.matmul_rate``),
and the bound those rates put on the all-core fraction: every product at the small-product
rate on every core, nothing else costing anything, gives at most
``cores * small_rate * useful / performed`` useful FLOP/s. Peaks measured in the same run.
"""

import argparse
import time

import numpy as np

import refmem
from refmem.bench import form_flops, machine_peak, matmul_rate
from refmem.memories import MEMORIES
from refmem.parallel import pinned_blas, usable_cores

B, H, T, d = 2, 8, 4096, 64


def performed_flops(C: int) -> float:
    """FLOPs the chunked gated delta rule performs per head-token: per chunk the full C x C products
    diag(b gamma) K K^^T and diag(gamma) Q K^^T (2 C^2 d each), the unit triangular solve with 2 d
    right-hand sides (C (C - 1) 2 d), P U (2 C^2 d) and W M^T, U^T K~, diag(gamma) Q M^T (2 C d^2 each)."""
    per_chunk = 3 * 2 * C * C * d + C * (C - 1) * 2 * d + 3 * 2 * C * d * d
    return per_chunk / C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(0, (B, H), T, d, d, np, "float64")
    cores = usable_cores()
    peak_all = machine_peak(np, "float64", 2048, args.repeat, threads=cores)
    peak_one = machine_peak(np, "float64", 2048, args.repeat, threads=1)
    print(f"peak: {peak_all / 1e9:.1f} GFLOP/s on {cores} cores, {peak_one / 1e9:.1f} on one")
    print(f"{'C':>4} {'useful/tok':>10} {'done/tok':>9} {'seconds':>8} {'GFLOP/s':>8} {'%1-core':>8} "
          f"{'small GF/s':>10} {'bound %all':>10}")
    for C in (32, 64, 128):
        useful = form_flops("gated_delta_rule", "chunked", B, H, T, d, C)
        with pinned_blas():
            small = matmul_rate(np, "float64", B * H * (T // C), C, d, args.repeat)
            with refmem.options(check_finite=False, workers=1):
                spec.chunked(**inputs, chunk_size=C)
                best = min(_timed(lambda: spec.chunked(**inputs, chunk_size=C)) for _ in range(args.repeat))
        per_tok = useful / (B * H * T)
        bound = cores * small * per_tok / performed_flops(C)
        print(f"{C:>4} {per_tok:>10.0f} {performed_flops(C):>9.0f} {best:>8.3f} {useful / best / 1e9:>8.2f} "
              f"{100 * useful / best / peak_one:>7.1f}% {small / 1e9:>10.1f} {100 * bound / peak_all:>9.1f}%")


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
