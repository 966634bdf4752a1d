r"""``refmem verify`` checks for gradient descent and momentum read as memories (MATH.md 2a, 2b; NL-2..11, NLx-10..13).

Spec ``mlp_local_surprise``: the hand-written ``dL/dy`` against finite
differences; one GD step on the real loss (gradient in ``W`` by finite
differences of ``L(W x)``, never through ``dL/dy``) == the NL-5 closed form ==
the iterative argmin; a training run == a sequence of level solves; the NL-6
erratum.

Spec ``momentum``: the ``m`` level closed == iterative; the two-level memory ==
heavy-ball iterates; NL-11 (keyed, ``alpha = 1``) == the key-less form; the
gradient-weight counts at momentum 0.9 and the paper's 6 and 43; the NeurIPS
errata NL-7+8, NL-10, NL-17, each evaluated as printed.

Tolerances. Closed vs iterative: ``1e-10`` relative (solvers stop at 1e-12;
these problems have condition number 1). Against finite differences: the
derived bounds of :func:`refmem.losses.finite_difference_surprise` and
:func:`refmem.optimizers.local_surprise.finite_difference_weight_gradient`.
Along whole runs the two routes' difference obeys a linear recursion whose
majorant (:func:`_gd_majorant`, :func:`_heavy_ball_majorant`) is computed
step by step from the per-step bound and the gradient's Lipschitz constant
``curvature * ||x||^2``; a check fails if any step exceeds it.
"""

from __future__ import annotations

import math

import numpy as np  # randomness only: problems are drawn in NumPy, then moved to xp

from ..level import solve
from ..linalg import broadcast_like, fro_norm, inner, matvec, outer
from ..losses import LOSSES, finite_difference_surprise, get_loss
from ..metrics import max_abs_error, rel_error
from ..optimizers import local_surprise as ls
from ..optimizers import momentum as mo
from ..optimizers import momentum_errata as me
from ..optimizers import momentum_horizon as mh
from ..problems import to_backend
from .registry import register_check

CLOSED_VS_ITERATIVE_TOL = 1e-10  # solvers stop at relative optimality 1e-12, condition number 1: factor 100 margin
EPS = float(np.finfo(np.float64).eps)
SURPRISE = "mlp_local_surprise"
MOMENTUM = "momentum"


def _scalar(a, xp) -> float:
    return float(xp.max(xp.reshape(a, (-1,)))) if a.ndim else float(a)


def _draw_targets(g, loss_name, shape):
    if loss_name == "softmax_cross_entropy":
        return g.dirichlet(np.ones(shape[-1]), size=shape[:-1])  # probability vectors
    return g.standard_normal(shape)


def layer_problem(seed, xp, loss_name, *, batch=(), d_out=3, d_in=4, N=None):
    """Random ``(W, x, target)`` (``N is None``) or ``(W_0, X [N, d_in], targets [N, d_out])`` on ``xp``."""
    g = np.random.default_rng(seed)
    batch = tuple(batch)
    W = g.standard_normal(batch + (d_out, d_in)) / np.sqrt(d_in)
    lead = batch if N is None else batch + (N,)
    x = g.standard_normal(lead + (d_in,))
    t = _draw_targets(g, loss_name, lead + (d_out,))
    return to_backend(W, xp), to_backend(x, xp), to_backend(t, xp)


def _lipschitz_in_W(loss, x, t, xp) -> float:
    """Lipschitz constant (Frobenius) of ``W -> grad_W L(W x)``: ``curvature * ||x||^2`` (Hessian ``x x^T`` kron ``d^2L/dy^2``)."""
    return _scalar(get_loss(loss).curvature(t) * xp.sum(x * x, axis=-1), xp)


def _gd_majorant(E, eta, lip, local):
    """One step of the error majorant of two GD routes: ``E' = (1 + eta Lip) E + local``."""
    return (1.0 + eta * lip) * E + local


