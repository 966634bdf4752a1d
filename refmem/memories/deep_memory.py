r"""A deep (residual MLP) memory: one level step and the scan (MATH.md 5g; Titans / Miras).

.. math::

    \mathcal M(x) = x + W_1\, \sigma(W_2 x), \qquad
    W_1 \in \mathbb R^{d \times h},\; W_2 \in \mathbb R^{h \times d}, \qquad (d_k = d_v = d)

The memory's parameters ``W = (W_1, W_2)`` replace the matrix ``M``; one level
of the scan is, as for a linear memory,

.. math::

    W_t = \operatorname*{argmin}_W\; l(W; k_t, v_t) + \mathrm{Ret}(W, W_{t-1}),
    \qquad l(W; k, v) = \ell(\mathcal M(k) - v),

with an attentional bias :math:`\ell` on the residual ``r = M(k) - v``
(:class:`ResidualLoss`: ``l2`` :math:`\tfrac12\|r\|^2`, ``lp`` :math:`\|r\|_p^p`,
``huber`` per coordinate) and a retention applied to each weight matrix,
:math:`\mathrm{Ret}(W, W') = \mathrm{Ret}(W_1, W_1') + \mathrm{Ret}(W_2, W_2')`
(any :class:`~refmem.retentions.Retention`; the forget gate by default).

The MLP, its hand-written backward pass and the residual losses are in
:mod:`refmem.memories.residual_mlp`; the curvature bounds that size the
iterative solvers' steps in :mod:`refmem.memories.deep_curvature`. This module
holds one level step (:func:`deep_step`) and the scan.

Steps (:func:`deep_step`):

- explicit: the loss linearised at ``W_{t-1}``; its closed form is the
  retention's explicit step on each matrix (one gradient step
  :math:`\alpha W - \eta \nabla l` under the forget gate); the iterative
  solver minimises :math:`\langle g, W\rangle + \mathrm{Ret}(W, W_{t-1})` numerically;
- implicit: the true (non-convex) ``l``; no closed form exists, so only the
  iterative solver (gradient descent with step ``1/L`` from a curvature
  estimate, or proximal gradient for a non-smooth retention) computes it. For ``eta`` small enough
  that :math:`1/\eta` exceeds the negative curvature of ``l`` the problem is
  strongly convex and the minimiser unique; the NumPy-only cross-check in
  :mod:`refmem.checks.deep_memory_scipy` compares it with SciPy (BFGS, then a root of the optimality condition).

State convention: the state is the pair ``(W_1, W_2)`` (``[..., d, h]``,
``[..., h, d]``), not a matrix ``[..., d_v, d_k]``. Without ``initial_state``
the scan starts from ``W_1 = 0``, ``W_2 = I_{h x d}`` (``M`` is the identity
map and its gradient in ``W_1`` is non-zero; ``W_1 = W_2 = 0`` is a saddle
where every gradient vanishes). Read-out ``o_t = M_t(q_t)``.
"""

from __future__ import annotations

from ..level import ClosedFormUnavailable
from ..linalg import broadcast_like
from ..retentions import ForgetGate, Retention
from ..solvers import Problem
from ..solvers.dispatch import default_solver, minimize
from ..validation import check_arrays, check_scan_state, finite_outputs
from ._inputs import check_sequence, check_step_gate, random_inputs
from ._level_scan import state_step
from .deep_curvature import curvature_bound, measured_curvature
from .residual_mlp import (ResidualLoss, check_params, deep_loss, deep_loss_grad, default_params, make_initial_state,
                           mlp_forward, pack_weights, residual_loss, unpack_weights)

__all__ = ["ResidualLoss", "deep_step", "level_problem", "deep_memory_recurrent", "deep_scan", "make_initial_state",
           "make_deep_initial_state"]

# --------------------------------------------------------------------------- one level step


