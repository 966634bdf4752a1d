"""M3, the multi-scale momentum Muon (refmem.optimizers.m3, specs/m3.md).

The textbook is NLx Algorithm 1 written plainly in NumPy with its two loops (chunks k, steps t in a chunk),
the slow memory computed at the top of each chunk from the previous chunk's f gradients.
"""

import numpy as np
import pytest

from conftest import to_numpy
from optim_problems import NoisyQuadratic, max_rel, run

import refmem
from refmem.optimizers import make

EPS = np.finfo(np.float64).eps


def polar(M):
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    return U @ Vt


def cubic(M, T):
    X = M / np.linalg.norm(M, axis=(-2, -1), keepdims=True)
    for _ in range(T):
        X = 1.5 * X - 0.5 * X @ np.swapaxes(X, -1, -2) @ X
    return X


def algorithm_1(problem, T, lr=1e-3, betas=(0.9, 0.999, 0.9), alpha=1.0, eps=1e-8, frequency=100, orth=polar):
    b1, b2, b3 = betas
    algorithm_1.kappa = 1.0  # the largest condition number of the fast momentum along the run
    W = problem.W0
    M1, V, M2, O2 = 0 * W, 0 * W, 0 * W, 0 * W
    grads, out, t = [], [W], 0
    for k in range(-(-T // frequency)):
        if k > 0:  # slow memory: the previous chunk's f gradients
            M2 = M2 + b3 * sum(grads[(k - 1) * frequency:k * frequency])
            O2 = orth(M2)
        for _ in range(frequency):
            if t == T:
                break
            g = problem.grad_np(W, t)
            grads.append(g)
            M1 = M1 + b1 * g
            V = V + b2 * g * g
            O1 = orth(M1)
            algorithm_1.kappa = max(algorithm_1.kappa, float(np.linalg.cond(M1).max()))
            W = W - lr * (O1 + alpha * O2) / (np.sqrt(V) + eps)
            out.append(W)
            t += 1
    return np.stack(out)


# Both sides: the same accumulations and one SVD per orthogonalisation; the polar factor's sensitivity is
# ~ eps kappa(M1) (kappa < 1e3 on this problem: the accumulated momenta are dominated by the steady drift,
# asserted below), 16 k eps kappa per step, linear over the run.
def tol(T, kappa=1e3, k=4):
    return T * (1e-12 + 16 * k * EPS * kappa)


@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 3)])
def test_m3_equals_algorithm_1(shape):
    prob = NoisyQuadratic(0, shape, 250)
    hp = dict(lr=1e-2, frequency=20, alpha=0.5)
    ours = run(make("m3", **hp), prob, np)
    ref = algorithm_1(prob, 250, lr=1e-2, frequency=20, alpha=0.5)
    assert algorithm_1.kappa < 1e3
    assert max_rel(ours, ref) <= tol(250)


def test_m3_fixed_cubic_map_equals_algorithm_1_with_t_steps():
    prob = NoisyQuadratic(1, (4, 3), 120)
    ours = run(make("m3", lr=1e-2, frequency=10, orthogonalize="cubic", ns_steps=3), prob, np)
    ref = algorithm_1(prob, 120, lr=1e-2, frequency=10, orth=lambda M: cubic(M, 3))
    assert max_rel(ours, ref) <= 120 * 32 * EPS  # the same products in the same order


def test_m3_closed_equals_iterative(xp):
    T = 60 if xp.__name__.endswith("numpy") else 22  # the strict backend is slow; 22 steps still cross 3 chunks
    prob = NoisyQuadratic(2, (2, 4, 3), T)
    hp = dict(lr=1e-2, frequency=7)
    closed = run(make("m3", **hp), prob, xp)
    it = run(make("m3", **hp), prob, xp, method="iterative")
    assert max_rel(it, closed) <= tol(T)


def test_slow_level_runs_every_f_steps_and_is_zero_before():
    prob = NoisyQuadratic(3, (3, 3), 25)
    opt = make("m3", lr=1e-2, frequency=10)
    W = prob.W0
    state = opt.init(W)
    seen, total = [], 0 * W
    for t in range(25):
        g = prob.grad_np(W, t)
        total = total + g
        W, state, reports = opt.step(W, g, state)
        seen.append("slow_momentum" in reports)
        if t < 9:
            assert np.all(state.slow_orthogonal == 0)
        if t == 9:  # M2 = beta3 * (g_1 + ... + g_10): f terms, not f + 1
            assert np.abs(state.slow_momentum - 0.9 * total).max() <= 16 * EPS * np.abs(total).max()
    assert [i + 1 for i, s in enumerate(seen) if s] == [10, 20]


def test_m3_numpy_equals_strict():
    prob = NoisyQuadratic(4, (2, 4, 3), 30)
    a = run(make("m3", lr=1e-2, frequency=5), prob, np)
    with refmem.backend("array_api_strict") as xs:
        b = run(make("m3", lr=1e-2, frequency=5), prob, xs)
    assert max_rel(a, b) <= tol(30)


def test_m3_bad_hyperparameters():
    with pytest.raises(TypeError, match="betas"):
        make("m3", betas=(0.9, 0.9))
    with pytest.raises(ValueError, match=r"betas\[2\]"):
        make("m3", betas=(0.9, 0.9, 0.0))
    with pytest.raises(ValueError, match="frequency"):
        make("m3", frequency=0)
    with pytest.raises(ValueError, match="orthogonalize"):
        make("m3", orthogonalize="svd")
    opt = make("m3")
    W = np.ones((2, 3))
    with pytest.raises(ValueError, match="rank deficient"):  # a rank-one first momentum has no unique polar factor
        opt.step(W, np.ones((2, 3)), opt.init(W))
