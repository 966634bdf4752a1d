r"""RMSProp as an optimal memory with a zero pre-history (NLx app. B, MATH.md 6; Hinton's lecture 6e).

torch.optim.RMSprop's documented update (``lr`` :math:`\gamma`, ``alpha``,
``eps``, ``weight_decay`` :math:`\lambda`, ``momentum`` :math:`\mu`, ``centered``):

.. math::

    g_t &\leftarrow g_t + \lambda W_{t-1}, \qquad
    v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
    \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \;(\text{centered}), \\
    a_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \;(\text{centered}) \quad\text{or}\quad \sqrt{v_t} + \epsilon, \\
    b_t &= \mu b_{t-1} + g_t / a_t \;(\mu > 0), \qquad
    W_t = W_{t-1} - \gamma\, b_t \;\; (\text{or } \gamma\, g_t / a_t).

No bias correction: :math:`v_t` (and :math:`\bar g_t`) are the minimisers of the
discounted least-squares memory *with a pre-history of zero gradients*
(:mod:`.moment_memory`, ``zero_prehistory=True``; weight :math:`\alpha^t/(1-\alpha)` on
:math:`\|x\|^2`). Levels: ``second_moment`` (and ``first_moment`` when centered),
``momentum`` (:math:`b_t = \operatorname{argmin}_b -\langle b, g_t/a_t\rangle + \tfrac12\|b - \mu b_{t-1}\|^2`,
when :math:`\mu > 0`), ``weights``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..level import solve
from .moment_memory import discounted_least_squares_argmin, ema_step
from .momentum import momentum_level
from .optimizer import (Optimizer, bool_hyperparameter, check_weights, closed_report, descent_step,
                        divide_by_denominator, overflow_checked_step, real_hyperparameter)


@dataclass(frozen=True)
class RMSpropState:
    r"""``step``; ``square_avg`` :math:`v_t`, ``grad_avg`` :math:`\bar g_t` (centered), ``momentum_buffer`` :math:`b_t`; histories for the iterative method."""

    step: int
    square_avg: object
    grad_avg: object
    momentum_buffer: object
    history: tuple | None = ()
    sq_history: tuple | None = ()


def uncorrected_moment(running, history, y, alpha: float, *, method: str):
    """One RMSProp moment level: the running average (closed) or the zero-pre-history memory's minimiser (iterative)."""
    running_new = ema_step(running, y, alpha)  # (.., d_out, d_in)
    if method == "closed":
        return running_new, closed_report("running average")
    if history is None:
        raise ValueError("method='iterative' needs the gradient history: make the state with init(W, keep_history=True)")
    estimate, report = discounted_least_squares_argmin(tuple(history) + (y,), alpha, zero_prehistory=True)
    return estimate, report


class RMSprop(Optimizer):
    """RMSProp with torch.optim.RMSprop's hyperparameters (``capturable``, ``maximize``, ... not implemented).

    Parameters
    ----------
    lr : float, default 1e-2
    alpha : float, default 0.99
        Smoothing constant (the memory's discount), in ``[0, 1)``.
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    """

    name = "rmsprop"

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(
            lr=real_hyperparameter(lr, "lr", low=0.0, low_open=True),
            alpha=real_hyperparameter(alpha, "alpha", low=0.0, high=1.0, high_open=True),
            eps=real_hyperparameter(eps, "eps", low=0.0),
            weight_decay=real_hyperparameter(weight_decay, "weight_decay", low=0.0),
            momentum=real_hyperparameter(momentum, "momentum", low=0.0, high=1.0),
            centered=bool_hyperparameter(centered, "centered"),
        )

    def init(self, W, *, keep_history: bool = True) -> RMSpropState:
        xp = check_weights(W)
        zero = xp.zeros_like(W)  # (.., d_out, d_in)
        kept = () if keep_history else None
        return RMSpropState(step=0, square_avg=zero, grad_avg=zero, momentum_buffer=zero, history=kept, sq_history=kept)

    @overflow_checked_step
    def step(self, W, g, state: RMSpropState, *, method="closed"):
        """One step. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, RMSpropState, method, "square_avg", "grad_avg", "momentum_buffer")
        hp = self.hyperparameters
        lr, alpha, eps, wd, mu = hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"], hp["momentum"]
        if wd != 0.0:
            g = g + wd * W  # (.., d_out, d_in)
        g2 = g * g  # (.., d_out, d_in)
        reports = {}
        v, reports["second_moment"] = uncorrected_moment(state.square_avg, state.sq_history, g2, alpha, method=method)
        gbar = state.grad_avg
        if hp["centered"]:
            gbar, reports["first_moment"] = uncorrected_moment(state.grad_avg, state.history, g, alpha, method=method)
            # (.., d_out, d_in) >= 0 in exact arithmetic (weighted Jensen, the weights sum to 1 - alpha^t <= 1);
            # a negative entry is rounding of a vanishing variance, read as 0 (torch would return nan)
            var = xp.maximum(v - gbar * gbar, xp.zeros_like(v))
        else:
            var = v
        a = xp.sqrt(var) + eps  # (.., d_out, d_in)
        d = divide_by_denominator(g, a, self.name, xp)  # (.., d_out, d_in)
        self.check_finite(xp, direction=d)
        buf = state.momentum_buffer
        if mu > 0.0:
            buf, reports["momentum"] = solve(momentum_level(1.0, mu), buf, None, d, method=method)
            d = buf
        W_new, reports["weights"] = descent_step(W, d, lr, method=method)
        self.check_finite(xp, weights=W_new, second_moment=v, momentum=buf)
        kept = state.history is not None
        new = RMSpropState(step=state.step + 1, square_avg=v, grad_avg=gbar, momentum_buffer=buf,
                           history=state.history + (g,) if kept else None,
                           sq_history=state.sq_history + (g2,) if kept else None)
        return W_new, new, reports


__all__ = ["RMSprop", "RMSpropState", "uncorrected_moment"]
