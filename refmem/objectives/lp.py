r"""The lp attentional bias ``l(M) = ||M k - v||_p^p`` (Miras; MATH.md 3), ``p >= 1``.

Implicit step with the proximal term ``1/(2 eta) ||M - C||^2``: the
minimiser moves ``C`` along ``k^T`` only, ``M = C - c k^T``, and each
coordinate of the residual solves a 1-D monotone equation. It is closed for
``p`` in {1, 2, 3}; for any other ``p`` it is an *inner 1-D solve*
(safeguarded Newton, :func:`refmem.solvers.newton_scalar`), one scalar
equation per coordinate, accurate to rounding.

The iterative solve of the whole level never sees this reduction: for
``p >= 2`` it minimises the stated objective in ``M`` by gradient steps with
backtracking (the gradient is only locally Lipschitz for ``p > 2``); for
``1 <= p < 2`` (gradient not Lipschitz, or not even defined at ``r_i = 0``
for ``p = 1``) it solves the Fenchel dual in the residual's multiplier,
:mod:`refmem.solvers.residual_dual`, for which :meth:`Lp.conjugate` gives
``phi^*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from ..linalg import broadcast_like, clip, matvec, outer, sign, sq_norm
from ..solvers import newton_scalar
from ..validation import expand_vector
from .base import Objective


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"p must be a real number >= 1; got {type(p).__name__}")
    p = float(p)
    if not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite real number >= 1; got {p}")
    return p


def _signed_power(x, e, xp):
    """``sign(x) |x|^e`` elementwise (``e >= 0``; ``0^0`` read as 1, so ``e = 0`` gives ``sign(x)``)."""
    return sign(x, xp) * xp.abs(x) ** e


def _root_bound(b, a, e, xp):
    """``(b / a)^e`` where ``a > 0``, else ``inf`` (no bound): an upper end for the root of ``x + a x^{1/e} = b``."""
    pos = a > 0
    return xp.where(pos, (b / xp.where(pos, a, xp.ones_like(a))) ** e, xp.full_like(b, math.inf))


def lp_prox_residual_power(r0, a, p, xp):
    r"""Per coordinate, :math:`w = x^{p-1}` where ``x >= 0`` solves :math:`x + a\,x^{p-1} = |r_0|`.

    Parameters
    ----------
    r0 : array ``[..., d_v]``
        Residual at the centre, :math:`r_0 = C k - v`.
    a : array ``[..., 1]`` or 0-d
        :math:`a = \eta\,p\,\|k\|^2 \ge 0`.
    p : float
        Exponent, ``p > 1`` and not 2 or 3 (those are closed; see :meth:`Lp.prox`).

    Notes
    -----
    The equation is written in the variable where it is *convex* and
    increasing, so that Newton from the upper end of the bracket descends
    monotonically and converges quadratically (a safeguarded Newton on a
    concave equation can take tiny steps far from the root and stop early):

    - ``p > 2``: :math:`\phi(x) = x + a x^{p-1} - b` on :math:`[0, b]`, convex;
    - ``1 < p < 2``: with :math:`w = x^{p-1}`,
      :math:`\phi(w) = w^{1/(p-1)} + a w - b` on :math:`[0, b^{p-1}]`, convex
      (exponent :math:`1/(p-1) > 1`) with slope at least ``a``.

    In both, :math:`\phi(0) = -b \le 0 \le \phi(\text{upper end})`; the root is
    unique and :func:`~refmem.solvers.newton_scalar` keeps the bracket (bisection
    fallback), stopping when a step is below ``64 eps`` relative.
    """
    b = xp.abs(r0)  # (.., d_v)
    a = broadcast_like(a, b, xp)  # (.., d_v): broadcast the coefficient to every coordinate
    lo = xp.zeros_like(b)
    eps = float(xp.finfo(b.dtype).eps)
    if p > 2:
        def phi(x):
            return x + a * x ** (p - 1) - b

        def dphi(x):
            return 1 + a * (p - 1) * x ** (p - 2)

        # the root also satisfies a x^{p-1} <= b: with that end of the bracket a x^{p-1} never overflows
        hi = xp.minimum(b, _root_bound(b, a, 1.0 / (p - 1), xp))
        x, _ = newton_scalar(phi, dphi, lo, hi, hi, rtol=64 * eps)
        return x ** (p - 1)
    m = 1.0 / (p - 1)  # > 1

    def phi_w(w):
        return w**m + a * w - b

    def dphi_w(w):
        return m * w ** (m - 1) + a

    hi = xp.minimum(b ** (p - 1), _root_bound(b, a, 1.0, xp))  # a w <= b at the root
    w, _ = newton_scalar(phi_w, dphi_w, lo, hi, hi, rtol=64 * eps)
    return w


@dataclass(frozen=True)
class Lp(Objective):
    r"""lp bias :math:`l(M; k, v) = \|M k - v\|_p^p = \sum_i |r_i|^p`, :math:`r = M k - v`, ``p >= 1``.

    Parameters
    ----------
    p : float
        Exponent ``>= 1``. ``p = 2`` is twice :class:`~refmem.objectives.L2`
        (no factor 1/2 here, as in MATH.md 3).

    Notes
    -----
    .. math::

        \nabla_M l = p\,\operatorname{sign}(r)\,|r|^{p-1} k^T
        \quad(\text{for } p = 1 \text{ the subgradient } \operatorname{sign}(r)\,k^T,
        \text{ 0 where } r_i = 0).

    Implicit step (MATH.md 3): stationarity of
    :math:`l(M) + \frac{1}{2\eta}\|M - C\|^2` gives
    :math:`M = C - \eta\,p\,\operatorname{sign}(r)|r|^{p-1} k^T =: C - c\,k^T`;
    multiplying by ``k`` and writing :math:`s = \|k\|^2`,
    :math:`r_0 = C k - v`:

    .. math::

        r_i + \eta\,p\,s\,\operatorname{sign}(r_i)|r_i|^{p-1} = r_{0,i},

    so :math:`\operatorname{sign}(r_i) = \operatorname{sign}(r_{0,i})` and
    :math:`x = |r_i|` solves :math:`x + a x^{p-1} = |r_{0,i}|`, :math:`a = \eta p s`.

    - ``p = 1``: soft threshold, :math:`c = \eta\,\operatorname{sign}(r_0)\min(1, |r_0|/(\eta s))` (checked);
    - ``p = 2``: :math:`x = |r_0|/(1 + 2\eta s)`;
    - ``p = 3``: :math:`x = (\sqrt{1 + 12\eta s|r_0|} - 1)/(6\eta s)` (checked), computed as
      :math:`2|r_0|/(1 + \sqrt{1 + 12\eta s|r_0|})` (same number, no cancellation, fine at ``s = 0``);
    - other ``p``: the 1-D equation by safeguarded Newton (:func:`lp_prox_residual_power`).

    Then :math:`c = \eta\,p\,\operatorname{sign}(r_0)\,x^{p-1}`.
    """

    p: float = 3.0
    name = "lp"

    def __post_init__(self):
        object.__setattr__(self, "p", _check_p(self.p))

    @property
    def quadratic(self) -> bool:  # only p = 2 is a quadratic (CG applies)
        return self.p == 2.0

    @property
    def smooth(self) -> bool:
        """Gradient Lipschitz (``p = 2``) or at least locally Lipschitz (``p > 2``)."""
        return self.p >= 2.0

    @property
    def preferred_solver(self):
        """``residual_dual`` for ``p < 2``; backtracking gradient steps for ``p > 2``; default for ``p = 2``."""
        if self.p < 2:
            return "residual_dual"
        return None if self.p == 2 else "prox_grad_bt"

    def value(self, M, k, v, xp):
        r = matvec(M, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
        return xp.sum(xp.abs(r) ** self.p, axis=-1)

    def grad(self, M, k, v, xp):
        r = matvec(M, k) - v  # (.., d_v)
        return outer(self.p * _signed_power(r, self.p - 1, xp), k)  # (.., d_v) x (.., d_k) -> (.., d_v, d_k)

    def lipschitz(self, k, xp):
        s = sq_norm(k, xp)  # (..,)
        if self.p == 2:
            return 2 * s
        return xp.full_like(s, math.inf)  # not globally Lipschitz: solvers must backtrack

    def prox(self, C, eta, k, v, xp):
        p = self.p
        s = sq_norm(k, xp)  # (..,)
        r0 = matvec(C, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
        eta_v = expand_vector(eta, xp)  # (.., 1)
        s_v = expand_vector(s, xp)  # (.., 1)
        if p == 1.0:
            # c = eta sign(r0) min(1, |r0|/(eta s)) = sign(r0) min(eta, |r0|/s); k = 0 leaves C unchanged
            safe_s = xp.where(s_v > 0, s_v, xp.ones_like(s_v))
            c = sign(r0, xp) * xp.minimum(broadcast_like(eta_v, r0, xp), xp.abs(r0) / safe_s)  # (.., d_v)
            c = xp.where(s_v > 0, c, xp.zeros_like(c))
        else:
            a = eta_v * p * s_v  # (.., 1)
            if p == 2.0:
                w = xp.abs(r0) / (1 + a)  # |r|^{p-1} = |r|
            elif p == 3.0:
                x = 2 * xp.abs(r0) / (1 + xp.sqrt(1 + 4 * a * xp.abs(r0)))  # 4 a = 12 eta s
                w = x * x
            else:
                w = lp_prox_residual_power(r0, a, p, xp)
            c = eta_v * p * sign(r0, xp) * w  # (.., d_v): c = eta p sign(r) |r|^{p-1}
        return C - outer(c, k)  # (.., d_v, d_k)

    # Fenchel conjugate of phi(z) = |z|^p, for the dual solver (refmem.solvers.residual_dual).
    def conjugate(self, xp):
        r"""The conjugate :math:`\phi^*` of :math:`\phi(z) = |z|^p`, coordinatewise.

        Returns
        -------
        ResidualConjugate
            ``p = 1``: :math:`\phi^* = \iota_{[-1, 1]}` (value 0, prox = clip);
            ``p > 1``: :math:`\phi^*(y) = (p-1)(|y|/p)^{p/(p-1)}`,
            :math:`(\phi^*)'(y) = \operatorname{sign}(y)(|y|/p)^{1/(p-1)}` (smooth).
        """
        from ..solvers.residual_dual import ResidualConjugate

        p = self.p
        if p == 1.0:
            return ResidualConjugate(
                value=lambda y: xp.zeros(y.shape[:-2], dtype=y.dtype),
                grad=lambda y: xp.zeros_like(y),
                prox=lambda y, t: clip(y, -1.0, 1.0, xp),
                start=lambda r: sign(r, xp),
            )
        qs = p / (p - 1)
        return ResidualConjugate(
            value=lambda y: xp.sum((p - 1) * (xp.abs(y) / p) ** qs, axis=(-2, -1)),
            grad=lambda y: _signed_power(y / p, 1 / (p - 1), xp),
            prox=None,
            start=lambda r: p * _signed_power(r, p - 1, xp),
        )

    def __repr__(self) -> str:
        return f"Lp(p={self.p:g})"
