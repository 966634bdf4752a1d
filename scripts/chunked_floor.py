"""What NumPy's own kernels allow the chunked gated delta rule: each call it makes, timed alone.

Run from the repository root (a benchmark: needs an idle machine):

    .venv/bin/python scripts/chunked_floor.py [--repeat 200] [--slices 4] [--block 512]

The problem is the issue's: B=2, H=8, T=4096, d=64, C=64, float64, computed as the pool computes
it: tasks of ``--slices`` (batch, head) slices (``refmem.parallel.slices_per_task``), each in
blocks of ``--block`` steps (``refmem.chunked.delta_family.delta_family``), BLAS on one thread.
Every NumPy / BLAS call of one block (the factored path of ``_chunk_pieces`` and the sequential
pass of ``_delta_block``) is timed alone on operands of its real shape, best of ``--repeat``
(operands in cache, no Python around it), and multiplied by how often a head makes it. Their
sum is a floor: no Python, no cache misses, no allocation, no pool. It is set against

- the measured time per head of the real call (one process, ``refmem.options(workers=1)``), and
- the useful FLOPs per head of ``refmem.bench.form_flops``,

and turned into the largest fraction of the machine's all-core float64 peak (measured in the
same run, ``refmem.bench.machine_peak``) that the calls allow with every core busy and a
perfect pool: ``cores * useful / floor / peak_all``.
"""

import argparse

import numpy as np

import refmem
from refmem.bench import best_time, form_flops, machine_peak
from refmem.memories import MEMORIES
from refmem.numpy_extras import solve_triangular
from refmem.parallel import pinned_blas, usable_cores

B, H, T, d, C = 2, 8, 4096, 64, 64


def best(fn, repeat: int) -> float:
    return best_time(fn, np, repeat)


def block_calls(g: int, n: int, repeat: int) -> list:
    """``(name, seconds per call, calls per block)`` for one block of ``n`` chunks of ``g`` slices."""
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((g, n, C, d)) for _ in range(3))
    L = np.cumsum(np.log(rng.uniform(0.9, 1.0, (g, n, C))), axis=-1)
    b = rng.uniform(0.0, 1.0, (g, n, C))
    mT = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    gamma = np.exp(L)
    Kh = np.exp(-L)[..., None] * K
    bgK = (b * gamma)[..., None] * K
    A = np.tril(bgK @ mT(Kh), -1) / (d * C)  # a well-conditioned strict lower triangle
    incl = np.tril(np.ones((C, C), dtype=bool))
    S = rng.standard_normal((g, d, d))
    Wi, Ui, Pi, Ki = (rng.standard_normal((g, C, d)) for _ in range(4))
    gi = gamma[:, 0, -1][:, None, None]
    return [
        ("exp of the log-gates (2)", best(lambda: np.exp(L), repeat), 2),
        ("row scalings [g,n,C,d] (4)", best(lambda: gamma[..., None] * Q, repeat), 4),
        ("K K^T, Q K^T products (2)", best(lambda: bgK @ mT(Kh), repeat), 2),
        ("triangular solves (2 rhs)", best(lambda: solve_triangular(A, V.copy(), lower=True, unit_diagonal=True,
                                                                    overwrite_b=True), repeat)
         - best(lambda: V.copy(), repeat), 2),
        ("causal mask of P", best(lambda: np.where(incl, A, 0.0), repeat), 1),
        ("sequential [g,C,d]@[g,d,d] (4 per chunk)", best(lambda: Wi @ S, repeat), 4 * n),
        ("sequential elementwise (3 per chunk)", best(lambda: Ui - Wi, repeat), 3 * n),
        ("state decay (per chunk)", best(lambda: gi * S, repeat), n),
        ("outputs joined (per chunk)", best(lambda: np.stack([Pi, Ki], axis=-3), repeat) / 2, n),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--block", type=int, default=512)
    args = ap.parse_args()
    g, n = args.slices, args.block // C
    blocks = T // args.block
    cores = usable_cores()
    with pinned_blas():
        peak_all = machine_peak(np, "float64", 2048, 5, threads=cores)
        calls = block_calls(g, n, args.repeat)
        spec = MEMORIES["gated_delta_rule"]
        inputs = spec.make_inputs(0, (g,), T, d, d, np, "float64")
        with refmem.options(workers=1):
            real = best(lambda: spec.chunked(**inputs, chunk_size=C), max(5, args.repeat // 20)) / g
    useful = form_flops("gated_delta_rule", "chunked", 1, 1, T, d, C)
    print(f"chunked gated delta rule, B={B} H={H} T={T} d={d} C={C} float64; tasks of {g} slices, blocks of "
          f"{args.block} steps; BLAS on one thread; all-core peak {peak_all / 1e9:.1f} GFLOP/s on {cores} cores")
    print(f"{'call':44s} {'us/call':>9s} {'calls/head':>10s} {'ms/head':>8s}")
    floor = 0.0
    for name, seconds, per_block in calls:
        per_head = seconds * per_block * blocks / g
        floor += per_head
        print(f"{name:44s} {seconds * 1e6:9.1f} {per_block * blocks / g:10.1f} {per_head * 1e3:8.2f}")
    print(f"{'floor (sum of the calls alone)':44s} {'':9s} {'':10s} {floor * 1e3:8.2f}")
    print(f"{'measured (one process, whole call)':44s} {'':9s} {'':10s} {real * 1e3:8.2f}")
    print(f"useful FLOPs per head {useful / 1e6:.1f} M: at the floor {useful / floor / 1e9:.1f} GFLOP/s per core, "
          f"at most {100 * cores * useful / floor / peak_all:.1f}% of the all-core peak with {cores} perfect workers; "
          f"measured one-process rate {useful / real / 1e9:.1f} GFLOP/s "
          f"({100 * cores * useful / real / peak_all:.1f}% with {cores} perfect workers)")


if __name__ == "__main__":
    main()
