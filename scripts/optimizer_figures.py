"""Print the optimiser figures of specs/adam.md and specs/muon.md (NumPy, float64; about a minute on one core).

    python scripts/optimizer_figures.py            # both tables
    python scripts/optimizer_figures.py moments    # 1000-step trajectory differences only
    python scripts/optimizer_figures.py newton-schulz

The textbook updates are the ones written plainly in tests/test_optim_*.py (imported from there).
"""

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from optim_problems import NoisyQuadratic, max_rel, run  # noqa: E402
from test_optim_moments import CASES  # noqa: E402
from test_optim_sgd import textbook_sgd  # noqa: E402

from refmem.optimizers import make  # noqa: E402
from refmem.optimizers import orthogonalization as orth  # noqa: E402


def moments(T=1000):
    prob = NoisyQuadratic(0, (2, 3, 4), T)
    cases = dict(CASES)
    sgd = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    nest = dict(lr=0.05, momentum=0.9, nesterov=True)
    cases["sgd"] = (sgd, lambda p, n: textbook_sgd(p, n, **sgd))
    cases["sgd_nesterov"] = (nest, lambda p, n: textbook_sgd(p, n, **nest))
    print("| optimiser (hyperparameters) | steps | closed vs textbook | closed vs iterative | iterative vs textbook |")
    print("|---|---|---|---|---|")
    for key, (hp, textbook) in cases.items():
        name = key.split("_")[0]
        closed = run(make(name, **hp), prob, np)
        it = run(make(name, **hp), prob, np, method="iterative")
        ref = textbook(prob, T)
        print(f"| {key} {hp} | {T} | {max_rel(closed, ref):.1e} | {max_rel(it, closed):.1e} | {max_rel(it, ref):.1e} |",
              flush=True)


def newton_schulz(n=32):
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    print("| kappa | s_min/||M||_F | cubic NS iterations | ||NS - UV^T||_max | quintic min s | max s | ||O_5 - UV^T||_2 |")
    print("|---|---|---|---|---|---|---|")
    for kappa in (1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e8):
        s = np.logspace(0, -math.log10(kappa), n)
        M = (U * s) @ V.T
        O, rep = orth.newton_schulz_polar(M)
        P = orth.polar_factor(M)
        Q = orth.newton_schulz_quintic(M)
        sv = np.linalg.svd(Q, compute_uv=False)
        print(f"| {kappa:.0e} | {s.min() / np.linalg.norm(s):.1e} | {rep.iterations} | {np.abs(O - P).max():.1e} | "
              f"{sv.min():.4f} | {sv.max():.4f} | {np.linalg.norm(Q - P, 2):.4f} |")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "moments"):
        moments()
    if which in ("all", "newton-schulz"):
        newton_schulz()
