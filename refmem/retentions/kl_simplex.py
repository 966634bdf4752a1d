r"""KL retention on a scaled simplex (Memora; MATH.md 4): every row of ``M`` is positive and sums to ``c``.

.. math::

    \mathrm{Ret}(M, M_t) = \frac1\eta \mathrm{KL}(M \,\|\, M_t) + \frac1a \mathrm{KL}(M \,\|\, U),
    \qquad \mathrm{KL}(X \| Y) = \sum_{ij} X_{ij} \log\frac{X_{ij}}{Y_{ij}},

on :math:`\Delta_c = \{M : M_{ij} > 0,\ \sum_j M_{ij} = c\}` (rows indexed by the value
coordinate ``i``, summing over the key axis ``j``; ``U`` has every entry ``c/d_k``).
Both arguments of each KL sum to ``c`` per row, so this is the generalised KL
(the ``- X + Y`` terms cancel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..validation import expand_matrix, expand_vector, get_option, positive
from .base import Retention


def softmax_rows(Z, xp):
    """Row-wise (last axis) softmax, shifted by the row maximum so that ``exp`` never overflows."""
    Z = Z - xp.max(Z, axis=-1, keepdims=True)
    E = xp.exp(Z)
    return E / xp.sum(E, axis=-1, keepdims=True)


def log_softmax_rows(Z, xp):
    r"""Row-wise (last axis) :math:`\log\operatorname{softmax}(Z) = Z - \operatorname{logsumexp}(Z)`, by the row maximum.

    Finite wherever ``Z`` is: the softmax itself underflows to 0 for entries more
    than about 745 below their row's maximum, its logarithm does not.
    """
    Z = Z - xp.max(Z, axis=-1, keepdims=True)  # (.., d_v, d_k), row maximum 0
    return Z - xp.log(xp.sum(xp.exp(Z), axis=-1, keepdims=True))  # the sum is in [1, d_k]


@dataclass(frozen=True)
class KLSimplex(Retention):
    r"""KL retention towards ``M_t`` and towards uniform, on rows summing to ``c``.

    Parameters
    ----------
    eta : float or array ``[...]``
        Step size of the local KL term, ``> 0``.
    a : float or array ``[...]``
        Scale of the global KL-to-uniform term, ``> 0`` (weight ``1/a``).
    c : float or array ``[...]``
        Row sum, ``> 0``. ``M_t`` must have positive entries with rows summing to ``c``.

    Notes
    -----
    Explicit step (MATH.md 4): the Lagrangian of
    :math:`\langle g, M\rangle + \mathrm{Ret}(M, M_t)` with one multiplier per row gives

    .. math::

        g + \tfrac1\eta(\log M - \log M_t + 1) + \tfrac1a(\log M - \log\tfrac{c}{d_k} + 1) + \nu\,1^T = 0
        \;\Rightarrow\; \log M = (1 - \lambda)\log M_t - \eta' g + \text{row const},

    with :math:`\eta' = 1/(1/a + 1/\eta)`, :math:`1 - \lambda = \eta'/\eta`,
    :math:`\lambda = (1/a)/(1/a + 1/\eta)`, hence

    .. math::

        M = c\,\operatorname{softmax}_{\text{row}}\big((1 - \lambda)\log M_t - \eta' g\big).

    Implicit step with a non-linear objective: no closed form (the softmax
    fixed point :math:`M = c\,\mathrm{softmax}((1-\lambda)\log M_t - \eta'\nabla l(M))`
    is implicit in ``M``); it is solved by mirror descent
    (:func:`refmem.solvers.mirror_descent`), iterative only. For a linear
    objective (dot, inner) the implicit step is the explicit one.

    Curvature (Euclidean): the Hessian of ``Ret`` is
    :math:`(1/\eta + 1/a)\,\mathrm{diag}(1/M)`, at least :math:`(1/\eta + 1/a)/c`
    on the simplex (``mu``), unbounded near its boundary (``lipschitz = inf``).
    """

    eta: Any = 1.0
    a: Any = 1.0
    c: Any = 1.0
    name = "kl_simplex"
    preferred_solver = "mirror_descent"

    def bind(self, xp, dtype):
        return replace(self, eta=positive(self.eta, "eta", xp, dtype), a=positive(self.a, "a", xp, dtype),
                       c=positive(self.c, "c", xp, dtype))

    def check_state(self, M_t, xp):
        """``M_t`` must be strictly positive with every row summing to ``c`` (to rounding: ``16 d_k eps c``)."""
        if not get_option("check_finite"):  # a state check reads the device, like the finiteness checks
            return
        if not bool(xp.all(M_t > 0)):
            raise ValueError("M_t must have strictly positive entries for the KL simplex retention "
                             "(rows of M_t are points of the scaled simplex)")
        d_k = M_t.shape[-1]
        eps = float(xp.finfo(M_t.dtype).eps)
        c = expand_vector(self.c, xp)  # (.., 1) against row sums (.., d_v)
        dev = xp.abs(xp.sum(M_t, axis=-1) - c)  # (.., d_v)
        if not bool(xp.all(dev <= 16 * d_k * eps * c)):
            raise ValueError("every row of M_t must sum to c (rows on the scaled simplex; "
                             f"tolerance 16 d_k eps c); largest deviation {float(xp.max(dev)):.3e}")

    def _log_uniform(self, M, xp):
        return xp.log(expand_matrix(self.c, xp) / M.shape[-1])  # log(c/d_k): (..,1,1)

    def value(self, M, M_t, xp):
        logM = xp.log(M)
        local = xp.sum(M * (logM - xp.log(M_t)), axis=(-2, -1))
        glob = xp.sum(M * (logM - self._log_uniform(M, xp)), axis=(-2, -1))
        return local / self.eta + glob / self.a

    def grad(self, M, M_t, xp):
        logM = xp.log(M)
        return ((logM - xp.log(M_t) + 1) / expand_matrix(self.eta, xp)
                + (logM - self._log_uniform(M, xp) + 1) / expand_matrix(self.a, xp))  # (.., d_v, d_k)

    def lipschitz(self, xp):
        return xp.full_like(self.mu(xp), math.inf)  # no Lipschitz bound; the batch shape of eta, a and c

    def mu(self, xp):
        return (1.0 / self.eta + 1.0 / self.a) / self.c

    @property
    def eta_prime(self):
        r""":math:`\eta' = 1/(1/a + 1/\eta)`."""
        return 1.0 / (1.0 / self.a + 1.0 / self.eta)

    @property
    def lam(self):
        r""":math:`\lambda = (1/a)/(1/a + 1/\eta)`."""
        return (1.0 / self.a) / (1.0 / self.a + 1.0 / self.eta)

    def explicit_step(self, M_t, g, xp):
        Z = expand_matrix(1.0 - self.lam, xp) * xp.log(M_t) - expand_matrix(self.eta_prime, xp) * g  # (.., d_v, d_k)
        return expand_matrix(self.c, xp) * softmax_rows(Z, xp)

    def explicit_log_step(self, log_M_t, g, xp):
        r""":math:`\log M` of :meth:`explicit_step` from :math:`\log M_t`: :math:`\log c + \log\operatorname{softmax}(Z)`.

        The same step with the state kept as its logarithm, for scans whose
        entries fall below the smallest float (large keys drive a row towards a
        vertex of the simplex: entries of :math:`e^{-10^6}` are 0 in float64, and
        their logarithm, which the next step needs, would be ``-inf``).
        """
        Z = expand_matrix(1.0 - self.lam, xp) * log_M_t - expand_matrix(self.eta_prime, xp) * g  # (.., d_v, d_k)
        return xp.log(expand_matrix(self.c, xp)) + log_softmax_rows(Z, xp)

    def retained(self, M_t, xp):
        return self.explicit_step(M_t, 0 * M_t, xp)  # with no new input: c softmax((1 - lam) log M_t)

    def implicit_step(self, objective, M_t, k, v, xp):
        if objective.name in ("dot", "inner"):  # linear l: its linearisation is exact
            return self.explicit_step(M_t, objective.grad(M_t, k, v, xp), xp)
        return None
