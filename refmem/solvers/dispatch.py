r"""One entry point from a stated :class:`Problem` to a certified minimiser: solver choice, tolerance, checks.

Both :func:`refmem.level.solve` and the deep memory's step go through
:func:`minimize`, so every iterative solve in refmem picks its solver, derives
its tolerance and certifies its answer the same way.

What "converged" certifies (MATH.md 1a)
---------------------------------------
Every solver stops when its optimality measure (gradient, or gradient mapping)
is at most ``rtol`` times the problem's scale
:math:`\max(\mu\|X\|, \|G_0\|/\kappa)` (:meth:`Problem.scale`). With
:math:`\mu`-strong convexity that bounds the distance to the minimiser:

.. math::

    \|X - X^\star\| \le \frac{\|G\|}{\mu}
    \le \mathrm{rtol}\cdot\max\big(\|X\|, \|X_0 - X^\star\|\big),

because :math:`\|G_0\| \le L\|X_0 - X^\star\|`. The tolerance is
``1e-12`` in float64 (``1e-5`` in float32), raised to the rounding floor
``32 eps kappa`` of a gradient computed at the minimiser when the condition
number :math:`\kappa = L/\mu` demands it, but never past :func:`~refmem.solvers.problem.rtol_ceiling` (``sqrt(eps)``):
a problem whose conditioning needs more is refused with a
:class:`ConvergenceError` that gives the condition estimate and what would
help, instead of a "converged" answer with no correct digits.

Where the curvature can vanish (``mu = 0``, the lq retention with ``q > 2``) no
gradient test bounds the distance; :func:`~refmem.solvers.newton_fd` (the
solver those problems ask for) certifies the same bound from the lengths of
its Newton steps and their measured contraction instead (MATH.md 1a).
"""

from __future__ import annotations

import math

from .options import check_count, check_rtol
from .problem import Problem, default_rtol, max_float, rtol_ceiling
from .report import ConvergenceError, SolveReport


def condition_estimate(prob: Problem) -> float:
    r"""The largest :math:`\kappa = L/\mu` over the batch (``inf`` when ``mu = 0`` or ``L`` is unknown)."""
    xp = prob.xp
    L0 = xp.asarray(prob.lipschitz)
    mu0 = xp.asarray(prob.mu, dtype=L0.dtype)
    L = L0 + xp.zeros_like(mu0)  # (..,) both broadcast to the batch (zeros_like: L may be inf)
    mu = mu0 + xp.zeros_like(L0)
    pos = mu > 0
    kappa = xp.where(pos, L / xp.where(pos, mu, xp.ones_like(mu)), xp.full_like(mu, math.inf))
    k = max_float(kappa, xp)
    return k if k == k else math.inf


def certified_rtol(prob: Problem, dtype, rtol=None, *, solver: str = "") -> float:
    r"""The tolerance of a solve: ``rtol`` (default :func:`default_rtol`) if rounding allows it, else an error.

    The gradient of ``f`` computed at the exact minimiser has size about
    :math:`\varepsilon L\|X\|`, i.e. :math:`\varepsilon\kappa` relative to
    :math:`\mu\|X\|`: no stopping test can certify less than ``32 eps kappa``.
    The default tolerance rises to that floor; past :func:`rtol_ceiling` (or
    past a tolerance the caller asked for) the solve is refused.

    Raises
    ------
    ConvergenceError
        The requested accuracy cannot be certified at this conditioning.
    """
    xp = prob.xp
    eps = float(xp.finfo(dtype).eps)
    kappa = condition_estimate(prob)
    floor = 32 * eps * kappa if math.isfinite(kappa) else 0.0  # mu unknown: nothing to derive from
    wanted = default_rtol(dtype, xp) if rtol is None else check_rtol(rtol)
    limit = wanted if rtol is not None else rtol_ceiling(dtype, xp)
    if floor > limit:
        report = SolveReport("iterative", solver or "any", 0, math.inf, wanted, False)
        raise ConvergenceError(report, (
            f"cannot certify a relative accuracy of {limit:.1e} at condition estimate kappa = L/mu = {kappa:.2e} "
            f"(the gradient's rounding alone is about 32 eps kappa = {floor:.1e} relative); "
            "a smaller step size eta, keys of smaller norm, or method='closed' would help"))
    return max(wanted, floor)


