r"""Moments are optimal memories: a discounted least-squares memory over past gradients (NLx app. B, MATH.md 6).

Adam, AdamW, RMSProp and AdaGrad keep running averages of the gradients
``g_s`` and of their squares ``g_s * g_s``. Each average is the exact
minimiser of a least-squares memory over the history ``y_1 .. y_t``:

.. math::

    \hat x_t = \operatorname*{argmin}_x\; F_t(x), \qquad
    F_t(x) = \tfrac12 \sum_{s=1}^{t} \beta^{\,t-s}\, \|x - y_s\|^2
             \;+\; \tfrac12\, c_0\, \|x\|^2 .

Setting :math:`\nabla F_t = 0`:

.. math::

    \hat x_t = \frac{\sum_s \beta^{t-s} y_s}{\sum_s \beta^{t-s} + c_0} .

- ``c_0 = 0`` (no pre-history): :math:`\sum_{s=1}^t \beta^{t-s} = (1-\beta^t)/(1-\beta)`, so
  :math:`\hat x_t = m_t / (1 - \beta^t)` with the running recurrence
  :math:`m_t = \beta m_{t-1} + (1-\beta) y_t`, :math:`m_0 = 0`: Adam's
  **bias-corrected** moment (:func:`bias_corrected`).
- ``c_0 = \beta^t / (1-\beta)`` (a pre-history of infinitely many zero
  gradients, :math:`\sum_{s \le 0} \beta^{t-s} = \beta^t/(1-\beta)`): the
  denominator becomes :math:`1/(1-\beta)` and :math:`\hat x_t = m_t` itself:
  the **uncorrected** running average (RMSProp's). Bias correction is exactly
  the removal of that fictitious zero past.
- ``beta = 1`` (undiscounted, AdaGrad): :math:`\hat x_t` is the plain mean
  :math:`\frac1t \sum_s y_s`; AdaGrad's accumulator is :math:`G_0 + t\,\hat x_t`.

The closed form of each level is the running recurrence; the iterative
solution minimises :math:`F_t` over the stored history with conjugate
gradient (:func:`discounted_least_squares_argmin`), which never sees the
recurrence. The paper's plain-sum statement (undiscounted sums) is the
``beta = 1`` case: right for AdaGrad's accumulator up to the factor ``t``, and for
Adam only in the limit :math:`\beta \to 1`.
"""

from __future__ import annotations

from ..backends import namespace_of
from ..solvers import Problem, conjugate_gradient, default_rtol


def ema_step(m, y, beta: float):
    r"""The running recurrence :math:`m_t = \beta m_{t-1} + (1-\beta) y_t` (torch's ``lerp``)."""
    return beta * m + (1.0 - beta) * y  # (.., d_out, d_in)


def bias_corrected(m, beta: float, t: int):
    r"""Adam's bias correction :math:`m_t / (1 - \beta^t)`: the minimiser of :math:`F_t` with ``c_0 = 0``."""
    return m / (1.0 - beta ** t)  # (.., d_out, d_in)


def discount_weights(beta: float, t: int) -> list:
    r"""Weights :math:`\beta^{t-s}` of ``y_1 .. y_t`` (Python floats; ``0 ** 0 = 1``)."""
    return [beta ** (t - s) for s in range(1, t + 1)]


def zero_prehistory_weight(beta: float, t: int) -> float:
    r""":math:`c_0 = \sum_{s \le 0} \beta^{t-s} = \beta^t / (1-\beta)`: the weight of a past of zero gradients."""
    return beta ** t / (1.0 - beta)


def discounted_least_squares_problem(history, beta: float, *, zero_prehistory: bool = False) -> Problem:
    r"""The memory's problem :math:`\min_x F_t(x)` over ``history = (y_1, ..., y_t)`` for the iterative solvers.

    Parameters
    ----------
    history : sequence of arrays ``[..., d_out, d_in]``, length ``t >= 1``
    beta : float in ``[0, 1]``
        Discount; ``1`` is the undiscounted memory.
    zero_prehistory : bool
        Add :math:`\tfrac12 c_0 \|x\|^2` with :math:`c_0 = \beta^t/(1-\beta)` (requires ``beta < 1``).

    Notes
    -----
    .. math::

        \nabla F_t(x) = \sum_s \beta^{t-s} (x - y_s) + c_0 x, \qquad
        L = \mu = \sum_s \beta^{t-s} + c_0 .
    """
    if len(history) == 0:
        raise ValueError("history must hold at least one gradient")
    if zero_prehistory and not beta < 1.0:
        raise ValueError(f"zero_prehistory needs beta < 1 (the weight beta^t/(1-beta)); got beta = {beta}")
    t = len(history)
    first = history[0]
    xp = namespace_of(first)
    H = xp.stack(list(history), axis=0)  # (t, .., d_out, d_in)
    w = xp.asarray(discount_weights(beta, t), dtype=first.dtype)  # (t,)
    w = xp.reshape(w, (t,) + (1,) * first.ndim)  # (t, 1, .., 1)
    c0 = zero_prehistory_weight(beta, t) if zero_prehistory else 0.0
    total = sum(discount_weights(beta, t)) + c0  # L = mu (Python float)

    def value(x):
        d = x[None, ...] - H  # (t, .., d_out, d_in)
        per = xp.sum(w * d * d, axis=0)  # (.., d_out, d_in)
        return 0.5 * xp.sum(per, axis=(-2, -1)) + 0.5 * c0 * xp.sum(x * x, axis=(-2, -1))  # (..,)

    def grad(x):
        return xp.sum(w * (x[None, ...] - H), axis=0) + c0 * x  # (.., d_out, d_in)

    scale = xp.asarray(total, dtype=first.dtype)
    return Problem(xp, xp.zeros_like(first), value, grad, scale, scale, quadratic=True)


def discounted_least_squares_argmin(history, beta: float, *, zero_prehistory: bool = False, rtol=None):
    """Minimise :math:`F_t` by conjugate gradient from zero; returns ``(x, SolveReport)``.

    The Hessian is a multiple of the identity (condition 1), so the default
    tolerance ``default_rtol`` (``1e-12`` in float64) is met after one CG step.
    """
    prob = discounted_least_squares_problem(history, beta, zero_prehistory=zero_prehistory)
    rtol = default_rtol(history[0].dtype, prob.xp) if rtol is None else rtol
    return conjugate_gradient(prob, rtol=rtol)


def plain_sum_argmin(history):
    r"""The paper's plain-sum memory :math:`\operatorname{argmin}_x \sum_s \|x - y_s\|^2`: the arithmetic mean (``beta = 1``)."""
    return discounted_least_squares_argmin(history, 1.0)


__all__ = [
    "ema_step",
    "bias_corrected",
    "discount_weights",
    "zero_prehistory_weight",
    "discounted_least_squares_problem",
    "discounted_least_squares_argmin",
    "plain_sum_argmin",
]
