r"""Delta momentum: the momentum level with the l2 objective (NL-22, NLx-49, MATH.md 6).

.. math::

    \ell(m; g, P) = \tfrac12\,\|m\, g^T - P\|_F^2, \qquad \nabla_m \ell = (m g^T - P)\, g = m\, g^T g - P g,

for ``m, g`` ``[..., d_out, d_in]`` and the value ``P`` ``[..., d_out, d_out]``
(``d_in = 1``: the paper's vectors, :math:`g^T g = \|g\|^2`).

- ``step="explicit"`` (the paper's): one gradient step on :math:`\ell` at :math:`m_i` under the
  retention :math:`\frac{1}{2\eta}\|m - \alpha m_i\|^2`:
  :math:`m_{i+1} = \operatorname{argmin}_m \langle \nabla\ell(m_i), m\rangle + \frac{1}{2\eta}\|m - \alpha m_i\|^2
  = m_i(\alpha I - \eta\, g^T g) + \eta\, P g`;
- ``step="implicit"``: :math:`m_{i+1} = \operatorname{argmin}_m \ell(m) + \frac{1}{2\eta}\|m - \alpha m_i\|^2
  = (\alpha m_i + \eta P g)(I + \eta\, g^T g)^{-1}`.

The weights take :math:`W_{i+1} = W_i - m_{i+1}`: the memory fits :math:`m g^T \approx P`,
so :math:`m \approx P g / \|g\|^2` points *up* the gradient for ``P = I`` and is subtracted.

Erratum (:func:`nl22_printed_step`): NL-22 prints
:math:`m_{i+1} = (\alpha I - g^T g)\, m_i - \eta P g` with :math:`W_{i+1} = W_i + m_{i+1}`.
That is not a gradient step on the printed objective: the :math:`\eta` on
:math:`g^T g` is missing and the sign of :math:`P g` is flipped (the printed
update is the GD step, with :math:`\eta = 1` on the decay, of :math:`\|m g^T + P\|^2`);
the left product :math:`(\cdot)\, m_i` is shape-consistent only for vectors
(refmem evaluates it as the right product :math:`m_i(\cdot)`, equal for vectors).
The consistent step minus the printed one is :math:`(1-\eta)\, m_i g^T g + 2\eta P g`.
"""

from __future__ import annotations


from ..backends import namespace_of
from ..level import solve
from ..linalg import broadcast_like, inner
from ..solvers import Problem, SolveReport, conjugate_gradient, default_rtol
from ..validation import check_arrays
from .momentum import weight_level
from .optimizer import overflow_checked_step
from .preconditioned_momentum import MomentumState, PreconditionedMomentum

STEPS = ("explicit", "implicit")


def objective_gradient(m, g, P):
    r""":math:`\nabla_m \tfrac12\|m g^T - P\|^2 = (m g^T - P) g`."""
    xp = namespace_of(m)
    return (m @ xp.matrix_transpose(g) - P) @ g  # (.., d_out, d_in)


def level_problem(m_i, g, P, lr: float, alpha: float, step: str) -> Problem:
    r"""The level's stated objective for the iterative solvers (a quadratic in ``m``).

    explicit: :math:`\langle \nabla\ell(m_i), m\rangle + \frac{1}{2\eta}\|m - \alpha m_i\|^2` (``L = mu = 1/eta``);
    implicit: :math:`\tfrac12\|m g^T - P\|^2 + \frac{1}{2\eta}\|m - \alpha m_i\|^2`
    (``L = ||g||_F^2 + 1/eta``, ``mu = 1/eta``).
    """
    xp = namespace_of(m_i)
    gT = xp.matrix_transpose(g)  # (.., d_in, d_out)
    C = alpha * m_i  # (.., d_out, d_in)
    inv = xp.asarray(1.0 / lr, dtype=m_i.dtype)
    if step == "explicit":
        G = objective_gradient(m_i, g, P)  # (.., d_out, d_in) fixed: the linearisation point is m_i

        def value(m):
            d = m - C
            return inner(G, m, xp) + inner(d, d, xp) / (2.0 * lr)  # (..,)

        def grad(m):
            return G + (m - C) / lr  # (.., d_out, d_in)

        return Problem(xp, xp.zeros_like(m_i), value, grad, inv, inv, quadratic=True)

    def value(m):
        R = m @ gT - P  # (.., d_out, d_out)
        d = m - C
        return 0.5 * inner(R, R, xp) + inner(d, d, xp) / (2.0 * lr)  # (..,)

    def grad(m):
        return (m @ gT - P) @ g + (m - C) / lr  # (.., d_out, d_in)

    L = xp.sum(g * g, axis=(-2, -1)) + inv  # (..,) ||g^T g||_2 <= ||g||_F^2
    return Problem(xp, xp.zeros_like(m_i), value, grad, L, broadcast_like(inv, L, xp), quadratic=True)


