"""The interface every objective ``l(M; k, v)`` implements (the attentional bias of Miras and Nested Learning; MATH.md 1, 3)."""

from __future__ import annotations

import abc


class Objective(abc.ABC):
    """An attentional bias ``l(M; k, v)`` on a linear memory ``M`` of shape ``[..., d_v, d_k]``.

    Subclasses give the value, the gradient in ``M``, a bound on the gradient's
    Lipschitz constant (for step sizes), and where it exists the closed-form
    proximal map used by the implicit step.

    Parameters such as ``eta`` arrive batch-shaped (``[...]`` or 0-d arrays)
    and are expanded with :func:`refmem.validation.expand_matrix` /
    :func:`~refmem.validation.expand_vector` where they meet matrices or vectors.

    Attributes
    ----------
    name : str
        Registry name (``"dot"``, ``"l2"``, ...).
    quadratic : bool
        True when ``l`` is a quadratic in ``M`` (conjugate gradient applies).
    keyless : bool
        True when the objective takes no key: ``k`` is ``None`` and ``v`` is a
        matrix shaped like the state (e.g. a gradient to remember).
    smooth : bool
        False when gradient steps cannot solve an implicit step (gradient not
        Lipschitz near its minimiser, or only a subgradient): the level then uses
        the objective's ``preferred_solver`` whatever the retention prefers.
    preferred_solver : str or None
        Solver for the implicit step (read by :func:`refmem.solvers.dispatch.default_solver`).
    conjugate : callable ``xp -> ResidualConjugate`` or None
        For objectives ``sum_i phi((M k - v)_i)``: the conjugate ``phi^*``, used by
        the dual solver :func:`refmem.solvers.residual_dual`.
    """

    name = "objective"
    quadratic = False
    keyless = False
    smooth = True
    preferred_solver = None
    conjugate = None

    @abc.abstractmethod
    def value(self, M, k, v, xp):
        """``l(M; k, v)`` per batch element: ``[...]``."""

    @abc.abstractmethod
    def grad(self, M, k, v, xp):
        """``grad_M l(M; k, v)``: ``[..., d_v, d_k]``."""

    @abc.abstractmethod
    def lipschitz(self, k, xp):
        """An upper bound ``[...]`` on the Lipschitz constant of ``grad_M l`` (0 for a linear ``l``)."""

    def check_inputs(self, k, v, xp):
        """Validate the objective's own parameters against the inputs (default: nothing to check)."""

    def prox(self, C, eta, k, v, xp):
        """Closed form of ``argmin_M l(M; k, v) + 1/(2 eta) ||M - C||^2``, or ``None`` if there is none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
