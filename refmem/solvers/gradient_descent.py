"""Gradient descent on a smooth, batched objective: fixed step ``1/L`` or backtracking."""

from __future__ import annotations

from ..linalg import fro_norm, inner
from ..validation import expand_matrix
from .problem import Problem, max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


def gradient_descent(problem: Problem, *, rtol: float, max_iter: int = 20000, backtracking: bool = False):
    r"""Minimise a smooth ``f`` by gradient descent.

    Parameters
    ----------
    problem : Problem
        Must have no non-smooth part.
    rtol : float
        Stop when, for every batch element, :math:`\|\nabla f(X)\| \le \mathrm{rtol}\cdot\max(\mu\|X\|, \|\nabla f(X_0)\|)`.
    max_iter : int
    backtracking : bool
        False: fixed step :math:`1/L`. True: Armijo backtracking from step
        :math:`1/L` (doubling after each accepted step), per batch element.

    Returns
    -------
    X, SolveReport

    Notes
    -----
    With step :math:`1/L` and :math:`\mu`-strong convexity the error shrinks
    by :math:`1 - \mu/L` per step, so about :math:`\kappa \ln(1/\mathrm{rtol})` steps.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    if not isinstance(backtracking, bool):
        raise TypeError(f"backtracking must be a bool; got {type(backtracking).__name__}")
    if problem.prox is not None:
        raise ValueError("gradient_descent: problem has a non-smooth part; use proximal_gradient")
    xp = problem.xp
    X = problem.x0
    G = problem.grad(X)
    r0 = fro_norm(G, xp)
    L = problem.lipschitz
    safe = 1.0 / xp.where(L > 0, L, xp.ones_like(L))  # (..,); L = 0 (linear f): no finite minimiser unless Ret adds curvature
    step = safe
    name = "gd-backtracking" if backtracking else "gd"
    eps = float(xp.finfo(X.dtype).eps)
    for it in range(max_iter + 1):
        r = fro_norm(G, xp)
        rel = r / problem.scale(X, r0)
        if max_float(rel, xp) <= rtol:
            return X, SolveReport("iterative", name, it, max_float(rel, xp), rtol, True)
        if it == max_iter:
            break
        if not backtracking:
            X = X - expand_matrix(step, xp) * G
        else:
            fX = problem.value(X)
            gg = inner(G, G, xp)
            # Armijo can only judge a decrease larger than the rounding of f; below that
            # it accepts by luck (e.g. a reflection across the minimiser), so use 1/L there.
            resolvable = 0.5 * safe * gg > 8 * eps * xp.abs(fX)
            t = xp.where(resolvable, step * 2.0, safe)
            for _ in range(60):
                Xn = X - expand_matrix(t, xp) * G
                ok = (problem.value(Xn) <= fX - 0.5 * t * gg) | (t <= safe)
                if bool(xp.all(ok)):
                    break
                t = xp.where(ok, t, xp.maximum(0.5 * t, safe))
            X = Xn
            step = t
        G = problem.grad(X)
    raise ConvergenceError(SolveReport("iterative", name, max_iter, max_float(rel, xp), rtol, False),
                           "raise max_iter or check the problem's conditioning")
