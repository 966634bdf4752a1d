r"""Moneta's lq retention (Miras; MATH.md 4 last row), re-derived.

What is printed
---------------
An FTRL accumulator and a normalisation,

.. math::

    A_t = \alpha A_{t-1} - \eta\,g_t, \qquad M_t = A_t / \|A_t\|_q^{q-2} \quad\text{(as printed)} .

What it should be
-----------------
FTRL with the lq regulariser :math:`\psi(M) = \tfrac12\|M\|_q^2` (entrywise q-norm of
the whole matrix, ``1 < q < inf``) reads the state off the accumulator by the
*inverse* mirror map:

.. math::

    M_t = \operatorname*{argmin}_M\; -\langle A_t, M\rangle + \psi(M) = \nabla\psi^*(A_t),
    \qquad \psi^*(A) = \tfrac12\|A\|_{q^*}^2,\quad q^* = \frac{q}{q-1},

    \nabla\psi^*(A) = \operatorname{sign}(A)\,|A|^{q^*-1}\,/\,\|A\|_{q^*}^{q^*-2},
    \qquad \nabla\psi(M) = \operatorname{sign}(M)\,|M|^{q-1}\,/\,\|M\|_q^{q-2} .

So the consistent rule is the printed one with ``q`` replaced by the dual
exponent ``q* = q/(q-1)`` *and* with the elementwise power :math:`|A|^{q^*-1}` in the
numerator. What the printed rule actually is:

1. it *is* an FTRL state, but for the Euclidean regulariser with an accumulator-dependent
   scalar step: :math:`A\|A\|_q^{2-q} = \operatorname{argmin}_M -\langle A, M\rangle
   + \frac{\|A\|_q^{q-2}}{2}\|M\|^2`; the q-norm enters only through that step size, so the
   update direction is the l2 one, and for ``q = 2`` it is exactly :math:`M = A`;
2. for ``q != 2`` it is :math:`\nabla\psi` with its elementwise power dropped, i.e. the
   mirror map in the wrong direction (state -> accumulator) and rescaled along
   ``A`` only;
3. with a regulariser that does not depend on ``A`` it is **not the minimiser of any
   problem** :math:`\min_M -\langle A, M\rangle + R(M)` with a convex ``R``: such a minimiser is :math:`\nabla R^*(A)`, a gradient field with a
   symmetric Jacobian, while the Jacobian of :math:`A \mapsto A\|A\|_q^{2-q}` is
   :math:`\|A\|_q^{2-q} I + (2-q)\|A\|_q^{-q}\,A\,(\operatorname{sign}(A)|A|^{q-1})^T`,
   not symmetric for ``q != 2`` (``A`` and :math:`\operatorname{sign}(A)|A|^{q-1}` are not parallel);
   for the same reason it is not the prox of any convex function (a prox is the gradient
   of a convex function too);
4. dimensionally it is inconsistent: it is homogeneous of degree ``3 - q`` in
   ``A`` (scaling every gradient, or ``eta``, by ``s`` scales ``M`` by :math:`s^{3-q}`), whereas
   FTRL with the 2-homogeneous :math:`\psi` gives degree 1 (``M`` scales like ``A``).

As a retention in (P)
---------------------
Because :math:`\nabla\psi` inverts :math:`\nabla\psi^*`, the accumulator is a function of the
state, :math:`A_{t-1} = \nabla\psi(M_t)`, and the consistent rule is one explicit step
of the level with

.. math::

    \mathrm{Ret}(M, M_t) = \frac1\eta\Big(\psi(M) - \alpha\langle\nabla\psi(M_t), M - M_t\rangle - \alpha\psi(M_t)\Big)
    = \frac\alpha\eta D_\psi(M, M_t) + \frac{1-\alpha}{\eta}\psi(M),

a local Bregman (lq) term plus a global lq term: :math:`\nabla_M` of
:math:`\langle g, M\rangle + \mathrm{Ret}` vanishes iff :math:`\nabla\psi(M) = \alpha\nabla\psi(M_t) - \eta g`, i.e.

.. math::

    M_{t+1} = \nabla\psi^*\big(\alpha\nabla\psi(M_t) - \eta g\big) = \nabla\psi^*(A_t) .

This is what :class:`LqMoneta` implements; ``alpha = 1`` is the p-norm algorithm
(mirror descent with the lq mirror map), ``q = 2`` is the forget gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

from ..linalg import inner, sign
from ..validation import expand_matrix, positive, unit_interval
from .base import Retention


def lq_norm(M, q, xp):
    r"""Entrywise :math:`\|M\|_q = (\sum_{ij} |M_{ij}|^q)^{1/q}` over the last two axes: ``[..., a, b] -> [...]``."""
    a = xp.abs(M)
    m = xp.max(a, axis=(-2, -1))  # (..,); scaling by the largest entry keeps |M|^q from under/overflowing
    safe = xp.where((m > 0) & xp.isfinite(m), m, xp.ones_like(m))  # 0, inf, nan: unscaled (no inf/inf)
    return m * xp.sum((a / expand_matrix(safe, xp)) ** q, axis=(-2, -1)) ** (1.0 / q)


def lq_mirror(M, q, xp):
    r""":math:`\nabla\psi(M) = \operatorname{sign}(M)|M|^{q-1}\|M\|_q^{2-q}` for :math:`\psi = \tfrac12\|\cdot\|_q^2` (0 at 0)."""
    n = lq_norm(M, q, xp)  # (..,)
    n = expand_matrix(xp.where((n > 0) & xp.isfinite(n), n, xp.ones_like(n)), xp)  # M = 0: any scale will do
    # |M|^{q-1} n^{2-q} written as (|M|/n)^{q-1} n: |M_ij| <= n, so nothing over- or underflows
    return sign(M, xp) * (xp.abs(M) / n) ** (q - 1) * n  # (.., d_v, d_k)


def dual_exponent(q: float) -> float:
    """:math:`q^* = q/(q-1)`."""
    return q / (q - 1)


def lq_link(A, q, xp):
    r""":math:`\nabla\psi^*(A)`: the state FTRL with :math:`\tfrac12\|\cdot\|_q^2` reads off accumulator ``A``.

    :math:`\psi^* = \tfrac12\|\cdot\|_{q^*}^2` has the same form with the dual exponent, so this is
    :func:`lq_mirror` at :math:`q^* = q/(q-1)`.
    """
    return lq_mirror(A, dual_exponent(q), xp)


def moneta_printed_rule(A, q, xp):
    r"""The normalisation as printed, :math:`A / \|A\|_q^{q-2}` (kept to show how it differs; not used by the level)."""
    n = lq_norm(A, q, xp)
    n = xp.where(n > 0, n, xp.ones_like(n))
    return A / expand_matrix(n ** (q - 2), xp)


def _check_q(q) -> float:
    if isinstance(q, bool) or not isinstance(q, Real):
        raise TypeError(f"q must be a real number > 1; got {type(q).__name__}")
    q = float(q)
    if not math.isfinite(q) or q <= 1:
        raise ValueError(f"q must be a finite real number > 1 (the lq mirror map needs 1 < q < inf); got {q}")
    return q


@dataclass(frozen=True)
class LqMoneta(Retention):
    r"""Moneta's lq retention in its consistent form (module docstring): FTRL with :math:`\tfrac12\|M\|_q^2`.

    Parameters
    ----------
    q : float
        Exponent, ``1 < q < inf``.
    alpha : float or array ``[...]``
        Forgetting of the accumulator, in ``[0, 1]``.
    eta : float or array ``[...]``
        Step size, ``> 0``.

    Notes
    -----
    .. math::

        \mathrm{Ret}(M, M_t) = \frac\alpha\eta D_\psi(M, M_t) + \frac{1-\alpha}{\eta}\psi(M),\qquad
        \text{explicit step: } M = \nabla\psi^*\big(\alpha\nabla\psi(M_t) - \eta g\big).

    Curvature: :math:`\psi` is ``(q-1)``-smooth for ``q >= 2`` and ``(q-1)``-strongly convex for
    ``q <= 2`` (in the q-norm, hence in l2 with the same constant), so ``lipschitz`` is
    ``(q-1)/eta`` (``inf`` for ``q < 2``) and ``mu`` is ``(q-1)/eta`` (0 for ``q > 2``).
    The implicit step with a non-linear objective has no closed form
    (:math:`\nabla\psi(M) + \eta\nabla l(M) = \alpha\nabla\psi(M_t)` couples the lq map with
    ``l``); it is solved iteratively (:func:`refmem.solvers.newton_fd` on the stated objective:
    the curvature :math:`\propto |M_{ij}|^{q-2}` vanishes or blows up at small entries,
    which first-order methods crawl through). With ``q > 2`` the retention has ``mu = 0``, so
    "converged" is certified by Newton's step lengths, not by the gradient (MATH.md 1a). With
    the lp objective (``p < 2``) the implicit step goes through the Fenchel dual
    (:mod:`refmem.solvers.residual_dual`); the dual's accuracy bounds nothing on the state here
    (``L_R = inf`` or ``mu_R = 0``), so ``newton_fd`` certifies the primal from the dual's answer
    (``p > 1``), or, for ``p = 1``, a subgradient and the strong convexity ``(q-1)/eta``
    (``q < 2`` only); otherwise :class:`~refmem.solvers.ConvergenceError` (never a silent result).
    """

    q: float = 3.0
    alpha: Any = 1.0
    eta: Any = 1.0
    name = "lq_moneta"
    preferred_solver = "newton_fd"

    def __post_init__(self):
        object.__setattr__(self, "q", _check_q(self.q))

    def bind(self, xp, dtype):
        return replace(self, eta=positive(self.eta, "eta", xp, dtype), alpha=unit_interval(self.alpha, "alpha", xp, dtype))

    def psi(self, M, xp):
        r""":math:`\psi(M) = \tfrac12\|M\|_q^2` ``[...]``."""
        n = lq_norm(M, self.q, xp)
        return 0.5 * n * n

    def accumulator(self, M_t, xp):
        r""":math:`A = \nabla\psi(M_t)`: the FTRL accumulator the state ``M_t`` encodes."""
        return lq_mirror(M_t, self.q, xp)

    def value(self, M, M_t, xp):
        A = self.accumulator(M_t, xp)
        return (self.psi(M, xp) - self.alpha * (inner(A, M - M_t, xp) + self.psi(M_t, xp))) / self.eta

    def grad(self, M, M_t, xp):
        A = self.accumulator(M_t, xp)
        return (lq_mirror(M, self.q, xp) - expand_matrix(self.alpha, xp) * A) / expand_matrix(self.eta, xp)

    def lipschitz(self, xp):
        if self.q >= 2:
            return (self.q - 1) / self.eta
        return xp.full_like(1.0 / self.eta, math.inf)

    def mu(self, xp):
        if self.q <= 2:
            return (self.q - 1) / self.eta
        return 0.0 * self.eta

    def explicit_step(self, M_t, g, xp):
        A = expand_matrix(self.alpha, xp) * self.accumulator(M_t, xp) - expand_matrix(self.eta, xp) * g  # A_t
        return lq_link(A, self.q, xp)  # (.., d_v, d_k)

    def implicit_step(self, objective, M_t, k, v, xp):
        if objective.name in ("dot", "inner"):  # linear l: its linearisation is exact
            return self.explicit_step(M_t, objective.grad(M_t, k, v, xp), xp)
        return None

    def retained(self, M_t, xp):
        # grad psi* is 1-homogeneous and inverts grad psi: the step with g = 0 is alpha M_t
        return expand_matrix(self.alpha, xp) * M_t
