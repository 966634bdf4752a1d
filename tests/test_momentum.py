"""Momentum is a two-level memory (refmem.optimizers.momentum, NL-7..11, NLx-10..13).

Independent routes: classic heavy ball written as
``W_{t+1} = W_t - eta g + alpha (W_t - W_{t-1})`` (no momentum variable),
gradients written out in matrix form, SciPy's L-BFGS for the printed NL-10,
and hand arithmetic for the weight counts. Run-length comparisons use the
step-by-step error majorant of refmem.checks.gd_and_momentum.
"""

import math

import numpy as np
import pytest
import scipy.optimize
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refmem
from conftest import CPU_BACKENDS, to_numpy
from refmem.checks.gd_and_momentum import (
    _grad_route_scale,
    _heavy_ball_majorant,
    _lipschitz_in_W,
    gradient_written_out,
    heavy_ball_fixed_gradients,
    heavy_ball_reference,
    layer_problem,
)
from refmem.level import solve
from refmem.losses import LOSSES
from refmem.metrics import max_abs_error, rel_error
from refmem.optimizers import local_surprise as ls
from refmem.optimizers import momentum as mo
from refmem.optimizers import momentum_errata as me
from refmem.optimizers import momentum_horizon as mh

EPS = np.finfo(np.float64).eps
CLOSED_VS_ITERATIVE = 1e-10  # solvers stop at relative optimality 1e-12; the m level's Hessian is I/eta (condition 1)


def ns(name):
    return refmem.backends.get_backend(name).namespace()


def fro(a, xp):
    return float(xp.sqrt(xp.sum(a * a)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.01, max_value=2.0, allow_nan=False),
       alpha=st.floats(min_value=0.0, max_value=1.0, allow_nan=False), batch=st.sampled_from([(), (3,)]))
@settings(max_examples=15)
def test_m_level_closed_equals_iterative(backend, seed, eta, alpha, batch):
    xp = ns(backend)
    g = np.random.default_rng(seed)
    m_t = xp.asarray(g.standard_normal(batch + (3, 4)))
    grad = xp.asarray(g.standard_normal(batch + (3, 4)))
    level = mo.momentum_level(eta, alpha)
    closed, _ = solve(level, m_t, None, grad)
    # hand: alpha m_t + eta g (NLx-10), one multiply-add per entry
    hand = alpha * to_numpy(m_t) + eta * to_numpy(grad)
    assert np.abs(to_numpy(closed) - hand).max() <= 4 * EPS * np.abs(hand).max()
    for solver in ("cg", "gd"):
        it, rep = solve(level, m_t, None, grad, method="iterative", solver=solver)
        assert rep.converged and rel_error(it, closed, xp) <= CLOSED_VS_ITERATIVE


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.001, max_value=1.0, allow_nan=False),
       alpha=st.floats(min_value=0.0, max_value=0.99, allow_nan=False), N=st.integers(1, 60))
@settings(max_examples=10)
def test_two_level_equals_heavy_ball_fixed_gradients(backend, seed, eta, alpha, N):
    xp = ns(backend)
    g = np.random.default_rng(seed)
    grads = [xp.asarray(g.standard_normal((3, 4))) for _ in range(N)]
    W_0 = xp.asarray(g.standard_normal((3, 4)))
    errors, bounds = heavy_ball_fixed_gradients(grads, W_0, eta, alpha, xp)  # the registered check's comparison
    assert len(errors) == N + 1 and all(e <= b for e, b in zip(errors, bounds))


def _np_heavy_ball(loss_name, W0, X, T, eta, alpha):
    """Heavy ball in plain NumPy on the real loss, gradient written out (SciPy softmax for cross-entropy)."""
    import scipy.special

    W_prev, W, out = W0, W0, [W0]
    for x, t in zip(X, T):
        y = W @ x
        u = y - t if loss_name == "squared_error" else t.sum() * scipy.special.softmax(y) - t
        W_prev, W = W, W - eta * np.outer(u, x) + alpha * (W - W_prev)
        out.append(W)
    return np.stack(out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.01, max_value=0.1, allow_nan=False),
       alpha=st.floats(min_value=0.0, max_value=0.95, allow_nan=False))
