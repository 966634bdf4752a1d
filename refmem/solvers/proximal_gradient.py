"""Proximal gradient (ISTA) for smooth + non-smooth objectives such as an l1 penalty."""

from __future__ import annotations

from ..linalg import fro_norm
from ..validation import expand_matrix
from .problem import Problem, max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


def proximal_gradient(problem: Problem, *, rtol: float, max_iter: int = 20000):
    r"""Minimise ``f + h`` with ``f`` smooth and ``h`` given by its prox.

    Iteration: :math:`X^+ = \operatorname{prox}_{h/L}(X - \nabla f(X)/L)`.
    Optimality measure: the gradient mapping :math:`G(X) = L (X - X^+)`,
    zero exactly at a minimiser; stop when
    :math:`\|G\| \le \mathrm{rtol}\cdot\max(\mu\|X\|, \|G(X_0)\|)`.
    Without a prox this is gradient descent.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    xp = problem.xp
    L = problem.lipschitz
    L = xp.where(L > 0, L, xp.ones_like(L))
    t = 1.0 / L

    def step(X):
        Y = X - expand_matrix(t, xp) * problem.grad(X)
        return Y if problem.prox is None else problem.prox(Y, t)

    X = problem.x0
    Xn = step(X)
    r0 = fro_norm(expand_matrix(L, xp) * (X - Xn), xp)
    for it in range(max_iter + 1):
        r = fro_norm(expand_matrix(L, xp) * (X - Xn), xp)
        rel = r / problem.scale(Xn, r0)
        if max_float(rel, xp) <= rtol:
            return Xn, SolveReport("iterative", "prox_grad", it + 1, max_float(rel, xp), rtol, True)
        if it == max_iter:
            break
        X, Xn = Xn, step(Xn)
    raise ConvergenceError(SolveReport("iterative", "prox_grad", max_iter, max_float(rel, xp), rtol, False))