GRADIENT_CERTIFIED = ("gd", "cg", "prox_grad", "prox_grad_bt", "mirror_descent")
"""Solvers whose stopping test is a gradient (or gradient mapping): they certify a distance only through ``mu > 0``."""


def require_curvature(prob: Problem, solver: str, tol: float) -> None:
    r"""Refuse a gradient-certified solve of a problem with ``mu = 0`` somewhere in the batch (MATH.md 1a).

    Without strong convexity a gradient of any size is compatible with any distance to the
    minimiser (:math:`f = x^4`: :math:`|f'| = 10^{-12}` at :math:`|x| = 10^{-4}`), so such a
    stopping test certifies nothing about the state.

    Raises
    ------
    ConvergenceError
        ``mu <= 0`` for some problem; the message names the solver that certifies there.
    """
    xp = prob.xp
    mu = xp.asarray(prob.mu)
    if bool(xp.all(mu > 0)):
        return
    raise ConvergenceError(SolveReport("iterative", solver, 0, math.inf, tol, False), (
        f"{solver} stops on a small gradient, which bounds the distance to the minimiser only through the "
        f"strong convexity mu, and this problem has mu = {-max_float(-mu, xp):.1e} (no strong "
        "convexity: e.g. the lq retention with q > 2); solver='newton_fd' certifies the state by its Newton "
        "steps instead"))


def default_solver(prob: Problem) -> str:
    """The problem's preferred solver if any; else ``"cg"`` for smooth quadratics, ``"prox_grad"`` with a non-smooth part, else ``"gd"``."""
    if prob.preferred_solver is not None:
        return prob.preferred_solver
    if prob.prox is not None:
        return "prox_grad"
    return "cg" if prob.quadratic else "gd"


def minimize(prob: Problem, *, solver: str | None = None, rtol=None, max_iter=None):
    """Minimise ``prob`` with the named (or default) solver at a certified tolerance; return ``(X, SolveReport)``.

    Parameters
    ----------
    prob : Problem
    solver : str, optional
        A name in :data:`refmem.solvers.SOLVERS` or ``"gd-backtracking"``; default :func:`default_solver`.
    rtol : float in (0, 1), optional
        Default :func:`~refmem.solvers.default_rtol`, raised to the rounding floor (:func:`certified_rtol`).
    max_iter : int >= 0, optional
        The solver's default when omitted.

    Raises
    ------
    ConvergenceError
        The tolerance cannot be certified at the problem's conditioning, the
        solver did not reach it, or the answer is not finite (overflow).
    """
    from . import SOLVERS  # the registry imports this module's users

    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver must be a solver name (str) or None; got {type(solver).__name__}")
    if rtol is not None:
        rtol = check_rtol(rtol)
    kwargs = {}
    if max_iter is not None:
        kwargs["max_iter"] = check_count(max_iter, "max_iter")
    name = solver or default_solver(prob)
    if name == "gd-backtracking":
        name, kwargs["backtracking"] = "gd", True
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS) + ['gd-backtracking']}; got {solver!r}")
    tol = certified_rtol(prob, prob.x0.dtype, rtol, solver=name)
    if name in GRADIENT_CERTIFIED:
        require_curvature(prob, name, tol)
    X, report = SOLVERS[name](prob, rtol=tol, **kwargs)
    xp = prob.xp
    if not bool(xp.all(xp.isfinite(X))):
        raise ConvergenceError(SolveReport("iterative", report.solver, report.iterations, math.inf, tol, False),
                               "the minimiser is not finite in this precision (overflow); rescale the inputs")
    return X, report
