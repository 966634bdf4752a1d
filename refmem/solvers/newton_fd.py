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
    """Central-difference Hessian of ``f`` at ``X [..., a, b]``, symmetrised, and the norm of its asymmetry.

    Returns ``(H [..., n, n], asym [...])`` with ``n = a b``: the true Hessian is symmetric, so
    ``||(H - H^T)/2||_F`` of the raw differences measures the model's error (rounding and truncation).
    """
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
    with floating_point_warnings_silenced():  # a non-finite model is not used
        asym = fro_norm(0.5 * (H - xp.matrix_transpose(H)), xp)  # (..,) the model's own error estimate
    return 0.5 * (H + xp.matrix_transpose(H)), asym


def _trial(problem: Problem, X, xp):
    """``(f(X), grad f(X), finite)`` at a trial point; ``finite`` is False (per problem) where either overflowed."""
    with floating_point_warnings_silenced():  # a trial that overflows is rejected, never used
        f = problem.value(X)  # (..,)
        G = problem.grad(X)  # (.., a, b)
        finite = xp.isfinite(f) & xp.all(xp.isfinite(G), axis=(-2, -1))
        gnorm = fro_norm(xp.where(expand_matrix(finite, xp), G, xp.zeros_like(G)), xp)
    return f, G, gnorm, finite


THETA_MAX = 0.9
"""Largest measured contraction of Newton's steps a certificate accepts (the tail is then at most 10 step lengths)."""


def _newton_direction(problem: Problem, X, G, xp):
    r"""Newton's direction ``-H^{-1} G`` from the finite-difference model, and where it is one (``[...]``).

    Returns ``(D [.., a, b], H [.., n, n], newton [..], theta_model [..])``: ``newton`` is False where
    the model is not finite, not invertible or gives no descent, and ``D`` is then ``-G`` (the gradient
    direction); ``theta_model`` bounds the contraction the model's own error allows (``newton_fd`` Notes).
    """
    shape = X.shape
    n = shape[-2] * shape[-1]
    H, asym = _fd_hessian(problem, X, xp)  # (.., n, n), (..,)
    g = xp.reshape(G, tuple(shape[:-2]) + (n, 1))  # (.., n, 1)
    d = -g
    theta_model = xp.full_like(asym, math.inf)  # (..,)
    # a tiny Levenberg shift keeps the model invertible where the curvature vanishes
    # (|M_ij|^{q-2} at zero entries for q > 2); it changes the step, not the fixed point
    if bool(xp.all(xp.isfinite(H))):
        shift = 1e-10 * xp.max(xp.abs(H), axis=(-2, -1), keepdims=True) + 1e-300  # (.., 1, 1)
        H = H + shift * xp.eye(n, dtype=X.dtype)
        try:
            d = -xp.linalg.solve(H, g)  # (.., n, 1)
            lam_min = xp.linalg.eigvalsh(H)[..., 0]  # (..,) the model's smallest curvature
        except Exception:  # numerically singular even after the shift: gradient direction
            d = -g
        else:
            # ||H^{-1}(H_true - H)|| <= (model error + shift) / lambda_min(H): the part of the contraction
            # the model alone explains (a shift above the true curvature makes it ~1: no certificate)
            pos = lam_min > 0
            err = asym + shift[..., 0, 0]  # (..,)
            theta_model = xp.where(pos, err / xp.where(pos, lam_min, xp.ones_like(lam_min)), theta_model)
    finite = xp.all(xp.isfinite(d), axis=(-2, -1))  # (..,)
    D = xp.reshape(xp.where(xp.isfinite(d), d, -g), shape)  # (.., a, b)
    with floating_point_warnings_silenced():  # a huge Newton step: slope -inf, the halvings shorten it
        slope = inner(G, D, xp)  # (..,)
    newton = finite & (slope < 0)
    return xp.where(expand_matrix(newton, xp), D, -G), H, newton, theta_model


