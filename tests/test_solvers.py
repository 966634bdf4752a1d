"""The iterative solvers on problems whose answers are known independently (numpy.linalg, hand algebra)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refmem.solvers import (ConvergenceError, Problem, conjugate_gradient, default_rtol, gradient_descent,
                            newton_scalar, proximal_gradient)

from conftest import to_numpy


def _spd_quadratic(xp, seed, batch=3, n=4, cond=10.0):
    """f(X) = 1/2 <X, A X> - <B, X> with X [batch, n, 1]; A SPD with the given condition number."""
    g = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(g.standard_normal((batch, n, n)))
    lam = np.geomspace(1.0, cond, n)
    A = Q @ (lam[:, None] * np.swapaxes(Q, -1, -2))
    B = g.standard_normal((batch, n, 1))
    As, Bs = xp.asarray(A), xp.asarray(B)

    def value(X):
        return xp.sum(X * (As @ X), axis=(-2, -1)) / 2 - xp.sum(Bs * X, axis=(-2, -1))

    def grad(X):
        return As @ X - Bs

    prob = Problem(xp, xp.zeros_like(Bs), value, grad, xp.asarray(cond), xp.asarray(1.0), quadratic=True)
    return prob, np.linalg.solve(A, B)


@given(seed=st.integers(0, 10_000), cond=st.floats(1.0, 1e3))
def test_cg_solves_spd_systems(xp, seed, cond):
    _check_solver(xp, seed, cond, conjugate_gradient, {})


# GD needs about cond * ln(1/rtol) ~ 28 cond steps: keep cond <= 30 so a case stays fast on strict
@given(seed=st.integers(0, 10_000), cond=st.floats(1.0, 30.0), backtracking=st.booleans())
def test_gd_solves_spd_systems(xp, seed, cond, backtracking):
    _check_solver(xp, seed, cond, gradient_descent, {"backtracking": backtracking})


def _check_solver(xp, seed, cond, solver, kw):
    prob, exact = _spd_quadratic(xp, seed, cond=cond)
    rtol = default_rtol(xp.float64, xp, condition=cond)
    X, rep = solver(prob, rtol=rtol, **kw)
    assert rep.converged
    # ||X - X*|| <= ||grad|| / mu <= rtol * max(mu||X||, r0) / mu, with mu = 1, r0 <= cond ||X*||;
    # numpy's solve adds ~cond * eps
    bound = rtol * cond * np.max(np.abs(exact)) * 10 + 100 * cond * np.finfo(float).eps
    assert np.max(np.abs(to_numpy(X) - exact)) <= bound


def test_cg_terminates_in_n_steps_on_n_dim_problem(xp):
    prob, _ = _spd_quadratic(xp, 0, n=5, cond=100.0)
    _, rep = conjugate_gradient(prob, rtol=1e-12)
    assert rep.iterations <= 5 + 8  # n steps in exact arithmetic; a refresh every 8 may add a few


def test_non_convergence_is_an_error(xp):
    prob, _ = _spd_quadratic(xp, 1, cond=1e3)
    with pytest.raises(ConvergenceError, match="gd did not converge: 5 iterations"):
        gradient_descent(prob, rtol=1e-12, max_iter=5)
    with pytest.raises(ConvergenceError, match="cg did not converge"):
        conjugate_gradient(prob, rtol=1e-12, max_iter=1)
    try:
        gradient_descent(prob, rtol=1e-12, max_iter=5)
    except ConvergenceError as exc:
        assert exc.report.converged is False and exc.report.iterations == 5


def test_proximal_gradient_lasso_is_soft_threshold(xp):
    """min 1/2||X - Y||^2 + lam ||X||_1 has the soft threshold as minimiser (hand algebra)."""
    g = np.random.default_rng(3)
    Y = g.standard_normal((2, 3, 4))
    lam = 0.4
    Ys = xp.asarray(Y)

    def prox(X, t):
        t = t if t.ndim == 0 else t[..., None, None]
        return xp.sign(X) * xp.maximum(xp.abs(X) - lam * t, xp.zeros_like(X))

    prob = Problem(xp, xp.zeros_like(Ys), lambda X: xp.sum((X - Ys) ** 2, axis=(-2, -1)) / 2, lambda X: X - Ys,
                   xp.asarray(2.0), xp.asarray(1.0), prox=prox,
                   h_value=lambda X: lam * xp.sum(xp.abs(X), axis=(-2, -1)))
    X, rep = proximal_gradient(prob, rtol=1e-12)
    expected = np.sign(Y) * np.maximum(np.abs(Y) - lam, 0)
    assert np.max(np.abs(to_numpy(X) - expected)) <= 1e-11
    with pytest.raises(ValueError, match="non-smooth"):
        gradient_descent(prob, rtol=1e-12)


@given(c=st.floats(-50, 50), a=st.floats(0.01, 10))
def test_newton_scalar_solves_cubic(xp, c, a):
    """x^3 + a x = c has one real root; check it against numpy.roots."""
    cs = xp.asarray([c, -c, 0.0])
    lo = xp.asarray([-60.0] * 3)
    hi = xp.asarray([60.0] * 3)
    x, rep = newton_scalar(lambda x: x**3 + a * x - cs, lambda x: 3 * x**2 + a, lo, hi, xp.zeros_like(cs), rtol=1e-14)
    for i, ci in enumerate((c, -c, 0.0)):
        r = np.roots([1, 0, a, -ci])
        real = r[np.abs(r.imag) < 1e-9].real
        # root of a monotone cubic: |dx| <= |f(x)| / f'(x); f'(x) >= a
        assert abs(float(to_numpy(x)[i]) - real[0]) <= 1e-12 * (1 + abs(real[0])) / min(a, 1.0) * 10


def test_step_halving_accepts_the_largest_halved_step_per_problem(xp):
    """f = L/2 ||X||^2, one L per problem, first step 1, Euclidean divergence ||D||^2 / (2t).

    Hand algebra: with D = X+ - X the gradient form reads L ||D||^2 <= ||D||^2 / (2t), i.e. t <= 1/(2L);
    the value form reads L/2 ||D||^2 <= ||D||^2 / (2t), i.e. t <= 1/L. The accepted step is the largest
    2^-j (j >= 0) meeting the form in use; only a problem that accepts its first trial may grow.
    """
    from refmem.solvers.step_halving import halve_until_accepted

    L = np.array([3.0, 0.3, 100.0, 0.9])
    Ls = xp.asarray(L[:, None, None])
    X = xp.asarray(np.random.default_rng(0).standard_normal((4, 2, 3)))

    def search(value, max_halvings=60):
        return halve_until_accepted(X, Ls * X, xp.ones((4,), dtype=X.dtype), xp,
                                    propose=lambda t: X - t[:, None, None] * (Ls * X), grad=lambda Y: Ls * Y,
                                    divergence=lambda Y, D, t: xp.sum(D * D, axis=(-2, -1)) / (2 * t),
                                    max_halvings=max_halvings, value=value,
                                    fX=None if value is None else value(X))

    def largest_halving(bound):
        return np.array([2.0 ** -np.ceil(max(0.0, np.log2(1 / b))) for b in bound])

    grad_form = search(None)
    want = largest_halving(1 / (2 * L))  # t = 1/4 for L = 3, 1 for L = 0.3, 1/256 for L = 100, 1/2 for L = 0.9
    np.testing.assert_array_equal(to_numpy(grad_form.t), want)
    Xn = to_numpy(X)
    np.testing.assert_array_equal(to_numpy(grad_form.X), Xn - want[:, None, None] * (L[:, None, None] * Xn))
    np.testing.assert_array_equal(to_numpy(grad_form.may_grow), want == 1.0)
    assert grad_form.f is None

    value_form = search(lambda Y: xp.sum(Ls * Y * Y, axis=(-2, -1)) / 2)
    np.testing.assert_array_equal(to_numpy(value_form.t), largest_halving(1 / L))
    assert search(None, max_halvings=3) is None  # L = 100 needs 9 trials


def test_newton_fd_certifies_a_start_at_the_minimiser_and_refuses_a_saddle():
    """A start whose gradient is exactly 0 gives no descent slope: it is certified (0 iterations) where the
    Hessian model is positive definite (f = |X - c|^2 / 2 started at c), and refused at a saddle
    (f = (x_1^2 - x_2^2) / 2 started at 0, stationary but no minimiser)."""
    from refmem.solvers.newton_fd import newton_fd

    c = np.array([[1.5, -2.0]])  # (1, 2)
    bowl = Problem(np, c.copy(), lambda X: np.sum((X - c) ** 2, axis=(-2, -1)) / 2, lambda X: X - c,
                   np.asarray(1.0), np.asarray(1.0))
    X, report = newton_fd(bowl, rtol=1e-12)
    assert report.converged and report.iterations == 0
    assert np.array_equal(X, c)
    sign = np.array([[1.0, -1.0]])  # (1, 2)
    saddle = Problem(np, np.zeros((1, 2)), lambda X: np.sum(sign * X * X, axis=(-2, -1)) / 2, lambda X: sign * X,
                     np.asarray(1.0), np.asarray(0.0))
    with pytest.raises(ConvergenceError):
        newton_fd(saddle, rtol=1e-12, max_iter=20)
