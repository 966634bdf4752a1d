r"""Preconditioned momentum: the momentum maps gradients to values ``P`` (NL-20, 21; NLx 4; MATH.md 6).

.. math::

    m_{i+1} = \operatorname*{argmin}_m\; \langle m\, g_i^T, P_i\rangle + \frac{1}{2\eta}\|m - \alpha\, m_i\|^2
            = \alpha\, m_i - \eta\, P_i\, g_i, \qquad
    W_{i+1} = W_i + m_{i+1} .

For ``m, g`` of shape ``[..., d_out, d_in]`` and ``P`` ``[..., d_out, d_out]``:
:math:`\langle m g^T, P\rangle = \sum_{ijk} m_{ik} g_{jk} P_{ij}`, whose gradient in
``m`` is :math:`P g`; with column vectors (``d_in = 1``) this is the paper's
vector form :math:`m^T P g`. ``P = I`` is plain momentum (NL-19, the key-less
memory). Levels: ``momentum`` (the problem above) and ``weights``
(:math:`W_{i+1} = \operatorname{argmin}_W -\langle W, m_{i+1}\rangle + \tfrac12\|W - W_i\|^2`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends import namespace_of
from ..level import solve
from ..linalg import inner
from ..solvers import Problem, SolveReport, conjugate_gradient, default_rtol
from ..validation import check_arrays
from .momentum import weight_level
from .optimizer import Optimizer, check_weights, overflow_checked_step, real_hyperparameter


def preconditioner_for(P, W, name="preconditioner"):
    """``P`` ``[..., d_out, d_out]`` checked against ``W`` ``[..., d_out, d_in]``, or the identity when ``None``."""
    xp = namespace_of(W)
    d = W.shape[-2]
    if P is None:
        return xp.eye(d, dtype=W.dtype)  # (d_out, d_out)
    check_arrays(**{name: P, "W": W})
    if P.ndim < 2 or P.shape[-2:] != (d, d):
        raise ValueError(f"{name} must have shape [..., d_out, d_out] = [..., {d}, {d}] for W of shape "
                         f"{tuple(W.shape)}; got {tuple(P.shape)}")
    return P


def momentum_problem(m_i, g, P, lr: float, alpha: float) -> Problem:
    r"""The momentum level :math:`\langle m g^T, P\rangle + \frac{1}{2\eta}\|m - \alpha m_i\|^2` for the iterative solvers.

    Value as printed (the product :math:`m g^T` formed); gradient :math:`P g + (m - \alpha m_i)/\eta`,
    :math:`L = \mu = 1/\eta`.
    """
    xp = namespace_of(m_i)
    gT = xp.matrix_transpose(g)  # (.., d_in, d_out)
    Pg = P @ g  # (.., d_out, d_in)
    C = alpha * m_i  # (.., d_out, d_in)

    def value(m):
        d = m - C
        return xp.sum((m @ gT) * P, axis=(-2, -1)) + inner(d, d, xp) / (2.0 * lr)  # (..,)

    def grad(m):
        return Pg + (m - C) / lr  # (.., d_out, d_in)

    one = xp.asarray(1.0 / lr, dtype=m_i.dtype)
    return Problem(xp, xp.zeros_like(m_i), value, grad, one, one, quadratic=True)


def momentum_step(m_i, g, P, lr: float, alpha: float, *, method="closed"):
    """The momentum level: closed form ``alpha m - lr P g`` or conjugate gradient on :func:`momentum_problem`."""
    if method == "closed":
        return alpha * m_i - lr * (P @ g), SolveReport(method="closed", solver="alpha m - lr P g")  # (.., d_out, d_in)
    prob = momentum_problem(m_i, g, P, lr, alpha)
    return conjugate_gradient(prob, rtol=default_rtol(m_i.dtype, prob.xp))


@dataclass(frozen=True)
class MomentumState:
    """``step``, ``momentum`` :math:`m_i` ``[..., d_out, d_in]`` and the preconditioner ``P`` in use."""

    step: int
    momentum: object
    preconditioner: object


class PreconditionedMomentum(Optimizer):
    r"""Preconditioned momentum (NL-21).

    Parameters
    ----------
    lr : float, default 1e-3
        :math:`\eta`.
    momentum : float, default 0.9
        :math:`\alpha`, in ``[0, 1]``.

    ``init(W, preconditioner=None)`` takes the value map ``P`` ``[..., d_out, d_out]``
    (default the identity: plain momentum); ``step`` reads it from the state.
    """

    name = "preconditioned_momentum"

    def __init__(self, lr=1e-3, momentum=0.9):
        super().__init__(lr=real_hyperparameter(lr, "lr", low=0.0, low_open=True),
                         momentum=real_hyperparameter(momentum, "momentum", low=0.0, high=1.0))

    def init(self, W, preconditioner=None) -> MomentumState:
        xp = check_weights(W)
        return MomentumState(step=0, momentum=xp.zeros_like(W), preconditioner=preconditioner_for(preconditioner, W))

    @overflow_checked_step
    def step(self, W, g, state: MomentumState, *, method="closed"):
        """One step: the momentum level, then ``W + m``. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, MomentumState, method, "momentum")
        hp = self.hyperparameters
        m, rep_m = momentum_step(state.momentum, g, state.preconditioner, hp["lr"], hp["momentum"], method=method)
        W_new, rep_W = solve(weight_level(), W, None, m, method=method)
        self.check_finite(xp, weights=W_new)
        return W_new, MomentumState(state.step + 1, m, state.preconditioner), {"momentum": rep_m, "weights": rep_W}


__all__ = ["PreconditionedMomentum", "MomentumState", "momentum_problem", "momentum_step", "preconditioner_for"]