def deep_step(params, k, v, *, retention=None, loss=None, step="explicit", method="closed",
              activation="tanh", solver=None, rtol=None, max_iter=None):
    r"""One level update of the deep memory: ``argmin_W l(W; k, v) + Ret(W, W_t)`` (or its linearisation).

    Parameters
    ----------
    params : tuple ``(W1 [..., d, h], W2 [..., h, d])``
        ``W_t``.
    k, v : array ``[..., d]``
    retention : Retention, optional
        Applied to each matrix; default ``ForgetGate(eta=0.1, alpha=1)``.
    loss : ResidualLoss or str, optional
        Default ``l2``.
    step : {"explicit", "implicit"}
    method : {"closed", "iterative"}
        ``"closed"`` exists for the explicit step only (the retention's
        explicit step on each matrix); the implicit step raises
        :class:`~refmem.level.ClosedFormUnavailable`.
    solver : str, optional
        Iterative solver; default ``cg`` for the explicit step under a
        quadratic retention, ``prox_grad`` for a non-smooth retention,
        the retention's ``preferred_solver`` if it names one, else ``gd``
        (step ``1/L``: ``L`` is ``1/eta`` plus twice the measured curvature of
        ``l`` at ``W_t`` (:func:`~refmem.memories.deep_curvature.measured_curvature`), capped by
        :func:`~refmem.memories.deep_curvature.curvature_bound`).

    Returns
    -------
    (W1, W2), SolveReport

    Notes
    -----
    Explicit: :math:`\min_W \langle g, W\rangle + \mathrm{Ret}(W, W_t)`,
    :math:`g = \nabla l(W_t)`. Implicit: :math:`\min_W l(W) + \mathrm{Ret}(W, W_t)`.
    """
    from ..solvers import SolveReport

    loss = residual_loss(loss)
    if step not in ("explicit", "implicit"):
        raise ValueError(f"step must be 'explicit' or 'implicit'; got {step!r}")
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")
    xp = check_arrays(k=k, v=v)
    if k.shape[-1] != v.shape[-1]:
        raise ValueError(f"the deep memory maps d to d: k and v must have the same length; got {k.shape[-1]}, {v.shape[-1]}")
    W1t, W2t = check_params(params, k.shape[-1], xp, k.dtype, name="params")
    retention = ForgetGate(eta=0.1, alpha=1.0) if retention is None else retention
    if not isinstance(retention, Retention):
        raise TypeError(f"retention must be a Retention instance; got {type(retention).__name__}")
    ret = retention.bind(xp, k.dtype)
    h, d = W1t.shape[-1], W1t.shape[-2]
    for W in (W1t, W2t):  # e.g. the KL retention needs every row on its simplex
        ret.check_state(W, xp)
    _, g1, g2 = deep_loss_grad(W1t, W2t, k, v, loss, xp, activation)
    if method == "closed":
        if step == "implicit":
            raise ClosedFormUnavailable("the implicit step of the deep memory has no closed form; use method='iterative'")
        W = (ret.explicit_step(W1t, g1, xp), ret.explicit_step(W2t, g2, xp))
        return W, SolveReport("closed", f"deep/{loss.name}/{ret.name}/explicit")
    if step == "implicit" and not loss.smooth:
        raise ValueError(f"the implicit deep step needs a smooth loss (l2, huber, lp with p >= 2); got lp with p = {loss.p}")
    prob = level_problem(W1t, W2t, k, v, g1, g2, ret, loss, step, activation, xp)
    name = solver or default_solver(prob)
    if name == "mirror_descent" and h != d:
        raise ValueError(f"the row-wise (simplex) retention {ret.name!r} needs the hidden size h equal to d = {d} "
                         f"for the iterative deep step (rows of W1 and W2 are packed as rows); got h = {h}")
    X, report = minimize(prob, solver=solver, rtol=rtol, max_iter=max_iter)  # the same dispatch as refmem.level.solve
    return unpack_weights(X, h, d, xp), report


def level_problem(W1t, W2t, k, v, g1, g2, ret, loss, step, activation, xp) -> Problem:
    r"""The stated problem (P) of one level step on the packed weights ``X`` (:func:`~refmem.memories.residual_mlp.pack_weights`).

    Explicit: :math:`\min_X \langle g, X\rangle + \mathrm{Ret}(X, X_t)` with
    ``g = (g1, g2)`` the gradient of ``l`` at ``W_t``; implicit:
    :math:`\min_X l(X) + \mathrm{Ret}(X, X_t)`, with the Lipschitz bound
    ``L = L_Ret + min(2 x measured curvature, curvature bound)`` of ``l`` at ``W_t``.
    ``ret`` is bound to ``xp`` and applied to each matrix.
    """
    h, d = W1t.shape[-1], W1t.shape[-2]
    Xt = pack_weights(W1t, W2t, xp)
    g = pack_weights(g1, g2, xp)

    def ret_value(X):
        A, B = unpack_weights(X, h, d, xp)
        return ret.value(A, W1t, xp) + ret.value(B, W2t, xp)

    def ret_grad(X):
        A, B = unpack_weights(X, h, d, xp)
        return pack_weights(ret.grad(A, W1t, xp), ret.grad(B, W2t, xp), xp)

    if step == "explicit":
        def f(X):
            return xp.sum(g * X, axis=(-2, -1)) + ret_value(X)

        def df(X):
            return g + ret_grad(X)

        L = ret.lipschitz(xp)
        quadratic = getattr(ret, "quadratic", True) and ret.prox is None
    else:
        def f(X):
            A, B = unpack_weights(X, h, d, xp)
            return deep_loss(A, B, k, v, loss, xp, activation) + ret_value(X)

        def df(X):
            A, B = unpack_weights(X, h, d, xp)
            _, a1, a2 = deep_loss_grad(A, B, k, v, loss, xp, activation)
            return pack_weights(a1, a2, xp) + ret_grad(X)

        L_l = xp.minimum(2 * measured_curvature(W1t, W2t, k, v, loss, activation, xp),
                         xp.asarray(curvature_bound(W1t, W2t, k, v, loss, activation, xp), dtype=k.dtype))
        L = ret.lipschitz(xp) + L_l
        quadratic = False
    prox = h_value = None
    if ret.prox is not None:
        def prox(X, t):
            A, B = unpack_weights(X, h, d, xp)
            return pack_weights(ret.prox(A, t), ret.prox(B, t), xp)

        def h_value(X):
            A, B = unpack_weights(X, h, d, xp)
            return ret.h_value(A) + ret.h_value(B)

    L = broadcast_like(xp.asarray(L, dtype=k.dtype), xp.sum(Xt, axis=(-2, -1)), xp)  # (..,)
    mu = broadcast_like(xp.asarray(ret.mu(xp), dtype=k.dtype), L, xp)  # (..,)
    x0 = broadcast_like(Xt, g, xp)  # (.., rows, cols)
    return Problem(xp, x0, f, df, L, mu, prox, h_value, quadratic,
                   preferred_solver=getattr(ret, "preferred_solver", None))


