r"""The windowed l2 implicit step (Omega rule, ``omega_implicit``) is accurate at every ``eta`` x key scale.

The reference is exact: the normal equations
:math:`M (I/\eta + K^T G K) = C/\eta + V^T G K` solved in rational arithmetic
(``fractions.Fraction``) from the float64 inputs, so the only error left is
refmem's. The bound is derived from the SVD form's rounding (specs/MATH.md
section 5d): the SVD of ``G^{1/2} K`` is backward stable (relative perturbation
``O(eps)`` of ``K``), and each column of ``M W`` is two terms with non-negative
bounded factors, each computed to ``O(eps)``; the step's condition number with respect to ``K`` is at
most about ``2 + (largest/smallest nonzero singular value)`` (a regularised
least-squares solution), so the error is ``c_0 eps cond`` relative to
``max(|M|)`` with ``c_0 = 64`` (sizes here: ``c, d_k, d_v <= 5``).
"""

from fractions import Fraction

import numpy as np
import pytest

from refmem import Level, solve
from refmem.memories.omega import omega_implicit_recurrent
from refmem.metrics import rel_error
from refmem.objectives.windowed_l2 import WindowedL2
from refmem.retentions import LocalL2

EPS = float(np.finfo(np.float64).eps)
ETAS = [1e-12, 1e-6, 1.0, 1e6, 1e12]
KEY_SCALES = [1.0, 1e3, 1e6]


def _solve_exact(A, B):
    """X with X A = B for a square A, by Gauss-Jordan elimination on Fractions (A: list of rows)."""
    n = len(A)
    # X A = B  <=>  A^T X^T = B^T
    aug = [[A[j][i] for j in range(n)] + [B[r][i] for r in range(len(B))] for i in range(n)]
    for col in range(n):
        piv = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        p = aug[col][col]
        aug[col] = [x / p for x in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                f = aug[r][col]
                aug[r] = [x - f * y for x, y in zip(aug[r], aug[col])]
    return [[float(aug[i][n + r]) for i in range(n)] for r in range(len(B))]  # rows of X


def windowed_step_exact(C, eta, K, V, gamma):
    """argmin_M 1/2 sum_i gamma_i ||M k_i - v_i||^2 + 1/(2 eta) ||M - C||^2, exactly (then rounded once)."""
    F = Fraction
    d_v, d_k = C.shape
    c = K.shape[0]
    e = F(eta)
    A = [[(F(1) / e if i == j else F(0)) + sum(F(gamma[s]) * F(K[s, i]) * F(K[s, j]) for s in range(c))
          for j in range(d_k)] for i in range(d_k)]  # I/eta + K^T G K
    B = [[F(C[r, j]) / e + sum(F(gamma[s]) * F(V[s, r]) * F(K[s, j]) for s in range(c)) for j in range(d_k)]
         for r in range(d_v)]  # C/eta + V^T G K
    return np.array(_solve_exact(A, B))


def _window(seed, c, d_k, d_v, scale, zero_weight=False):
    g = np.random.default_rng(seed)
    C = g.standard_normal((d_v, d_k))
    K = scale * g.standard_normal((c, d_k))
    V = g.standard_normal((c, d_v))
    gamma = g.uniform(0.1, 2.0, c)
    if zero_weight:
        gamma[0] = 0.0
    return C, K, V, gamma


def _cond(K, gamma):
    s = np.linalg.svd(np.sqrt(gamma)[:, None] * K, compute_uv=False)
    s = s[s > 0]
    return s.max() / s.min()


SHAPES = [(2, 4, 3), (3, 3, 2), (5, 3, 2)]  # c < d_k, c = d_k, c > d_k (the keys span less than the window)


@pytest.mark.parametrize(("c", "d_k", "d_v"), SHAPES)
@pytest.mark.parametrize("zero_weight", [False, True])
def test_windowed_implicit_step_matches_exact_arithmetic_over_the_grid(c, d_k, d_v, zero_weight):
    for i, (eta, scale) in enumerate((e, s) for e in ETAS for s in KEY_SCALES):
        C, K, V, gamma = _window(100 * c + i, c, d_k, d_v, scale, zero_weight)
        want = windowed_step_exact(C, eta, K, V, gamma)
        got, _ = solve(Level(WindowedL2(gamma), LocalL2(eta)), C, K, V)
        err = rel_error(got, want, np)
        assert err <= 64 * EPS * (2 + _cond(K, gamma)), (eta, scale, err)


def test_issue_reproducers_are_accurate():
    # eta = 1e12 with unit keys gave 8.7e-5 relative error; keys x1e6 gave 1.7e8 (max |M| 2560 for an answer ~1e-5)
    for scale in (1.0, 1e6):
        C, K, V, gamma = _window(7, 3, 4, 3, scale)
        want = windowed_step_exact(C, 1e12, K, V, gamma)
        got, _ = solve(Level(WindowedL2(gamma), LocalL2(1e12)), C, K, V)
        assert np.max(np.abs(got - want)) <= 64 * EPS * (2 + _cond(K, gamma)) * np.max(np.abs(want))


def test_omega_implicit_with_huge_weights_and_keys():
    # gamma = 1e12 with keys x1e6 returned outputs of 882 where about 1e-5 is right. Exact reference per step.
    g = np.random.default_rng(11)
    T, d_k, d_v, c = 4, 3, 2, 2
    q, k, v = g.standard_normal((T, d_k)), 1e6 * g.standard_normal((T, d_k)), g.standard_normal((T, d_v))
    alpha = np.full(T, 0.9)
    gamma = np.full(c, 1e12)
    o, M_T = omega_implicit_recurrent(q, k, v, alpha, gamma)
    M = np.zeros((d_v, d_k))
    for t in range(T):
        lo = max(0, t - c + 1)
        K, V = k[lo:t + 1], v[lo:t + 1]  # the window; positions before the start are absent (zero keys add nothing)
        M = windowed_step_exact(0.9 * M, 1.0, K, V, gamma[c - (t + 1 - lo):])
        want_o = M @ q[t]
        assert np.max(np.abs(o[t] - want_o)) <= 1e-9 * max(np.max(np.abs(want_o)), 1e-300) + 1e-9 * np.max(np.abs(M)) * np.max(np.abs(q[t]))
    assert np.max(np.abs(M_T - M)) <= 1e-9 * np.max(np.abs(M))


@pytest.mark.parametrize("gamma", [np.array([np.nan, 1.0]), np.array([-1.0, 1.0]), np.array([1.0, 1.0, 1.0])])
def test_windowed_gamma_is_validated(gamma):
    # a nan gamma used to return nan silently
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="gamma"):
        solve(Level(WindowedL2(gamma), LocalL2(1.0)), g.standard_normal((2, 3)), g.standard_normal((2, 3)),
              g.standard_normal((2, 2)))
