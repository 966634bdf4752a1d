r"""Damped Newton with a finite-difference Hessian, for small smooth problems with degenerate curvature.

Some stated objectives are smooth and convex but badly scaled entrywise,
e.g. the lq retention :math:`\tfrac12\|M\|_q^2`, whose Hessian behaves like
:math:`|M_{ij}|^{q-2}` (vanishing or infinite at small entries): first-order methods
crawl there. Newton's method is invariant to that scaling. The Hessian is
built from the problem's gradient alone, by central differences of the
gradient along every coordinate (all coordinates in one batched call), so
nothing but ``problem.grad`` and ``problem.value`` is used.

The finite-difference Hessian is only a *model*: its error (about ``1e-6``
relative) slows Newton to a linear rate of about that size but does not move
the fixed point, because every step and the stopping test use the exact
gradient. Steps are damped by a backtracking line search; where the model
is not positive definite the step falls back to the gradient direction, and
where a Newton step barely reduces the gradient (a poor model, e.g. at an entry
of :math:`|x|^q`, ``q < 2``, that has to cross zero, where Newton's step
overshoots to :math:`-x`) a backtracking gradient step is tried as well and the
better of the two is kept.

Trial points are speculative: where the curvature vanishes (``q > 2`` at a zero
entry) a full Newton step can land where ``f`` or its gradient overflows. Such a
trial is *rejected* (the step is halved), silently: its value is never used. The
finite-difference Hessian is probed the same way (a non-finite model falls back to
the gradient direction). Every accepted iterate has a finite value and gradient.
"""

from __future__ import annotations

import math

from ..linalg import fro_norm, inner
from ..validation import expand_matrix, floating_point_warnings_silenced
from .problem import Problem, max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


def _fd_hessian(problem: Problem, X, xp):
    """Central-difference Hessian of ``f`` at ``X [..., a, b]``: ``[..., n, n]`` with ``n = a b`` (symmetrised)."""
    a, b = X.shape[-2], X.shape[-1]
    n = a * b
    E = xp.reshape(xp.eye(n, dtype=X.dtype), (n, a, b))  # (n, a, b) unit directions
    E = xp.reshape(E, (n,) + (1,) * (X.ndim - 2) + (a, b))  # (n, 1.., a, b) broadcast over the batch
    eps = float(xp.finfo(X.dtype).eps)
    scale = xp.max(xp.abs(X), axis=(-2, -1), keepdims=True)  # (.., 1, 1)
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    # step per coordinate, relative to that entry (floored at 1e-8 of the largest): an absolute step
    # would straddle the kink of |x|^{q-1} at 0 for entries smaller than itself
    h_entry = eps ** (1 / 3) * xp.maximum(xp.abs(X), 1e-8 * scale)  # (.., a, b)
    h = xp.sum(E * h_entry, axis=(-2, -1), keepdims=True)  # (n, .., 1, 1): step along direction j
    with floating_point_warnings_silenced():  # probes past the overflow edge give a non-finite model: not used
        Gp = problem.grad(X + h * E)  # (n, .., a, b)
        Gm = problem.grad(X - h * E)
        cols = (Gp - Gm) / (2 * h)  # (n, .., a, b): column j = H e_j
    H = xp.reshape(cols, (n,) + tuple(cols.shape[1:-2]) + (n,))  # (n, .., n)
    H = xp.moveaxis(H, 0, -1)  # (.., n, n)
    return 0.5 * (H + xp.matrix_transpose(H))


def _trial(problem: Problem, X, xp):
    """``(f(X), grad f(X), finite)`` at a trial point; ``finite`` is False (per problem) where either overflowed."""
    with floating_point_warnings_silenced():  # a trial that overflows is rejected, never used
        f = problem.value(X)  # (..,)
        G = problem.grad(X)  # (.., a, b)
        finite = xp.isfinite(f) & xp.all(xp.isfinite(G), axis=(-2, -1))
        gnorm = fro_norm(xp.where(expand_matrix(finite, xp), G, xp.zeros_like(G)), xp)
    return f, G, gnorm, finite


