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

from ..validation import as_param
from .base import Objective


def _mT(A, xp):
    return xp.matrix_transpose(A)


@dataclass(frozen=True, repr=False)
class WindowedL2(Objective):
    r"""Weighted least squares over a window: :math:`l(M; K, V) = \tfrac12\sum_{i=1}^c \gamma_i\|M k_i - v_i\|^2`.

    Parameters
    ----------
    gamma : array ``[..., c]`` or ``[c]``, optional
        Non-negative weights (default: all 1); checked by :meth:`check_inputs` when a level is solved.

    Notes
    -----
    With :math:`G = \mathrm{diag}(\gamma)` and :math:`R = K M^T - V` (``c x d_v``):

    .. math::

        \nabla_M l = R^T G K, \qquad L = \sum_i \gamma_i \|k_i\|^2 \ge \|K^T G K\|_2 .

    Implicit step (MATH.md 5, Omega): the minimiser of
    :math:`l(M) + \frac{1}{2\eta}\|M - C\|^2` solves
    :math:`M (I/\eta + K^T G K) = C/\eta + V^T G K`; :meth:`prox` solves it in
    the right singular basis of the weighted keys :math:`G^{1/2} K`, where it is
    diagonal: stable at every :math:`\eta\|K\|^2` and for zero weights.
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

    def check_inputs(self, K, V, xp):
        """Validate ``gamma`` against the window: finite, ``>= 0``, shape ``[c]`` or ``[..., c]``."""
        if self.gamma is None:
            return
        g = as_param(self.gamma, "gamma", xp, K.dtype, low=0.0)
        c = K.shape[-2]
        if g.ndim == 0 or g.shape[-1] != c:
            raise ValueError(f"gamma must have shape [..., c] with c = {c} (one weight per window sample); "
                             f"got shape {tuple(g.shape)}")

    def prox(self, C, eta, K, V, xp):
        r"""The implicit step from ``C``, in the right singular basis of the weighted keys (stable at every ``eta``).

        Notes
        -----
        With :math:`K_\gamma = G^{1/2} K = U \Sigma W^T` (full SVD; ``r = min(c, d_k)``
        singular values :math:`\sigma_j`, columns :math:`w_j` of ``W``) and
        :math:`V_\gamma = G^{1/2} V`, the normal equations
        :math:`M (I/\eta + K_\gamma^T K_\gamma) = C/\eta + V_\gamma^T K_\gamma` are diagonal in ``W``:

        .. math::

            M w_j = \frac{C w_j}{1 + \eta\sigma_j^2} + \frac{\sigma_j\, V_\gamma^T u_j}{1/\eta + \sigma_j^2}
            \quad (j \le r), \qquad M w_j = C w_j \quad (j > r,\ \text{directions no key reaches}).

        Both terms are products of non-negative factors bounded by 1 and by
        :math:`\min(\eta\sigma_j, 1/\sigma_j)`: nothing cancels, at any :math:`\eta\|K\|^2`, whether the
        window has fewer samples than key dimensions or more, and with zero weights
        (:math:`\sigma_j = 0` keeps :math:`C w_j`). ``c = 1`` is Sherman-Morrison. The earlier
        push-through form :math:`B - \eta (B K^T)(I + \eta G K K^T)^{-1} G K`,
        :math:`B = C + \eta V^T G K`, subtracted two terms of size :math:`\eta\|K\|^2` and lost
        every digit once :math:`\eta\|K\|^2 \gtrsim 10^{16}`; a form :math:`C - (\cdot)` loses
        :math:`\|C\|/\|M\|` when the answer is much smaller than the centre.
        """
        w = xp.sqrt(self._weights(K, xp))  # (.., c, 1) square roots of the weights
        U, S, Wh = xp.linalg.svd(w * K, full_matrices=True)  # (.., c, c), (.., r), (.., d_k, d_k)
        r = S.shape[-1]
        # below the SVD's backward error (max(c, d_k) eps sigma_max) a singular value is indistinguishable from 0:
        # a rounded "zero" of 1e-10 would otherwise move C w_j by eta sigma^2 (2e-8 at eta = 1e12)
        eps = float(xp.finfo(K.dtype).eps)
        S = xp.where(S > max(K.shape[-2], K.shape[-1]) * eps * S[..., :1], S, xp.zeros_like(S))  # (.., r)
        inv_eta = 1.0 / (eta[..., None] if eta.ndim else eta)  # (.., 1) or 0-d
        den = inv_eta + S * S  # (.., r)
        keep = inv_eta / den  # (.., r): 1 / (1 + eta sigma^2), in (0, 1]
        gain = S / den  # (.., r): sigma / (1/eta + sigma^2)
        Z = C @ _mT(Wh, xp)  # (.., d_v, d_k) @ (.., d_k, d_k): C in the right singular basis
        P = _mT(w * V, xp) @ U[..., :, :r]  # (.., d_v, c) @ (.., c, r) -> (.., d_v, r): V_g^T u_j
        Zr = Z[..., :r] * keep[..., None, :] + P * gain[..., None, :]  # (.., d_v, r)
        Z = xp.concat([Zr, Z[..., r:]], axis=-1)  # (.., d_v, d_k)
        return Z @ Wh  # (.., d_v, d_k) @ (.., d_k, d_k)