@settings(max_examples=6)
def test_momentum_training_equals_heavy_ball(backend, loss_name, seed, eta, alpha):
    xp = ns(backend)
    N = 30
    W_0, X, T = layer_problem(seed, xp, loss_name, d_out=3, d_in=4, N=N)
    Ws_arr, ms_arr, reps = mo.momentum_train(loss_name, W_0, X, T, eta, alpha)
    assert tuple(Ws_arr.shape) == (N + 1, 3, 4) and len(reps) == N
    Ws = [Ws_arr[i, :, :] for i in range(N + 1)]
    ms = [ms_arr[i, :, :] for i in range(N + 1)]
    gs = [ls.weight_gradient(loss_name, Ws[t], X[t, :], T[t, :]) for t in range(N)]
    ref = heavy_ball_reference(lambda t, W: gradient_written_out(loss_name, W, X[t, :], T[t, :], xp), W_0, N, eta, alpha)
    lips = [_lipschitz_in_W(loss_name, X[t, :], T[t, :], xp) for t in range(N)]
    gammas = [16 * 9 * EPS * math.sqrt(12) * _grad_route_scale(Ws[t], X[t, :], T[t, :], xp) for t in range(N)]
    bounds = _heavy_ball_majorant(Ws, ms, gs, eta, alpha, lips, gammas, xp)
    for t in range(N + 1):
        assert fro(Ws[t] - ref[t], xp) <= bounds[t]
    # a second, NumPy/SciPy heavy ball: the same majorant bounds it (its gradient rounding is of the same size)
    ref_np = _np_heavy_ball(loss_name, to_numpy(W_0), to_numpy(X), to_numpy(T), eta, alpha)
    errs = np.sqrt(((to_numpy(Ws_arr) - ref_np) ** 2).sum(axis=(-2, -1)))
    assert np.all(errs <= np.array(bounds))
    # and the momentum is the negated weight increment: m_{t+1} = W_t - W_{t+1} (exact algebra, rounding only)
    inc = to_numpy(Ws_arr[:-1, :, :]) - to_numpy(Ws_arr[1:, :, :])
    assert np.abs(inc - to_numpy(ms_arr[1:, :, :])).max() <= 4 * EPS * np.abs(to_numpy(Ws_arr)).max()
    Ws_it, _, _ = mo.momentum_train(loss_name, W_0, X, T, eta, alpha, method="iterative")
    assert rel_error(Ws_it, Ws_arr, xp) <= CLOSED_VS_ITERATIVE * N  # each of N solves adds <= 1e-10 relative


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.01, max_value=2.0, allow_nan=False))
@settings(max_examples=10)
def test_nl11_keyed_equals_keyless(backend, seed, eta):
    xp = ns(backend)
    W, x, t = layer_problem(seed, xp, "softmax_cross_entropy", batch=(2,), d_out=3, d_in=4)
    m_t = 0.3 * W + 0.05
    keyed, _ = mo.nl11_update("softmax_cross_entropy", W, m_t, x, t, eta)
    g = ls.weight_gradient("softmax_cross_entropy", W, x, t)
    keyless, _ = solve(mo.momentum_level(eta, 1.0), m_t, None, g)
    # <m x, u> = <m, u x^T>: the same entries eta u_i x_j added to m_t; rounding of one multiply-add
    assert max_abs_error(keyed, keyless, xp) <= 4 * EPS * (max_abs_error(m_t, 0 * m_t, xp) + eta * max_abs_error(g, 0 * g, xp))
    keyed_it, _ = mo.nl11_update("softmax_cross_entropy", W, m_t, x, t, eta, method="iterative")
    assert rel_error(keyed_it, keyless, xp) <= CLOSED_VS_ITERATIVE


def test_counts_at_momentum_0_9_by_hand():
    # 1 - 0.9^n >= f: 0.9^6 = 0.531441 > 0.5 >= 0.9^7 = 0.4782969; 0.9^43 = 0.010775 > 0.01 >= 0.9^44 = 0.0096977
    assert mh.latest_gradients_for_mass(0.9, 0.5) == 7
    assert mh.latest_gradients_for_mass(0.9, 0.99) == 44
    # The paper's counts (6, 43) carry less than claimed: erratum (each is one short).
    assert abs(mh.mass_of_latest(0.9, 6) - (1 - 0.531441)) <= 8 * EPS and mh.mass_of_latest(0.9, 6) < 0.5
    assert abs(mh.mass_of_latest(0.9, 43) - (1 - 0.9 ** 43)) <= 64 * EPS and mh.mass_of_latest(0.9, 43) < 0.99


def test_paper_counts_hold_only_for_short_finite_horizons():
    # Over a finite horizon H the latest n carry (1 - a^n) / (1 - a^H). The paper's 6 carries half only for H <= 26,
    # its 43 carries 99% only for H <= 67: no single horizon reconciles both with "at least" (both hold for H <= 26,
    # where 43 > H). Computed by summation, not by the formula.
    a = 0.9

    def share(n, H):
        w = [a ** j for j in range(H)]
        return math.fsum(w[:n]) / math.fsum(w)

    H6 = max(H for H in range(6, 200) if share(6, H) >= 0.5)
    H43 = max(H for H in range(43, 200) if share(43, H) >= 0.99)
    assert (H6, H43) == (26, 67)  # hand: 0.9^26 = 0.0646 > 1 - 2(0.468559) = 0.0629 > 0.9^27; similarly for 43