def momentum_step(m_i, g, P, lr: float, alpha: float, step: str, *, method="closed"):
    """The delta-momentum level, closed form or conjugate gradient; ``(m, report)``."""
    xp = namespace_of(m_i)
    if method == "closed":
        gTg = xp.matrix_transpose(g) @ g  # (.., d_in, d_in)
        if step == "explicit":
            m = alpha * m_i - lr * (m_i @ gTg) + lr * (P @ g)  # (.., d_out, d_in) = m(aI - eta g^T g) + eta P g
            return m, SolveReport(method="closed", solver="m (alpha I - lr g^T g) + lr P g")
        A = xp.eye(g.shape[-1], dtype=g.dtype) + lr * gTg  # (.., d_in, d_in) symmetric positive definite
        R = alpha * m_i + lr * (P @ g)  # (.., d_out, d_in)
        m = xp.matrix_transpose(xp.linalg.solve(A, xp.matrix_transpose(R)))  # (.., d_out, d_in) = R A^{-1}
        return m, SolveReport(method="closed", solver="(alpha m + lr P g)(I + lr g^T g)^-1")
    prob = level_problem(m_i, g, P, lr, alpha, step)
    return conjugate_gradient(prob, rtol=default_rtol(m_i.dtype, prob.xp))


def nl22_printed_step(m_i, g, P, lr: float, alpha: float):
    r"""NL-22 *as printed*: :math:`m_{i+1} = (\alpha I - g^T g)\, m_i - \eta\, P g` (erratum; right product for matrices)."""
    xp = check_arrays(m_i=m_i, g=g, P=P)
    return alpha * m_i - m_i @ (xp.matrix_transpose(g) @ g) - lr * (P @ g)  # (.., d_out, d_in)


class DeltaMomentum(PreconditionedMomentum):
    r"""Delta momentum (NL-22, consistent form): the levels and state of :class:`PreconditionedMomentum`, the delta objective.

    Parameters
    ----------
    lr, momentum : float, default 1e-3, 0.9
        :math:`\eta` and :math:`\alpha \in [0, 1]`, as in :class:`PreconditionedMomentum`
        (whose ``init(W, preconditioner=None)`` this class keeps).
    step : {"explicit", "implicit"}, default "explicit"
        The paper's gradient step, or the proximal (implicit) step.
    """

    name = "delta_momentum"

    def __init__(self, lr=1e-3, momentum=0.9, step="explicit"):
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}; got {step!r}")
        super().__init__(lr=lr, momentum=momentum)
        self.hyperparameters["step"] = step

    @overflow_checked_step
    def step(self, W, g, state: MomentumState, *, method="closed"):
        """One step: the delta-momentum level, then ``W - m``. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, MomentumState, method, "momentum")
        hp = self.hyperparameters
        m, rep_m = momentum_step(state.momentum, g, state.preconditioner, hp["lr"], hp["momentum"], hp["step"],
                                 method=method)
        self.check_finite(xp, momentum=m)
        W_new, rep_W = solve(weight_level(), W, None, -m, method=method)
        self.check_finite(xp, weights=W_new)
        return W_new, MomentumState(state.step + 1, m, state.preconditioner), {"momentum": rep_m, "weights": rep_W}


__all__ = ["DeltaMomentum", "objective_gradient", "level_problem", "momentum_step", "nl22_printed_step"]
