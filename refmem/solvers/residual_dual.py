r"""The Fenchel dual of a level whose objective is a separable function of the residual.

For the implicit step of an objective :math:`l(M) = \sum_i \phi(r_i)`,
:math:`r = M k - v`, with ``phi`` not smooth enough for gradient steps
(``|z|^p`` with ``1 <= p < 2``: gradient not Lipschitz, or only a
subgradient at ``r_i = 0`` for ``p = 1``), the primal

.. math::

    \min_M\; \sum_i \phi\big((M k - v)_i\big) + \mathrm{Ret}(M, M_t)

is solved through its dual in the multiplier :math:`y \in \mathbb{R}^{d_v}` of
the split :math:`z = M k - v`:

.. math::

    \min_y\; D(y) = \sum_i \phi^*(y_i) + \langle y, v\rangle
    - \min_M \big[\langle y k^T, M\rangle + \mathrm{Ret}(M, M_t)\big],
    \qquad \nabla D(y) = \nabla\phi^*(y) + v - M(y)\,k,

with :math:`M(y) = \operatorname{argmin}_M \langle y k^T, M\rangle + \mathrm{Ret}(M, M_t)`,
the retention's *explicit* step with gradient :math:`y k^T` (verified on its
own against its iterative solve). Because the retention is strongly convex,
``D`` is smooth apart from :math:`\phi^*`, which is either smooth (``p > 1``:
:math:`\phi^*(y) = (p-1)(|y|/p)^{p/(p-1)}`, exponent > 2) or the indicator of a
box (``p = 1``: prox = clipping). ``D`` is minimised by
:func:`~refmem.solvers.newton_fd` when it is smooth (``p > 1``) and by
:func:`~refmem.solvers.backtracking_proximal_gradient` (projected gradient) for
the box; the primal minimiser is :math:`M(y^\star)` (strong duality).

Optimality measure: the gradient mapping of ``D``; the primal error is at most
:math:`\|k\|/\mu_R` times the dual error, and the dual error at most the gradient
mapping over :math:`\|k\|^2 / L_R` (``D``'s strong convexity from the
retention's smoothness).

Nothing here knows the objective's closed-form prox: the dual uses
:math:`\phi^*` and the retention's explicit step only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..linalg import broadcast_like, fro_norm, matvec, outer, sq_norm
from ..validation import expand_matrix
from .backtracking import backtracking_proximal_gradient
from .mirror_descent import mirror_descent
from .newton_fd import newton_fd
from .problem import Problem, max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


@dataclass(frozen=True)
class ResidualConjugate:
    r"""The conjugate :math:`\phi^*` of a separable residual objective, acting on ``y [..., d_v, 1]``.

    Attributes
    ----------
    value : callable ``y -> [...]``
        :math:`\sum_i \phi^*(y_i)` over its smooth part (0 for an indicator).
    grad : callable ``y -> y-shaped``
        Gradient of that smooth part.
    prox : callable ``(y, t[...]) -> y`` or None
        Prox of the non-smooth part (an indicator: the projection), or None.
    start : callable ``r [..., d_v] -> y [..., d_v]``
        A dual starting point from a residual (:math:`\phi'(r)`).
    """

    value: Callable
    grad: Callable
    prox: Callable | None
    start: Callable


@dataclass(frozen=True)
class ResidualDual:
    r"""What :func:`residual_dual` needs besides the primal :class:`Problem`.

    Attributes
    ----------
    k, v : arrays ``[..., d_k]``, ``[..., d_v]``
    conjugate : ResidualConjugate
    primal_of : callable ``W [..., d_v, d_k] -> M``
        :math:`\operatorname{argmin}_M \langle W, M\rangle + \mathrm{Ret}(M, M_t)`.
    retention_value : callable ``M -> [...]``
        :math:`\mathrm{Ret}(M, M_t)` including any non-smooth part.
    retention_lipschitz : array ``[...]`` or 0-d
        Lipschitz constant of the retention's gradient (``inf`` if none).
    M_t : array ``[..., d_v, d_k]``
    retention_mu : array ``[...]`` or 0-d
        Strong-convexity modulus of the retention (0 if unknown): ``||k||^2 / mu_R`` bounds
        the Lipschitz constant of the dual's smooth part when ``phi^*`` is an indicator.
    primal_solver : str or None
        The retention's own solver (``"newton_fd"`` for lq, ``"mirror_descent"`` for KL): it
        certifies the primal answer, warm-started at ``M(y)``, where ``L_R`` is unknown or
        ``mu_R = 0`` and the dual's accuracy bounds nothing (:func:`residual_dual`).
    """

    k: object
    v: object
    conjugate: ResidualConjugate
    primal_of: Callable
    retention_value: Callable
    retention_lipschitz: object
    M_t: object
    retention_mu: object = 0.0
    primal_solver: str | None = None


def dual_problem(xp, dual: ResidualDual) -> Problem:
    """The dual ``D(y)`` of a residual-separable level as a :class:`Problem` in ``y [..., d_v, 1]``."""
    k, v, cj = dual.k, dual.v, dual.conjugate
    s = sq_norm(k, xp)  # (..,)
    L_R = broadcast_like(xp.asarray(dual.retention_lipschitz), s, xp)
    finite = xp.isfinite(L_R) & (L_R > 0)
    # D is (s / L_R)-strongly convex and (s / mu_R)-smooth apart from phi*; use the first for the stopping scale
    mu = xp.where(finite, s / xp.where(finite, L_R, xp.ones_like(L_R)), xp.zeros_like(s))

    def M_of(y):
        return dual.primal_of(outer(y[..., 0], k))  # W = y k^T: (.., d_v) x (.., d_k) -> (.., d_v, d_k)

    def value(y):
        M = M_of(y)
        Mk = matvec(M, k)  # (.., d_v)
        return (cj.value(y) + xp.sum(y[..., 0] * (v - Mk), axis=-1) - dual.retention_value(M))

    def grad(y):
        return cj.grad(y) + (v - matvec(M_of(y), k))[..., None]  # (.., d_v, 1)

    r_t = matvec(dual.M_t, k) - v  # (.., d_v)
    y0 = cj.start(r_t)[..., None]  # (.., d_v, 1)
    if cj.prox is not None:
        # a box (p = 1): start at y = 0, where grad D = v - M(0) k is the residual of the retained state, the
        # natural scale of the stopping test; phi'(r_t) = sign(r_t) makes the first measure about eta ||k||^2
        # times larger, so large that no relative test could express the primal target
        y0 = 0 * y0
    # with phi* an indicator the smooth part is <y, v> + R*(-y k^T): gradient (||k||^2 / mu_R)-Lipschitz
    mu_R = broadcast_like(xp.asarray(dual.retention_mu, dtype=s.dtype), s, xp)
    L = xp.full_like(s, math.inf)
    if cj.prox is not None:
        L = xp.where(mu_R > 0, s / xp.where(mu_R > 0, mu_R, xp.ones_like(mu_R)), L)
    return Problem(xp, y0, value, grad, L, mu, cj.prox, None, False)


def residual_dual(problem: Problem, *, rtol: float, max_iter: int = 20000):
    r"""Solve a residual-separable level through its Fenchel dual (module docstring); return ``(M, SolveReport)``.

    Notes
    -----
    The dual's accuracy bounds the primal error only through the retention's constants
    (:func:`_primal_shortfall`: ``L_R`` finite, ``mu_R > 0``). Where either is missing (the lq
    retention: ``L_R = inf`` for ``q < 2``, ``mu_R = 0`` for ``q > 2``; KL: ``L_R = inf``) the map
    :math:`y \mapsto M(y)` has no known Lipschitz constant, and a dual certified to ``rtol`` left
    the state 4e-4 off under a stated 1e-12 (lq, ``q = 3``, ``p = 1.5``, keys x1e6). There the dual's
    answer is only a warm start: the retention's own solver (``primal_solver``) certifies the primal
    (MATH.md 1a); with ``p = 1`` the primal is not smooth, no such solver applies, and the solve raises.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    dual = getattr(problem, "dual", None)
    if dual is None:
        raise ValueError("residual_dual: the problem carries no dual structure (only implicit steps of "
                         "objectives with a conjugate, such as lp, have one)")
    xp = problem.xp
    dp = dual_problem(xp, dual)
    eps = float(xp.finfo(problem.x0.dtype).eps)
    rtol_dual = rtol
    iterations = 0
    bound_known = _primal_bound_known(xp, dual)  # the retention's constants: fixed for the whole solve
    for _ in range(6):  # each round tightens the dual tolerance by the shortfall of the primal certificate
        y, rep = _solve_dual(dp, rtol_dual, max_iter)
        iterations += rep.iterations
        M = broadcast_like(dual.primal_of(outer(y[..., 0], dual.k)), problem.x0, xp)  # the problem's batch shape
        if not bound_known:  # the dual's accuracy bounds nothing here: one dual solve is only a warm start
            return _certify_on_the_primal(problem, dp, dual, y, M, rtol, iterations)
        shortfall = _primal_shortfall(xp, dp, dual, y, M, rtol)
        if shortfall <= 1.0:
            return M, SolveReport("iterative", "residual_dual", iterations, rep.residual, rtol, True)
        rtol_dual = rtol_dual / (2 * min(shortfall, 1e6))
        if rtol_dual < eps:  # below one ulp of the dual's own scale no stopping test can be met
            raise ConvergenceError(
                SolveReport("iterative", "residual_dual", iterations, rtol * shortfall, rtol, False),
                f"cannot certify the primal answer: the step maps a dual error to the state amplified by "
                f"||k|| L_R / mu_R, which asks for a dual accuracy of {rtol_dual:.1e} relative, below rounding; "
                "a smaller step size eta, keys of smaller norm, or method='closed' would help")
    raise ConvergenceError(SolveReport("iterative", "residual_dual", iterations, rtol * shortfall, rtol, False),
                           "the primal certificate was not met after tightening the dual tolerance")


