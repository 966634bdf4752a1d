"""Iterative solvers written against the array API alone.

They minimise a stated objective numerically and know nothing of any closed
form: :func:`gradient_descent` (fixed ``1/L`` or backtracking),
:func:`conjugate_gradient` (quadratics), :func:`proximal_gradient` (smooth +
non-smooth with a prox, e.g. l1), :func:`newton_scalar` (separable monotone
1-D equations, safeguarded by bisection), :func:`backtracking_proximal_gradient`
(no global Lipschitz bound needed), :func:`residual_dual` (Fenchel dual of a
residual-separable objective such as lp with p < 2), :func:`mirror_descent`
(rows on a scaled simplex), :func:`newton_fd` (damped Newton, finite-difference
Hessian, for small badly scaled smooth problems). Each returns the solution and a
:class:`SolveReport`; failing to converge raises :class:`ConvergenceError`.

Solver variables are arrays ``[..., a, b]``: the leading axes are a batch of
independent problems, so every scalar of an algorithm (step, CG's alpha and
beta, the stopping test) is per batch element, reduced over the last two axes.
"""

from .backtracking import backtracking_proximal_gradient
from .conjugate_gradient import conjugate_gradient
from .gradient_descent import gradient_descent
from .mirror_descent import mirror_descent
from .newton import newton_scalar
from .newton_fd import newton_fd
from .problem import Problem, default_rtol
from .proximal_gradient import proximal_gradient
from .report import ConvergenceError, SolveReport
from .residual_dual import residual_dual

SOLVERS = {
    "gd": gradient_descent,
    "cg": conjugate_gradient,
    "prox_grad": proximal_gradient,
    "prox_grad_bt": backtracking_proximal_gradient,
    "residual_dual": residual_dual,
    "mirror_descent": mirror_descent,
    "newton_fd": newton_fd,
}

__all__ = [
    "Problem",
    "SolveReport",
    "ConvergenceError",
    "default_rtol",
    "gradient_descent",
    "conjugate_gradient",
    "proximal_gradient",
    "newton_scalar",
    "backtracking_proximal_gradient",
    "residual_dual",
    "mirror_descent",
    "newton_fd",
    "SOLVERS",
]
