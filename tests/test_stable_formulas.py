"""Formulas that stay finite and silent (no numpy RuntimeWarning) where a naive one overflows or divides by 0."""

import warnings

import numpy as np
import pytest

from refmem import Level, solve
from refmem.linalg import fro_norm
from refmem.objectives import Dot, L2, Lp
from refmem.retentions import KLSimplex, LocalL2
from refmem.validation import DivergenceError
from test_windowed_stability import windowed_step_exact  # the normal equations in exact rationals


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


@pytest.mark.parametrize("eta", [1e-12, 1.0, 1e12])
@pytest.mark.parametrize(("key_scale", "value_scale"), [(1e-300, 1.0), (1e200, 1.0), (1e200, 1e200), (1e300, 1e300)])
def test_sherman_morrison_step_at_extreme_key_scales(eta, key_scale, value_scale):
    # ||k||^2 and C k overflowed for keys above 1e154 although M stays of the size of C and v / k
    g = np.random.default_rng(7)
    C, k, v = g.standard_normal((3, 4)), key_scale * g.standard_normal(4), value_scale * g.standard_normal(3)
    M, _ = solve(Level(L2(), LocalL2(eta)), C, k, v)
    want = windowed_step_exact(C, eta, k[None], v[None], np.ones(1))  # one sample, weight 1
    # a few roundings of O(1) operations on each entry, relative to the largest entry
    assert np.max(np.abs(M - want)) <= 16 * np.finfo(float).eps * np.max(np.abs(want))


def test_closed_form_of_an_overflowing_residual_is_an_error_not_inf():
    # M_t k - v is out of range (M_t of 1e300, keys of 1e10: the answer would be too): a DivergenceError, silent
    g = np.random.default_rng(2)
    C, k, v = 1e300 * g.standard_normal((4, 3)), 1e10 * g.standard_normal(3), g.standard_normal(4)
    with pytest.raises(DivergenceError, match=r"closed form lp/local_l2/explicit overflows.*max \|M_t\| = .*e\+300"):
        solve(Level(Lp(3.0), LocalL2(0.5), step="explicit"), C, k, v)
