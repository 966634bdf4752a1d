"""Accuracy figures of the implicit closed forms and of the certified iterative solves, over eta x key scale.

    .venv/bin/python scripts/solver_accuracy_figures.py

First, the quadratic implicit steps (l2 / Sherman-Morrison, windowed l2 / Omega) against the exact
solution of their normal equations in rational arithmetic (``tests/test_windowed_stability.py``), eta in
{1e-12, 1e-6, 1, 1e6, 1e12}, keys scaled by {1, 1e3, 1e6}, four seeds each: the largest max-abs
relative error. Second, for every implicit (objective, retention) with a closed form, the grid of
``tests/test_certified_convergence.py``: how many iterative solves certified, how many refused
(ConvergenceError), and the largest ||iterative - closed||_F / max(||closed||, ||M_t - closed||)
among the certified ones. Third, the problems with vanishing curvature (``mu = 0``: the lq retention,
q = 3, alpha = 0.9, and lp (p = 1.5) through the dual under lq with q = 1.5 and 3) over the same
grid, against the minimiser in 80-digit decimals (``tests/lq_reference.py``): certified / refused
and the largest true relative error over the reported tolerance (<= 1: every certificate holds).
Takes about three minutes.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_certified_convergence import ETAS, KEY_SCALES, MAX_ITER, OBJECTIVES, RETENTIONS, _inputs  # noqa: E402
from test_windowed_stability import SHAPES, _window, windowed_step_exact  # noqa: E402
from lq_reference import lq_step_reference  # noqa: E402

from refmem import Level, solve  # noqa: E402
from refmem.level import ClosedFormUnavailable  # noqa: E402
from refmem.metrics import rel_error  # noqa: E402
from refmem.objectives import L2, Lp  # noqa: E402
from refmem.objectives.windowed_l2 import WindowedL2  # noqa: E402
from refmem.retentions import ForgetGate, LocalL2, LqMoneta  # noqa: E402
from refmem.solvers import ConvergenceError  # noqa: E402


def worst_against_exact(make_level, center, c, d_k, d_v, seeds=4):
    worst = 0.0
    for seed in range(seeds):
        for i, (eta, s) in enumerate((e, s) for e in ETAS for s in KEY_SCALES):
            C, K, V, g = _window(1000 * seed + i, c, d_k, d_v, s)
            if c == 1:
                g = np.ones(1)
                got, _ = solve(make_level(eta, None), C, K[0], V[0])
            else:
                got, _ = solve(make_level(eta, g), C, K, V)
            want = windowed_step_exact(center(C), eta, K, V, g)
            worst = max(worst, rel_error(got, want, np))
    return worst


def main():
    print("implicit closed form vs exact rational arithmetic (max over the grid)")
    print(f"  l2 / local_l2 (Sherman-Morrison)       {worst_against_exact(lambda e, g: Level(L2(), LocalL2(e)), lambda C: C, 1, 4, 3):.2e}")
    print(f"  l2 / forget_gate(0.9)                  {worst_against_exact(lambda e, g: Level(L2(), ForgetGate(e, 0.9)), lambda C: 0.9 * C, 1, 4, 3):.2e}")
    for c, d_k, d_v in SHAPES:
        w1 = worst_against_exact(lambda e, g: Level(WindowedL2(g), LocalL2(e)), lambda C: C, c, d_k, d_v)
        w2 = worst_against_exact(lambda e, g: Level(WindowedL2(g), ForgetGate(e, 0.9)), lambda C: 0.9 * C, c, d_k, d_v)
        print(f"  windowed_l2 c={c} d_k={d_k}: local_l2 {w1:.2e}, forget_gate {w2:.2e}")
    print("iterative vs closed over the grid (implicit steps)")
    for o in OBJECTIVES:
        for r in RETENTIONS:
            certified = refused = 0
            worst = 0.0
            for i, (eta, s) in enumerate((e, s) for e in ETAS for s in KEY_SCALES):
                M_t, k, v = _inputs(o, s, seed=i)
                level = Level(OBJECTIVES[o], RETENTIONS[r](eta), step="implicit")
                try:
                    closed, _ = solve(level, M_t, k, v)
                except ClosedFormUnavailable:
                    break
                try:
                    it, _ = solve(level, M_t, k, v, method="iterative", max_iter=MAX_ITER)
                except ConvergenceError:
                    refused += 1
                    continue
                certified += 1
                scale = max(np.linalg.norm(closed), np.linalg.norm(M_t - closed))
                worst = max(worst, float(np.linalg.norm(it - closed) / scale))
            else:
                print(f"  {o:12s} {r:12s} certified {certified:2d}/15, refused {refused:2d}, max error {worst:.1e}")
    print("mu = 0: lq retention (q = 3) against 80-digit decimals, max true error / reported tolerance")
    for step in ("explicit", "implicit"):
        for o in ("dot", "l2", "lp3", "huber", "windowed_l2"):
            print(f"  {step:8s} {o:12s} " + lq_grid(o, step, OBJECTIVES[o], 3.0))
    for q in (1.5, 3.0):
        print(f"  implicit lp1.5 (dual) under lq q = {q}: " + lq_grid("lp1.5", "implicit", Lp(1.5), q))


def lq_grid(name, step, objective, q):
    """Certified / refused over the grid and the largest true relative error over the reported tolerance."""
    certified = refused = 0
    worst = 0.0
    for i, (eta, s) in enumerate((e, s) for e in ETAS for s in KEY_SCALES):
        M_t, k, v = _inputs(name, s, seed=i)
        try:
            it, rep = solve(Level(objective, LqMoneta(q, 0.9, eta), step=step), M_t, k, v, method="iterative",
                            max_iter=200)
        except ConvergenceError:
            refused += 1
            continue
        certified += 1
        exact = lq_step_reference(name, step, M_t, k, v, q, 0.9, eta, start=it)
        scale = max(np.linalg.norm(exact), np.linalg.norm(M_t - exact))
        worst = max(worst, float(np.linalg.norm(it - exact) / scale) / rep.tolerance)
    return f"certified {certified:2d}/15, refused {refused:2d}, max error / tolerance {worst:.2g}"


if __name__ == "__main__":
    main()
