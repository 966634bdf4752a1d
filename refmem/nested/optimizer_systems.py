r"""Optimisers declared as nested systems, training a linear layer ``y = W x`` (NLx app. B, MATH.md 6 and 7).

Each declaration reuses the levels of :mod:`refmem.optimizers` (the moment
memories, the weights' descent level) and is run by :func:`refmem.nested.run`;
``tests/test_nested_optimizers.py`` shows each equals the direct
implementation (:func:`refmem.optimizers.make`) step for step.

**Adam / AdamW** (:func:`adam_system`):

- signal ``g``: :math:`\nabla_W L(W_{t-1}; x_t)` at the weights before the
  step (plus :math:`\lambda W_{t-1}` for Adam's coupled weight decay);
- level 1, ``m`` and ``v`` (every step, both read ``g``, neither reads the
  other: one level, NL 2.2): the discounted least-squares memories of
  :math:`g` and :math:`g \odot g`; value ``(running, estimate, t)``;
- level 2, ``W`` (every step, reads ``m`` and ``v`` of the same step):
  :math:`\operatorname{argmin}_W \langle W, d\rangle + \frac{1}{2\gamma}\|W - \kappa W_{t-1}\|^2`,
  :math:`d = \hat m / (\sqrt{\hat v} + \epsilon)`.
"""

from __future__ import annotations

from ..optimizers.adam import moment_estimate
from ..optimizers.local_surprise import weight_gradient
from ..optimizers.optimizer import descent_step, pair_of_betas, real_hyperparameter
from ..validation import check_arrays
from .runner import run
from .system import NestedLevel, NestedSystem, Signal


def adam_system(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, decoupled=False,
                loss="squared_error", method="closed") -> NestedSystem:
    """Adam (``decoupled=False``) or AdamW (``decoupled=True``) as the two-level system of the module notes.

    Component values: ``W`` an array ``[..., d_out, d_in]``; ``m`` and ``v``
    the triples ``(running moment, bias-corrected estimate, t)``.
    """
    lr = real_hyperparameter(lr, "lr", low=0.0, low_open=True)
    b1, b2 = pair_of_betas(betas)
    eps = real_hyperparameter(eps, "eps", low=0.0)
    wd = real_hyperparameter(weight_decay, "weight_decay", low=0.0)
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")

    def gradient(ctx):
        W = ctx["W@prev"]
        x, target = ctx["data"]
        g = weight_gradient(loss, W, x, target)  # (.., d_out, d_in) at W_{t-1}
        return g + wd * W if (wd and not decoupled) else g

    def moment(beta, square):
        def update(value, ctx):
            running, _, t = value
            g = ctx["g"]
            y = g * g if square else g
            running, estimate, _ = moment_estimate(running, None, y, beta, t + 1, method="closed")
            return running, estimate, t + 1
        return update

    def update_W(W, ctx):
        _, m_hat, _ = ctx["m"]
        _, v_hat, _ = ctx["v"]
        xp = check_arrays(m_hat=m_hat)
        d = m_hat / (xp.sqrt(v_hat) + eps)  # (.., d_out, d_in): the preconditioned first moment
        keep = 1.0 - lr * wd if decoupled else 1.0
        return descent_step(W, d, lr, keep, method=method)[0]

    return NestedSystem(
        name="adamw" if decoupled else "adam",
        levels=(NestedLevel("W", update_W, reads=("m", "v"), description="weights: keep W - lr m_hat/(sqrt(v_hat)+eps)"),
                NestedLevel("m", moment(b1, False), reads=("g",), description="first moment of g"),
                NestedLevel("v", moment(b2, True), reads=("g",), description="second moment of g*g")),
        signals=(Signal("g", gradient, reads=("W@prev", "data"), description="grad of the loss at W"),),
    )


def train_linear(system: NestedSystem, W_0, X, targets, *, order=None):
    """Run an optimiser system on samples ``X [N, ..., d_in]``, ``targets [N, ..., d_out]``; return ``[W_0, ..., W_N]``."""
    xp = check_arrays(W_0=W_0, X=X, targets=targets)
    if X.ndim < 2 or targets.ndim < 2 or X.shape[0] != targets.shape[0]:
        raise ValueError(f"X and targets must be [N, ..., d] with one N; got {tuple(X.shape)}, {tuple(targets.shape)}")
    zero = xp.zeros_like(W_0)
    initial = {"W": W_0, "m": (zero, zero, 0), "v": (zero, zero, 0)}
    data = [(X[t, ...], targets[t, ...]) for t in range(X.shape[0])]
    _, traj = run(system, initial, data, order=order)
    return [s["W"] for s in traj]


__all__ = ["adam_system", "train_linear"]
