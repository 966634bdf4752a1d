"""Muon and its orthogonalisation level (refmem.optimizers.muon, refmem.optimizers.orthogonalization, specs/muon.md).

Independent routes: SciPy's polar decomposition, NumPy's SVD, torch.optim.Muon's documented algorithm written
plainly in NumPy (in float64), and the quintic's scalar polynomial evaluated by hand.
"""

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CPU_BACKENDS, to_numpy
from optim_problems import NoisyQuadratic, max_rel, run

import refmem
from refmem.metrics import rel_error
from refmem.optimizers import make
from refmem.optimizers import orthogonalization as orth
from refmem.solvers import ConvergenceError

EPS = np.finfo(np.float64).eps


def spread_matrix(seed, n, kappa, m=None):
    """U diag(s) V^T with singular values log-spaced from 1 to 1/kappa."""
    rng = np.random.default_rng(seed)
    m = n if m is None else m
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.logspace(0, -math.log10(kappa), k)
    return (U * s) @ V.T, s


def polar_tol(kappa, k):
    # the polar factor's condition number is ~ 1/sigma_min relative to ||M||: rounding of M (eps ||M||) moves it
    # by ~ eps kappa; 16 k eps kappa covers the SVD's and the Newton-Schulz products' rounding
    return 1e-12 + 16 * k * EPS * kappa


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (3, 6, 4)])
def test_polar_factor_equals_scipy_and_newton_schulz(xp, shape):
    rng = np.random.default_rng(1)
    M = rng.standard_normal(shape)
    closed = to_numpy(orth.polar_factor(xp.asarray(M)))
    it, rep = orth.newton_schulz_polar(xp.asarray(M))
    for i in np.ndindex(shape[:-2]):
        a, b = shape[-2:]
        if a >= b:
            ref = scipy.linalg.polar(M[i])[0]  # M = U P, U with orthonormal columns
        else:
            ref = scipy.linalg.polar(M[i].T)[0].T
        kappa = np.linalg.cond(M[i])
        assert np.abs(closed[i] - ref).max() <= polar_tol(kappa, min(a, b))
        assert np.abs(to_numpy(it)[i] - ref).max() <= polar_tol(kappa, min(a, b))
    assert rep.converged and rep.residual <= rep.tolerance


def test_newton_schulz_iterations_grow_with_the_spread():
    # iterations ~ log_1.5(||M||_F / sigma_min) + a few quadratic steps
    counts = []
    for kappa in (1.0, 1e1, 1e2, 1e3, 1e4, 1e6):
        M, s = spread_matrix(2, 16, kappa)
        O, rep = orth.newton_schulz_polar(M)
        s0 = s.min() / np.linalg.norm(s)
        assert rep.iterations <= math.ceil(math.log(1 / s0) / math.log(1.5)) + 8
        U, _, Vt = np.linalg.svd(M)
        assert np.abs(O - U @ Vt).max() <= polar_tol(kappa, 16)
        counts.append(rep.iterations)
    assert counts == sorted(counts) and counts[-1] > 3 * counts[0]


def test_rank_deficient_is_refused(xp):
    M = np.outer(np.arange(1.0, 5.0), np.arange(1.0, 4.0))  # rank 1, shape (4, 3)
    with pytest.raises(ValueError, match="rank deficient"):
        orth.polar_factor(xp.asarray(M))
    with pytest.raises(ConvergenceError, match="rank deficient"):
        orth.newton_schulz_polar(xp.asarray(M))
    with pytest.raises(ValueError, match="zero"):
        orth.newton_schulz_polar(xp.zeros((3, 3), dtype=xp.float64))


def quintic_scalar(x, steps=5, a=3.4445, b=-4.7750, c=2.0315):
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


@pytest.mark.parametrize("kappa", [1.0, 10.0, 1e2, 1e3, 1e4, 1e6])
def test_quintic_maps_each_singular_value_by_its_polynomial(kappa):
    M, s = spread_matrix(3, 24, kappa)
    Q = orth.newton_schulz_quintic(M)
    got = np.sort(np.linalg.svd(Q, compute_uv=False))
    want = np.sort(quintic_scalar(s / np.linalg.norm(s)))  # the same singular vectors; values mapped one by one
    assert np.abs(got - want).max() <= 1e-12
    # not the polar factor: the distance is max |q^5(sigma) - 1|, at least 1.8% even for a perfectly conditioned M
    U, _, Vt = np.linalg.svd(M)
    dist = np.linalg.norm(Q - U @ Vt, 2)
    assert abs(dist - np.abs(want - 1).max()) <= 1e-12
    assert dist >= 0.018


def test_quintic_has_no_fixed_point_at_one():
    assert abs(quintic_scalar(1.0, steps=1) - 0.701) < 1e-12  # a + b + c
    assert abs(quintic_scalar(1.0, steps=1) - 1.0) > 0.29


def textbook_muon(problem, T, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                  ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None):
    a, b, c = ns_coefficients
    W = problem.W0
    A_, B_ = W.shape[-2:]
    ratio = math.sqrt(max(1, A_ / B_)) if adjust_lr_fn in (None, "original") else 0.2 * math.sqrt(max(A_, B_))
    buf, out = np.zeros_like(W), [W]
    for t in range(T):
        g = problem.grad_np(W, t)
        buf = momentum * buf + g
        upd = g + momentum * buf if nesterov else buf
        O = np.empty_like(upd)
        for i in np.ndindex(W.shape[:-2]):
            X = upd[i].T if A_ > B_ else upd[i]
            X = X / max(np.linalg.norm(X), eps)
            for _ in range(ns_steps):
                G = X @ X.T
                X = a * X + (b * G + c * G @ G) @ X
            O[i] = X.T if A_ > B_ else X
        W = W - lr * weight_decay * W
        W = W - lr * ratio * O
        out.append(W)
    return np.stack(out)


