r"""Momentum is a two-level memory (NL-7..11, NLx-10..13, MATH.md 2b).

The consistent form (arXiv; NeurIPS prints it with errata, below):

.. math::

    W_{t+1} &= W_t - m_{t+1},                                                        \\
    m_{t+1} &= \alpha\, m_t + \eta\, g_{t+1}, \qquad g_{t+1} = \nabla_W L(W_t; x_{t+1}) = u_{t+1} x_{t+1}^T \\
            &= \operatorname*{argmin}_m\; -\langle m, g_{t+1}\rangle + \frac{1}{2\eta}\|m - \alpha m_t\|^2 .

- Level 1, :func:`momentum_level`: the momentum ``m``, a *key-less* memory
  (:class:`~refmem.objectives.Inner`) under a forget gate
  (:class:`~refmem.retentions.ForgetGate` with ``eta`` the learning rate and
  ``alpha`` the momentum); it compresses the gradients and updates every step.
- Level 2, :func:`weight_level`: the weights ``W``, which read level 1:
  :math:`W_{t+1} = \operatorname{argmin}_W -\langle W, -m_{t+1}\rangle + \tfrac12\|W - W_t\|^2 = W_t - m_{t+1}`.

Unrolled, :math:`m_{t+1} = \eta\sum_{j \ge 0} \alpha^j g_{t+1-j}`: the
gradient ``j`` steps back has weight :math:`\eta\alpha^j`
(:mod:`.momentum_horizon` counts how many recent gradients carry a given share).

The two levels reproduce the heavy-ball arithmetic of :func:`heavy_ball_step`,
two lines with no problem solved; :func:`momentum_step` solves the levels.

With :math:`\alpha = 1` and one sample, :math:`-\langle m, u x^T\rangle = -\langle m x, u\rangle`:
the same level has key ``x``, value ``u`` and the Hebbian objective
(:func:`nl11_level`, NL-11).

The NeurIPS print's errata (NL-7+8 ascent, NL-10's weighting, NL-17's names)
are evaluated as printed in :mod:`.momentum_errata`.
"""

from __future__ import annotations

from ..level import Level, solve
from ..objectives import Dot, Inner
from ..retentions import ForgetGate, LocalL2
from ..validation import check_arrays, check_ndim
from .local_surprise import local_surprise, weight_gradient


def momentum_level(eta=1.0, alpha=0.9) -> Level:
    r"""Level 1: :math:`m_{t+1} = \operatorname{argmin}_m -\langle m, g\rangle + \frac{1}{2\eta}\|m - \alpha m_t\|^2`.

    Parameters
    ----------
    eta : float or array ``[...]``
        Learning rate, ``> 0``.
    alpha : float or array ``[...]``
        Momentum (decay of past gradients), in ``[0, 1]``.

    Notes
    -----
    Closed form :math:`\alpha m_t + \eta g` (NLx-10). The objective is linear,
    so the implicit and explicit steps coincide.
    """
    return Level(Inner(), ForgetGate(eta=eta, alpha=alpha), step="implicit", name="momentum")


def weight_level() -> Level:
    r"""Level 2: :math:`W_{t+1} = \operatorname{argmin}_W -\langle W, -m_{t+1}\rangle + \tfrac12\|W - W_t\|^2 = W_t - m_{t+1}`.

    The weights read the momentum memory as their value (negated: descent).
    """
    return Level(Inner(), LocalL2(eta=1.0), step="implicit", name="momentum_weights")


def heavy_ball_step(W_t, m_t, g, eta=1.0, alpha=0.9):
    r"""The arithmetic the two levels reproduce, written as two lines: :math:`m = \alpha m_t + \eta g`, :math:`W = W_t - m`.

    No problem is solved and nothing is checked beyond the inputs: this is the
    textbook heavy-ball update (Polyak) that :func:`momentum_step` must equal.

    >>> import numpy as np
    >>> W, m = heavy_ball_step(np.zeros((1, 2)), np.ones((1, 2)), np.ones((1, 2)), eta=0.1, alpha=0.5)
    >>> W.tolist(), m.tolist()
    ([[-0.6, -0.6]], [[0.6, 0.6]])
    """
    check_arrays(W_t=W_t, m_t=m_t, g=g)
    m = alpha * m_t + eta * g  # (.., d_out, d_in)
    return W_t - m, m


