r"""Momentum is a two-level memory (NL-7..11, NLx-10..13, MATH.md 2b).

The consistent form (arXiv; NeurIPS prints it with errata, below):

.. math::

    W_{t+1} &= W_t - m_{t+1},                                                        \\
    m_{t+1} &= \alpha\, m_t + \eta\, g_{t+1}, \qquad g_{t+1} = \nabla_W L(W_t; x_{t+1}) = u_{t+1} x_{t+1}^T \\
            &= \operatorname*{argmin}_m\; -\langle m, g_{t+1}\rangle + \frac{1}{2\eta}\|m - \alpha m_t\|^2 .

- Level 1, :func:`momentum_level`: the momentum ``m``, a *key-less* memory
  (:class:`~refmem.objectives.Inner`) under a forget gate
  (:class:`~refmem.retentions.ForgetGate` with ``eta`` the learning rate and
  ``alpha`` the momentum); it compresses the gradients and updates every step.
- Level 2, :func:`weight_level`: the weights ``W``, which read level 1:
  :math:`W_{t+1} = \operatorname{argmin}_W -\langle W, -m_{t+1}\rangle + \tfrac12\|W - W_t\|^2 = W_t - m_{t+1}`.

Unrolled, :math:`m_{t+1} = \eta\sum_{j \ge 0} \alpha^j g_{t+1-j}`: the
gradient ``j`` steps back has weight :math:`\eta\alpha^j`, i.e. the normalised
weight :math:`(1-\alpha)\alpha^j` over an infinite horizon
(:func:`gradient_weights`, :func:`latest_gradients_for_mass`).

With :math:`\alpha = 1` and one sample, :math:`-\langle m, u x^T\rangle = -\langle m x, u\rangle`:
the same level has key ``x``, value ``u`` and the Hebbian objective
(:func:`nl11_level`, NL-11).

Errata of the NeurIPS print, each evaluated as printed here and demonstrated
in ``tests/test_momentum.py`` and ``refmem verify`` (spec ``momentum``):

- NL-7 + NL-8 (:func:`nl8_printed_step`): :math:`m_{t+1} = m_t - \eta g`,
  :math:`W_{t+1} = W_t - m_{t+1}` moves ``W`` *up* the gradient (ascent).
- NL-10 (:func:`nl10_printed_problem`): the proximal term is weighted by
  :math:`\eta` instead of :math:`1/(2\eta)`; the exact minimiser is
  :math:`m_t + g/(2\eta)`, not the GD step of NL-8, and has the opposite sign to it.
- NL-17 names :math:`\alpha` the learning rate and :math:`\eta` the momentum;
  the decay of past gradients is governed by :math:`\alpha` (:func:`impulse_response`).
- Paper claim "with momentum 0.9 the latest 6 gradients carry at least half the
  weight and the latest 43 carry 99%": computed, the smallest counts are 7 and
  44 (``1 - 0.9^6 = 0.469``, ``1 - 0.9^43 = 0.989``); see :func:`latest_gradients_for_mass`.
"""

from __future__ import annotations

import math

from ..backends import current_namespace
from ..level import Level, solve
from ..linalg import inner
from ..objectives import Dot, Inner
from ..retentions import ForgetGate, LocalL2
from ..solvers import Problem, conjugate_gradient, default_rtol, gradient_descent
from ..validation import check_arrays, check_ndim, expand_matrix, positive
from .local_surprise import local_surprise, weight_gradient


def momentum_level(eta=1.0, alpha=0.9) -> Level:
    r"""Level 1: :math:`m_{t+1} = \operatorname{argmin}_m -\langle m, g\rangle + \frac{1}{2\eta}\|m - \alpha m_t\|^2`.

    Parameters
    ----------
    eta : float or array ``[...]``
        Learning rate, ``> 0``.
    alpha : float or array ``[...]``
        Momentum (decay of past gradients), in ``[0, 1]``.

    Notes
    -----
    Closed form :math:`\alpha m_t + \eta g` (NLx-10). The objective is linear,
    so the implicit and explicit steps coincide.
    """
    return Level(Inner(), ForgetGate(eta=eta, alpha=alpha), step="implicit", name="momentum")


