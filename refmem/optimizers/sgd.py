r"""SGD with momentum, dampening and Nesterov as a two-level memory (NL-7..11, NLx-10..13, MATH.md 2b and 6).

torch.optim.SGD's documented update (``lr`` :math:`\gamma`, ``momentum`` :math:`\mu`,
``dampening`` :math:`\tau`, ``weight_decay`` :math:`\lambda`, ``nesterov``):

.. math::

    g_t \leftarrow g_t + \lambda W_{t-1}, \qquad
    b_t = \begin{cases} g_t & t = 1 \\ \mu b_{t-1} + (1-\tau) g_t & t > 1 \end{cases}, \qquad
    d_t = \begin{cases} g_t + \mu b_t & \text{nesterov} \\ b_t \end{cases}, \qquad
    W_t = W_{t-1} - \gamma d_t .

As levels (``momentum > 0``):

1. **momentum** :math:`b_t = \operatorname{argmin}_b -\langle b, g_t\rangle + \frac{1}{2\eta_t}\|b - \mu b_{t-1}\|^2`
   with :math:`\eta_1 = 1` and :math:`\eta_t = 1 - \tau` (the key-less momentum
   level of :mod:`.momentum`, :func:`~refmem.optimizers.momentum.momentum_level`);
   at :math:`t = 1` the buffer is empty, so the first step stores the gradient itself;
2. **weights** :math:`W_t = \operatorname{argmin}_W \langle W, d_t\rangle + \frac{1}{2\gamma}\|W - W_{t-1}\|^2`
   (:func:`~refmem.optimizers.optimizer.descent_level`); Nesterov's look-ahead
   :math:`d_t = g_t + \mu b_t` is what this level reads.

With ``momentum = 0`` only level 2 remains (plain gradient descent, MATH.md 2a).
The paper's momentum :math:`m_t = \gamma b_t` (:mod:`.momentum`) is the same
memory with the learning rate folded into the momentum level.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..level import solve
from .momentum import momentum_level
from .optimizer import (Optimizer, bool_hyperparameter, check_state_shape, check_weights, descent_step,
                        overflow_checked_step, real_hyperparameter)


@dataclass(frozen=True)
class SGDState:
    """``step`` (t) and ``momentum_buffer`` :math:`b_t` ``[..., d_out, d_in]`` (``None`` before the first step or with ``momentum = 0``)."""

    step: int
    momentum_buffer: object = None


class SGD(Optimizer):
    """SGD with torch.optim.SGD's hyperparameters (``maximize`` is not implemented).

    Parameters
    ----------
    lr : float, default 1e-3
    momentum : float, default 0
        In ``[0, 1]``.
    dampening : float, default 0
        In ``[0, 1)``: the momentum level's step is ``1 - dampening`` (``1`` would switch the level off).
    weight_decay : float, default 0
    nesterov : bool, default False
        Requires ``momentum > 0`` and ``dampening = 0`` (as torch requires).
    """

    name = "sgd"

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        lr = real_hyperparameter(lr, "lr", low=0.0, low_open=True)
        momentum = real_hyperparameter(momentum, "momentum", low=0.0, high=1.0)
        dampening = real_hyperparameter(dampening, "dampening", low=0.0, high=1.0, high_open=True)
        weight_decay = real_hyperparameter(weight_decay, "weight_decay", low=0.0)
        nesterov = bool_hyperparameter(nesterov, "nesterov")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)

    def init(self, W) -> SGDState:
        check_weights(W)
        return SGDState(step=0, momentum_buffer=None)

    @overflow_checked_step
    def step(self, W, g, state: SGDState, *, method="closed"):
        """One step: the momentum level (if any), then the weights. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, SGDState, method)
        hp = self.hyperparameters
        lr, mu, tau, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
        if wd != 0.0:
            g = g + wd * W  # (.., d_out, d_in)
        reports = {}
        buf = state.momentum_buffer
        d = g
        if mu != 0.0:
            if buf is None:
                buf = xp.zeros_like(W)  # (.., d_out, d_in) empty buffer: the first step stores g
                eta = 1.0
            else:
                check_state_shape(buf, W, "momentum_buffer")
                eta = 1.0 - tau
            buf, reports["momentum"] = solve(momentum_level(eta, mu), buf, None, g, method=method)
            d = g + mu * buf if hp["nesterov"] else buf  # (.., d_out, d_in)
        W_new, reports["weights"] = descent_step(W, d, lr, method=method)
        self.check_finite(xp, weights=W_new, momentum_buffer=buf)
        return W_new, SGDState(step=state.step + 1, momentum_buffer=buf if mu != 0.0 else None), reports


__all__ = ["SGD", "SGDState"]
