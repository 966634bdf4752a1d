"""Print the optimiser figures of specs/adam.md and specs/muon.md (NumPy, float64; about a minute on one core).

    python scripts/optimizer_figures.py            # both tables
    python scripts/optimizer_figures.py moments    # 1000-step trajectory differences only
    python scripts/optimizer_figures.py others     # Muon, M3, preconditioned and delta momentum
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

from refmem.metrics import rel_error  # noqa: E402
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


def others(T=1000):
    """Muon, M3, preconditioned and delta momentum over T steps; DMGD against finite differences over 30."""
    from test_optim_m3 import algorithm_1
    from test_optim_momentum_memories import run_with, spd
    from test_optim_muon import textbook_muon

    print("| optimiser | steps | closed vs textbook | closed vs iterative |")
    print("|---|---|---|---|")
    prob = NoisyQuadratic(0, (2, 4, 3), T)
    closed = run(make("muon", lr=0.02), prob, np)
    print(f"| muon (quintic, torch defaults, lr 0.02) | {T} | {max_rel(closed, textbook_muon(prob, T, lr=0.02)):.1e} | "
          "fixed map: no iterative form |", flush=True)
    polar = make("muon", lr=0.02, orthogonalize="polar")
    c, i = run(polar, prob, np), run(polar, prob, np, method="iterative")
    W, buf, ref = prob.W0, np.zeros(prob.W0.shape), [prob.W0]
    for t in range(T):  # torch's update with the exact polar factor (NumPy's SVD)
        g = prob.grad_np(W, t)
        buf = 0.95 * buf + g
        U, _, Vt = np.linalg.svd(g + 0.95 * buf, full_matrices=False)
        W = (1 - 0.02 * 0.1) * W - 0.02 * math.sqrt(4 / 3) * (U @ Vt)
        ref.append(W)
    print(f"| muon (polar) | {T} | {max_rel(c, np.stack(ref)):.1e} | {max_rel(i, c):.1e} |", flush=True)
    m3 = dict(lr=1e-2, frequency=20, alpha=0.5)
    c, i = run(make("m3", **m3), prob, np), run(make("m3", **m3), prob, np, method="iterative")
    ref = algorithm_1(prob, T, **m3)
    print(f"| m3 {m3} | {T} | {max_rel(c, ref):.1e} (kappa max {algorithm_1.kappa:.0f}) | {max_rel(i, c):.1e} |",
          flush=True)
    rng = np.random.default_rng(1)
    p4 = NoisyQuadratic(1, (4, 3), T)
    P = spd(rng, 4)
    opt = make("preconditioned_momentum", lr=0.05, momentum=0.8)
    c, i = run_with(opt, p4, np, P), run_with(opt, p4, np, P, method="iterative")
    W, m, ref = p4.W0, np.zeros((4, 3)), [p4.W0]
    for t in range(T):
        m = 0.8 * m - 0.05 * P @ p4.grad_np(W, t)
        W = W + m
        ref.append(W)
    print(f"| preconditioned_momentum | {T} | {max_rel(c, np.stack(ref)):.1e} | {max_rel(i, c):.1e} |", flush=True)
    p3 = NoisyQuadratic(4, (3, 2), T, noise=0.2)
    P = spd(np.random.default_rng(4), 3)
    for step in ("explicit", "implicit"):
        opt = make("delta_momentum", lr=0.05, momentum=0.9, step=step)
        c, i = run_with(opt, p3, np, P), run_with(opt, p3, np, P, method="iterative")
        W, m, ref = p3.W0, np.zeros((3, 2)), [p3.W0]
        for t in range(T):
            g = p3.grad_np(W, t)
            if step == "explicit":
                m = m @ (0.9 * np.eye(2) - 0.05 * g.T @ g) + 0.05 * P @ g
            else:
                m = np.linalg.solve((np.eye(2) + 0.05 * g.T @ g).T, (0.9 * m + 0.05 * P @ g).T).T
            W = W - m
            ref.append(W)
        print(f"| delta_momentum ({step}) | {T} | {max_rel(c, np.stack(ref)):.1e} | {max_rel(i, c):.1e} |", flush=True)
    from test_optim_momentum_memories import central_difference

    p5 = NoisyQuadratic(8, (3, 4), 30)
    opt = make("deep_momentum", lr=0.05, momentum=0.9, hidden=5)
    W = Wr = p5.W0
    state = opt.init(W)
    A1, A2, err = state.A1.copy(), state.A2.copy(), 0.0
    for t in range(30):
        W, state, _ = opt.step(W, p5.grad_np(W, t), state, method="iterative")
        u = p5.grad_np(Wr, t)
        f = lambda a1, a2: float(np.sum(np.tanh(u @ a1.T) @ a2.T * u))  # noqa: E731
        g1, g2 = central_difference(lambda a: f(a, A2), A1), central_difference(lambda a: f(A1, a), A2)
        A1, A2 = 0.9 * A1 - 0.05 * g1, 0.9 * A2 - 0.05 * g2
        Wr = Wr + np.tanh(u @ A1.T) @ A2.T
        err = max(err, rel_error(W, Wr, np))
    print(f"| deep_momentum (vs finite-difference gradients) | 30 | {err:.1e} | iterative only |")


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
    if which in ("all", "others"):
        others()
    if which in ("all", "newton-schulz"):
        newton_schulz()
