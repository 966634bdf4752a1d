r"""Elastic-net retention (Miras): local + global l2 plus an l1 term (MATH.md 4).

.. math::

    \mathrm{Ret}(M, M_t) = \frac{1}{2\eta}\|M - M_t\|^2 + \frac{1}{2b}\|M\|^2 + \frac1a\|M\|_1 .

The smooth part is :class:`~refmem.retentions.WeightDecay`; the l1 part is
exposed as the non-smooth part (``h_value``, ``prox``), so the iterative solve
is proximal gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..linalg import sign
from ..validation import expand_matrix, positive
from .weight_decay import WeightDecay


def soft_threshold(X, gam, xp):
    r""":math:`S_\gamma(X) = \operatorname{sign}(X)\max(|X| - \gamma, 0)` elementwise; ``gam [...]`` per batch."""
    return sign(X, xp) * xp.maximum(xp.abs(X) - expand_matrix(gam, xp), xp.zeros_like(X))  # (.., d_v, d_k)


@dataclass(frozen=True)
class ElasticNet(WeightDecay):
    r"""Elastic-net retention :math:`\frac{1}{2\eta}\|M - M_t\|^2 + \frac{1}{2b}\|M\|^2 + \frac1a\|M\|_1`.

    Parameters
    ----------
    eta : float or array ``[...]``
        Local step size, ``> 0``.
    b : float or array ``[...]``
        Global l2 scale, ``> 0``.
    a : float or array ``[...]``
        l1 scale, ``> 0`` (the l1 weight is ``1/a``).

    Notes
    -----
    With the completed square of :class:`~refmem.retentions.WeightDecay`
    (:math:`\lambda = b/(b+\eta)`, :math:`\eta_e = \eta b/(\eta+b)`) the explicit step is
    a prox of the l1 norm:

    .. math::

        \operatorname*{argmin}_M \langle g, M\rangle + \frac{1}{2\eta_e}\|M - \lambda M_t\|^2 + \frac1a\|M\|_1
        = S_{\eta_e/a}(\lambda M_t - \eta_e g) = S_\gamma\big(\lambda (M_t - \eta g)\big),
        \qquad \gamma = \frac{\eta b}{a(\eta + b)}

    (MATH.md 4, checked). The implicit step with a non-linear objective (l2,
    lp, Huber) is the prox of ``l`` plus an l1 term: the l1 term couples the
    coordinates that the rank-one update of the l2/lp/Huber prox moves
    together, and there is no simple closed form; it is solved iteratively
    only (proximal gradient). For a linear objective (dot, inner) the implicit
    step is the explicit one.
    """

    a: Any = 1.0
    name = "elastic_net"

    def bind(self, xp, dtype):
        return replace(self, eta=self._bind_eta(xp, dtype), b=positive(self.b, "b", xp, dtype),
                       a=positive(self.a, "a", xp, dtype))

    @property
    def gamma(self):
        r"""Soft-threshold level of the explicit step, :math:`\gamma = \eta_e / a`."""
        return self.step / self.a

    def h_value(self, M):
        import array_api_compat

        xp = array_api_compat.array_namespace(M)
        return xp.sum(xp.abs(M), axis=(-2, -1)) / self.a

    def prox(self, X, t):
        """Prox of ``t h``, ``h = ||.||_1 / a``: soft threshold at ``t / a`` (``t [...]``)."""
        import array_api_compat

        xp = array_api_compat.array_namespace(X)
        return soft_threshold(X, t / self.a, xp)

    def explicit_step(self, M_t, g, xp):
        return soft_threshold(self.center(M_t, xp) - expand_matrix(self.step, xp) * g, self.gamma, xp)

    def implicit_step(self, objective, M_t, k, v, xp):
        if objective.name in ("dot", "inner"):  # linear l: its linearisation is exact
            return self.explicit_step(M_t, objective.grad(M_t, k, v, xp), xp)
        return None

    def retained(self, M_t, xp):
        return self.explicit_step(M_t, 0 * M_t, xp)  # what the state becomes with no new input: S_gam(lam M_t)