def fd_gd_reference(loss, W_0, X, targets, eta, xp):
    """Plain GD on ``L(W x)`` with gradients by finite differences of the loss in ``W``, and its error majorant.

    Returns the trajectory ``[W_0 .. W_N]`` (a list) and, per step, a bound on the
    Frobenius distance to the exact-gradient trajectory computed in floating point.
    """
    N = X.shape[-2]
    d_out, d_in = W_0.shape[-2], W_0.shape[-1]
    root_n = math.sqrt(d_out * d_in)
    W, Ws, bounds, E = W_0, [W_0], [0.0], 0.0
    for t in range(N):
        x, tg = X[t, :], targets[t, :]
        G, fd_bound = ls.finite_difference_weight_gradient(loss, W, x, tg)
        # local error: eta * FD error (entrywise bound, sqrt(n) for Frobenius) + rounding of the update in either route
        local = eta * root_n * _scalar(fd_bound, xp) + 4 * EPS * root_n * (
            max_abs_error(W, 0 * W, xp) + eta * max_abs_error(G, 0 * G, xp))
        E = _gd_majorant(E, eta, _lipschitz_in_W(loss, x, tg, xp), local)
        W = W - eta * G  # (d_out, d_in)
        Ws.append(W)
        bounds.append(E)
    return Ws, bounds


def gradient_written_out(loss_name, W, x, t, xp):
    r"""``grad_W L`` by the chain rule written out in matrix form, without :mod:`refmem.losses`.

    Squared error: :math:`W x x^T - t x^T`. Cross-entropy (weights summing to
    ``c``): :math:`(c\, e^{y} / \sum e^{y} - p)\, x^T` with unshifted exponentials
    (the checks draw ``|y|`` small).
    """
    xx = x[:, None] * x[None, :]  # (d_in, d_in)
    if loss_name == "squared_error":
        return W @ xx - t[:, None] * x[None, :]  # (d_out, d_in) @ (d_in, d_in) - (d_out, d_in)
    y = W @ x[:, None]  # (d_out, d_in) @ (d_in, 1) -> (d_out, 1)
    e = xp.exp(y)
    return (xp.sum(t) * e / xp.sum(e) - t[:, None]) * x[None, :]  # (d_out, 1) * (1, d_in)


def _grad_route_scale(W, x, t, xp) -> float:
    """Bound on the sum of |terms| in one entry of ``grad_W L`` (both losses; softmax entries <= 1)."""
    Wx = _scalar(xp.max(matvec(xp.abs(W), xp.abs(x))), xp)
    xm = _scalar(xp.max(xp.abs(x)), xp)
    t1 = _scalar(xp.sum(xp.abs(t)), xp)
    tm = _scalar(xp.max(xp.abs(t)), xp)
    return (Wx + tm + 1.0) * xm * (1.0 + t1)


def heavy_ball_reference(grad_fn, W_0, N, eta, alpha):
    r"""Classic heavy ball :math:`W_{t+1} = W_t - \eta g(W_t) + \alpha (W_t - W_{t-1})`, :math:`W_{-1} = W_0`.

    ``grad_fn(t, W)`` gives the gradient at step ``t``. Returns ``[W_0 .. W_N]``.
    """
    W_prev, W, Ws = W_0, W_0, [W_0]
    for t in range(N):
        W_next = W - eta * grad_fn(t, W) + alpha * (W - W_prev)
        W_prev, W = W, W_next
        Ws.append(W)
    return Ws


def _heavy_ball_majorant(Ws, ms, gs, eta, alpha, lips, gammas, xp):
    r"""Bounds ``E_t`` on ``||W_t - W'_t||`` between the two-level memory and heavy ball.

    With :math:`\delta m_{t+1} = \alpha\,\delta m_t + \eta(g(W_t) - g'(W'_t)) + r_t` and
    :math:`\delta W_{t+1} = \delta W_t - \delta m_{t+1}`:
    :math:`D_{t+1} = \alpha D_t + \eta\,\mathrm{Lip}_t E_t + \mathrm{local}_t`,
    :math:`E_{t+1} = E_t + D_{t+1}`; ``local`` = rounding of both updates
    (``4 eps`` per operand) + ``eta * gamma_t`` (the two gradient routes' rounding).
    """
    n = Ws[0].shape[-1] * Ws[0].shape[-2]
    root_n = math.sqrt(n)
    E, D, bounds = 0.0, 0.0, [0.0]
    for t in range(len(gs)):
        scale = max_abs_error(Ws[t], 0 * Ws[t], xp) + max_abs_error(ms[t + 1], 0 * ms[t + 1], xp) + eta * max_abs_error(
            gs[t], 0 * gs[t], xp)
        local = 8 * EPS * root_n * scale + eta * gammas[t]
        D = alpha * D + eta * lips[t] * E + local
        E = E + D + 4 * EPS * root_n * scale
        bounds.append(E)
    return bounds


