r"""The NeurIPS print's momentum errata, each evaluated as printed (NL-7, 8, 10, 17; MATH.md 2b).

The consistent two-level memory is :mod:`.momentum`. Demonstrated in
``tests/test_momentum.py`` and ``refmem verify`` (spec ``momentum``):

- NL-7 + NL-8 (:func:`nl8_printed_step`): :math:`m_{t+1} = m_t - \eta g`,
  :math:`W_{t+1} = W_t - m_{t+1}` moves ``W`` *up* the gradient (ascent).
- NL-10 (:func:`nl10_printed_problem`): the proximal term is weighted by
  :math:`\eta` instead of :math:`1/(2\eta)`; the exact minimiser is
  :math:`m_t + g/(2\eta)`, not the GD step of NL-8, and has the opposite sign to it.
- NL-17 names :math:`\alpha` the learning rate and :math:`\eta` the momentum;
  the decay of past gradients is governed by :math:`\alpha` (:func:`impulse_response`).
"""

from __future__ import annotations

from ..backends import current_namespace
from ..level import solve
from ..linalg import inner
from ..solvers import Problem, conjugate_gradient, default_rtol, gradient_descent
from ..validation import check_arrays, check_ndim, count, expand_matrix, float_dtype, positive
from .momentum import momentum_level


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
    n = count(n, "n")
    one = xp.ones((1, 1), dtype=float_dtype(dtype, xp))  # (1, 1): a 1x1 "gradient"
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


__all__ = ["impulse_response", "nl8_printed_step", "nl10_printed_problem", "nl10_printed_argmin",
           "nl10_printed_minimiser"]