def newton_fd(problem: Problem, *, rtol: float, max_iter: int = 200, max_halvings: int = 60):
    r"""Minimise a smooth convex ``f`` by damped Newton steps with a finite-difference Hessian.

    Parameters
    ----------
    problem : Problem
        Smooth (no ``prox``), small (the Hessian is dense ``(a b) x (a b)`` per problem).
    rtol : float
        Stop when :math:`\|\nabla f(X)\| \le \mathrm{rtol}\cdot\max(\mu\|X\|, \|\nabla f(X_0)\|)`,
        the same measure as :func:`~refmem.solvers.gradient_descent`.

    Notes
    -----
    Direction :math:`d = -H^{-1}\nabla f(X)` (gradient direction where :math:`\langle d, \nabla f\rangle \ge 0`,
    i.e. the model is not positive definite there). Step length ``s`` from 1, halved until
    :math:`f(X + s d) \le f(X) + 10^{-4} s\langle\nabla f, d\rangle + 8\varepsilon|f(X)|` or the gradient norm
    halves (the latter keeps the search working once values of ``f`` are at rounding level).
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    max_halvings = check_count(max_halvings, "max_halvings", minimum=1)
    if problem.prox is not None:
        raise ValueError("newton_fd: the problem must be smooth (no prox part)")
    xp = problem.xp
    X = problem.x0
    eps = float(xp.finfo(X.dtype).eps)
    shape = X.shape
    n = shape[-2] * shape[-1]
    G = problem.grad(X)
    r0 = fro_norm(G, xp)
    rel = math.inf
    for it in range(max_iter + 1):
        gnorm = fro_norm(G, xp)
        rel = max_float(gnorm / problem.scale(X, r0), xp)
        if rel <= rtol:
            return X, SolveReport("iterative", "newton_fd", it, rel, rtol, True)
        if it == max_iter:
            break
        H = _fd_hessian(problem, X, xp)  # (.., n, n)
        g = xp.reshape(G, tuple(shape[:-2]) + (n, 1))
        # a tiny Levenberg shift keeps the model invertible where the curvature vanishes
        # (|M_ij|^{q-2} at zero entries for q > 2); it changes the step, not the fixed point
        ok_H = bool(xp.all(xp.isfinite(H)))
        d = -g
        if ok_H:
            shift = 1e-10 * xp.max(xp.abs(H), axis=(-2, -1), keepdims=True) + 1e-300
            H = H + shift * xp.eye(n, dtype=X.dtype)
            try:
                d = -xp.linalg.solve(H, g)  # (.., n, 1)
            except Exception:  # numerically singular even after the shift: gradient direction
                d = -g
        d = xp.where(xp.isfinite(d), d, -g)
        D = xp.reshape(d, shape)
        with floating_point_warnings_silenced():  # a huge Newton step: slope -inf, the halvings shorten it
            slope = inner(G, D, xp)  # (..,)
        descent = slope < 0
        D = xp.where(expand_matrix(descent, xp), D, -G)
        with floating_point_warnings_silenced():
            slope = inner(G, D, xp)
        fX = problem.value(X)
        s = xp.ones_like(slope)
        for _ in range(max_halvings):
            with floating_point_warnings_silenced():  # s D may overflow: such a trial is not finite, so rejected
                Xn = X + expand_matrix(s, xp) * D
            fn, Gn, gn, finite = _trial(problem, Xn, xp)
            ok = finite & ((fn <= fX + 1e-4 * s * slope + 8 * eps * xp.abs(fX)) | (gn <= 0.5 * gnorm))
            if bool(xp.all(ok)):
                break
            s = xp.where(ok, s, 0.5 * s)
        else:
            raise ConvergenceError(SolveReport("iterative", "newton_fd", it, rel, rtol, False),
                                   "line search failed; is the objective smooth and convex here?")
        # Where the Newton step barely reduced the gradient (the model is poor, e.g. at an entry of
        # |x|^q, q < 2, that must cross 0), also try a backtracking gradient step and keep the better.
        poor = gn > 0.5 * gnorm
        if bool(xp.any(poor)):
            with floating_point_warnings_silenced():  # ||H|| may overflow (then tg = 0: no gradient step)
                tg = 1.0 / xp.maximum(fro_norm(H, xp), xp.asarray(1e-300, dtype=X.dtype))  # 1/||H||_F <= 1/lambda_max
            for _ in range(max_halvings):
                with floating_point_warnings_silenced():  # tg G may overflow: such a trial is rejected
                    Xg = X - expand_matrix(tg, xp) * G
                    fg, Gg, _, finite_g = _trial(problem, Xg, xp)
                    okg = finite_g & (fg <= fX - 0.5 * tg * gnorm * gnorm + 8 * eps * xp.abs(fX))
                if bool(xp.all(okg | ~poor)):
                    break
                tg = xp.where(okg, tg, 0.5 * tg)
            better = poor & okg & (fg < fn)
            if bool(xp.any(better)):
                Xn = xp.where(expand_matrix(better, xp), Xg, Xn)
                Gn = xp.where(expand_matrix(better, xp), Gg, Gn)
        X, G = Xn, Gn
    raise ConvergenceError(SolveReport("iterative", "newton_fd", max_iter, rel, rtol, False),
                           "raise max_iter or check the problem's conditioning")
