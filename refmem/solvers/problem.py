"""A batched minimisation problem ``F(X) = f(X) + h(X)`` as the iterative solvers see it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..linalg import fro_norm


@dataclass
class Problem:
    """``min_X f(X) + h(X)`` for a batch ``[..., a, b]`` of independent problems.

    Attributes
    ----------
    xp : namespace
    x0 : array ``[..., a, b]``
        Starting point.
    value : callable ``X -> [...]``
        ``f(X)``, the smooth part.
    grad : callable ``X -> [..., a, b]``
        ``grad f(X)``.
    lipschitz : array ``[...]`` or 0-d
        Upper bound on the Lipschitz constant of ``grad f``.
    mu : array ``[...]`` or 0-d
        Strong-convexity modulus of ``f`` (0 when unknown).
    prox : callable ``(X, step[...]) -> X`` or None
        Proximal map of the non-smooth part ``h`` with step ``step``.
    h_value : callable ``X -> [...]`` or None
        ``h(X)``.
    quadratic : bool
        ``f`` is a quadratic (conjugate gradient applies).
    preferred_solver : str or None
        The solver the level's objective or retention asks for (read by
        :func:`refmem.solvers.dispatch.default_solver`), e.g. ``"mirror_descent"`` on a simplex.
    dual : object or None
        Extra structure for a dual solver (:class:`refmem.solvers.residual_dual.ResidualDual`).
    """

    xp: object
    x0: object
    value: Callable
    grad: Callable
    lipschitz: object
    mu: object
    prox: Callable | None = None
    h_value: Callable | None = None
    quadratic: bool = False
    preferred_solver: str | None = None
    dual: object | None = None

    def total_value(self, X):
        f = self.value(X)
        return f if self.h_value is None else f + self.h_value(X)

    def scale(self, X, r0, inv_kappa=None):
        r"""Per-problem scale of the optimality measure: ``max(mu ||X||, r0 / kappa)``.

        With ``||grad F(X)|| <= rtol * mu ||X||`` the distance to the minimiser
        is at most ``rtol ||X||`` (strong convexity). The second term covers
        minimisers at or near zero: ``r0`` (the initial measure) is at most
        ``L ||X_0 - X*||``, so ``||grad F(X)|| <= rtol r0 mu / L`` bounds the
        distance by ``rtol ||X_0 - X*||``. (A bare ``r0`` would allow
        ``rtol kappa ||X_0 - X*||``: no certificate at all for large ``kappa``.)
        Where ``L`` is unknown (``inf``) or ``mu = 0`` the bare ``r0`` is used, unless the solver
        passes ``inv_kappa`` (``[...]``) measured along its path (``mu`` times its smallest accepted step).
        """
        xp = self.xp
        mu = xp.asarray(self.mu)
        L = xp.asarray(self.lipschitz, dtype=mu.dtype)
        known = xp.isfinite(L) & (L > 0) & (mu > 0)
        if inv_kappa is None:
            inv_kappa = xp.where(known, mu / xp.where(known, L, xp.ones_like(L)), xp.ones_like(L))  # (..,)
        s = xp.maximum(mu * fro_norm(X, xp), r0 * inv_kappa)
        return xp.where(s > 0, s, xp.ones_like(s))


def rtol_ceiling(dtype, xp) -> float:
    r"""The loosest tolerance conditioning may push a solve or a check to: :math:`\sqrt{\varepsilon}`.

    ``1.5e-8`` in float64, ``3.5e-4`` in float32: at least half the digits of
    the format are certified, whatever the problem.
    """
    return math.sqrt(float(xp.finfo(dtype).eps))


def default_rtol(dtype, xp, condition=None) -> float:
    """The relative tolerance a solve aims for: ``1e-12`` in float64, ``1e-5`` in float32.

    A solve cannot be more accurate than rounding allows: the computed
    gradient at the exact minimiser has size about ``eps * L * ||X||``, i.e.
    ``eps * kappa`` relative to ``mu ||X||``. The tolerance is therefore
    raised to ``32 * eps * kappa`` when the condition number ``kappa = L/mu``
    (``condition``) demands it, but never past :func:`rtol_ceiling`
    (``sqrt(eps)``): a ``condition`` that would need more is refused.

    Raises
    ------
    ValueError
        ``32 eps condition > sqrt(eps)`` (``condition > 2.1e6`` in float64): no
        tolerance within the ceiling can be certified at that conditioning.
    """
    eps = float(xp.finfo(dtype).eps)
    base = 1e-12 if eps < 1e-10 else 1e-5
    if condition is not None and condition == condition and condition != float("inf"):
        floor = 32 * eps * condition
        ceiling = rtol_ceiling(dtype, xp)
        if floor > ceiling:
            raise ValueError(f"condition = {condition:.3e} needs a tolerance of 32 eps condition = {floor:.1e}, past "
                             f"the ceiling sqrt(eps) = {ceiling:.1e}: nothing can be certified to half the digits "
                             "at this conditioning (better conditioned inputs, e.g. a larger regulariser, would help)")
        base = max(base, floor)
    return base


def max_float(x, xp) -> float:
    """Largest entry of ``x`` as a Python float (one device read)."""
    return float(xp.max(xp.reshape(x, (-1,)))) if x.ndim else float(x)
