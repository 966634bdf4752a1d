"""Safeguarded Newton for separable, increasing scalar equations ``phi(x) = 0`` (elementwise)."""

from __future__ import annotations

from .problem import max_float
from .options import check_count, check_rtol
from .report import ConvergenceError, SolveReport


def newton_scalar(phi, dphi, lo, hi, x0, *, rtol: float, max_iter: int = 200):
    r"""Solve ``phi(x) = 0`` elementwise for an increasing ``phi`` with a root in ``[lo, hi]``.

    Parameters
    ----------
    phi, dphi : callable
        The function and its derivative, elementwise on arrays.
    lo, hi : array
        A bracket: ``phi(lo) <= 0 <= phi(hi)`` elementwise.
    x0 : array
        Starting point inside the bracket.
    rtol : float
        Stop when the bracket or the Newton step is below ``rtol * max(|x|, scale)``,
        ``scale = max(|hi - lo|)`` at the start.

    Notes
    -----
    A Newton step that leaves the current bracket (or has zero slope) is
    replaced by bisection, so the iteration always converges; the bracket
    shrinks with the sign of ``phi`` at each iterate.
    """
    import array_api_compat

    rtol = check_rtol(rtol)
    max_iter = check_count(max_iter, "max_iter", minimum=1)

    xp = array_api_compat.array_namespace(x0, lo, hi)
    x = x0
    scale = max(max_float(xp.abs(hi - lo), xp), 1e-300)
    for it in range(1, max_iter + 1):
        f = phi(x)
        lo = xp.where(f <= 0, x, lo)
        hi = xp.where(f >= 0, x, hi)
        d = dphi(x)
        safe_d = xp.where(d > 0, d, xp.ones_like(d))
        xn = x - f / safe_d
        bad = (d <= 0) | (xn <= lo) | (xn >= hi)
        xn = xp.where(bad, 0.5 * (lo + hi), xn)
        xn = xp.where(f == 0, x, xn)
        change = max_float(xp.abs(xn - x) / xp.maximum(xp.abs(xn), xp.asarray(scale, dtype=x.dtype)), xp)
        x = xn
        if change <= rtol:
            return x, SolveReport("iterative", "newton", it, change, rtol, True)
    raise ConvergenceError(SolveReport("iterative", "newton", max_iter, change, rtol, False))