@given(alpha=st.floats(min_value=0.05, max_value=0.995, allow_nan=False),
       f=st.floats(min_value=0.01, max_value=0.995, allow_nan=False))
def test_counts_are_the_smallest(alpha, f):
    n = mh.latest_gradients_for_mass(alpha, f)
    closed = math.ceil(math.log1p(-f) / math.log(alpha))
    assume(abs((1 - alpha ** closed) - f) > 1e-12 and abs((1 - alpha ** (closed - 1)) - f) > 1e-12)  # not at a rounding tie
    assert n == closed
    assert 1 - alpha ** n >= f and (n == 1 or 1 - alpha ** (n - 1) < f)


def test_weights_sum_to_one():
    w = mh.gradient_weights(0.9, 2000)
    assert abs(math.fsum(w) - 1.0) <= 1e-15 + 0.9 ** 2000  # infinite-horizon normalisation; tail 0.9^2000


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.01, max_value=0.5, allow_nan=False))
@settings(max_examples=8)
def test_nl7_nl8_printed_is_gradient_ascent(backend, seed, eta):
    # Full-batch least squares (convex): printed NL-7+8 raises the loss every step; the consistent form lowers it.
    xp = ns(backend)
    W_0, X, T = layer_problem(seed, xp, "squared_error", d_out=3, d_in=4, N=6)

    def loss(W):
        return float(xp.mean(ls.loss_of_weights("squared_error", W[None, :, :], X, T)))

    def grad(W):
        return sum(ls.weight_gradient("squared_error", W, X[i, :], T[i, :]) for i in range(6)) / 6.0

    Lip = float(np.linalg.eigvalsh(to_numpy(X).T @ to_numpy(X) / 6.0).max())
    step = eta / Lip  # eta in units of 1/L, so that the consistent form is stable
    W_p, m_p, W_c, m_c = W_0, 0 * W_0, W_0, 0 * W_0
    L_p, L_c = [loss(W_0)], [loss(W_0)]
    for _ in range(15):
        W_p, m_p = me.nl8_printed_step(W_p, m_p, grad(W_p), step)
        W_c, m_c, _ = mo.momentum_step(W_c, m_c, grad(W_c), step, 0.5)
        L_p.append(loss(W_p))
        L_c.append(loss(W_c))
    assert all(b > a for a, b in zip(L_p, L_p[1:])), L_p  # ascent, every step
    assert L_c[-1] < L_c[0]  # descent overall
    # the first printed step from m = 0 is W + step * g exactly
    g0 = grad(W_0)
    W1, _ = me.nl8_printed_step(W_0, 0 * W_0, g0, step)
    assert max_abs_error(W1, W_0 + step * g0, xp) <= 2 * EPS * (max_abs_error(W_0, 0 * W_0, xp) + step * max_abs_error(g0, 0 * g0, xp))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.05, max_value=5.0, allow_nan=False))
@settings(max_examples=10)
def test_nl10_printed_minimiser(backend, seed, eta):
    xp = ns(backend)
    g = np.random.default_rng(seed)
    m_t = xp.asarray(g.standard_normal((3, 4)))
    grad = xp.asarray(g.standard_normal((3, 4)))
    hand = to_numpy(m_t) + to_numpy(grad) / (2 * eta)  # zero of -g + 2 eta (m - m_t)
    for solver in ("cg", "gd"):
        m, rep = me.nl10_printed_argmin(m_t, grad, eta, solver=solver)
        assert rep.converged and np.abs(to_numpy(m) - hand).max() <= CLOSED_VS_ITERATIVE * np.abs(hand).max()
    step10 = hand - to_numpy(m_t)
    step8 = -eta * to_numpy(grad)  # NL-8: m_t - eta g
    cos = (step10 * step8).sum() / np.linalg.norm(step10) / np.linalg.norm(step8)
    assert abs(cos + 1.0) <= 8 * EPS  # exactly opposite directions
    assert np.abs(to_numpy(m) - (to_numpy(m_t) + step8)).max() > 0.1 * np.abs(step8).max()  # not the GD step


