"""The squared-error objective ``l(M) = 1/2 ||M k - v||^2`` (DeltaNet, Longhorn; MATH.md 3), and its implicit step.

Where is the delta rule's implicit step? Here: :func:`sherman_morrison_step`.
"""

from __future__ import annotations

import math

from ..linalg import matvec, outer, sq_norm
from ..validation import expand_matrix, expand_vector
from .base import Objective


def sherman_morrison_step(C, eta, k, v, xp):
    r"""Implicit l2 step from ``C``: ``argmin_M 1/2||M k - v||^2 + 1/(2 eta)||M - C||^2``.

    Parameters
    ----------
    C : array ``[..., d_v, d_k]``
        Centre of the proximal term (``M_t``, or ``alpha M_t`` under a forget gate).
    eta : array ``[...]`` or 0-d
        Step size, ``> 0``.
    k : array ``[..., d_k]``
    v : array ``[..., d_v]``

    Returns
    -------
    M : array ``[..., d_v, d_k]``

    Notes
    -----
    Setting the gradient to zero gives :math:`M (I/\eta + k k^T) = C/\eta + v k^T`.
    Sherman-Morrison inverts :math:`I/\eta + k k^T` in closed form:

    .. math::

        M = C - e\,(C k - v)\, k^T, \qquad e = \frac{\eta}{1 + \eta \|k\|^2}.

    The factor on ``C k`` is :math:`1 - e\|k\|^2 = 1/(1 + \eta\|k\|^2) \in (0, 1]`:
    the step is a contraction for every ``eta > 0`` (MATH.md 3), unlike the
    explicit delta step, which diverges once :math:`\eta\|k\|^2 > 2`.

    Computed with the key scaled by :math:`\sigma = \max(1, \max_i |k_i|)`,
    :math:`k = \sigma u`, so that nothing overflows where the answer is representable
    (``||k||^2`` and ``C k`` of keys above ``1e154`` would, although ``M`` stays of the
    size of ``C`` and ``v / k``):

    .. math::

        M = C - t\,(C u - v/\sigma)\,u^T, \qquad t = e\,\sigma^2 = \frac{z}{1 + z\|u\|^2},
        \quad z = \eta\sigma^2 ,

    with :math:`t = 1/\|u\|^2` where :math:`z\|u\|^2 > 2^{110}` (decided on logarithms; then
    :math:`1/(z\|u\|^2) < 2^{-110}` is below rounding, and :math:`\|u\|^2 \ge 1`). Keys of
    entries at most 1 are not scaled (``sigma = 1``): the textbook formula, bit for bit.
    Examples
    --------
    >>> import numpy as np
    >>> from refmem.objectives.l2 import sherman_morrison_step
    >>> rng = np.random.default_rng(0)
    >>> C, k, v = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(3)
    >>> M = sherman_morrison_step(C, np.asarray(0.5), k, v, np)
    >>> # stationarity: (M k - v) k^T + (M - C) / eta = 0
    >>> bool(np.allclose(np.outer(M @ k - v, k) + (M - C) / 0.5, 0.0))
    True
    """
    m = xp.max(xp.abs(k), axis=-1)  # (..,)
    sigma = xp.maximum(m, xp.ones_like(m))  # (..,) >= 1
    u = k / expand_vector(sigma, xp)  # (.., d_k), entries in [-1, 1]
    t = sherman_morrison_gain(eta, sigma, sq_norm(u, xp), xp)  # (..,)
    r0 = matvec(C, u) - v / expand_vector(sigma, xp)  # (.., d_v): (C k - v) / sigma
    return C - expand_matrix(t, xp) * outer(r0, u)  # (.., d_v, d_k)


def sherman_morrison_gain(eta, sigma, s_u, xp):
    r""":math:`t = z / (1 + z s_u)` with :math:`z = \eta\sigma^2`, without forming an overflowing ``z``.

    ``eta > 0``, ``sigma >= 1``, ``s_u >= 0`` (``s_u >= 1`` wherever ``sigma > 1``); see
    :func:`sherman_morrison_step`. Where :math:`\log z + \log s_u > 110 \log 2`, ``t`` is
    :math:`1/s_u` to below rounding; elsewhere ``z`` and ``z s_u`` are below :math:`2^{110}`.
    """
    eta = xp.asarray(eta, dtype=s_u.dtype)
    s_safe = xp.where(s_u > 0, s_u, xp.ones_like(s_u))  # (..,): k = 0 has u = 0 and any t
    eta_safe = xp.where(eta > 0, eta, xp.ones_like(eta))  # eta = 0 (no step) has z = 0: not big
    big = (eta > 0) & (xp.log(eta_safe) + 2 * xp.log(sigma) + xp.log(s_safe) > 110 * math.log(2))  # (..,)
    one = xp.ones_like(big, dtype=s_u.dtype)
    z = xp.where(big, one, eta) * xp.where(big, one, sigma) ** 2  # (..,) eta sigma^2 where it is not big
    return xp.where(big, 1 / s_safe, z / (1 + z * s_u))  # (..,)


class L2(Objective):
    r"""Squared error :math:`l(M; k, v) = \tfrac12\|M k - v\|^2` (the delta rule's objective).

    Notes
    -----
    .. math::

        \nabla_M l = (M k - v)\, k^T, \qquad L = \|k\|^2 .

    Implicit step: :func:`sherman_morrison_step` (MATH.md 3, checked).
    """

    name = "l2"
    quadratic = True

    def value(self, M, k, v, xp):
        r = matvec(M, k) - v  # (.., d_v)
        return 0.5 * sq_norm(r, xp)

    def grad(self, M, k, v, xp):
        return outer(matvec(M, k) - v, k)  # (.., d_v) x (.., d_k) -> (.., d_v, d_k)

    def lipschitz(self, k, xp):
        return sq_norm(k, xp)

    def prox(self, C, eta, k, v, xp):
        return sherman_morrison_step(C, eta, k, v, xp)
