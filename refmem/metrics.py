"""Error measures used by checks, tests and the conformance runner."""

from __future__ import annotations


def max_abs_error(a, b, xp) -> float:
    """``max |a - b|`` as a Python float (0 for empty arrays)."""
    d = xp.abs(a - b)
    if d.ndim == 0:
        return float(d)
    return float(xp.max(xp.reshape(d, (-1,)))) if d.size else 0.0


def rel_error(a, b, xp) -> float:
    """``max |a - b| / max |b|`` (``b`` the reference); ``max |a - b|`` when ``b`` is all zero.

    The one relative error of refmem: checks, tests, test vectors and the conformance runner all use it.
    """
    scale = max_abs_error(b, 0 * b, xp)
    err = max_abs_error(a, b, xp)
    return err / scale if scale > 0 else err