def weight_level() -> Level:
    r"""Level 2: :math:`W_{t+1} = \operatorname{argmin}_W -\langle W, -m_{t+1}\rangle + \tfrac12\|W - W_t\|^2 = W_t - m_{t+1}`.

    The weights read the momentum memory as their value (negated: descent).
    """
    return Level(Inner(), LocalL2(eta=1.0), step="implicit", name="momentum_weights")


def momentum_step(W_t, m_t, g, eta=1.0, alpha=0.9, *, method="closed", solver=None):
    r"""One step of the two-level memory: solve level 1 for :math:`m_{t+1}`, then level 2 for :math:`W_{t+1}`.

    Parameters
    ----------
    W_t, m_t, g : arrays ``[..., d_out, d_in]``
        Weights, momentum, gradient :math:`\nabla_W L(W_t; x_{t+1})`.
    eta, alpha : float or array ``[...]``
    method : {"closed", "iterative"}
    solver : str, optional

    Returns
    -------
    W, m : arrays ``[..., d_out, d_in]``
    reports : tuple of two SolveReport
    Examples
    --------
    The two levels reproduce the heavy-ball update:

    >>> import numpy as np
    >>> from refmem.optimizers.momentum import momentum_step
    >>> rng = np.random.default_rng(0)
    >>> W, m, g = rng.standard_normal((3, 2, 4))   # weights, momentum, gradient [d_out, d_in]
    >>> W_new, m_new, _ = momentum_step(W, m, g, eta=0.1, alpha=0.9)
    >>> m_ref = 0.9 * m + 0.1 * g                  # m_{t+1} = alpha m_t + eta g
    >>> bool(np.allclose(m_new, m_ref)), bool(np.allclose(W_new, W - m_ref))
    (True, True)
    """
    check_arrays(W_t=W_t, m_t=m_t, g=g)
    m, rep_m = solve(momentum_level(eta, alpha), m_t, None, g, method=method, solver=solver)
    W, rep_W = solve(weight_level(), W_t, None, -m, method=method, solver=solver)
    return W, m, (rep_m, rep_W)


def momentum_train(loss, W_0, X, targets, eta=1.0, alpha=0.9, *, m_0=None, method="closed", solver=None):
    r"""Train ``y = W x`` with momentum as a sequence of two-level solves.

    Parameters
    ----------
    loss : Loss or str
    W_0 : array ``[..., d_out, d_in]``
    X : array ``[..., N, d_in]``
    targets : array ``[..., N, d_out]``
    eta, alpha : float or array ``[...]``
    m_0 : array ``[..., d_out, d_in]``, optional
        Initial momentum; default zeros.
    method, solver
        As in :func:`refmem.level.solve`.

    Returns
    -------
    Ws, ms : arrays ``[..., N + 1, d_out, d_in]``
        :math:`W_0 \dots W_N` and :math:`m_0 \dots m_N`.
    reports : list of (SolveReport, SolveReport)
    """
    xp = check_arrays(W_0=W_0, X=X, targets=targets, m_0=m_0)
    check_ndim(X, "X", 2, "[..., N, d_in]")
    check_ndim(targets, "targets", 2, "[..., N, d_out]")
    N = X.shape[-2]
    if targets.shape[-2] != N:
        raise ValueError(f"targets has {targets.shape[-2]} samples but X has N = {N} (axis -2)")
    m = xp.zeros_like(W_0) if m_0 is None else m_0
    if tuple(m.shape) != tuple(W_0.shape):
        raise ValueError(f"m_0 must have the shape of W_0 {tuple(W_0.shape)}; got {tuple(m.shape)}")
    W, Ws, ms, reports = W_0, [W_0], [m], []
    for t in range(N):
        g = weight_gradient(loss, W, X[..., t, :], targets[..., t, :])  # (.., d_out, d_in) = u x^T at W_t
        W, m, reps = momentum_step(W, m, g, eta, alpha, method=method, solver=solver)
        Ws.append(W)
        ms.append(m)
        reports.append(reps)
    return xp.stack(Ws, axis=-3), xp.stack(ms, axis=-3), reports


