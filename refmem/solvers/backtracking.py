r"""Proximal gradient with per-problem backtracking: for smooth parts whose gradient is only locally Lipschitz.

:func:`~refmem.solvers.proximal_gradient` and :func:`~refmem.solvers.gradient_descent`
take their step from a global Lipschitz bound ``L``. Some stated objectives
have none: ``||r||_p^p`` with ``p > 2``, the lq retention with ``q < 2``, the
dual of an lp level. This solver needs no bound: every batch element keeps
its own step, halved until the sufficient-decrease test holds, and grown
again after each accepted step.
"""

from __future__ import annotations

import math

from ..linalg import broadcast_like, fro_norm, inner
from ..validation import expand_matrix
from .problem import Problem, max_float
from .options import check_count, check_factor, check_rtol
from .report import ConvergenceError, SolveReport
from .step_halving import halve_until_accepted


def _initial_step(problem: Problem):
    xp = problem.xp
    L = xp.asarray(problem.lipschitz)
    finite = xp.isfinite(L) & (L > 0)
    return xp.where(finite, 1.0 / xp.where(finite, L, xp.ones_like(L)), xp.ones_like(L))


def backtracking_proximal_gradient(problem: Problem, *, rtol: float, max_iter: int = 20000,
                                   grow: float = 1.5, max_halvings: int = 200):
    r"""Minimise ``f + h`` (``h`` optional, given by its prox) with backtracking steps.

    Parameters
    ----------
    problem : Problem
        ``problem.lipschitz`` is only the first guess of ``1/step`` (``inf`` allowed: start at 1).
    rtol : float
        Stop when :math:`\|G_t(X)\| \le \mathrm{rtol}\cdot\max(\mu\|X^+\|, \|G_{t_0}(X_0)\|)`.
    max_iter : int
    grow : float
        Step growth factor after a step accepted at once (only while the test is above rounding).
    max_halvings : int
        Per iteration; running out means the objective is not smooth where the iterate is.

    Notes
    -----
    Step: :math:`X^+ = \operatorname{prox}_{t h}(X - t\nabla f(X))`, accepted when the descent
    lemma :math:`f(X^+) \le f(X) + \langle\nabla f(X), D\rangle + \frac{1}{2t}\|D\|^2`
    (:math:`D = X^+ - X`; no rounding allowance: near the minimiser it would pass steps that
    are too long) holds, or its gradient form

    .. math::

        \langle \nabla f(X^+) - \nabla f(X), X^+ - X\rangle \le \frac{1}{2t}\|X^+ - X\|^2
        + 8\,\varepsilon\,(\|\nabla f(X)\| + \|\nabla f(X^+)\|)\,\|X^+ - X\|,

    which implies the descent lemma for convex ``f`` and, unlike a test on values of ``f``,
    does not drown in rounding near the minimiser (the allowance is the rounding of the
    gradients; both derived in :func:`~refmem.solvers.step_halving.halve_until_accepted`,
    the search this solver shares with :func:`~refmem.solvers.mirror_descent`). Optimality measure: the
    gradient mapping :math:`G_t(X) = (X - X^+)/t`, zero exactly at a minimiser
    of ``f + h`` for any ``t > 0``.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    max_halvings = check_count(max_halvings, "max_halvings", minimum=1)
    grow = check_factor(grow, "grow", above=1.0)
    xp = problem.xp
    X = problem.x0
    t = broadcast_like(_initial_step(problem), fro_norm(X, xp), xp)  # (..,) one step per problem

    def candidate(X, G, t):
        Y = X - expand_matrix(t, xp) * G
        return Y if problem.prox is None else problem.prox(Y, t)  # prox takes the batch-shaped step

    r0 = None
    rel = math.inf
    G = problem.grad(X)
    fX = problem.value(X)
    mu = broadcast_like(xp.asarray(problem.mu, dtype=X.dtype), t, xp)  # (..,)
    L = xp.asarray(problem.lipschitz, dtype=X.dtype) + xp.zeros_like(t)
    known_L = xp.isfinite(L) & (L > 0) & (mu > 0)
    inv_kappa_L = xp.where(known_L, mu / xp.where(known_L, L, xp.ones_like(L)), xp.ones_like(L))
    for it in range(max_iter + 1):
        # the descent lemma (exact for t <= 1/L) or its gradient form (robust to rounding), per problem
        accepted = halve_until_accepted(X, G, t, xp, propose=lambda t: candidate(X, G, t), grad=problem.grad,
                                        divergence=lambda Xn, D, t: inner(D, D, xp) / (2 * t),
                                        max_halvings=max_halvings, value=problem.value, fX=fX)
        if accepted is None:
            raise ConvergenceError(SolveReport("iterative", "prox_grad_bt", it, rel, rtol, False),
                                   "backtracking found no acceptable step; is the objective smooth and finite here?")
        Xn, Gn, fn, t = accepted.X, accepted.G, accepted.f, accepted.t
        # without a prox the gradient mapping is the gradient itself: measured directly, it cannot vanish
        # by rounding when t G falls below the spacing of X (a step too small to move X is not a minimiser)
        gmap = fro_norm(G, xp) if problem.prox is None else fro_norm(X - Xn, xp) / t  # (..,)
        if r0 is None:
            r0 = gmap
            t_min = t
        t_min = xp.minimum(t_min, t)
        # without a global L, 1/t_min stands in for it in the scale's 1/kappa = mu t (Problem.scale)
        inv_kappa = xp.where(known_L, inv_kappa_L, xp.minimum(mu * t_min, xp.ones_like(t_min)))
        rel = max_float(gmap / problem.scale(Xn, r0, inv_kappa), xp)
        X, G, fX = Xn, Gn, fn
        if rel <= rtol:
            return X, SolveReport("iterative", "prox_grad_bt", it + 1, rel, rtol, True)
        t = xp.where(accepted.may_grow, grow * t, t)
    raise ConvergenceError(SolveReport("iterative", "prox_grad_bt", max_iter, rel, rtol, False),
                           "raise max_iter or check the problem's conditioning")
