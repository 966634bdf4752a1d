r"""A per-key-channel forget gate: ``1/(2 eta) ||M - M_t diag(alpha)||^2`` (gated linear attention, GLA)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..validation import unit_interval
from .base import QuadraticProximal


@dataclass(frozen=True)
class ChannelForgetGate(QuadraticProximal):
    r"""Forget gate per key channel: :math:`\frac{1}{2\eta}\|M - M_t\,\mathrm{diag}(\alpha)\|^2`.

    The decay acts on the key dimension (the columns of ``M [..., d_v, d_k]``),
    as in GLA, where the state's key channels fade at their own rates.

    Parameters
    ----------
    eta : float or array ``[...]``
        Step size, ``> 0``.
    alpha : float or array ``[..., d_k]``
        One gate in ``[0, 1]`` per key channel (a scalar applies to all
        channels and equals :class:`~refmem.retentions.ForgetGate`).

    Notes
    -----
    The centre is :math:`C(M_t) = M_t\,\mathrm{diag}(\alpha)`, so (MATH.md 4)

    .. math::

        \text{explicit: } M_t\,\mathrm{diag}(\alpha) - \eta\, g, \qquad
        \text{implicit: } \operatorname{prox}_{\eta l}\big(M_t\,\mathrm{diag}(\alpha)\big).
    """

    eta: Any = 1.0
    alpha: Any = 1.0
    name = "channel_forget_gate"
    batch_parameters = {"eta": 0, "alpha": 1}  # per-channel parameters end in a channel axis

    def bind(self, xp, dtype):
        return replace(self, eta=self._bind_eta(xp, dtype), alpha=unit_interval(self.alpha, "alpha", xp, dtype))

    def center(self, M_t, xp):
        if self.alpha.ndim == 0:
            return self.alpha * M_t
        return M_t * self.alpha[..., None, :]  # (.., d_v, d_k) * (.., 1, d_k): column j scaled by alpha_j