def nl11_level(eta=1.0) -> Level:
    r"""NL-11 (``alpha = 1``): :math:`\operatorname{argmin}_m -\langle m x, u\rangle + \frac{1}{2\eta}\|m - m_t\|^2`.

    Key ``x``, value ``u`` (no sign flip: ``W`` subtracts ``m``), Hebbian
    objective :class:`~refmem.objectives.Dot`. Equals :func:`momentum_level`
    with ``alpha = 1`` and ``g = u x^T`` because :math:`\langle m x, u\rangle = \langle m, u x^T\rangle`.
    """
    return Level(Dot(), LocalL2(eta=eta), step="implicit", name="momentum_nl11")


def nl11_update(loss, W_t, m_t, x, target, eta=1.0, *, method="closed", solver=None):
    """The NL-11 momentum update: ``u`` at ``W_t`` for sample ``x``, then the keyed level. Returns ``(m, report)``."""
    u = local_surprise(loss, W_t, x, target)  # (.., d_out)
    return solve(nl11_level(eta), m_t, x, u, method=method, solver=solver)


def gradient_weights(alpha: float, n: int):
    r"""Normalised weights :math:`(1-\alpha)\alpha^j`, ``j = 0 .. n-1``, of the latest ``n`` gradients in ``m``.

    Over an infinite horizon the weights sum to one (:math:`\sum_j (1-\alpha)\alpha^j = 1`).
    Returned as a Python list (a scalar computation; no array backend needed).
    """
    a = _alpha(alpha)
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    return [(1.0 - a) * a ** j for j in range(n)]


def latest_gradients_for_mass(alpha: float, fraction: float) -> int:
    r"""The smallest ``n`` whose latest ``n`` gradients carry at least ``fraction`` of the total weight.

    Notes
    -----
    The partial sum is :math:`\sum_{j<n}(1-\alpha)\alpha^j = 1 - \alpha^n`, so the
    answer is :math:`\lceil \log(1 - f) / \log\alpha \rceil`; at
    :math:`\alpha = 0.9` that is 7 for :math:`f = 0.5` and 44 for :math:`f = 0.99`
    (the paper states 6 and 43: :math:`1 - 0.9^6 = 0.469`, :math:`1 - 0.9^{43} = 0.989`).
    The quotient of logarithms is computed with ``log1p`` and may be off by rounding
    near an integer, so the two neighbours are tested with
    :math:`1 - \alpha^n = -\operatorname{expm1}(n \log\alpha)`: a fixed amount of
    work whatever the inputs (``alpha`` near 1 needs millions of gradients, never a loop over them).
    """
    a = _alpha(alpha)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0.0 < float(fraction) < 1.0):
        raise ValueError(f"fraction must be a real number in (0, 1); got {fraction!r}")
    f = float(fraction)
    if a == 0.0:
        return 1
    log_a = math.log(a)

    def mass(n):  # 1 - a^n, accurate also where a^n is close to 1
        return -math.expm1(n * log_a)

    n = max(1, math.ceil(math.log1p(-f) / log_a))
    if n > 1 and mass(n - 1) >= f:  # the quotient rounded up past an integer
        n -= 1
    elif mass(n) < f:  # the quotient rounded down
        n += 1
    return n


def mass_of_latest(alpha: float, n: int) -> float:
    """Fraction of the total weight carried by the latest ``n`` gradients (``math.fsum`` of :func:`gradient_weights`)."""
    return math.fsum(gradient_weights(alpha, n))


def _alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= float(alpha) < 1.0):
        raise ValueError(f"alpha must be a real number in [0, 1) (the weights are normalised by 1 - alpha); got {alpha!r}")
    return float(alpha)


