"""The forget gate: ``1/(2 eta) ||M - alpha M_t||^2``, retention around a decayed state (Miras; RetNet, Mamba2, Gated DeltaNet; MATH.md 4)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..validation import expand_matrix, unit_interval
from .base import QuadraticProximal


@dataclass(frozen=True)
class ForgetGate(QuadraticProximal):
    r"""Forget-gate retention :math:`\frac{1}{2\eta}\|M - \alpha M_t\|^2` (MATH.md 4).

    Explicit step :math:`\alpha M_t - \eta g`: gated linear attention, the
    momentum level of NLx-10 (``alpha`` is the momentum), Titans' decay.

    Parameters
    ----------
    eta : float or array ``[...]``
        Step size, ``> 0``.
    alpha : float or array ``[...]``
        Gate in ``[0, 1]``; ``alpha = 1`` is :class:`~refmem.retentions.LocalL2`.
    """

    eta: Any = 1.0
    alpha: Any = 1.0
    name = "forget_gate"

    def bind(self, xp, dtype):
        return replace(self, eta=self._bind_eta(xp, dtype), alpha=unit_interval(self.alpha, "alpha", xp, dtype))

    def center(self, M_t, xp):
        return expand_matrix(self.alpha, xp) * M_t  # (..,1,1) * (.., d_v, d_k)
