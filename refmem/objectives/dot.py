"""The dot-product (Hebbian) objective ``l(M) = -<M k, v>``.

NL-5 writes one gradient-descent step on any loss as this objective with key
``x`` and value ``u = dL/dy`` (sign folded into ``v``); linear attention is
it with ``eta = 1``.
"""

from __future__ import annotations

from ..linalg import broadcast_like, inner, outer
from ..validation import expand_matrix
from .base import Objective


class Dot(Objective):
    r"""Hebbian objective :math:`l(M; k, v) = -\langle M k, v\rangle = -\langle M, v k^T\rangle`.

    Notes
    -----
    .. math::

        \nabla_M l = -v k^T, \qquad
        \operatorname*{argmin}_M l(M) + \tfrac{1}{2\eta}\|M - C\|^2 = C + \eta\, v k^T.

    ``l`` is linear, so the implicit step equals the explicit one (MATH.md 3).
    """

    name = "dot"
    quadratic = True  # linear, hence (degenerately) quadratic: CG applies

    def value(self, M, k, v, xp):
        return -inner(M, outer(v, k), xp)  # <(.., d_v, d_k), (.., d_v, d_k)> -> (..,)

    def grad(self, M, k, v, xp):
        return broadcast_like(-outer(v, k), M, xp)  # (.., d_v, d_k): the state's batch shape

    def lipschitz(self, k, xp):
        return xp.zeros(k.shape[:-1], dtype=k.dtype)

    def prox(self, C, eta, k, v, xp):
        return C + expand_matrix(eta, xp) * outer(v, k)  # (.., d_v, d_k)