@pytest.mark.parametrize("hp", [dict(lr=0.02), dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw"),
                                dict(lr=0.01, weight_decay=0.0, momentum=0.9, ns_steps=3)],
                         ids=["default", "no-nesterov-rms", "ns3"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 5)])
def test_muon_equals_torch_documented_update(hp, shape):
    # same operations in the same order on both sides (the quintic in float64): 32 eps per step relative, linear
    prob = NoisyQuadratic(4, shape, 300)
    assert max_rel(run(make("muon", **hp), prob, np), textbook_muon(prob, 300, **hp)) <= 300 * 32 * EPS


def test_muon_polar_closed_equals_iterative_and_textbook():
    prob = NoisyQuadratic(5, (2, 4, 3), 60)
    hp = dict(lr=0.02, orthogonalize="polar")
    closed = run(make("muon", **hp), prob, np)
    it = run(make("muon", **hp), prob, np, method="iterative")
    # the run's momenta are well conditioned (checked below: kappa < 1e3), so per step the polar factors agree to
    # polar_tol(1e3, 3) ~ 1e-12; linear accumulation over 60 steps
    assert max_rel(it, closed) <= 60 * polar_tol(1e3, 3)
    # textbook with the exact polar factor (NumPy's SVD), and the momenta's conditioning
    W, buf = prob.W0, np.zeros((2, 4, 3))
    for t in range(60):
        g = prob.grad_np(W, t)
        buf = 0.95 * buf + g
        upd = g + 0.95 * buf
        assert np.linalg.cond(upd).max() < 1e3
        U, _, Vt = np.linalg.svd(upd, full_matrices=False)
        W = (1 - 0.02 * 0.1) * W - 0.02 * math.sqrt(4 / 3) * (U @ Vt)
    assert rel_error(closed[-1], W, np) <= 60 * polar_tol(1e3, 3)


@given(seed=st.integers(0, 2**32 - 1), mu=st.floats(0.0, 0.99), nesterov=st.booleans(),
       wd=st.floats(0.0, 0.5), a=st.integers(1, 6), b=st.integers(1, 6))
@settings(max_examples=15)
def test_muon_property(seed, mu, nesterov, wd, a, b):
    prob = NoisyQuadratic(seed, (a, b), 20)
    hp = dict(lr=0.01, momentum=mu, nesterov=nesterov, weight_decay=wd)
    assert max_rel(run(make("muon", **hp), prob, np), textbook_muon(prob, 20, **hp)) <= 20 * 32 * EPS


@pytest.mark.parametrize("orthogonalize", ["quintic", "polar"])
def test_muon_numpy_equals_strict(orthogonalize):
    prob = NoisyQuadratic(6, (2, 4, 3), 30)
    hp = dict(lr=0.02, orthogonalize=orthogonalize)
    a = run(make("muon", **hp), prob, np)
    with refmem.backend("array_api_strict") as xs:
        b = run(make("muon", **hp), prob, xs)
    assert max_rel(a, b) <= 30 * polar_tol(1e3, 3)  # strict runs NumPy underneath; only the order may differ


def test_muon_bad_hyperparameters():
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        make("muon", adjust_lr_fn="spectral")
    with pytest.raises(ValueError, match="orthogonalize"):
        make("muon", orthogonalize="svd")
    with pytest.raises(ValueError, match="ns_steps"):
        make("muon", ns_steps=100)
    with pytest.raises(TypeError, match="ns_coefficients"):
        make("muon", ns_coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="weight_decay"):
        make("muon", lr=1.0, weight_decay=2.0)
    opt = make("muon")
    with pytest.raises(ValueError, match="W must have shape"):
        opt.init(np.ones(3))
    W = np.ones((2, 3))
    with pytest.raises(ValueError, match="g must have the shape of W"):
        opt.step(W, np.ones((3, 2)), opt.init(W))
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.step(np.ones((3, 3)), np.ones((3, 3)), opt.init(W))


def test_orthogonalization_vector_entry_point():
    from refmem.optimizers import vector_cases as vc

    inputs = vc.muon_make_inputs(3, (2,), 4, 5, 3, np)
    x = inputs.pop("x")
    polar_out, quintic_out = vc.muon_orthogonalization_vectors(x, **inputs)
    assert polar_out.shape == quintic_out.shape == (2, 4, 3, 5)
    for i in np.ndindex(2, 4):
        U, s, Vt = np.linalg.svd(x[i], full_matrices=False)
        assert np.abs(polar_out[i] - U @ Vt).max() <= polar_tol(s[0] / s[-1], 3)
        want = quintic_scalar(s / np.linalg.norm(s))  # the quintic acts on each normalised singular value
        assert np.abs(np.sort(np.linalg.svd(quintic_out[i], compute_uv=False)) - np.sort(want)).max() <= 1e-12
    # byte-identical on a second draw (vectors regenerate exactly)
    again = vc.muon_make_inputs(3, (2,), 4, 5, 3, np)["x"]
    assert np.array_equal(again, x)
