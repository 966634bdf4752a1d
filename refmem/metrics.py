"""Error measures used by checks, tests and the conformance runner."""

from __future__ import annotations


def max_abs_error(a, b, xp) -> float:
    """``max |a - b|`` as a Python float."""
    d = xp.abs(a - b)
    return float(xp.max(xp.reshape(d, (-1,)))) if d.ndim else float(d)


def rel_error(a, b, xp) -> float:
    """``max |a - b| / max |b|`` (``b`` the reference); ``max |a - b|`` when ``b`` is all zero."""
    scale = max_abs_error(b, 0 * b, xp)
    err = max_abs_error(a, b, xp)
    return err / scale if scale > 0 else err
