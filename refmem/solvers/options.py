"""Checks of the options every iterative solver takes (``rtol``, ``max_iter``, counts and factors).

A solver option that is the wrong type or out of range is a caller's error:
it raises ``TypeError`` / ``ValueError`` naming the option, before any work,
instead of surfacing later as an ``UnboundLocalError`` (``max_iter=-1``) or a
comparison with a string.
"""

from __future__ import annotations

import math
import operator


def check_rtol(rtol, name: str = "rtol") -> float:
    """``rtol`` as a float in ``(0, 1)``: a relative tolerance of 1 or more certifies nothing."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) and not _is_real_scalar(rtol):
        raise TypeError(f"{name} must be a real number in (0, 1); got {type(rtol).__name__} {rtol!r}")
    r = float(rtol)
    if not (0.0 < r < 1.0):  # nan fails too
        raise ValueError(f"{name} must be a real number in (0, 1) (a relative tolerance); got {rtol!r}")
    return r


def check_count(value, name: str, *, minimum: int = 0) -> int:
    """``value`` as a Python int ``>= minimum`` (``max_iter``, ``max_halvings``, ...)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}; got bool {value!r}")
    try:
        n = operator.index(value)  # int and numpy integers; 1.5 and "3" are refused
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__} {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {n}")
    return n


def check_factor(value, name: str, *, above: float) -> float:
    """``value`` as a finite float strictly above ``above`` (e.g. a step growth factor above 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_real_scalar(value):
        raise TypeError(f"{name} must be a real number > {above}; got {type(value).__name__} {value!r}")
    x = float(value)
    if not (math.isfinite(x) and x > above):
        raise ValueError(f"{name} must be a finite real number > {above}; got {value!r}")
    return x


def _is_real_scalar(x) -> bool:
    """A NumPy-style real scalar (``np.float64(1e-8)``), without importing NumPy."""
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    return kind in ("f", "i", "u") and getattr(x, "ndim", 1) == 0
