r"""Mirror descent (exponentiated gradient) on a scaled simplex, per row, with backtracking.

For objectives restricted to matrices whose rows are positive and sum to a
fixed ``c`` (the KL retention of Memora), the entropy mirror map keeps every
iterate on that set without projections:

.. math::

    X^+ = c\,\operatorname{softmax}_{\text{row}}\big(\log X - t\,\nabla F(X)\big)
    = \operatorname*{argmin}_{Y \in \Delta_c} \langle \nabla F(X), Y\rangle + \tfrac1t \mathrm{KL}(Y \| X).

The step ``t`` is accepted when
:math:`\langle \nabla F(X^+) - \nabla F(X), X^+ - X\rangle \le \frac1t \mathrm{KL}(X^+\|X)`
(plus the rounding of the gradients; :func:`~refmem.solvers.step_halving.halve_until_accepted`,
the search shared with :func:`~refmem.solvers.backtracking_proximal_gradient`), which implies the
relative-smoothness descent condition :math:`F(X^+) \le F(X) + \langle \nabla F(X), X^+ - X\rangle + \frac1t \mathrm{KL}(X^+\|X)`
for convex ``F``; it is halved otherwise, and grown after an accepted step
while the test is above rounding.
"""

from __future__ import annotations

import math

from ..linalg import broadcast_like, fro_norm
from .problem import Problem, max_float
from .options import check_count, check_factor, check_rtol
from .report import ConvergenceError, SolveReport
from .step_halving import halve_until_accepted


def _softmax_rows(Z, xp):
    Z = Z - xp.max(Z, axis=-1, keepdims=True)
    E = xp.exp(Z)
    return E / xp.sum(E, axis=-1, keepdims=True)


def _entropy_gap(w, xp):
    r""":math:`(1+w)\log(1+w) - w \ge 0` elementwise, without cancellation for small ``|w|``.

    ``x * gap(y/x - 1)`` is the generalised KL term :math:`y\log(y/x) - y + x`. For
    :math:`|w| < 10^{-3}` the series :math:`\sum_{n\ge2} (-1)^n w^n/(n(n-1))` to ``n = 7``
    (truncation below :math:`w^6 \le 10^{-18}` relative); otherwise the direct formula, whose
    cancellation costs at most :math:`2\varepsilon/|w| \le 5\cdot10^{-13}` relative.
    """
    small = xp.abs(w) < 1e-3
    ws = xp.where(small, w, xp.zeros_like(w))
    series = ws * ws * (1 / 2 - ws * (1 / 6 - ws * (1 / 12 - ws * (1 / 20 - ws * (1 / 30 - ws / 42)))))
    pos = w > -1  # w = -1: y underflowed to 0, where the term's limit is x (gap 1)
    wd = xp.where(small | ~pos, xp.ones_like(w), w)
    direct = (1 + wd) * xp.log1p(wd) - wd
    return xp.where(small, series, xp.where(pos, direct, xp.ones_like(w)))


def mirror_descent(problem: Problem, *, rtol: float, max_iter: int = 20000, grow: float = 1.5,
                   max_halvings: int = 200):
    r"""Minimise a smooth ``F`` over matrices with positive rows summing to the row sums of ``problem.x0``.

    Parameters
    ----------
    problem : Problem
        Smooth (no ``prox``); ``x0`` strictly positive, its row sums fix ``c``.
        ``problem.lipschitz`` (if finite) gives the first step ``1/(c L)``
        (``L``-smooth in l2 implies ``c L``-smooth relative to the entropy on rows summing
        to ``c``, by Pinsker's inequality); otherwise the first step is 1.
    rtol : float
        Stop when, per problem, :math:`\|X - X^+\|/t \le \mathrm{rtol}\cdot\max(\mu\|X^+\|, r_0)`
        (``r_0`` the first such value): the mirror gradient mapping, zero exactly at a
        minimiser on the simplex (where :math:`\nabla F` is constant along each row).

    Returns
    -------
    X, SolveReport
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    max_halvings = check_count(max_halvings, "max_halvings", minimum=1)
    grow = check_factor(grow, "grow", above=1.0)
    if problem.prox is not None:
        raise ValueError("mirror_descent: the problem must be smooth on the simplex (no prox part)")
    xp = problem.xp
    X = problem.x0
    if not bool(xp.all(X > 0)):
        raise ValueError("mirror_descent: the start x0 must be strictly positive (a point of the simplex)")
    c = xp.sum(X, axis=-1, keepdims=True)  # (.., d_v, 1) row sums, kept by every step
    c_max = xp.max(c, axis=(-2, -1))  # (..,)
    L = broadcast_like(xp.asarray(problem.lipschitz), c_max, xp)
    finite = xp.isfinite(L) & (L > 0)
    t = xp.where(finite, 1.0 / (c_max * xp.where(finite, L, xp.ones_like(L))), xp.ones_like(L))  # (..,)

    tiny = float(xp.finfo(X.dtype).smallest_normal)

    def step(X, G, t):
        Y = c * _softmax_rows(xp.log(X) - t[..., None, None] * G if t.ndim else xp.log(X) - t * G, xp)
        # an entry that underflows to 0 would leave the simplex's interior (log 0): hold it at the smallest
        # normal number, a change of the row sum far below any tolerance
        return xp.maximum(Y, xp.asarray(tiny, dtype=X.dtype))

    def kl(Y, X):
        return xp.sum(X * _entropy_gap(Y / X - 1, xp), axis=(-2, -1))  # rows of Y and X share their sums

    r0 = None
    rel = math.inf
    G = problem.grad(X)
    for it in range(max_iter + 1):
        # relative smoothness in its gradient form, per problem
        accepted = halve_until_accepted(X, G, t, xp, propose=lambda t: step(X, G, t), grad=problem.grad,
                                        divergence=lambda Xn, D, t: kl(Xn, X) / t, max_halvings=max_halvings)
        if accepted is None:
            raise ConvergenceError(SolveReport("iterative", "mirror_descent", it, rel, rtol, False),
                                   "no acceptable step; is the objective smooth on the simplex?")
        Xn, Gn, t = accepted.X, accepted.G, accepted.t
        gmap = fro_norm(X - Xn, xp) / t
        if r0 is None:
            r0 = gmap
        rel = max_float(gmap / problem.scale(Xn, r0), xp)
        X, G = Xn, Gn
        if rel <= rtol:
            return X, SolveReport("iterative", "mirror_descent", it + 1, rel, rtol, True)
        t = xp.where(accepted.may_grow, grow * t, t)
    raise ConvergenceError(SolveReport("iterative", "mirror_descent", max_iter, rel, rtol, False),
                           "raise max_iter or check the problem's conditioning")
