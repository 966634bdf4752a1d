"""The interface every retention implements (Miras, Nested Learning; MATH.md 1, 4), and the quadratic proximal family."""

from __future__ import annotations

import abc

from ..linalg import fro_norm
from ..validation import expand_matrix, positive


class Retention(abc.ABC):
    """A retention ``Ret(M, M_t)`` with its parameters (step size, gates).

    ``bind(xp, dtype)`` returns a copy whose parameters are validated arrays of
    the state's namespace and dtype; the other methods are called on a bound
    retention. Parameters are scalars or batch-shaped arrays ``[...]``.

    The iterative solvers see ``Ret`` as a smooth part (``value``, ``grad``,
    ``lipschitz``, ``mu``) plus an optional non-smooth part (``h_value``,
    ``prox``).
    """

    name = "retention"
    # parameters that may be arrays over the problems' batch axes, with the number of trailing
    # per-problem axes each has (0: one value per problem, ``[...]``; 1: one per channel, ``[..., d]``)
    batch_parameters: dict[str, int] = {"eta": 0, "alpha": 0}

    @abc.abstractmethod
    def bind(self, xp, dtype) -> "Retention":
        """Validated copy with parameters as arrays of ``dtype`` in ``xp``."""

    @abc.abstractmethod
    def value(self, M, M_t, xp):
        """Smooth part of ``Ret(M, M_t)`` per batch element ``[...]``."""

    @abc.abstractmethod
    def grad(self, M, M_t, xp):
        """Gradient in ``M`` of the smooth part: ``[..., d_v, d_k]``."""

    @abc.abstractmethod
    def lipschitz(self, xp):
        """Lipschitz constant of the smooth part's gradient ``[...]``."""

    @abc.abstractmethod
    def mu(self, xp):
        """Strong-convexity modulus of the smooth part ``[...]``."""

    @abc.abstractmethod
    def explicit_step(self, M_t, g, xp):
        """Closed form of ``argmin_M <g, M> + Ret(M, M_t)``."""

    def implicit_step(self, objective, M_t, k, v, xp):
        """Closed form of ``argmin_M l(M; k, v) + Ret(M, M_t)``, or ``None`` if none is known."""
        return None

    # Non-smooth part: none by default.
    h_value = None
    prox = None
    # Solver this retention's levels need (e.g. "mirror_descent" on a simplex); None: the default rules.
    preferred_solver = None

    def check_state(self, M_t, xp) -> None:
        """Raise ``ValueError`` if ``M_t`` is outside this retention's domain (default: every finite state is)."""

    def total_value(self, M, M_t, xp):
        """``Ret(M, M_t)`` including the non-smooth part ``h`` when there is one."""
        val = self.value(M, M_t, xp)
        return val if self.h_value is None else val + self.h_value(M)

    def retained(self, M_t, xp):
        """The point an explicit step linearises at when a memory asks for the retained state (default ``M_t``)."""
        return M_t


class QuadraticProximal(Retention):
    r"""Retentions of the form :math:`\frac{1}{2\eta}\|M - C(M_t)\|^2`: a proximal term around a centre.

    For this family both steps have closed forms built from the centre:

    .. math::

        \text{explicit: } C - \eta g, \qquad
        \text{implicit: } \operatorname{prox}_{\eta l}(C),

    the latter given by the objective's :meth:`~refmem.objectives.Objective.prox`.
    Subclasses define :meth:`center`.
    """

    eta = 1.0

    @abc.abstractmethod
    def center(self, M_t, xp):
        """``C(M_t)``, the point the proximal term pulls towards."""

    def _bind_eta(self, xp, dtype):
        return positive(self.eta, "eta", xp, dtype)

    def value(self, M, M_t, xp):
        n = fro_norm(M - self.center(M_t, xp), xp)
        return n * n / (2 * self.eta)

    def grad(self, M, M_t, xp):
        return (M - self.center(M_t, xp)) / expand_matrix(self.eta, xp)

    def lipschitz(self, xp):
        return 1.0 / self.eta

    def mu(self, xp):
        return 1.0 / self.eta

    def explicit_step(self, M_t, g, xp):
        return self.center(M_t, xp) - expand_matrix(self.eta, xp) * g  # (.., d_v, d_k)

    def implicit_step(self, objective, M_t, k, v, xp):
        return objective.prox(self.center(M_t, xp), self.eta, k, v, xp)

    def retained(self, M_t, xp):
        return self.center(M_t, xp)
