r"""The windowed l2 objective ``1/2 sum_i gamma_i ||M k_i - v_i||^2`` over ``c`` samples (Omega rule, Atlas).

Unlike the single-sample objectives, it takes ``c`` keys ``K [..., c, d_k]``
and values ``V [..., c, d_v]`` per problem (``windowed = True`` tells
:func:`refmem.level.solve` so). It is not in the name registry
``OBJECTIVES``: harnesses that drive every registered objective with one
``(k, v)`` pair cannot drive it; the Omega memory does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..linalg import eye_like
from ..validation import expand_matrix
from .base import Objective


def _mT(A, xp):
    return xp.matrix_transpose(A)


@dataclass(frozen=True, repr=False)
class WindowedL2(Objective):
    r"""Weighted least squares over a window: :math:`l(M; K, V) = \tfrac12\sum_{i=1}^c \gamma_i\|M k_i - v_i\|^2`.

    Parameters
    ----------
    gamma : array ``[..., c]`` or ``[c]``, optional
        Non-negative weights (default: all 1). Validated by the caller (the Omega memory).

    Notes
    -----
    With :math:`G = \mathrm{diag}(\gamma)` and :math:`R = K M^T - V` (``c x d_v``):

    .. math::

        \nabla_M l = R^T G K, \qquad L = \sum_i \gamma_i \|k_i\|^2 \ge \|K^T G K\|_2 .

    Implicit step (MATH.md 5, Omega): the minimiser of
    :math:`l(M) + \frac{1}{2\eta}\|M - C\|^2` solves
    :math:`M (I/\eta + K^T G K) = C/\eta + V^T G K`. With
    :math:`B = C + \eta V^T G K` and the push-through (Woodbury) identity
    :math:`(I + \eta K^T G K)^{-1} = I - \eta K^T (I_c + \eta G K K^T)^{-1} G K`:

    .. math::

        M = B - \eta\,(B K^T)\,(I_c + \eta\, G K K^T)^{-1} G K,

    one ``c x c`` solve instead of a ``d_k x d_k`` one. The ``c x c`` matrix is
    not symmetric but is invertible for every ``gamma >= 0``: its eigenvalues
    are 1 plus those of the PSD matrix :math:`\eta K^T G K` (or 1), so it needs
    no :math:`G^{-1}` and allows zero weights.
    """

    gamma: Any = None
    name = "windowed_l2"
    quadratic = True
    windowed = True

    def _weights(self, K, xp):
        """``gamma`` as ``[..., c, 1]`` for broadcasting against ``[..., c, d]`` rows."""
        if self.gamma is None:
            return xp.ones(tuple(K.shape[:-1]) + (1,), dtype=K.dtype)
        return self.gamma[..., :, None]

    def _residual(self, M, K, V, xp):
        return K @ _mT(M, xp) - V  # (.., c, d_k) @ (.., d_k, d_v) -> (.., c, d_v)

    def value(self, M, K, V, xp):
        R = self._residual(M, K, V, xp)
        return 0.5 * xp.sum(self._weights(K, xp) * R * R, axis=(-2, -1))

    def grad(self, M, K, V, xp):
        R = self._residual(M, K, V, xp)
        return _mT(self._weights(K, xp) * R, xp) @ K  # (.., d_v, c) @ (.., c, d_k) -> (.., d_v, d_k)

    def lipschitz(self, K, xp):
        return xp.sum(self._weights(K, xp) * K * K, axis=(-2, -1))

    def prox(self, C, eta, K, V, xp):
        e = expand_matrix(eta, xp)  # (.., 1, 1)
        GK = self._weights(K, xp) * K  # (.., c, d_k)
        B = C + e * (_mT(V, xp) @ GK)  # (.., d_v, d_k) + (.., d_v, c) @ (.., c, d_k)
        S = eye_like(K.shape[-2], K, xp) + e * (GK @ _mT(K, xp))  # (.., c, c): I_c + eta G K K^T
        X = xp.linalg.solve(S, GK)  # (.., c, c) \ (.., c, d_k) -> (.., c, d_k)
        return B - e * ((B @ _mT(K, xp)) @ X)  # (.., d_v, c) @ (.., c, d_k) -> (.., d_v, d_k)
