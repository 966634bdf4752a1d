r"""Momentum SGD training a small MLP, declared as a two-level nested system (NLx-10..13, MATH.md 2b and 7).

The network is refmem's residual MLP :math:`y = x + W_1\sigma(W_2 x)`
(:func:`refmem.memories.residual_mlp.mlp_forward`, hand-written backward),
trained on samples ``(x_t, target_t)`` with a loss :math:`L(y; t)`
(:mod:`refmem.losses`). Declared components:

- signal ``g``: :math:`\nabla_\theta L(\theta_{t-1}; x_t)` for both matrices,
  read at the weights' value *before* the step (``W@prev``) and the sample;
- level 1 ``m`` (every step, reads ``g``):
  :math:`m_t = \operatorname{argmin}_m -\langle m, g\rangle + \frac{1}{2\eta}\|m - \alpha m_{t-1}\|^2 = \alpha m_{t-1} + \eta g`
  (:func:`refmem.optimizers.momentum.momentum_level`, per matrix);
- level 2 ``W`` (every step, reads ``m`` of the same step):
  :math:`W_t = \operatorname{argmin}_W -\langle W, -m_t\rangle + \tfrac12\|W - W_{t-1}\|^2 = W_{t-1} - m_t`
  (:func:`refmem.optimizers.momentum.weight_level`).

``W`` needs ``m`` of the same step and both update every step, so
Definition 2 puts ``m`` first (level 1) and ``W`` second (level 2). Updating
``W`` first (``order=("W", "m")``) reads the previous momentum and computes
:math:`W_t = W_{t-1} - m_{t-1}`: a different (lagged) trajectory.
"""

from __future__ import annotations

from ..level import solve
from ..losses import get_loss
from ..memories.residual_mlp import mlp_forward
from ..optimizers.momentum import momentum_level, weight_level
from ..validation import check_arrays
from .runner import run
from .system import NestedLevel, NestedSystem, Signal


def mlp_loss_gradient(params, x, target, loss="squared_error", activation="tanh"):
    r"""``(dL/dW1 [..., d, h], dL/dW2 [..., h, d])`` of :math:`L(x + W_1\sigma(W_2 x); t)` by the hand-written backward."""
    W1, W2 = params
    xp = check_arrays(W1=W1, W2=W2, x=x, target=target)
    y, backward = mlp_forward(W1, W2, x, xp, activation)  # (.., d)
    gW1, gW2, _ = backward(get_loss(loss).grad(y, target))  # u = dL/dy at the current weights
    return gW1, gW2


def _solve_each(level, values, states, method):
    return tuple(solve(level, s, None, v, method=method)[0] for s, v in zip(states, values))


def momentum_mlp_system(eta=0.1, alpha=0.9, *, loss="squared_error", activation="tanh", method="closed") -> NestedSystem:
    """The two-level system of the module notes; ``method`` solves every level in closed form or iteratively (CG)."""
    def gradient(ctx):
        x, target = ctx["data"]
        return mlp_loss_gradient(ctx["W@prev"], x, target, loss, activation)

    def update_m(m, ctx):
        return _solve_each(momentum_level(eta, alpha), ctx["g"], m, method)  # alpha m + eta g per matrix

    def update_W(W, ctx):
        return _solve_each(weight_level(), tuple(-mi for mi in ctx["m"]), W, method)  # W - m per matrix

    return NestedSystem(
        name="momentum_mlp",
        levels=(NestedLevel("W", update_W, reads=("m",), period=1, description="weights: W - m"),
                NestedLevel("m", update_m, reads=("g",), period=1, description="momentum: alpha m + eta g")),
        signals=(Signal("g", gradient, reads=("W@prev", "data"), description="grad of the loss at W"),),
    )


def train_momentum_mlp(params, X, targets, eta=0.1, alpha=0.9, *, m_0=None, loss="squared_error",
                       activation="tanh", method="closed", order=None):
    """Train the MLP with the declared system over samples ``X [N, ..., d]``, ``targets [N, ..., d]``.

    Returns the list ``[(W1, W2)_0, ..., (W1, W2)_N]`` and the final momentum.
    """
    W1, W2 = params
    xp = check_arrays(W1=W1, W2=W2, X=X, targets=targets)
    if X.ndim < 2 or tuple(X.shape) != tuple(targets.shape):
        raise ValueError(f"X and targets must both be [N, ..., d] of one shape; got {tuple(X.shape)}, {tuple(targets.shape)}")
    m = (xp.zeros_like(W1), xp.zeros_like(W2)) if m_0 is None else tuple(m_0)
    data = [(X[t, ...], targets[t, ...]) for t in range(X.shape[0])]
    system = momentum_mlp_system(eta, alpha, loss=loss, activation=activation, method=method)
    state, traj = run(system, {"W": (W1, W2), "m": m}, data, order=order)
    return [s["W"] for s in traj], state["m"]


__all__ = ["mlp_loss_gradient", "momentum_mlp_system", "train_momentum_mlp"]
