r"""How many recent gradients the momentum remembers (NL-17, NLx-13, MATH.md 2b).

Unrolled, the momentum level (:mod:`.momentum`) is
:math:`m_{t+1} = \eta\sum_{j \ge 0} \alpha^j g_{t+1-j}`: the gradient ``j``
steps back has the normalised weight :math:`(1-\alpha)\alpha^j` over an
infinite horizon, and the latest ``n`` carry :math:`1 - \alpha^n` of the total.

Erratum (demonstrated in ``tests/test_momentum.py`` and ``refmem verify``,
spec ``momentum``): the paper's "with momentum 0.9 the latest 6 gradients
carry at least half the weight and the latest 43 carry 99%" is one short
each time; computed, the smallest counts are 7 and 44
(``1 - 0.9^6 = 0.469``, ``1 - 0.9^43 = 0.989``).
"""

from __future__ import annotations

import math


def gradient_weights(alpha: float, n: int):
    r"""Normalised weights :math:`(1-\alpha)\alpha^j`, ``j = 0 .. n-1``, of the latest ``n`` gradients in ``m``.

    Over an infinite horizon the weights sum to one (:math:`\sum_j (1-\alpha)\alpha^j = 1`).
    Returned as a Python list (a scalar computation; no array backend needed).
    """
    a = _alpha(alpha)
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    return [(1.0 - a) * a ** j for j in range(n)]


def latest_gradients_for_mass(alpha: float, fraction: float) -> int:
    r"""The smallest ``n`` whose latest ``n`` gradients carry at least ``fraction`` of the total weight.

    Notes
    -----
    The partial sum is :math:`\sum_{j<n}(1-\alpha)\alpha^j = 1 - \alpha^n`, so the
    answer is :math:`\lceil \log(1 - f) / \log\alpha \rceil`; at
    :math:`\alpha = 0.9` that is 7 for :math:`f = 0.5` and 44 for :math:`f = 0.99`
    (the paper states 6 and 43: :math:`1 - 0.9^6 = 0.469`, :math:`1 - 0.9^{43} = 0.989`).
    The quotient of logarithms is computed with ``log1p`` and may be off by rounding
    near an integer, so the two neighbours are tested with
    :math:`1 - \alpha^n = -\operatorname{expm1}(n \log\alpha)`: a fixed amount of
    work whatever the inputs (``alpha`` near 1 needs millions of gradients, never a loop over them).
    """
    a = _alpha(alpha)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0.0 < float(fraction) < 1.0):
        raise ValueError(f"fraction must be a real number in (0, 1); got {fraction!r}")
    f = float(fraction)
    if a == 0.0:
        return 1
    log_a = math.log(a)

    def mass(n):  # 1 - a^n, accurate also where a^n is close to 1
        return -math.expm1(n * log_a)

    n = max(1, math.ceil(math.log1p(-f) / log_a))
    if n > 1 and mass(n - 1) >= f:  # the quotient rounded up past an integer
        n -= 1
    elif mass(n) < f:  # the quotient rounded down
        n += 1
    return n


def mass_of_latest(alpha: float, n: int) -> float:
    """Fraction of the total weight carried by the latest ``n`` gradients (``math.fsum`` of :func:`gradient_weights`)."""
    return math.fsum(gradient_weights(alpha, n))


def _alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= float(alpha) < 1.0):
        raise ValueError(f"alpha must be a real number in [0, 1) (the weights are normalised by 1 - alpha); got {alpha!r}")
    return float(alpha)


__all__ = ["gradient_weights", "latest_gradients_for_mass", "mass_of_latest"]