def impulse_response(eta=0.1, alpha=0.9, n: int = 10, *, dtype="float64", xp=None):
    r"""Weight of one gradient in ``m`` after ``j = 0 .. n-1`` further steps, measured by running level 1.

    A single unit gradient enters at step 0 and zero gradients follow; the
    momentum's value is recorded after each step. The result is
    :math:`\eta\,\alpha^j`: ``eta`` scales every weight (a learning rate) and
    ``alpha`` is the ratio of consecutive weights (the momentum). NL-17's
    naming (``alpha`` the learning rate, ``eta`` the momentum) has it the other way round.

    Returns
    -------
    array ``[n]``
    """
    xp = xp or current_namespace()
    one = xp.ones((1, 1), dtype=getattr(xp, dtype))  # (1, 1): a 1x1 "gradient"
    m = xp.zeros_like(one)
    out = []
    for j in range(n):
        g = one if j == 0 else xp.zeros_like(one)
        m, _ = solve(momentum_level(eta, alpha), m, None, g)
        out.append(m[0, 0])
    return xp.stack(out)


def nl8_printed_step(W_t, m_t, g, eta=1.0):
    r"""NL-7 with NL-8 *as printed*: :math:`m_{t+1} = m_t - \eta g`, :math:`W_{t+1} = W_t - m_{t+1}` (erratum).

    From :math:`m_t = 0` this is :math:`W_{t+1} = W_t + \eta g`: a step *up* the
    gradient. Returns ``(W, m)``.
    """
    xp = check_arrays(W_t=W_t, m_t=m_t, g=g)
    e = expand_matrix(positive(eta, "eta", xp, W_t.dtype), xp)  # (..,1,1)
    m = m_t - e * g  # (.., d_out, d_in)
    return W_t - m, m


def nl10_printed_problem(m_t, g, eta=1.0) -> Problem:
    r"""NL-10 *as printed*, as a problem for the iterative solvers (erratum).

    .. math::

        F(m) = -\langle m, g\rangle + \eta\,\|m - m_t\|^2, \qquad
        \nabla F = -g + 2\eta (m - m_t), \qquad L = \mu = 2\eta .

    Its exact minimiser is :math:`m_t + g/(2\eta)` (:func:`nl10_printed_minimiser`),
    not the GD step :math:`m_t - \eta g` the text claims.
    """
    xp = check_arrays(m_t=m_t, g=g)
    check_ndim(m_t, "m_t", 2, "[..., d_out, d_in]")
    if tuple(g.shape) != tuple(m_t.shape):
        raise ValueError(f"g must have the shape of m_t {tuple(m_t.shape)}; got {tuple(g.shape)}")
    e = positive(eta, "eta", xp, m_t.dtype)  # (..,)
    E = expand_matrix(e, xp)  # (..,1,1)

    def value(m):
        d = m - m_t
        return -inner(m, g, xp) + e * inner(d, d, xp)  # (..,)

    def grad(m):
        return -g + 2.0 * E * (m - m_t)  # (.., d_out, d_in)

    return Problem(xp, m_t, value, grad, 2.0 * e, 2.0 * e, quadratic=True)


def nl10_printed_argmin(m_t, g, eta=1.0, *, solver="cg", rtol=None):
    """Minimise the printed NL-10 objective numerically (``"cg"`` or ``"gd"``); returns ``(m, report)``."""
    prob = nl10_printed_problem(m_t, g, eta)
    xp = prob.xp
    rtol = default_rtol(m_t.dtype, xp) if rtol is None else rtol
    if solver == "cg":
        return conjugate_gradient(prob, rtol=rtol)
    if solver == "gd":
        return gradient_descent(prob, rtol=rtol)
    raise ValueError(f"solver must be 'cg' or 'gd'; got {solver!r}")


def nl10_printed_minimiser(m_t, g, eta=1.0):
    r"""Hand-derived minimiser of the printed NL-10: :math:`m_t + g/(2\eta)` (zero of :math:`-g + 2\eta(m - m_t)`)."""
    xp = check_arrays(m_t=m_t, g=g)
    e = expand_matrix(positive(eta, "eta", xp, m_t.dtype), xp)  # (..,1,1)
    return m_t + g / (2.0 * e)


__all__ = [
    "momentum_level",
    "weight_level",
    "momentum_step",
    "momentum_train",
    "nl11_level",
    "nl11_update",
    "gradient_weights",
    "latest_gradients_for_mass",
    "mass_of_latest",
    "impulse_response",
    "nl8_printed_step",
    "nl10_printed_problem",
    "nl10_printed_argmin",
    "nl10_printed_minimiser",
]
