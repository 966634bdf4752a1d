r"""The Huber attentional bias (Yaad; MATH.md 3): quadratic near zero, linear beyond ``delta``.

Two modes: ``"coordinate"`` applies the Huber function to every coordinate of
the residual ``r = M k - v``; ``"norm"`` applies it to ``||r||``. Both have
a gradient that is ``||k||^2``-Lipschitz and a closed-form implicit step
(derived in :class:`Huber`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from ..linalg import clip, matvec, outer, sq_norm
from ..validation import expand_vector
from .base import Objective

MODES = ("coordinate", "norm")


def _ball_projection(u, delta, xp):
    r"""Projection of each vector ``u [..., d]`` onto the ball :math:`\|u\| \le \delta`."""
    n = xp.sqrt(sq_norm(u, xp))  # (..,)
    safe = xp.where(n > delta, n, xp.full_like(n, delta))  # n <= delta: factor 1
    return u * expand_vector(delta / safe, xp)  # (.., d) * (.., 1)


@dataclass(frozen=True)
class Huber(Objective):
    r"""Huber bias with threshold ``delta``, per coordinate or on the residual norm.

    .. math::

        h_\delta(z) = \begin{cases} z^2/2, & |z| \le \delta \\
                                    \delta |z| - \delta^2/2, & |z| > \delta \end{cases}
        \qquad
        l(M) = \sum_i h_\delta(r_i) \ (\text{coordinate}) \quad\text{or}\quad h_\delta(\|r\|) \ (\text{norm}).

    Parameters
    ----------
    delta : float
        Threshold ``> 0``.
    mode : {"coordinate", "norm"}

    Notes
    -----
    Gradients: :math:`\nabla_M l = \psi(r)\,k^T` with
    :math:`\psi(r) = \operatorname{clip}(r, -\delta, \delta)` (coordinate) or
    :math:`\psi(r) = \Pi_\delta(r) = r\min(1, \delta/\|r\|)`, the projection onto the
    ball of radius :math:`\delta` (norm). Both :math:`\psi` are 1-Lipschitz, so
    :math:`L = \|k\|^2`.

    Implicit step from centre ``C`` with :math:`\frac{1}{2\eta}\|M - C\|^2`
    (derivation): stationarity gives :math:`M = C - \eta\,\psi(r)\,k^T`, so with
    :math:`s = \|k\|^2`, :math:`r_0 = C k - v`, the residual solves
    :math:`r + \eta s\,\psi(r) = r_0`.

    - If :math:`\psi(r) = r` (inside the quadratic zone) then
      :math:`r = r_0/(1 + \eta s)`, consistent iff that lies in the zone.
    - Otherwise (coordinate) :math:`r = r_0 - \eta s\,\delta\,\operatorname{sign}(r_0)`,
      consistent iff :math:`|r_0| > \delta(1 + \eta s)`; (norm) ``r`` is parallel to
      :math:`r_0` with :math:`\|r\| = \|r_0\| - \eta s \delta`, consistent iff
      :math:`\|r_0\| > \delta(1 + \eta s)`.

    In both modes the two cases merge into one formula,
    :math:`\psi(r) = \psi\big(r_0/(1 + \eta s)\big)`:

    .. math::

        M = C - \eta\,\psi\!\Big(\frac{r_0}{1 + \eta s}\Big)\,k^T .
    """

    delta: float = 1.0
    mode: str = "coordinate"
    name = "huber"

    def __post_init__(self):
        d = self.delta
        if isinstance(d, bool) or not isinstance(d, Real):
            raise TypeError(f"delta must be a real number > 0; got {type(d).__name__}")
        d = float(d)
        if not math.isfinite(d) or d <= 0:
            raise ValueError(f"delta must be a finite real number > 0; got {d}")
        object.__setattr__(self, "delta", d)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")

    def psi(self, r, xp):
        """``h_delta'`` applied to the residual ``r [..., d_v]``: clip or ball projection."""
        if self.mode == "coordinate":
            return clip(r, -self.delta, self.delta, xp)
        return _ball_projection(r, self.delta, xp)

    def _h(self, z, xp):
        d = self.delta
        a = xp.abs(z)
        return xp.where(a <= d, 0.5 * z * z, d * a - 0.5 * d * d)

    def value(self, M, k, v, xp):
        r = matvec(M, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
        if self.mode == "coordinate":
            return xp.sum(self._h(r, xp), axis=-1)
        return self._h(xp.sqrt(sq_norm(r, xp)), xp)

    def grad(self, M, k, v, xp):
        r = matvec(M, k) - v  # (.., d_v)
        return outer(self.psi(r, xp), k)  # (.., d_v) x (.., d_k) -> (.., d_v, d_k)

    def lipschitz(self, k, xp):
        return sq_norm(k, xp)

    def prox(self, C, eta, k, v, xp):
        s = sq_norm(k, xp)  # (..,)
        r0 = matvec(C, k) - v  # (.., d_v)
        eta_v = expand_vector(eta, xp)  # (.., 1)
        u = r0 / (1 + eta_v * expand_vector(s, xp))  # (.., d_v)
        return C - outer(eta_v * self.psi(u, xp), k)  # (.., d_v, d_k)

    def __repr__(self) -> str:
        return f"Huber(delta={self.delta:g}, mode={self.mode!r})"