def momentum_step(W_t, m_t, g, eta=1.0, alpha=0.9, *, method="closed", solver=None):
    r"""One step of the two-level memory: solve level 1 for :math:`m_{t+1}`, then level 2 for :math:`W_{t+1}`.

    Parameters
    ----------
    W_t, m_t, g : arrays ``[..., d_out, d_in]``
        Weights, momentum, gradient :math:`\nabla_W L(W_t; x_{t+1})`.
    eta, alpha : float or array ``[...]``
    method : {"closed", "iterative"}
    solver : str, optional

    Returns
    -------
    W, m : arrays ``[..., d_out, d_in]``
    reports : tuple of two SolveReport

    Examples
    --------
    The two levels reproduce the heavy-ball update:

    >>> import numpy as np
    >>> from refmem.optimizers.momentum import momentum_step
    >>> rng = np.random.default_rng(0)
    >>> W, m, g = rng.standard_normal((3, 2, 4))   # weights, momentum, gradient [d_out, d_in]
    >>> W_new, m_new, _ = momentum_step(W, m, g, eta=0.1, alpha=0.9)
    >>> m_ref = 0.9 * m + 0.1 * g                  # m_{t+1} = alpha m_t + eta g
    >>> bool(np.allclose(m_new, m_ref)), bool(np.allclose(W_new, W - m_ref))
    (True, True)
    """
    check_arrays(W_t=W_t, m_t=m_t, g=g)
    m, rep_m = solve(momentum_level(eta, alpha), m_t, None, g, method=method, solver=solver)
    W, rep_W = solve(weight_level(), W_t, None, -m, method=method, solver=solver)
    return W, m, (rep_m, rep_W)


def momentum_train(loss, W_0, X, targets, eta=1.0, alpha=0.9, *, m_0=None, method="closed", solver=None):
    r"""Train ``y = W x`` with momentum as a sequence of two-level solves.

    Parameters
    ----------
    loss : Loss or str
    W_0 : array ``[..., d_out, d_in]``
    X : array ``[..., N, d_in]``
    targets : array ``[..., N, d_out]``
    eta, alpha : float or array ``[...]``
    m_0 : array ``[..., d_out, d_in]``, optional
        Initial momentum; default zeros.
    method, solver
        As in :func:`refmem.level.solve`.

    Returns
    -------
    Ws, ms : arrays ``[..., N + 1, d_out, d_in]``
        :math:`W_0 \dots W_N` and :math:`m_0 \dots m_N`.
    reports : list of (SolveReport, SolveReport)
    """
    xp = check_arrays(W_0=W_0, X=X, targets=targets, m_0=m_0)
    check_ndim(X, "X", 2, "[..., N, d_in]")
    check_ndim(targets, "targets", 2, "[..., N, d_out]")
    N = X.shape[-2]
    if targets.shape[-2] != N:
        raise ValueError(f"targets has {targets.shape[-2]} samples but X has N = {N} (axis -2)")
    m = xp.zeros_like(W_0) if m_0 is None else m_0
    if tuple(m.shape) != tuple(W_0.shape):
        raise ValueError(f"m_0 must have the shape of W_0 {tuple(W_0.shape)}; got {tuple(m.shape)}")
    W, Ws, ms, reports = W_0, [W_0], [m], []
    for t in range(N):
        g = weight_gradient(loss, W, X[..., t, :], targets[..., t, :])  # (.., d_out, d_in) = u x^T at W_t
        W, m, reps = momentum_step(W, m, g, eta, alpha, method=method, solver=solver)
        Ws.append(W)
        ms.append(m)
        reports.append(reps)
    return xp.stack(Ws, axis=-3), xp.stack(ms, axis=-3), reports


def nl11_level(eta=1.0) -> Level:
    r"""NL-11 (``alpha = 1``): :math:`\operatorname{argmin}_m -\langle m x, u\rangle + \frac{1}{2\eta}\|m - m_t\|^2`.

    Key ``x``, value ``u`` (no sign flip: ``W`` subtracts ``m``), Hebbian
    objective :class:`~refmem.objectives.Dot`. Equals :func:`momentum_level`
    with ``alpha = 1`` and ``g = u x^T`` because :math:`\langle m x, u\rangle = \langle m, u x^T\rangle`.
    """
    return Level(Dot(), LocalL2(eta=eta), step="implicit", name="momentum_nl11")


def nl11_update(loss, W_t, m_t, x, target, eta=1.0, *, method="closed", solver=None):
    """The NL-11 momentum update: ``u`` at ``W_t`` for sample ``x``, then the keyed level. Returns ``(m, report)``."""
    u = local_surprise(loss, W_t, x, target)  # (.., d_out)
    return solve(nl11_level(eta), m_t, x, u, method=method, solver=solver)


__all__ = [
    "momentum_level",
    "weight_level",
    "heavy_ball_step",
    "momentum_step",
    "momentum_train",
    "nl11_level",
    "nl11_update",
]