def _run_check(errors, bounds, what):
    """``(max error, final bound)`` after checking every step against its own bound."""
    for t, (e, b) in enumerate(zip(errors, bounds)):
        if not e <= b:
            raise AssertionError(f"{what}: step {t} error {e:.3e} exceeds its bound {b:.3e}")
    return max(errors), max(bounds[-1], 0.0)


# ------------------------------------------------------------------ mlp_local_surprise


def _register_surprise_fd(loss_name):
    @register_check(SURPRISE, f"{loss_name}: hand dL/dy == central differences")
    def check(xp):
        g = np.random.default_rng(1)
        y = to_backend(3 * g.standard_normal((6, 5)), xp)
        t = to_backend(_draw_targets(g, loss_name, (6, 5)), xp)
        u = get_loss(loss_name).grad(y, t)
        u_fd, bound = finite_difference_surprise(loss_name, y, t)
        # tolerance: the smallest per-element derived FD bound (truncation h^2/6 T3 + rounding delta/h)
        return max_abs_error(u, u_fd, xp), _scalar(-xp.max(-bound), xp)


def _register_gd_step(loss_name):
    @register_check(SURPRISE, f"{loss_name}: GD step on L (FD grad_W) == NL-5 closed form")
    def check(xp):
        W, x, t = layer_problem(2, xp, loss_name, d_out=4, d_in=5)
        eta = 0.3
        G, fd_bound = ls.finite_difference_weight_gradient(loss_name, W, x, t)
        W_gd = W - eta * G
        W_closed, _ = ls.surprise_step(loss_name, W, x, t, eta)
        # eta * FD bound + rounding of the two updates (4 eps per operand)
        tol = eta * _scalar(fd_bound, xp) + 4 * EPS * (max_abs_error(W, 0 * W, xp) + eta * max_abs_error(G, 0 * G, xp))
        return max_abs_error(W_closed, W_gd, xp), tol

    @register_check(SURPRISE, f"{loss_name}: NL-5 closed == iterative argmin (cg, gd)", CLOSED_VS_ITERATIVE_TOL)
    def check_iter(xp):
        W, x, t = layer_problem(3, xp, loss_name, batch=(3,), d_out=4, d_in=5)
        W_closed, _ = ls.surprise_step(loss_name, W, x, t, 0.3)
        errs = [rel_error(ls.surprise_step(loss_name, W, x, t, 0.3, method="iterative", solver=s)[0], W_closed, xp)
                for s in ("cg", "gd")]
        return max(errs)

    @register_check(SURPRISE, f"{loss_name}: training run (FD-gradient GD) == sequence of level solves")
    def check_run(xp):
        W_0, X, T = layer_problem(4, xp, loss_name, d_out=3, d_in=4, N=12)
        eta = 0.2
        Ws, _ = ls.train(loss_name, W_0, X, T, eta)
        ref, bounds = fd_gd_reference(loss_name, W_0, X, T, eta, xp)
        errors = [_scalar(fro_norm(Ws[..., i, :, :] - ref[i], xp), xp) for i in range(len(ref))]
        return _run_check(errors, bounds, "training run")

    @register_check(SURPRISE, f"{loss_name}: training run closed == iterative", CLOSED_VS_ITERATIVE_TOL)
    def check_run_iter(xp):
        W_0, X, T = layer_problem(5, xp, loss_name, d_out=3, d_in=4, N=12)
        closed, _ = ls.train(loss_name, W_0, X, T, 0.2)
        it, _ = ls.train(loss_name, W_0, X, T, 0.2, method="iterative")
        return rel_error(it, closed, xp)


