"""The solvers added for the Miras objectives and retentions: they converge to the minimiser of the
stated problem, refuse problems they cannot solve, and raise ConvergenceError instead of returning a
non-converged result."""

import math

import numpy as np
import pytest

import refmem
from refmem.level import Level, problem, solve
from refmem.metrics import rel_error
from refmem.objectives import L2, Huber, Lp
from refmem.problems import level_problem, to_backend
from refmem.retentions import ElasticNet, KLSimplex, LocalL2, LqMoneta
from refmem.solvers import (
    SOLVERS,
    ConvergenceError,
    backtracking_proximal_gradient,
    mirror_descent,
    newton_fd,
    residual_dual,
)

from conftest import to_numpy


def _data(xp, seed=3):
    return level_problem(seed, batch=(2,), d_v=3, d_k=4, xp=xp)


def test_registered():
    for name in ("prox_grad_bt", "residual_dual", "mirror_descent", "newton_fd"):
        assert name in SOLVERS


@pytest.mark.parametrize("solver", ["prox_grad_bt", "newton_fd"])
def test_smooth_solvers_match_cg_on_a_quadratic(xp, solver):
    """On the l2 implicit step (a quadratic, solved exactly by CG) both reach CG's answer to 1e-10."""
    M_t, k, v = _data(xp)
    level = Level(L2(), LocalL2(0.9), "implicit")
    ref, _ = solve(level, M_t, k, v, method="iterative", solver="cg")
    got, rep = solve(level, M_t, k, v, method="iterative", solver=solver)
    assert rep.converged and rel_error(got, ref, xp) <= 1e-10


def test_mirror_descent_softmax_of_a_linear_objective(xp):
    """argmin_{rows on the c-simplex} <G, M> + (1/eta) KL(M || M_t) = c softmax(log M_t - eta G) (hand derivation)."""
    g = np.random.default_rng(0)
    P = g.uniform(0.2, 1.0, (2, 3, 4))
    M_t = to_backend(3.0 * P / P.sum(-1, keepdims=True), xp)
    G = to_backend(g.standard_normal((2, 3, 4)), xp)
    eta = 0.6
    prob = refmem.solvers.Problem(
        xp, M_t,
        lambda M: xp.sum(G * M, axis=(-2, -1)) + xp.sum(M * (xp.log(M) - xp.log(M_t)), axis=(-2, -1)) / eta,
        lambda M: G + (xp.log(M) - xp.log(M_t) + 1) / eta,
        math.inf, 1 / (eta * 3.0))
    M, rep = mirror_descent(prob, rtol=1e-12)
    Z = np.log(to_numpy(M_t)) - eta * to_numpy(G)
    want = 3.0 * np.exp(Z) / np.exp(Z).sum(-1, keepdims=True)
    assert np.max(np.abs(to_numpy(M) - want)) <= 1e-10 * 3.0


@pytest.mark.parametrize("level,solver", [
    (Level(Lp(3.0), LocalL2(2.0)), "prox_grad_bt"),
    (Level(Lp(1.0), LocalL2(2.0)), "residual_dual"),
    (Level(L2(), KLSimplex(2.0, 1.0, 1.0)), "mirror_descent"),
    (Level(Huber(0.3), LqMoneta(3.0, 0.9, 2.0)), "newton_fd"),
], ids=lambda x: x if isinstance(x, str) else x.label)
def test_non_convergence_raises(xp, level, solver):
    M_t, k, v = _data(xp)
    if isinstance(level.retention, KLSimplex):
        P = np.random.default_rng(1).uniform(0.2, 1.0, (2, 3, 4))
        M_t = to_backend(P / P.sum(-1, keepdims=True), xp)
    with pytest.raises(ConvergenceError, match="did not converge"):
        solve(level, M_t, k, v, method="iterative", solver=solver, max_iter=1)


def test_solvers_refuse_what_they_cannot_solve(xp):
    M_t, k, v = _data(xp)
    l1 = problem(Level(L2(), ElasticNet(1.0, 1.0, 1.0), "implicit"), M_t, k, v)
    with pytest.raises(ValueError, match="no prox part"):
        mirror_descent(l1, rtol=1e-12)
    with pytest.raises(ValueError, match="smooth"):
        newton_fd(l1, rtol=1e-12)
    smooth = problem(Level(L2(), LocalL2(1.0), "implicit"), M_t, k, v)
    with pytest.raises(ValueError, match="no dual structure"):
        residual_dual(smooth, rtol=1e-12)
    with pytest.raises(ValueError, match="strictly positive"):
        mirror_descent(smooth, rtol=1e-12)  # M_t has negative entries: not a simplex point


def test_backtracking_handles_an_unknown_lipschitz_constant(xp):
    """lp with p = 4 has no global Lipschitz constant (lipschitz = inf); backtracking still converges."""
    M_t, k, v = _data(xp)
    level = Level(Lp(4.0), LocalL2(1.5))
    assert not math.isfinite(float(problem(level, M_t, k, v).lipschitz[0]))
    closed, _ = solve(level, M_t, k, v)
    it, _ = backtracking_proximal_gradient(problem(level, M_t, k, v), rtol=1e-12)
    assert rel_error(it, closed, xp) <= 1e-10
