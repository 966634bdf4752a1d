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

**M3** (:func:`m3_system`, NLx Algorithm 1): the fast momentum and the
second moment (every step), their orthogonalisation, the weights, and the
slow momentum with its orthogonalisation every ``f`` steps, its context the
chunk's ``f`` gradients (the runner's chunk sum); the weights read the slow
direction of the previous step, so a new one is used from the next step on.
"""

from __future__ import annotations

from ..optimizers.adam import moment_estimate
from ..optimizers.local_surprise import weight_gradient
from ..optimizers.m3 import M3
from ..optimizers.optimizer import descent_step, pair_of_betas, real_hyperparameter
from ..validation import check_arrays
from .runner import run
from .system import NestedLevel, NestedSystem, Signal


def minibatch_gradient(loss, W, x, target):
    r"""The gradient of the step's loss at ``W [d_out, d_in]``: for one sample ``x [d_in]``, :math:`u x^T`;
    for a minibatch ``x [B, d_in]``, ``target [B, d_out]``, the mean of the per-sample gradients.

    (A single sample's gradient has rank one: M3's orthogonalisation needs a minibatch.)
    """
    xp = check_arrays(W=W, x=x, target=target)
    g = weight_gradient(loss, W, x, target)  # (d_out, d_in) or (B, d_out, d_in)
    return g if x.ndim == 1 else xp.mean(g, axis=0)


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
        g = minibatch_gradient(loss, W, x, target)  # (d_out, d_in) at W_{t-1}
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
    """Run :func:`adam_system` on samples ``X [N, d_in]`` or minibatches ``X [N, B, d_in]`` (``targets`` alike); return ``[W_0, ..., W_N]``."""
    xp = check_arrays(W_0=W_0, X=X, targets=targets)
    if X.ndim < 2 or targets.ndim < 2 or X.shape[0] != targets.shape[0]:
        raise ValueError(f"X and targets must be [N, ..., d] with one N; got {tuple(X.shape)}, {tuple(targets.shape)}")
    zero = xp.zeros_like(W_0)
    initial = {"W": W_0, "m": (zero, zero, 0), "v": (zero, zero, 0)}
    data = [(X[t, ...], targets[t, ...]) for t in range(X.shape[0])]
    _, traj = run(system, initial, data, order=order)
    return [s["W"] for s in traj]


def m3_system(lr=1e-3, betas=(0.9, 0.999, 0.9), alpha=1.0, eps=1e-8, frequency=100, orthogonalize="polar",
              ns_steps=5, *, loss="squared_error", method="closed") -> NestedSystem:
    r"""M3 (NLx Algorithm 1) declared as a nested system, each level one of :class:`refmem.optimizers.m3.M3`'s level steps.

    Components (values are arrays ``[..., d_out, d_in]``):

    - ``M1`` (every step, reads ``g``): :math:`M^{(1)} + \beta_1 g`; ``V`` (every
      step, reads ``g``): :math:`V + \beta_2 g \odot g`; one level;
    - ``O1`` (every step, reads ``M1``): :math:`\mathrm{orth}(M^{(1)})`;
    - ``W`` (every step, reads ``O1``, ``V`` and ``O2@prev``):
      :math:`W - \eta (O^{(1)} + \alpha O^{(2)}) / (\sqrt V + \epsilon)`; the slow
      direction of the previous step (a new one is used from the next step on);
    - ``M2`` (every ``f`` steps, ``g`` summed over its chunk of ``f`` steps):
      :math:`M^{(2)} + \beta_3 \sum g`;
    - ``O2`` (every ``f`` steps, reads ``M2``): :math:`\mathrm{orth}(M^{(2)})`.
    """
    opt = M3(lr=lr, betas=betas, alpha=alpha, eps=eps, frequency=frequency, orthogonalize=orthogonalize,
             ns_steps=ns_steps)
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")
    f = opt.hyperparameters["frequency"]

    def gradient(ctx):
        x, target = ctx["data"]
        return minibatch_gradient(loss, ctx["W@prev"], x, target)  # (d_out, d_in) at W_{t-1}

    return NestedSystem(
        name="m3",
        levels=(
            NestedLevel("W", lambda W, c: opt.weights_step(W, c["O1"], c["O2@prev"], c["V"], method=method)[0],
                        reads=("O1", "V", "O2@prev"), description="weights: W - lr (O1 + alpha O2)/(sqrt(V)+eps)"),
            NestedLevel("O2", lambda O, c: opt.orthogonalization_step(c["M2"], method=method)[0], reads=("M2",),
                        period=f, description="orth(M2)"),
            NestedLevel("M2", lambda M, c: opt.slow_momentum_step(M, c["g"], method=method)[0], reads=("g",),
                        period=f, accumulate=("g",), description="slow momentum: M2 + beta3 sum of the chunk's g"),
            NestedLevel("O1", lambda O, c: opt.orthogonalization_step(c["M1"], method=method)[0], reads=("M1",),
                        description="orth(M1)"),
            NestedLevel("M1", lambda M, c: opt.fast_momentum_step(M, c["g"], method=method)[0], reads=("g",),
                        description="fast momentum: M1 + beta1 g"),
            NestedLevel("V", lambda V, c: opt.second_moment_step(V, c["g"], method=method)[0], reads=("g",),
                        description="second moment: V + beta2 g*g"),
        ),
        signals=(Signal("g", gradient, reads=("W@prev", "data"), description="grad of the loss at W"),),
    )


def train_m3(system: NestedSystem, W_0, X, targets, *, order=None):
    """Run :func:`m3_system` on minibatches ``X [N, B, d_in]``, ``targets [N, B, d_out]``; return ``[W_0, ..., W_N]``."""
    xp = check_arrays(W_0=W_0, X=X, targets=targets)
    zero = xp.zeros_like(W_0)
    initial = {"W": W_0, "M1": zero, "V": zero, "O1": zero, "M2": zero, "O2": zero}
    data = [(X[t, ...], targets[t, ...]) for t in range(X.shape[0])]
    _, traj = run(system, initial, data, order=order)
    return [s["W"] for s in traj]


__all__ = ["adam_system", "m3_system", "minibatch_gradient", "train_linear", "train_m3"]