# --------------------------------------------------------------------------- the scan


@finite_outputs
def deep_memory_recurrent(q, k, v, eta, alpha=None, *, initial_state=None, hidden=None, loss=None,
                          step="explicit", method="closed", activation="tanh", rtol=None):
    r"""Scan of the deep memory: a forget-gate level per token, read-out ``o_t = M_t(q_t)``.

    Parameters
    ----------
    q, k, v : array ``[..., T, d]`` (``d_k = d_v = d``)
    eta : array ``[..., T]``
        Step sizes ``> 0``.
    alpha : array ``[..., T]``, optional
        Forget gates in ``[0, 1]`` (default 1: local l2 retention).
    initial_state : tuple ``(W1 [..., d, h], W2 [..., h, d])``, optional
        Default ``W1 = 0``, ``W2 = I`` with ``h = hidden`` (default ``d``).
    loss : ResidualLoss or str, optional
        Attentional bias on the residual (default ``l2``).
    step, method : see :func:`deep_step`
        ``"explicit"``/``"closed"`` is the gradient-descent memory
        :math:`W_t = \alpha_t W_{t-1} - \eta_t \nabla l(W_{t-1}; k_t, v_t)`.

    Returns
    -------
    o : array ``[..., T, d]``
    state : tuple ``(W1, W2)``
    """
    xp = check_sequence(q, k, v, eta=eta, alpha=alpha, optional=("alpha",))
    check_step_gate(eta, "eta", k, xp, low=0.0, low_open=True, high=None)
    check_step_gate(alpha, "alpha", k, xp)

    def retention_at(t):
        return ForgetGate(eta=eta[..., t], alpha=1.0 if alpha is None else alpha[..., t])

    return deep_scan(q, k, v, retention_at, initial_state=initial_state, hidden=hidden, loss=loss, step=step,
                     method=method, activation=activation, rtol=rtol)


def deep_scan(q, k, v, retention_at, *, initial_state=None, hidden=None, loss=None, step="explicit",
              method="closed", activation="tanh", rtol=None, initial_default=None):
    """Scan of the deep memory under any retention: ``retention_at(t) -> Retention`` for token ``t``.

    The shared scan of :func:`deep_memory_recurrent` and the deep variants of
    the Miras memories (Yaad, Memora, ...). ``initial_default(batch, d, h, xp, dtype)``
    overrides :func:`default_params` (e.g. a state on the simplex).
    Returns ``(o [..., T, d], (W1, W2))``.
    """
    xp = check_sequence(q, k, v)
    d = k.shape[-1]
    if v.shape[-1] != d:
        raise ValueError(f"the deep memory maps d to d: v must have last dimension d_k = {d}; got {tuple(v.shape)}")
    if initial_state is None:
        h = d if hidden is None else int(hidden)
        if h < 1:
            raise ValueError(f"hidden must be >= 1; got {hidden}")
        W = (initial_default or default_params)(k.shape[:-2], d, h, xp, k.dtype)
    else:
        W = check_params(initial_state, d, xp, k.dtype, batch=k.shape[:-2])
    outs = []
    for t in range(k.shape[-2]):
        W, _ = state_step(deep_step, t, ("params", "M_t"), W, k[..., t, :], v[..., t, :], retention=retention_at(t),
                          loss=loss, step=step, method=method, activation=activation, rtol=rtol)
        check_scan_state(W, t, xp)  # an overflow is a DivergenceError at step t, not bad input at t + 1
        y, _ = mlp_forward(W[0], W[1], q[..., t, :], xp, activation)
        outs.append(y)  # (.., d)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, W


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    # the deep memory maps d to d: d_v is taken equal to d_k
    return random_inputs(seed, batch, T, d_k, d_k, xp, dtype, eta=(0.05, 0.5), alpha=(0.8, 1.0))


def make_deep_initial_state(seed, batch, d_k, d_v, xp, dtype="float64"):
    """:func:`make_initial_state` in the registry's signature (``d_v`` must equal ``d_k``)."""
    if d_v != d_k:
        raise ValueError(f"the deep memory maps d to d: d_v must equal d_k = {d_k}; got {d_v}")
    return make_initial_state(seed, batch, d_k, xp, dtype)
