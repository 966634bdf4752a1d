"""The key-less linear objective ``l(M; g) = -<M, g>``: a memory that compresses gradients.

The momentum level of NLx-10 is this objective under a forget gate: its
"value" is a whole gradient matrix ``g`` and it has no key. For a single
sample ``g = u x^T`` and it equals :class:`~refmem.objectives.Dot` with key
``x`` and value ``u`` (NL-11).
"""

from __future__ import annotations

from ..linalg import broadcast_like, inner
from ..validation import expand_matrix
from .base import Objective


class Inner(Objective):
    r"""Key-less objective :math:`l(M; g) = -\langle M, g\rangle`; pass ``k=None`` and ``v=g``.

    Notes
    -----
    .. math::

        \nabla_M l = -g, \qquad
        \operatorname*{argmin}_M l(M) + \tfrac{1}{2\eta}\|M - C\|^2 = C + \eta\, g .
    """

    name = "inner"
    quadratic = True
    keyless = True

    def value(self, M, k, v, xp):
        return -inner(M, v, xp)

    def grad(self, M, k, v, xp):
        return broadcast_like(-v, M, xp)  # (.., d_v, d_k): the state's batch shape

    def lipschitz(self, k, xp):
        return 0.0

    def prox(self, C, eta, k, v, xp):
        return C + expand_matrix(eta, xp) * v