PRIMAL_SOLVERS = {"newton_fd": newton_fd, "mirror_descent": mirror_descent}
"""The retentions' own solvers that can certify the primal from the dual's answer (``ResidualDual.primal_solver``)."""


def _primal_bound_known(xp, dual: ResidualDual) -> bool:
    """The retention's constants bound the primal error by the dual's (``L_R`` finite, ``mu_R > 0``, per problem)."""
    L_R = xp.asarray(dual.retention_lipschitz)
    mu_R = xp.asarray(dual.retention_mu)
    return bool(xp.all(xp.isfinite(L_R))) and bool(xp.all(mu_R > 0))


def _certify_on_the_primal(problem: Problem, dp: Problem, dual: ResidualDual, y, M, rtol: float,
                           iterations: int):
    """The primal solved by the retention's own solver from the dual's answer ``M`` (:func:`residual_dual` Notes)."""
    xp = problem.xp
    if dp.prox is not None and bool(xp.all(xp.asarray(dual.retention_mu) > 0)):
        bound = _subgradient_bound(xp, dp, dual, y, M, rtol)
        if bound <= rtol:
            return M, SolveReport("iterative", "residual_dual", iterations, bound, rtol, True)
    if dp.prox is not None or dual.primal_solver not in PRIMAL_SOLVERS:
        raise ConvergenceError(
            SolveReport("iterative", "residual_dual", iterations, math.inf, rtol, False),
            "the dual converged but its accuracy bounds nothing on the state: the retention has no finite "
            "Lipschitz constant or no strong convexity (L_R = inf or mu_R = 0), and with a non-smooth objective "
            "(lp with p = 1) no primal solver can certify the answer; a retention with both constants (local "
            "l2, forget gate, weight decay) or p > 1 would help")
    start = Problem(problem.xp, M, problem.value, problem.grad, problem.lipschitz, problem.mu, problem.prox,
                    problem.h_value, problem.quadratic)
    try:
        X, rep = PRIMAL_SOLVERS[dual.primal_solver](start, rtol=rtol)
    except ConvergenceError as exc:
        r = exc.report
        raise ConvergenceError(SolveReport("iterative", "residual_dual", iterations + r.iterations, r.residual,
                                           rtol, False),
                               f"the dual converged, but {dual.primal_solver} could not certify the state from its "
                               f"answer ({exc})") from None
    return X, SolveReport("iterative", "residual_dual", iterations + rep.iterations, rep.residual, rtol, True)


