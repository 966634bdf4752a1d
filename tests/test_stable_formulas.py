"""Formulas that stay finite and silent (no numpy RuntimeWarning) where a naive one overflows or divides by 0."""

import warnings

import numpy as np
import pytest

from refmem import Level, solve
from refmem.linalg import fro_norm
from refmem.objectives import Dot, L2, Lp
from refmem.retentions import KLSimplex, LocalL2


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.mark.parametrize("scale", [1e-200, 1.0, 1e200])
def test_frobenius_norm_of_huge_and_tiny_entries(scale):
    A = np.array([[3.0, 0.0], [0.0, 4.0]]) * scale
    assert fro_norm(A, np) == pytest.approx(5.0 * scale, rel=4 * np.finfo(float).eps)  # 3-4-5 by hand


def test_frobenius_norm_passes_zero_and_inf_through():
    assert fro_norm(np.zeros((2, 2)), np) == 0.0
    assert fro_norm(np.array([[np.inf, 1.0]]), np) == np.inf


@pytest.mark.parametrize("p", [1.5, 3.0, 4.5])
@pytest.mark.parametrize(("eta", "scale"), [(1e12, 1e3), (1e12, 1e6), (1e6, 1e6)])
def test_lp_implicit_step_at_huge_step_and_keys(p, eta, scale):
    # the closed form's scalar equation x + a x^{p-1} = |r0| with a = eta p ||k||^2 overflowed in a x^{p-1}
    g = np.random.default_rng(5)
    M_t, k, v = g.standard_normal((4, 3)), scale * g.standard_normal(3), g.standard_normal(4)
    M, _ = solve(Level(Lp(p), LocalL2(eta)), M_t, k, v)
    assert np.all(np.isfinite(M))
    # the minimiser is no worse than M_t for either term's sum, so its residual is no larger than M_t's,
    # and with eta ||k||^2 >= 1e18 the step nearly interpolates: |M k - v| far below |M_t k - v|
    r, r_t = np.abs(M @ k - v), np.abs(M_t @ k - v)
    assert np.sum(r ** p) <= np.sum(r_t ** p)
    assert np.max(r) <= 1e-3 * np.max(r_t)


@pytest.mark.parametrize("objective", [Dot(), L2()])
@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_kl_simplex_iterative_with_large_keys(objective, scale):
    # mirror descent's softmax underflowed to exact zeros, then log(0) warned (and the iterate left the simplex)
    g = np.random.default_rng(6)
    P = g.uniform(0.2, 1.0, (4, 3))
    M_t = P / P.sum(-1, keepdims=True)
    k, v = scale * g.standard_normal(3), g.standard_normal(4)
    level = Level(objective, KLSimplex(1.0, 1.0, 1.0), step="explicit")
    closed, _ = solve(level, M_t, k, v)
    it, rep = solve(level, M_t, k, v, method="iterative")
    assert np.all(it > 0) and np.allclose(it.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert np.max(np.abs(it - closed)) <= 1e-8  # rows on the simplex: entries in [0, 1]


def test_lq_norm_scaled_and_silent():
    from refmem.retentions.lq_moneta import lq_norm
    M = np.array([[3e300, 0.0], [0.0, 4e300]])
    assert lq_norm(M, 2.0, np) == pytest.approx(5e300, rel=1e-15)  # 3-4-5: |M|^2 would overflow unscaled
    # an overflowed iterate (inf entry) gives inf, not nan from inf/inf and a RuntimeWarning
    assert lq_norm(np.array([[np.inf, 1.0]]), 3.0, np) == np.inf