for _name in sorted(LOSSES):
    _register_surprise_fd(_name)
    _register_gd_step(_name)


@register_check(SURPRISE, "erratum NL-6: printed key x_t differs from the GD step by eta u (x_{t+1} - x_t)^T")
def _nl6_erratum(xp):
    W, X, T = layer_problem(6, xp, "squared_error", d_out=3, d_in=4, N=2)
    eta = 0.5
    x_prev, x, t = X[0, :], X[1, :], T[1, :]
    printed, _ = ls.nl6_printed_step("squared_error", W, x_prev, x, t, eta, method="iterative")
    G, fd_bound = ls.finite_difference_weight_gradient("squared_error", W, x, t)
    W_gd = W - eta * G  # the GD step on the real loss at x_{t+1}
    u = matvec(W, x) - t  # squared error: u = y - t, written out
    predicted = eta * outer(u, x - x_prev)  # hand derivation: printed - GD = eta u (x_{t+1} - x_t)^T
    diff = printed - W_gd
    tol = eta * _scalar(fd_bound, xp) + 1e-10 * max_abs_error(W, 0 * W, xp)  # FD bound + the iterative solve's 1e-10
    gap = max_abs_error(diff, 0 * diff, xp)
    if not gap > 1e3 * tol:
        raise AssertionError(f"printed NL-6 is not distinguishable from the GD step (gap {gap:.3e}, tol {tol:.3e})")
    return max_abs_error(diff, predicted, xp), tol


# ------------------------------------------------------------------ momentum


@register_check(MOMENTUM, "m level (Inner + forget gate) closed == iterative (cg, gd)", CLOSED_VS_ITERATIVE_TOL)
def _m_level(xp):
    g = np.random.default_rng(8)
    m_t = to_backend(g.standard_normal((3, 4, 5)), xp)
    grad = to_backend(g.standard_normal((3, 4, 5)), xp)
    level = mo.momentum_level(eta=0.1, alpha=0.9)
    closed, _ = solve(level, m_t, None, grad)
    return max(rel_error(solve(level, m_t, None, grad, method="iterative", solver=s)[0], closed, xp) for s in ("cg", "gd"))


def heavy_ball_fixed_gradients(grads, W_0, eta, alpha, xp):
    r"""The two-level memory and the heavy ball on the same fixed gradients: ``(errors, bounds)``, ``[E_0 .. E_N]``.

    ``errors[t]`` is :math:`\|W_t - W'_t\|` between :func:`~refmem.optimizers.momentum.momentum_step`
    run from :math:`m_0 = 0` and :func:`heavy_ball_reference`; ``bounds[t]`` its majorant
    (:func:`_heavy_ball_majorant`, no gradient term: the gradients do not depend on ``W``).
    """
    N = len(grads)
    W, m, Ws, ms = W_0, 0 * W_0, [W_0], [0 * W_0]
    for t in range(N):
        W, m, _ = mo.momentum_step(W, m, grads[t], eta, alpha)
        Ws.append(W)
        ms.append(m)
    ref = heavy_ball_reference(lambda t, _W: grads[t], W_0, N, eta, alpha)
    bounds = _heavy_ball_majorant(Ws, ms, grads, eta, alpha, [0.0] * N, [0.0] * N, xp)
    return [_scalar(fro_norm(a - b, xp), xp) for a, b in zip(Ws, ref)], bounds


@register_check(MOMENTUM, "two-level memory == heavy ball, fixed gradients, 60 steps")
def _heavy_ball_fixed(xp):
    g = np.random.default_rng(9)
    grads = [to_backend(g.standard_normal((4, 5)), xp) for _ in range(60)]
    W_0 = to_backend(g.standard_normal((4, 5)), xp)
    return _run_check(*heavy_ball_fixed_gradients(grads, W_0, 0.1, 0.9, xp), "heavy ball (fixed gradients)")


