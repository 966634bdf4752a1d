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

    which implies the descent lemma for convex ``f``
    (:math:`f(X^+) - f(X) - \langle\nabla f(X), D\rangle \le \langle\nabla f(X^+) - \nabla f(X), D\rangle`)
    and, unlike a test on values of ``f``, does not drown in rounding near the
    minimiser (the allowance is the rounding of the gradients). Optimality measure: the
    gradient mapping :math:`G_t(X) = (X - X^+)/t`, zero exactly at a minimiser
    of ``f + h`` for any ``t > 0``.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    max_halvings = check_count(max_halvings, "max_halvings", minimum=1)
    grow = check_factor(grow, "grow", above=1.0)
    xp = problem.xp
    X = problem.x0
    eps = float(xp.finfo(X.dtype).eps)
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
        Xn = candidate(X, G, t)
        first = None
        for _ in range(max_halvings):
            D = Xn - X
            Gn = problem.grad(Xn)
            fn = problem.value(Xn)
            quad = inner(D, D, xp) / (2 * t)
            noise = 8 * eps * (fro_norm(G, xp) + fro_norm(Gn, xp)) * fro_norm(D, xp)
            # the descent lemma itself (exact for t <= 1/L), or its gradient form (robust to rounding);
            # nan/inf (overflow from a too long step) compare False
            ok = (fn <= fX + inner(G, D, xp) + quad) | (inner(Gn - G, D, xp) <= quad + noise)
            if first is None:
                # grow the step only where it was accepted at once and the test was above rounding:
                # near the minimiser the test cannot see a too long step, so the step must not grow there
                first = ok & (quad > 1e3 * noise)
            if bool(xp.all(ok)):
                break
            t = xp.where(ok, t, 0.5 * t)
            Xn = xp.where(expand_matrix(ok, xp), Xn, candidate(X, G, t))
        else:
            raise ConvergenceError(SolveReport("iterative", "prox_grad_bt", it, rel, rtol, False),
                                   "backtracking found no acceptable step; is the objective smooth and finite here?")
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
        t = xp.where(first, grow * t, t)
    raise ConvergenceError(SolveReport("iterative", "prox_grad_bt", max_iter, rel, rtol, False),
                           "raise max_iter or check the problem's conditioning")
