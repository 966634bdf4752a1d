r"""AdaGrad as an undiscounted least-squares memory (NLx app. B, MATH.md 6; Duchi, Hazan and Singer, JMLR 2011).

torch.optim.Adagrad's documented update (``lr`` :math:`\gamma`, ``lr_decay`` :math:`\delta`,
``weight_decay`` :math:`\lambda`, ``initial_accumulator_value`` :math:`G_0`, ``eps``):

.. math::

    g_t \leftarrow g_t + \lambda W_{t-1}, \qquad
    \tilde\gamma_t = \frac{\gamma}{1 + (t-1)\delta}, \qquad
    G_t = G_{t-1} + g_t^2, \qquad
    W_t = W_{t-1} - \tilde\gamma_t\, \frac{g_t}{\sqrt{G_t} + \epsilon} .

Levels:

1. **second moment**: :math:`\bar s_t = \operatorname{argmin}_x \tfrac12\sum_{s \le t} \|x - g_s^2\|^2`,
   the *undiscounted* memory (:mod:`.moment_memory` with ``beta = 1``), whose minimiser
   is the mean of the squared gradients; the accumulator is :math:`G_t = G_0 + t\,\bar s_t`.
   Closed form: the running sum; iterative: conjugate gradient over the stored history;
2. **weights** with step :math:`\tilde\gamma_t` and direction :math:`g_t / (\sqrt{G_t} + \epsilon)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .moment_memory import discounted_least_squares_argmin
from .optimizer import (Optimizer, check_weights, closed_report, descent_step, divide_by_denominator,
                        overflow_checked_step, real_hyperparameter)


@dataclass(frozen=True)
class AdagradState:
    """``step``; ``sum`` :math:`G_t` (torch's name); ``sq_history`` :math:`g_1^2 .. g_t^2` for the iterative method."""

    step: int
    sum: object
    sq_history: tuple | None = ()


class Adagrad(Optimizer):
    """AdaGrad with torch.optim.Adagrad's hyperparameters (``maximize``, ``foreach``, ... not implemented).

    Parameters
    ----------
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    """

    name = "adagrad"

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(
            lr=real_hyperparameter(lr, "lr", low=0.0, low_open=True),
            lr_decay=real_hyperparameter(lr_decay, "lr_decay", low=0.0),
            weight_decay=real_hyperparameter(weight_decay, "weight_decay", low=0.0),
            initial_accumulator_value=real_hyperparameter(initial_accumulator_value, "initial_accumulator_value",
                                                          low=0.0),
            eps=real_hyperparameter(eps, "eps", low=0.0),
        )

    def init(self, W, *, keep_history: bool = True) -> AdagradState:
        xp = check_weights(W)
        G0 = xp.zeros_like(W) + self.hyperparameters["initial_accumulator_value"]  # (.., d_out, d_in)
        return AdagradState(step=0, sum=G0, sq_history=() if keep_history else None)

    @overflow_checked_step
    def step(self, W, g, state: AdagradState, *, method="closed"):
        """One step. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, AdagradState, method, "sum")
        hp = self.hyperparameters
        t = state.step + 1
        if hp["weight_decay"] != 0.0:
            g = g + hp["weight_decay"] * W  # (.., d_out, d_in)
        g2 = g * g  # (.., d_out, d_in)
        if method == "closed":
            G = state.sum + g2  # (.., d_out, d_in) running sum
            rep = closed_report("running sum")
        else:
            if state.sq_history is None:
                raise ValueError("method='iterative' needs the gradient history: make the state with "
                                 "init(W, keep_history=True)")
            mean_sq, rep = discounted_least_squares_argmin(state.sq_history + (g2,), 1.0)  # (.., d_out, d_in)
            G = hp["initial_accumulator_value"] + t * mean_sq  # (.., d_out, d_in)
        d = divide_by_denominator(g, xp.sqrt(G) + hp["eps"], self.name, xp)  # (.., d_out, d_in)
        self.check_finite(xp, direction=d)
        clr = hp["lr"] / (1.0 + (t - 1) * hp["lr_decay"])
        W_new, rep_W = descent_step(W, d, clr, method=method)
        self.check_finite(xp, weights=W_new, second_moment=G)
        hist = None if state.sq_history is None else state.sq_history + (g2,)
        return W_new, AdagradState(step=t, sum=G, sq_history=hist), {"second_moment": rep, "weights": rep_W}


__all__ = ["Adagrad", "AdagradState"]