def _register_heavy_ball_training(loss_name):
    @register_check(MOMENTUM, f"{loss_name}: momentum training == heavy ball, 40 steps")
    def check(xp):
        W_0, X, T = layer_problem(10, xp, loss_name, d_out=3, d_in=4, N=40)
        eta, alpha = 0.05, 0.9
        Ws_arr, ms_arr, _ = mo.momentum_train(loss_name, W_0, X, T, eta, alpha)
        Ws = [Ws_arr[i, :, :] for i in range(41)]
        ms = [ms_arr[i, :, :] for i in range(41)]
        gs = [ls.weight_gradient(loss_name, Ws[t], X[t, :], T[t, :]) for t in range(40)]
        ref = heavy_ball_reference(lambda t, W: gradient_written_out(loss_name, W, X[t, :], T[t, :], xp), W_0, 40, eta, alpha)
        lips = [_lipschitz_in_W(loss_name, X[t, :], T[t, :], xp) for t in range(40)]
        n_terms = W_0.shape[-1] + W_0.shape[-2] + 2
        gammas = [16 * n_terms * EPS * math.sqrt(12) * _grad_route_scale(Ws[t], X[t, :], T[t, :], xp) for t in range(40)]
        bounds = _heavy_ball_majorant(Ws, ms, gs, eta, alpha, lips, gammas, xp)
        errors = [_scalar(fro_norm(a - b, xp), xp) for a, b in zip(Ws, ref)]
        return _run_check(errors, bounds, "heavy ball (training)")


for _name in sorted(LOSSES):
    _register_heavy_ball_training(_name)


@register_check(MOMENTUM, "NL-11 (alpha = 1, key x, value u, dot) == key-less form")
def _nl11(xp):
    W, x, t = layer_problem(12, xp, "softmax_cross_entropy", batch=(3,), d_out=4, d_in=5)
    m_t = 0.5 * W + 0.1
    keyed, _ = mo.nl11_update("softmax_cross_entropy", W, m_t, x, t, 0.1)
    g = ls.weight_gradient("softmax_cross_entropy", W, x, t)
    keyless, _ = solve(mo.momentum_level(eta=0.1, alpha=1.0), m_t, None, g)
    # same products eta * u_i x_j in both: rounding of one multiply-add, 4 eps of the operands
    return max_abs_error(keyed, keyless, xp), 4 * EPS * (max_abs_error(m_t, 0 * m_t, xp) + 0.1 * max_abs_error(g, 0 * g, xp))


@register_check(MOMENTUM, "weights at 0.9: summed counts (50%, 99%) == ceil(log(1-f)/log a)", 0.0)
def _counts(xp):
    return float(max(abs(mh.latest_gradients_for_mass(0.9, f) - math.ceil(math.log(1 - f) / math.log(0.9)))
                     for f in (0.5, 0.99)))


@register_check(MOMENTUM, "erratum: paper's 6 and 43 at 0.9 are each one short (7 and 44 needed)", 0.0)
def _paper_counts(xp):
    for n, f in ((6, 0.5), (43, 0.99)):
        if mh.mass_of_latest(0.9, n) >= f:
            raise AssertionError(f"the latest {n} gradients do carry {f:.0%}: the paper's count holds")
    return float(max(abs(mh.latest_gradients_for_mass(0.9, 0.5) - (6 + 1)),
                     abs(mh.latest_gradients_for_mass(0.9, 0.99) - (43 + 1))))