def _subgradient_bound(xp, dp: Problem, dual: ResidualDual, y, M, rtol: float) -> float:
    r"""Certified relative error of ``M = M(y)`` for a box dual (``p = 1``) from strong convexity alone.

    ``M(y)`` minimises :math:`\langle y k^T, M\rangle + \mathrm{Ret}`, so :math:`-y k^T` is a (projected)
    gradient of the retention at ``M``. If :math:`w \in \partial\phi(r)`, :math:`r = M k - v`, then
    :math:`(w - y) k^T` is a subgradient of the primal at ``M``, and :math:`\mu_R`-strong convexity gives
    :math:`\|M - M^\star\| \le \|w - y\|\,\|k\|/\mu_R`. ``w`` is the box face in the direction of
    ``sign(r_i)``, or ``y_i`` itself where :math:`|r_i|` is within the rounding of :math:`M k - v`
    (:math:`16\varepsilon(|M||k| + |v|)`: a residual at the kink). Returns ``max(bound / target) + 16 eps``
    with the target ``max(||M||, ||M - M_t||)`` (``<= rtol``: certified).
    """
    eps = float(xp.finfo(M.dtype).eps)
    r = matvec(M, dual.k) - dual.v  # (.., d_v)
    tau = 16 * eps * (matvec(xp.abs(M), xp.abs(dual.k)) + xp.abs(dual.v))  # (.., d_v) rounding of r
    one = xp.ones(tuple(y.shape[:-2]), dtype=y.dtype)  # (..,) prox step (a projection ignores it)
    huge = xp.full_like(r, float(xp.finfo(y.dtype).max) / 4)  # (.., d_v)
    face = dp.prox(xp.where(r > 0, huge, -huge)[..., None] + 0 * y, one)  # (.., d_v, 1) the box face toward sign(r)
    w = xp.where((xp.abs(r) > tau)[..., None], face, y)  # (.., d_v, 1)
    knorm = xp.sqrt(sq_norm(dual.k, xp))  # (..,)
    mu_R = broadcast_like(xp.asarray(dual.retention_mu, dtype=knorm.dtype), knorm, xp)
    bound = fro_norm(w - y, xp) * knorm / mu_R  # (..,)
    target = xp.maximum(fro_norm(M, xp), fro_norm(M - dual.M_t, xp))
    target = xp.where(target > 0, target, xp.full_like(target, 1e-300))
    return max_float(bound / target, xp) + 16 * eps  # + the rounding of M(y) itself (a backward-stable explicit step)


