r"""Local + global l2 retention (weight decay, Miras): ``1/(2 eta)||M - M_t||^2 + 1/(2 b)||M||^2`` (MATH.md 4)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..linalg import fro_norm
from ..validation import expand_matrix, positive
from .base import QuadraticProximal


def decay_factor(eta, b):
    r""":math:`\lambda = b/(b + \eta)`, the factor the retained state is shrunk by."""
    return b / (b + eta)


def effective_step(eta, b):
    r""":math:`\eta_e = \eta b/(\eta + b)`: the step of the equivalent proximal term (``1/eta_e = 1/eta + 1/b``)."""
    return eta * b / (eta + b)


@dataclass(frozen=True)
class WeightDecay(QuadraticProximal):
    r"""Local + global l2 retention :math:`\frac{1}{2\eta}\|M - M_t\|^2 + \frac{1}{2b}\|M\|^2`.

    Parameters
    ----------
    eta : float or array ``[...]``
        Local step size, ``> 0``.
    b : float or array ``[...]``
        Global l2 scale, ``> 0`` (``b -> inf`` is :class:`~refmem.retentions.LocalL2`).

    Notes
    -----
    It is a member of the quadratic proximal family. Completing the square,

    .. math::

        \frac{1}{2\eta}\|M - M_t\|^2 + \frac{1}{2b}\|M\|^2
        = \frac{1}{2\eta_e}\|M - \lambda M_t\|^2 + \frac{\|M_t\|^2}{2(\eta + b)},
        \qquad \frac{1}{\eta_e} = \frac1\eta + \frac1b,\quad \lambda = \frac{\eta_e}{\eta} = \frac{b}{b + \eta}.

    Proof: the left side is
    :math:`\frac12(\frac1\eta + \frac1b)\|M\|^2 - \frac1\eta\langle M, M_t\rangle + \frac{1}{2\eta}\|M_t\|^2`;
    the right side expands to
    :math:`\frac{1}{2\eta_e}\|M\|^2 - \frac{\lambda}{\eta_e}\langle M, M_t\rangle + \frac{\lambda^2}{2\eta_e}\|M_t\|^2 + \frac{\|M_t\|^2}{2(\eta+b)}`
    with :math:`\lambda/\eta_e = 1/\eta`, and
    :math:`\frac{\lambda^2}{2\eta_e} = \frac{\lambda}{2\eta} = \frac{b}{2\eta(\eta+b)}`, so the
    constants agree: :math:`\frac{b}{2\eta(\eta+b)} + \frac{1}{2(\eta+b)} = \frac{1}{2\eta}`.

    Hence the centre is :math:`\lambda M_t` and the step :math:`\eta_e`; the constant
    does not move the minimiser:

    - explicit: :math:`\lambda M_t - \eta_e g = \frac{b}{b+\eta}(M_t - \eta g)` (MATH.md 4);
    - implicit: :math:`\operatorname{prox}_{\eta_e l}(\lambda M_t)`, the objective's closed form.

    :meth:`value` and :meth:`grad` evaluate the retention as stated (both terms),
    not the completed square, so the iterative solver minimises the stated objective.
    """

    eta: Any = 1.0
    b: Any = 1.0
    name = "weight_decay"

    def bind(self, xp, dtype):
        return replace(self, eta=self._bind_eta(xp, dtype), b=positive(self.b, "b", xp, dtype))

    def center(self, M_t, xp):
        return expand_matrix(decay_factor(self.eta, self.b), xp) * M_t  # (..,1,1) * (.., d_v, d_k)

    @property
    def step(self):
        r"""The effective step :math:`\eta_e = \eta b/(\eta + b)` of the equivalent proximal term."""
        return effective_step(self.eta, self.b)

    def value(self, M, M_t, xp):
        a = fro_norm(M - M_t, xp)
        n = fro_norm(M, xp)
        return a * a / (2 * self.eta) + n * n / (2 * self.b)

    def grad(self, M, M_t, xp):
        return (M - M_t) / expand_matrix(self.eta, xp) + M / expand_matrix(self.b, xp)  # (.., d_v, d_k)

    def lipschitz(self, xp):
        return 1.0 / self.eta + 1.0 / self.b

    def mu(self, xp):
        return 1.0 / self.eta + 1.0 / self.b

    def explicit_step(self, M_t, g, xp):
        return self.center(M_t, xp) - expand_matrix(self.step, xp) * g  # lambda M_t - eta_e g

    def implicit_step(self, objective, M_t, k, v, xp):
        return objective.prox(self.center(M_t, xp), self.step, k, v, xp)
