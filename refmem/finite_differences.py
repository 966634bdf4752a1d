r"""Central finite differences, the independent route that checks hand-written gradients.

A hand-written gradient (a loss's ``dL/dy``, the gradient of a loss in a
weight matrix) is compared with

.. math::

    \partial_i f(x) \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h},

whose error is bounded by :func:`central_difference_bound`: truncation
:math:`\tfrac{h^2}{6}\max|f'''|` plus rounding :math:`\delta/h`, where
:math:`\delta` bounds the absolute rounding error of one evaluation of ``f``.
"""

from __future__ import annotations

import math

from .linalg import device_of
from .validation import check_arrays, require


def central_gradient(f, x, h: float, *, ndim: int = 1):
    """Central-difference gradient of a batched scalar function.

    Parameters
    ----------
    f : callable
        ``f(X)`` maps ``X [..., n, *var]`` to ``[..., n]``: it evaluates the
        function on ``n`` perturbed copies of the variable at once (the extra
        axis sits just before the variable's own axes).
    x : array ``[..., *var]``
        The point; its last ``ndim`` axes are the variable (a vector for
        ``ndim=1``, a matrix for ``ndim=2``).
    h : float
        Step, ``> 0``.
    ndim : {1, 2}

    Returns
    -------
    array ``[..., *var]``
        ``(f(x + h e_i) - f(x - h e_i)) / (2 h)`` for every coordinate ``e_i`` of the variable.
    """
    if not (isinstance(h, float) and h > 0 and math.isfinite(h)):
        raise ValueError(f"h must be a finite float > 0; got {h!r}")
    if ndim not in (1, 2):
        raise ValueError(f"ndim must be 1 or 2; got {ndim!r}")
    if not callable(f):
        raise TypeError(f"f must be a callable; got {type(f).__name__}")
    require(x=x)
    xp = check_arrays(x=x)
    if x.ndim < ndim:
        raise ValueError(f"x must have at least {ndim} dims; got shape {tuple(x.shape)}")
    tail = tuple(x.shape[x.ndim - ndim:])
    lead = tuple(x.shape[:x.ndim - ndim])
    n = math.prod(tail)
    E = xp.reshape(xp.eye(n, dtype=x.dtype, device=device_of(x)), (n,) + tail)  # (n, *var): the coordinate directions
    xe = xp.expand_dims(x, axis=x.ndim - ndim)  # (.., 1, *var)
    fp = f(xe + h * E)  # (.., n)
    fm = f(xe - h * E)  # (.., n)
    return xp.reshape((fp - fm) / (2.0 * h), lead + tail)  # (.., *var)


def central_difference_bound(h: float, third: float, rounding: float) -> float:
    r"""Bound on the error of one central difference.

    Parameters
    ----------
    h : float
        Step.
    third : float
        Upper bound on :math:`|f'''|` along the difference direction within ``h`` of ``x``.
    rounding : float
        Upper bound on the absolute rounding error of one evaluation of ``f``.

    Notes
    -----
    Taylor with remainder: :math:`f(x \pm h) = f \pm h f' + \tfrac{h^2}{2} f'' \pm \tfrac{h^3}{6} f'''(\xi_\pm)`,
    so the exact difference quotient misses :math:`f'` by at most
    :math:`\tfrac{h^2}{6}\max|f'''|`; the two rounded evaluations add at most
    :math:`2\delta / (2h) = \delta / h`.

    .. math::

        \Big|\frac{\tilde f(x+h) - \tilde f(x-h)}{2h} - f'(x)\Big|
        \le \frac{h^2}{6}\max|f'''| + \frac{\delta}{h} .
    """
    return h * h / 6.0 * third + rounding / h


__all__ = ["central_gradient", "central_difference_bound"]