@register_check(MOMENTUM, "erratum NL-7+8: printed form is gradient ascent (loss rises; consistent form falls)")
def _nl8_ascent(xp):
    W_0, X, T = layer_problem(13, xp, "squared_error", d_out=3, d_in=4, N=1)
    x, t = X[0, :], T[0, :]
    eta = 0.1
    L = lambda W: _scalar(ls.loss_of_weights("squared_error", W, x, t), xp)  # noqa: E731
    W_p, m_p, W_c, m_c = W_0, 0 * W_0, W_0, 0 * W_0
    L0, Lp, Lc = L(W_0), [], []
    for _ in range(10):  # the same sample again and again: a convex least-squares problem
        g = ls.weight_gradient("squared_error", W_p, x, t)
        W_p, m_p = me.nl8_printed_step(W_p, m_p, g, eta)
        W_c, m_c, _ = mo.momentum_step(W_c, m_c, ls.weight_gradient("squared_error", W_c, x, t), eta, 0.9)
        Lp.append(L(W_p))
        Lc.append(L(W_c))
    if not (all(b > a for a, b in zip([L0] + Lp, Lp)) and Lc[-1] < L0):
        raise AssertionError(f"printed losses {Lp}, consistent {Lc}, start {L0}")
    # first printed step from m = 0 is W + eta g; for 1/2||W x - t||^2: L(W + eta g) - L(W) = eta||g||^2 + eta^2/2 ||g x||^2
    g0 = ls.weight_gradient("squared_error", W_0, x, t)
    gx = matvec(g0, x)
    rise = eta * _scalar(inner(g0, g0, xp), xp) + 0.5 * eta * eta * _scalar(xp.sum(gx * gx), xp)
    # tolerance: the rounding of the two loss values (each ~ (d+2) eps * L) relative to the rise
    return abs((Lp[0] - L0) - rise), 16 * EPS * (abs(L0) + abs(Lp[0]) + rise)


@register_check(MOMENTUM, "erratum NL-10: printed argmin (cg, gd) == m_t + g/(2 eta)", CLOSED_VS_ITERATIVE_TOL)
def _nl10_argmin(xp):
    g = np.random.default_rng(14)
    m_t = to_backend(g.standard_normal((2, 4, 5)), xp)
    grad = to_backend(g.standard_normal((2, 4, 5)), xp)
    exact = me.nl10_printed_minimiser(m_t, grad, 0.3)
    return max(rel_error(me.nl10_printed_argmin(m_t, grad, 0.3, solver=s)[0], exact, xp) for s in ("cg", "gd"))


@register_check(MOMENTUM, "erratum NL-10: printed step is opposite to NL-8's GD step (cos = -1)")
def _nl10_sign(xp):
    g = np.random.default_rng(15)
    m_t = to_backend(g.standard_normal((4, 5)), xp)
    grad = to_backend(g.standard_normal((4, 5)), xp)
    eta = 0.3
    m10, _ = me.nl10_printed_argmin(m_t, grad, eta)
    d10 = m10 - m_t  # printed NL-10 step
    d8 = -eta * grad  # NL-8's step m_t - eta g, minus m_t
    cos = _scalar(inner(d10, d8, xp) / (fro_norm(d10, xp) * fro_norm(d8, xp)), xp)
    if rel_error(m10, m_t + d8, xp) < 0.1:
        raise AssertionError("printed NL-10 argmin coincides with the GD step")
    # tolerance: the iterative argmin is accurate to 1e-10 relative, which moves the angle's cosine by at most ~1e-10 * ||m||/||d||
    return abs(cos + 1.0), 1e-10 * (1 + _scalar(fro_norm(m_t, xp) / fro_norm(d10, xp), xp))


@register_check(MOMENTUM, "erratum NL-17: decay of past gradients is alpha (momentum), eta only scales")
def _nl17(xp):
    eta, alpha, n = 0.05, 0.8, 12
    w = me.impulse_response(eta, alpha, n, xp=xp)  # run level 1 on a unit impulse
    ratios = w[1:] / w[:-1]
    if abs(_scalar(ratios[0], xp) - eta) < 0.1:
        raise AssertionError("decay ratio equals eta: the printed naming would hold")
    # w_j = eta alpha^j computed by j multiplications: relative error <= (j + 1) eps; ratio error <= 2 (n + 1) eps
    err_ratio = max_abs_error(ratios, broadcast_like(alpha, ratios, xp), xp)
    err_scale = abs(_scalar(w[0], xp) - eta) / eta  # the first weight is the learning rate
    return max(err_ratio, err_scale), 2 * (n + 1) * EPS