def newton_fd(problem: Problem, *, rtol: float, max_iter: int = 200, max_halvings: int = 60):
    r"""Minimise a smooth convex ``f`` by damped Newton steps with a finite-difference Hessian.

    Parameters
    ----------
    problem : Problem
        Smooth (no ``prox``), small (the Hessian is dense ``(a b) x (a b)`` per problem).
    rtol : float
        The certified relative error of the answer: stop when, per problem,
        :math:`\|X - X^\star\| \le \mathrm{rtol}\cdot\max(\|X\|, \|X - X_0\|)` is certified by
        the Newton steps (Notes), whatever the curvature (``mu = 0`` allowed).
    max_iter : int
    max_halvings : int
        Per line search.

    Raises
    ------
    ConvergenceError
        No certificate within ``max_iter`` (the message gives the last Newton step's relative
        length, its measured contraction and the model's condition estimate), or the line search failed.

    Notes
    -----
    Direction :math:`d = -H^{-1}\nabla f(X)` (gradient direction where :math:`\langle d, \nabla f\rangle \ge 0`,
    i.e. the model is not positive definite there). Step length ``s`` from 1, halved until
    :math:`f(X + s d) \le f(X) + 10^{-4} s\langle\nabla f, d\rangle + 8\varepsilon|f(X)|` or the gradient norm
    halves (the latter keeps the search working once values of ``f`` are at rounding level).

    **Certificate** (MATH.md 1a). A small gradient does not bound the distance to the minimiser when the
    curvature can vanish (:math:`\mu = 0`, e.g. the lq retention with ``q > 2``): the lq step
    at ``eta = 1``, keys x1e3, stopped on :math:`\|\nabla f\| \le 10^{-12}\|\nabla f(X_0)\|` 3e-6
    away from the minimiser. The Newton step measures the distance instead. With
    :math:`e = X - X^\star` and the Hessian averaged along the segment,
    :math:`\bar H = \int_0^1 \nabla^2 f(X^\star + \tau e)\,d\tau`, the gradient is exactly
    :math:`\nabla f(X) = \bar H e`, so the Newton step :math:`d = -H^{-1}\nabla f(X)` of the model ``H`` is

    .. math::

        -d = H^{-1}\bar H\, e = (I + \Delta)\,e, \qquad \Delta = H^{-1}(\bar H - H),

    and a full step leaves :math:`e^+ = e + d = -\Delta e`. If :math:`\|\Delta\| \le \theta < 1` near
    the minimiser, the steps contract by :math:`\theta` and

    .. math::

        \|X - X^\star\| \le \sum_{j \ge 0} \|d_j\| \le \frac{\|d\|}{1 - \theta} .

    :math:`\theta` is measured, not assumed: it is the larger of the last two ratios
    :math:`\|d_{j+1}\|/\|d_j\|` of consecutive full (undamped) Newton steps (Newton's ratios fall
    as it converges, quadratically with an exact Hessian, linearly at the size of the model's
    error with this one; at an entry where the curvature vanishes like :math:`|x|^{q-2}` the
    ratio is :math:`(q-2)/(q-1)`, which the tail sum covers), and never below the model's own bound
    :math:`(\|H - H^T\|_F/2 + \text{shift})/\lambda_{\min}(H)` (the finite-difference Hessian's asymmetry
    measures its error). :math:`\theta` is the model's own bound alone where the step cannot move ``X`` (below the
    spacing of its entries: the segment is too short for :math:`\bar H` to differ from the Hessian
    at ``X``). A problem is certified when
    :math:`\theta \le` :data:`THETA_MAX` and
    :math:`\|d\|/(1-\theta) \le \mathrm{rtol}\max(\|X\|, \|X - X_0\|)`; it then stops moving.
    Since :math:`\|X^\star\| \ge \|X\| - \|e\|`, this gives
    :math:`\|X - X^\star\| \le \frac{\mathrm{rtol}}{1-\mathrm{rtol}}\max(\|X^\star\|, \|X_0 - X^\star\|)`.
    Rounding sets a floor: the computed gradient at the minimiser carries the rounding of its
    terms, and its Newton step does not shrink below that; where the floor is above the target
    the ratios approach 1, nothing is certified, and the solve raises
    :class:`~refmem.solvers.ConvergenceError` instead of returning. The report's ``residual`` is
    the certified bound :math:`\|d\|/((1-\theta)\max(\|X\|, \|X - X_0\|))`.
    """
    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter")
    max_halvings = check_count(max_halvings, "max_halvings", minimum=1)
    if problem.prox is not None:
        raise ValueError("newton_fd: the problem must be smooth (no prox part)")
    xp = problem.xp
    X0 = X = problem.x0
    eps = float(xp.finfo(X.dtype).eps)
    G = problem.grad(X)
    size = fro_norm(X, xp)  # (..,)
    inf = xp.full_like(size, math.inf)
    steps = (inf, inf)  # (..,) lengths of the last two full Newton steps (inf: not a full Newton step)
    done = xp.zeros(size.shape, dtype=xp.bool)  # (..,) certified problems stop moving
    certified = xp.zeros_like(size)  # (..,) their certified relative error
    rel = theta_max = step_rel = math.inf
    H = None
    for it in range(max_iter + 1):
        D, H, newton, theta_model = _newton_direction(problem, X, G, xp)
        dn = fro_norm(D, xp)  # (..,)
        with floating_point_warnings_silenced():  # inf / inf where no full step was taken: not certified
            theta = xp.maximum(steps[1] / steps[0], dn / steps[1])  # (..,) measured contraction
        theta = xp.maximum(theta, theta_model)
        # a step below the spacing of X's entries cannot move X (X + D == X): no contraction can be measured,
        # and none is needed: the segment to the minimiser is that short, so the model's own error is Delta
        with floating_point_warnings_silenced():
            unresolved = newton & xp.all(X + D == X, axis=(-2, -1))  # (..,)
        theta = xp.where(unresolved, theta_model, theta)
        theta = xp.where(newton & xp.isfinite(theta), theta, inf)
        # D = 0 only where G = 0 exactly (no slope, so `newton` reads no descent): X is stationary, and a
        # minimiser where the model is positive definite with a small error (theta_model <= THETA_MAX; a saddle fails)
        theta = xp.where((dn == 0) & (theta_model <= THETA_MAX), xp.zeros_like(theta), theta)
        target = xp.maximum(fro_norm(X, xp), fro_norm(X - X0, xp))  # (..,)
        ok_theta = theta <= THETA_MAX
        bound = xp.where(ok_theta, dn / (1 - xp.where(ok_theta, theta, xp.zeros_like(theta))), inf)  # (..,)
        safe_target = xp.where(target > 0, target, xp.ones_like(target))
        now = ~done & (bound <= rtol * target)
        certified = xp.where(now, bound / safe_target, certified)
        done = done | now
        rel = max_float(xp.where(done, certified, bound / safe_target), xp)
        step_rel = max_float(xp.where(done, xp.zeros_like(dn), dn / safe_target), xp)
        theta_max = max_float(xp.where(done, xp.zeros_like(theta), theta), xp)
        if bool(xp.all(done)):
            return X, SolveReport("iterative", "newton_fd", it, rel, rtol, True)
        if it == max_iter:
            break
        with floating_point_warnings_silenced():
            slope = inner(G, D, xp)  # (..,)
        gnorm = fro_norm(G, xp)
        fX = problem.value(X)
        s = xp.ones_like(slope)
        for _ in range(max_halvings):
            with floating_point_warnings_silenced():  # s D may overflow: such a trial is not finite, so rejected
                Xn = X + expand_matrix(s, xp) * D
            fn, Gn, gn, finite = _trial(problem, Xn, xp)
            ok = done | finite & ((fn <= fX + 1e-4 * s * slope + 8 * eps * xp.abs(fX)) | (gn <= 0.5 * gnorm))
            if bool(xp.all(ok)):
                break
            s = xp.where(ok, s, 0.5 * s)
        else:
            raise ConvergenceError(SolveReport("iterative", "newton_fd", it, rel, rtol, False),
                                   "line search failed; is the objective smooth and convex here?")
        full = newton & (s == 1)  # (..,) a full Newton step: its length enters the measured contraction
        # Where the Newton step barely reduced the gradient (the model is poor, e.g. at an entry of
        # |x|^q, q < 2, that must cross 0), also try a backtracking gradient step and keep the better.
        poor = ~done & (gn > 0.5 * gnorm)
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
                full = full & ~better
        steps = (steps[1], xp.where(full, dn, inf))
        X = xp.where(expand_matrix(done, xp), X, Xn)
        G = xp.where(expand_matrix(done, xp), G, Gn)
    raise ConvergenceError(
        SolveReport("iterative", "newton_fd", max_iter, rel, rtol, False),
        f"no certificate of the distance to the minimiser: the last Newton step is {step_rel:.1e} of |X| with "
        f"measured contraction {theta_max:.2g} (needed: contraction <= {THETA_MAX} and a step below the "
        f"tolerance), model condition estimate {_condition(H, xp):.1e}; where the steps stopped shrinking the "
        "gradient's rounding hides the minimiser at this accuracy: a larger rtol, a smaller step size eta or "
        "keys of smaller norm would help, or raise max_iter if the steps were still shrinking")


def _condition(H, xp) -> float:
    """The largest 2-norm condition number of the Hessian models ``H [.., n, n]`` (``inf`` when not finite)."""
    if H is None or not bool(xp.all(xp.isfinite(H))):
        return math.inf
    with floating_point_warnings_silenced():
        s = xp.linalg.svdvals(H)  # (.., n)
        c = s[..., 0] / s[..., -1]
    return max_float(xp.where(xp.isfinite(c), c, xp.full_like(c, math.inf)), xp)