def test_nl10_printed_minimiser_scipy():
    # SciPy's L-BFGS on the printed objective, written here from the print: -<m, g> + eta ||m - m_t||^2.
    g = np.random.default_rng(31)
    m_t, grad, eta = g.standard_normal((3, 4)), g.standard_normal((3, 4)), 0.4

    def F(z):
        m = z.reshape(3, 4)
        return -np.sum(m * grad) + eta * np.sum((m - m_t) ** 2), (-grad + 2 * eta * (m - m_t)).ravel()

    res = scipy.optimize.minimize(F, m_t.ravel(), jac=True, method="L-BFGS-B", options={"gtol": 1e-14, "ftol": 1e-16})
    m_ref = res.x.reshape(3, 4)
    m, _ = me.nl10_printed_argmin(m_t, grad, eta)
    # L-BFGS stops at gradient ~1e-14; strong convexity 2 eta = 0.8 turns that into a distance <= 1e-14 / 0.8
    assert np.abs(m - m_ref).max() <= 1e-12
    assert np.abs(m_ref - (m_t + grad / (2 * eta))).max() <= 1e-12


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(eta=st.floats(min_value=0.01, max_value=2.0, allow_nan=False),
       alpha=st.floats(min_value=0.05, max_value=0.99, allow_nan=False))
@settings(max_examples=10)
def test_nl17_alpha_is_the_momentum(backend, eta, alpha):
    xp = ns(backend)
    w = to_numpy(me.impulse_response(eta, alpha, 15, xp=xp))
    hand = np.array([eta * alpha ** j for j in range(15)])
    assert np.all(np.abs(w - hand) <= 2 * 16 * EPS * hand)  # j multiplications each side: (j + 1) eps relative
    # eta only scales every weight (a learning rate); the decay ratio of past gradients is alpha (the momentum)
    w2 = to_numpy(me.impulse_response(2 * eta, alpha, 15, xp=xp))
    assert np.all(np.abs(w2 / w - 2.0) <= 64 * EPS)
    assert np.all(np.abs(w[1:] / w[:-1] - alpha) <= 64 * EPS)


def test_bad_inputs(xp):
    m = xp.zeros((2, 3))
    g = xp.ones((2, 3))
    with pytest.raises(ValueError, match="alpha"):
        mo.momentum_step(m, m, g, 0.1, 1.5)
    with pytest.raises(ValueError, match="eta"):
        mo.momentum_step(m, m, g, -0.1, 0.9)
    with pytest.raises(ValueError, match="g"):
        me.nl10_printed_problem(m, xp.ones((3, 2)), 0.1)
    with pytest.raises(ValueError, match="eta"):
        me.nl10_printed_argmin(m, g, 0.0)
    with pytest.raises(ValueError, match="solver"):
        me.nl10_printed_argmin(m, g, 0.1, solver="newton")
    with pytest.raises(ValueError, match="fraction"):
        mh.latest_gradients_for_mass(0.9, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        mh.latest_gradients_for_mass(1.0, 0.5)
    with pytest.raises(ValueError, match="eta"):
        me.nl8_printed_step(m, m, g, 0.0)
    W_0, X, T = layer_problem(40, xp, "squared_error", d_out=2, d_in=3, N=2)
    with pytest.raises(ValueError, match="m_0"):
        mo.momentum_train("squared_error", W_0, X, T, 0.1, 0.9, m_0=xp.zeros((3, 2)))
    with pytest.raises(ValueError, match="targets"):
        mo.momentum_train("squared_error", W_0, X, T[:1, :], 0.1, 0.9)
    with pytest.raises(ValueError, match="g"):
        mo.momentum_step(m, m, g * float("inf"), 0.1, 0.9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), eta=st.floats(min_value=0.001, max_value=1.0, allow_nan=False),
       alpha=st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
@settings(max_examples=10)
def test_heavy_ball_is_the_arithmetic_the_two_levels_reproduce(backend, seed, eta, alpha):
    xp = ns(backend)
    g = np.random.default_rng(seed)
    W_t, m_t, grad = (xp.asarray(g.standard_normal((2, 3, 4))) for _ in range(3))
    W_hb, m_hb = mo.heavy_ball_step(W_t, m_t, grad, eta, alpha)
    # the two lines by hand in NumPy
    m_hand = alpha * to_numpy(m_t) + eta * to_numpy(grad)
    assert np.abs(to_numpy(m_hb) - m_hand).max() <= 4 * EPS * np.abs(m_hand).max()
    W, m, _ = mo.momentum_step(W_t, m_t, grad, eta, alpha)
    scale = np.abs(to_numpy(W_t)).max() + np.abs(m_hand).max()
    assert max_abs_error(W, W_hb, xp) <= 4 * EPS * scale and max_abs_error(m, m_hb, xp) <= 4 * EPS * scale
    W_it, m_it, _ = mo.momentum_step(W_t, m_t, grad, eta, alpha, method="iterative")
    assert rel_error(W_it, W_hb, xp) <= 2 * CLOSED_VS_ITERATIVE
