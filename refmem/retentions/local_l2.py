"""The default retention: the local proximal term ``1/(2 eta) ||M - M_t||^2`` (Nested Learning, NLx-2; MATH.md 1)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .base import QuadraticProximal


@dataclass(frozen=True)
class LocalL2(QuadraticProximal):
    r"""Local l2 retention :math:`\frac{1}{2\eta}\|M - M_t\|^2` (MATH.md 1).

    With it the explicit step is one gradient-descent step
    :math:`M_t - \eta\,\nabla l(M_t)` (NLx-2).

    Parameters
    ----------
    eta : float or array ``[...]``
        Step size (learning rate), ``> 0``.
    """

    eta: Any = 1.0
    name = "local_l2"

    def bind(self, xp, dtype):
        return replace(self, eta=self._bind_eta(xp, dtype))

    def center(self, M_t, xp):
        return M_t
