r"""Local l2 retention with one step size per value channel (row of ``M``): Longhorn's per-channel ``beta``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..objectives import L2, Dot
from ..validation import positive
from .base import Retention

# Objectives that are a sum over the rows of M of one and the same function of
# (row M_i, k, v_i): their prox with a per-row step is one prox per row.
_ROW_SEPARABLE = (L2, Dot)


@dataclass(frozen=True)
class ChannelLocalL2(Retention):
    r"""Per-row proximal term :math:`\sum_i \frac{1}{2\eta_i}\|M_{i,:} - M_{t,i,:}\|^2`.

    Parameters
    ----------
    eta : float or array ``[..., d_v]``
        Step size per value channel (row of the state), ``> 0``.

    Notes
    -----
    The problem (P) separates over the rows of ``M`` when ``l`` does (l2: 
    :math:`\tfrac12\|Mk - v\|^2 = \sum_i \tfrac12 (M_{i,:} k - v_i)^2`; dot).
    Each row is then an ordinary proximal step with its own :math:`\eta_i`;
    for the l2 objective each is one Sherman-Morrison step (MATH.md 3):

    .. math::

        M_{i,:} = M_{t,i,:} - e_i\,(M_{t,i,:} k - v_i)\,k^T, \qquad
        e_i = \frac{\eta_i}{1 + \eta_i \|k\|^2},

    i.e. :math:`M = M_t - \mathrm{diag}(e)\,(M_t k - v)\,k^T`. The implicit
    step is computed by treating the rows as a batch of ``1 x d_k`` states.
    Smooth-part constants for the solvers: :math:`L = \max_i 1/\eta_i`,
    :math:`\mu = \min_i 1/\eta_i`.
    """

    eta: Any = 1.0
    name = "channel_local_l2"
    batch_parameters = {"eta": 1}  # per-channel parameters end in a channel axis

    def bind(self, xp, dtype):
        return replace(self, eta=positive(self.eta, "eta", xp, dtype))

    def _rows(self):
        """``eta`` broadcast against states: ``[..., d_v, 1]``."""
        return self.eta if self.eta.ndim == 0 else self.eta[..., :, None]

    def value(self, M, M_t, xp):
        D = M - M_t  # (.., d_v, d_k)
        return 0.5 * xp.sum(D * D / self._rows(), axis=(-2, -1))

    def grad(self, M, M_t, xp):
        return (M - M_t) / self._rows()  # (.., d_v, d_k) / (.., d_v, 1)

    def lipschitz(self, xp):
        inv = 1.0 / self.eta
        return inv if inv.ndim == 0 else xp.max(inv, axis=-1)

    def mu(self, xp):
        inv = 1.0 / self.eta
        return inv if inv.ndim == 0 else xp.min(inv, axis=-1)

    def explicit_step(self, M_t, g, xp):
        return M_t - self._rows() * g  # (.., d_v, d_k)

    def implicit_step(self, objective, M_t, k, v, xp):
        if self.eta.ndim == 0:
            return objective.prox(M_t, self.eta, k, v, xp)
        if not isinstance(objective, _ROW_SEPARABLE):
            return None
        # rows as a batch: states (.., d_v, 1, d_k), keys (.., 1, d_k), values (.., d_v, 1), steps (.., d_v)
        rows = objective.prox(M_t[..., :, None, :], self.eta, k[..., None, :], v[..., :, None], xp)
        return rows[..., :, 0, :]  # (.., d_v, 1, d_k) -> (.., d_v, d_k)
