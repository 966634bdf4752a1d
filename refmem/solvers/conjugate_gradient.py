"""Conjugate gradient for a batch of strongly convex quadratics, from gradients alone."""

from __future__ import annotations

from ..linalg import broadcast_like, fro_norm, inner
from ..validation import expand_matrix
from .problem import Problem, max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


def conjugate_gradient(problem: Problem, *, rtol: float, max_iter: int | None = None):
    r"""Minimise a quadratic ``f`` by conjugate gradient.

    The Hessian is never formed: for a quadratic, :math:`A P = \nabla f(P) - \nabla f(0)`,
    so CG needs only the gradient callable. Each batch element runs its own
    CG (its own :math:`\alpha, \beta`); finished elements stop moving.

    Parameters
    ----------
    problem : Problem
        ``problem.quadratic`` must be true.
    rtol : float
        Stop when, for every batch element, the true gradient norm is at most
        :math:`\mathrm{rtol}\cdot\max(\mu\|X\|, \|\nabla f(X_0)\|)`.
    max_iter : int, optional
        Default: ``4 * a * b + 20`` (CG terminates in ``a*b`` steps in exact arithmetic).

    Returns
    -------
    X, SolveReport
    """
    rtol = check_rtol(rtol)
    if max_iter is not None:
        max_iter = check_count(max_iter, "max_iter")
    if not problem.quadratic or problem.prox is not None:
        raise ValueError("conjugate_gradient: problem must be a smooth quadratic")
    xp = problem.xp
    X = problem.x0
    n = X.shape[-1] * X.shape[-2]
    if max_iter is None:
        max_iter = 4 * n + 20
    g_zero = problem.grad(xp.zeros_like(X))  # grad f(0) = -b
    g_zero_norm = fro_norm(g_zero, xp)  # (..,)
    mu = broadcast_like(xp.asarray(problem.mu, dtype=X.dtype), g_zero_norm, xp)  # (..,)

    def A(P):
        # Hessian-vector product of a quadratic, A P = (grad f(s P) - grad f(0)) / s for any s > 0.
        # At s = 1 the difference cancels when ||A P|| << ||grad f(0)|| (a small P, or a small mu:
        # eta = 1e6 leaves one correct digit); s = ||grad f(0)|| / (mu ||P||) makes ||A sP|| >= ||grad f(0)||,
        # so the difference keeps full relative precision.
        size = mu * fro_norm(P, xp)  # (..,) lower bound on ||A P||
        ok = (size > 0) & (g_zero_norm > size)
        s = xp.where(ok, g_zero_norm / xp.where(ok, size, xp.ones_like(size)), xp.ones_like(size))  # (..,)
        S = expand_matrix(s, xp)
        return (problem.grad(S * P) - g_zero) / S

    R = -problem.grad(X)  # residual b - A X
    r0 = fro_norm(R, xp)
    P = R
    rr = inner(R, R, xp)
    for it in range(max_iter + 1):
        if it % 8 == 0 or it == max_iter:  # refresh with the true gradient to stop on the truth
            R = -problem.grad(X)
            rr = inner(R, R, xp)
        rel = xp.sqrt(rr) / problem.scale(X, r0)
        if max_float(rel, xp) <= rtol:
            rel_true = fro_norm(problem.grad(X), xp) / problem.scale(X, r0)
            if max_float(rel_true, xp) <= rtol:
                return X, SolveReport("iterative", "cg", it, max_float(rel_true, xp), rtol, True)
            R = -problem.grad(X)
            rr = inner(R, R, xp)
            P = R
        if it == max_iter:
            break
        AP = A(P)
        pAp = inner(P, AP, xp)
        active = (pAp > 0) & (rr > 0)
        alpha = xp.where(active, rr / xp.where(active, pAp, xp.ones_like(pAp)), xp.zeros_like(pAp))
        X = X + expand_matrix(alpha, xp) * P
        R = R - expand_matrix(alpha, xp) * AP
        rr_new = inner(R, R, xp)
        beta = xp.where(active, rr_new / xp.where(active, rr, xp.ones_like(rr)), xp.zeros_like(rr))
        P = R + expand_matrix(beta, xp) * P
        rr = rr_new
    raise ConvergenceError(SolveReport("iterative", "cg", max_iter, max_float(rel, xp), rtol, False),
                           "the quadratic may be singular or badly conditioned")