def _solve_dual(dp: Problem, rtol: float, max_iter: int):
    try:
        if dp.prox is None:  # smooth dual (p > 1): Newton is immune to the badly scaled retentions (lq)
            return newton_fd(dp, rtol=rtol)
        return backtracking_proximal_gradient(dp, rtol=rtol, max_iter=max_iter)  # a box (p = 1): projected steps
    except ConvergenceError as exc:
        r = exc.report
        raise ConvergenceError(SolveReport("iterative", "residual_dual", r.iterations, r.residual, rtol, False),
                               "the dual did not converge") from None


def _primal_shortfall(xp, dp: Problem, dual: ResidualDual, y, M, rtol: float) -> float:
    r"""How far the primal certificate is from ``rtol``: ``max(bound / target)`` over the batch (``<= 1``: certified).

    The dual ``D`` is :math:`\mu_D = \|k\|^2/L_R`-strongly convex, so
    :math:`\|y - y^\star\| \le 2\|G(y)\|/\mu_D` (``G`` its gradient mapping at step
    :math:`1/L_D`, or its gradient when smooth), and the primal map ``M(y)`` is
    :math:`\|k\|/\mu_R`-Lipschitz: :math:`\|M - M^\star\| \le 2 L_R \|G(y)\| / (\mu_R \|k\|)`. The
    target is ``rtol * max(||M||, ||M - M_t||)``, what the other solvers certify. Where ``L_R``
    is unknown (``inf``, e.g. lq with ``q < 2``) or ``mu_R = 0`` there is no such bound and the dual's
    own test stands (returns 0).
    """
    G = dp.grad(y)  # (.., d_v, 1)
    if dp.prox is not None:
        L = xp.asarray(dp.lipschitz)
        t = 1.0 / xp.where(xp.isfinite(L) & (L > 0), L, xp.ones_like(L))  # (..,)
        G = (y - dp.prox(y - expand_matrix(t, xp) * G, t)) / expand_matrix(t, xp)
    gmap = fro_norm(G, xp)  # (..,)
    knorm = xp.sqrt(sq_norm(dual.k, xp))  # (..,)
    L_R = broadcast_like(xp.asarray(dual.retention_lipschitz, dtype=knorm.dtype), knorm, xp)
    mu_R = broadcast_like(xp.asarray(dual.retention_mu, dtype=knorm.dtype), knorm, xp)
    known = xp.isfinite(L_R) & (mu_R > 0) & (knorm > 0)
    one = xp.ones_like(knorm)
    bound = 2 * xp.where(known, L_R, one) * gmap / (xp.where(known, mu_R, one) * xp.where(known, knorm, one))
    target = rtol * xp.maximum(fro_norm(M, xp), fro_norm(M - dual.M_t, xp))
    target = xp.where(target > 0, target, xp.full_like(target, 1e-300))
    ratio = xp.where(known, bound / target, xp.zeros_like(bound))
    return max_float(ratio, xp)
