"""The squared-error objective ``l(M) = 1/2 ||M k - v||^2`` (DeltaNet, Longhorn; MATH.md 3), and its implicit step.

Where is the delta rule's implicit step? Here: :func:`sherman_morrison_step`.
"""

from __future__ import annotations

from ..linalg import matvec, outer, sq_norm
from ..validation import expand_matrix
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
    e = eta / (1 + eta * sq_norm(k, xp))  # (..,)
    r0 = matvec(C, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return C - expand_matrix(e, xp) * outer(r0, k)  # (.., d_v, d_k)


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
