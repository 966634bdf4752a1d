r"""Backward passes of the deep (residual MLP) memory and of the Miras memories on it, explicit step.

Forward (:mod:`refmem.memories.deep_memory`): the weights :math:`W = (W_1, W_2)`
of :math:`\mathcal M(x) = x + W_1\sigma(W_2 x)` take one explicit step per token,

.. math::

    g_t = \nabla_W l(W_{t-1}; k_t, v_t), \qquad W_t = \mathrm{step}(W_{t-1}, g_t) \text{ on each matrix},
    \qquad o_t = \mathcal M_{W_t}(q_t),

with the forget gate (deep memory, Yaad: :math:`\alpha W - \eta g`), the lq FTRL step
(Moneta) or the KL step (Memora) of :mod:`refmem.backward.retention_steps`.

Adjoint recurrence
------------------
The step reads :math:`\nabla_W l`, so its adjoint reads the second derivatives of
the loss: with :math:`S_t = \partial\mathcal L/\partial W_t` (a pair),

.. math::

    S_t \mathrel{+}= \nabla_W \langle do_t, \mathcal M_{W_t}(q_t)\rangle, \quad
    dq_t = \nabla_x \langle do_t, \mathcal M_{W_t}(x)\rangle\big|_{x = q_t},

    (dW^{\rm step}, G_t, d\mathrm{gates}_t) = \mathrm{step}^*(S_t), \qquad
    (H_t, dk_t, dv_t) = \nabla_{(W, k, v)} \langle G_t, \nabla_W l(W_{t-1}; k_t, v_t)\rangle,

    S_{t-1} = dW^{\rm step} + H_t, \qquad dW_0 = S_0,

where :math:`H_t = \nabla^2_{WW} l\, G_t` is a Hessian-vector product and
:math:`dk_t, dv_t` the mixed second derivatives, all written by hand beside the
MLP's backward pass (:func:`~refmem.memories.residual_mlp.deep_loss_grad_vjp`). The
gate gradients of the two matrices add up.

Implicit step
-------------
The implicit step (iterative only: :math:`W_t = \operatorname{argmin}_W l(W; k_t, v_t) + \mathrm{Ret}(W, W_{t-1})`
with the true, non-convex loss) is differentiated by the implicit function theorem
(:mod:`refmem.backward.implicit_steps`): on the packed weights
(:func:`~refmem.memories.residual_mlp.pack_weights`) the step objective's Hessian at the
computed minimiser is :math:`H = \nabla^2_{WW} l + \nabla^2\mathrm{Ret}` (the first by the
same hand-written Hessian-vector product), and with :math:`H\lambda_t = S_t`,

.. math::

    (\cdot, dk_t, dv_t) = -\nabla_{(W, k, v)} \langle \lambda_t, \nabla_W l(W_t; k_t, v_t)\rangle, \qquad
    (S_{t-1}, d\mathrm{gates}_t) = -\big(\partial\nabla\mathrm{Ret}/\partial(W_{t-1}, \mathrm{gates})\big)^T\lambda_t .

:math:`H` must be positive definite there (``1/eta`` above the loss's negative curvature):
where it is not, the minimiser has no derivative and the backward pass raises
:class:`~refmem.solvers.ConvergenceError`.
"""

from __future__ import annotations

from ..memories.deep_memory import deep_memory_recurrent
from ..memories.memora import memora_deep_recurrent, uniform_state
from ..memories.moneta import moneta_deep_recurrent
from ..memories._level_scan import state_step
from ..memories.deep_memory import deep_step
from ..memories.residual_mlp import (ResidualLoss, deep_loss_grad, deep_loss_grad_vjp, default_params, mlp_forward,
                                     pack_weights, residual_loss, unpack_weights)
from ..retentions import ForgetGate
from ..retentions.kl_simplex import KLSimplex
from ..retentions.lq_moneta import LqMoneta
from ..memories.yaad import yaad_deep_recurrent
from .cotangents import check_cotangents, finite_gradients
from .implicit_steps import adjoint_solve, on_simplex, retention_hvp, retention_vjp
from .retention_steps import forget_gate_step, forget_gate_step_vjp, kl_step, kl_step_vjp, lq_step, lq_step_vjp


def deep_scan_vjp(q, k, v, W0, gates, loss, activation, step, step_vjp, do, dW_T, xp):
    """The adjoint recurrence of the module docstring for any explicit step on each weight matrix.

    ``gates``: ``{name: [..., T]}``; ``step(W, g, **gates_t)`` and
    ``step_vjp(S, W, g, **gates_t) -> (dW, dg, dgates_t)`` act on one matrix.
    """
    T = k.shape[-2]
    at = lambda t: {name: x[..., t] for name, x in gates.items()}  # noqa: E731  (gates of step t)
    Ws, gs = [W0], []  # W_0 .. W_T, the bias gradients g_1 .. g_T (pairs)
    for t in range(T):
        W1, W2 = Ws[-1]
        _, g1, g2 = deep_loss_grad(W1, W2, k[..., t, :], v[..., t, :], loss, xp, activation)  # (.., d, h), (.., h, d)
        gs.append((g1, g2))
        Ws.append((step(W1, g1, **at(t)), step(W2, g2, **at(t))))
    S1, S2 = dW_T
    dq, dk, dv, dgates = [], [], [], {name: [] for name in gates}
    for t in reversed(range(T)):
        _, read_back = mlp_forward(*Ws[t + 1], q[..., t, :], xp, activation)
        r1, r2, gq = read_back(do[..., t, :])  # the read-out o_t = M_{W_t}(q_t)
        S1, S2 = S1 + r1, S2 + r2  # S_t, (.., d, h), (.., h, d)
        dq.append(gq)  # (.., d)
        (W1, W2), (g1, g2) = Ws[t], gs[t]  # W_{t-1}, g_t
        dW1, G1, dg_1 = step_vjp(S1, W1, g1, **at(t))
        dW2, G2, dg_2 = step_vjp(S2, W2, g2, **at(t))
        H1, H2, dk_t, dv_t = deep_loss_grad_vjp(W1, W2, k[..., t, :], v[..., t, :], loss, G1, G2, xp, activation)
        dk.append(dk_t)
        dv.append(dv_t)
        for name in gates:
            dgates[name].append(dg_1[name] + dg_2[name])
        S1, S2 = dW1 + H1, dW2 + H2  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    grads = {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2)}
    grads.update({name: stack(x, -1) for name, x in dgates.items()})
    grads["initial_state"] = (S1, S2)
    return grads


def deep_implicit_scan_vjp(q, k, v, W0, retention_at, loss, activation, do, dW_T, xp, **step_options):
    """Adjoint of a scan of implicit deep steps (module docstring, "Implicit step").

    ``retention_at(t)`` is the step's retention (applied to each matrix); the states are
    recomputed by the forward's own solves (:func:`~refmem.memories.deep_memory.deep_step`,
    ``step_options`` as the forward's). Returns ``q, k, v``, one entry per gate of the
    retention (the two matrices' parts added) and ``initial_state = (dW1_0, dW2_0)``.
    """
    T = k.shape[-2]
    Ws = [W0]
    for t in range(T):
        W, _ = state_step(deep_step, t, ("params", "M_t"), Ws[-1], k[..., t, :], v[..., t, :],
                          retention=retention_at(t), loss=loss, step="implicit", activation=activation, **step_options)
        Ws.append(W)
    h, d = W0[0].shape[-1], W0[0].shape[-2]
    S1, S2 = dW_T
    dq, dk, dv, dgates = [], [], [], {}
    for t in reversed(range(T)):
        _, read_back = mlp_forward(*Ws[t + 1], q[..., t, :], xp, activation)
        r1, r2, gq = read_back(do[..., t, :])  # the read-out o_t = M_{W_t}(q_t)
        S1, S2 = S1 + r1, S2 + r2  # S_t, (.., d, h), (.., h, d)
        dq.append(gq)
        (W1, W2), (P1, P2) = Ws[t + 1], Ws[t]  # W_t (the step's solution), W_{t-1}
        kt, vt = k[..., t, :], v[..., t, :]
        ret = retention_at(t).bind(xp, k.dtype)

        def hvp(Lam, W1=W1, W2=W2, kt=kt, vt=vt, ret=ret):
            L1, L2 = unpack_weights(Lam, h, d, xp)  # (n, .., d, h), (n, .., h, d)
            H1, H2, _, _ = deep_loss_grad_vjp(W1, W2, kt, vt, loss, L1, L2, xp, activation)
            return pack_weights(H1 + retention_hvp(ret, W1, L1, xp), H2 + retention_hvp(ret, W2, L2, xp), xp)

        lam, nu = adjoint_solve(hvp, pack_weights(S1, S2, xp), xp, simplex_rows=on_simplex(ret))
        lam1, lam2 = unpack_weights(lam, h, d, xp)
        _, _, dk_t, dv_t = deep_loss_grad_vjp(W1, W2, kt, vt, loss, lam1, lam2, xp, activation)
        dk.append(-dk_t)
        dv.append(-dv_t)
        S1, g1 = retention_vjp(ret, W1, P1, lam1, xp)  # S_{t-1} before its read-out
        S2, g2 = retention_vjp(ret, W2, P2, lam2, xp)
        if nu is not None:  # rows of the packed [W1; W2] keep the row sums of W_{t-1} (h = d)
            S1, S2 = S1 + nu[..., :d, None], S2 + nu[..., d:, None]
        for name in g1:
            dgates.setdefault(name, []).append(g1[name] + g2[name] + xp.zeros(tuple(k.shape[:-2]), dtype=k.dtype))
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    grads = {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2)}
    grads.update({name: stack(x, -1) for name, x in dgates.items()})
    grads["initial_state"] = (S1, S2)
    return grads


def _start(initial_state, k, hidden, xp, default=default_params):
    if initial_state is not None:
        return initial_state
    d = k.shape[-1]
    return default(k.shape[:-2], d, d if hidden is None else int(hidden), xp, k.dtype)


def _forget_gate(xp):
    return (lambda W, g, alpha, eta: forget_gate_step(W, g, alpha, eta, xp),
            lambda S, W, g, alpha, eta: forget_gate_step_vjp(S, W, g, alpha, eta, xp))


@finite_gradients
def deep_memory_vjp(q, k, v, eta, alpha=None, *, do, dM_T=None, initial_state=None, hidden=None, loss=None,
                    step="explicit", method="closed", activation="tanh", rtol=None):
    """Gradients of the deep memory's scan under the forget gate, explicit or implicit step (module docstring).

    Parameters
    ----------
    q, k, v, eta, alpha, initial_state, hidden, loss, step, method, activation, rtol
        As :func:`~refmem.memories.deep_memory.deep_memory_recurrent` (the implicit step needs
        ``method="iterative"``, like its forward).
    do : array ``[..., T, d]``
        Cotangent of ``o``.
    dM_T : tuple ``(dW1 [..., d, h], dW2 [..., h, d])``, optional
        Cotangent of the final weights (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, eta``, ``alpha`` (when given) and ``initial_state = (dW1_0, dW2_0)``.
        The Huber and lp (``p < 2``) biases have kinks: the gradient there is one-sided.
    """
    o, W_T = deep_memory_recurrent(q, k, v, eta, alpha, initial_state=initial_state, hidden=hidden, loss=loss,
                                   step=step, method=method, activation=activation, rtol=rtol)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    ones = alpha is None
    gates = {"alpha": xp.ones_like(eta) if ones else alpha, "eta": eta}
    W0 = _start(initial_state, k, hidden, xp)
    if step == "implicit":
        def retention_at(t):
            return ForgetGate(eta=eta[..., t], alpha=gates["alpha"][..., t])

        grads = deep_implicit_scan_vjp(q, k, v, W0, retention_at, residual_loss(loss), activation, do, dW_T, xp,
                                       method=method, rtol=rtol)
    else:
        step_fn, step_vjp = _forget_gate(xp)
        grads = deep_scan_vjp(q, k, v, W0, gates, residual_loss(loss), activation, step_fn, step_vjp, do, dW_T, xp)
    if ones:
        del grads["alpha"]
    return grads


@finite_gradients
def yaad_deep_vjp(q, k, v, alpha, eta, *, do, dM_T=None, delta=1.0, step="explicit", method="closed",
                  initial_state=None, hidden=None, activation="tanh"):
    """Gradients of Yaad on the deep memory (per-coordinate Huber, forget gate), explicit or implicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.yaad.yaad_deep_recurrent`.
    """
    o, W_T = yaad_deep_recurrent(q, k, v, alpha, eta, delta=delta, step=step, method=method,
                                 initial_state=initial_state, hidden=hidden, activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    bias, W0 = ResidualLoss("huber", delta=float(delta)), _start(initial_state, k, hidden, xp)
    if step == "implicit":
        return deep_implicit_scan_vjp(q, k, v, W0, lambda t: ForgetGate(eta=eta[..., t], alpha=alpha[..., t]), bias,
                                      activation, do, dW_T, xp, method=method)
    step_fn, step_vjp = _forget_gate(xp)
    return deep_scan_vjp(q, k, v, W0, {"alpha": alpha, "eta": eta}, bias, activation, step_fn, step_vjp, do, dW_T, xp)


@finite_gradients
def moneta_deep_vjp(q, k, v, alpha, eta, *, do, dM_T=None, p=3.0, lq=4.0, step="explicit", method="closed",
                    initial_state=None, hidden=None, activation="tanh"):
    """Gradients of Moneta on the deep memory (lp bias, lq FTRL step on each matrix), explicit or implicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.moneta.moneta_deep_recurrent`.
    """
    o, W_T = moneta_deep_recurrent(q, k, v, alpha, eta, p=p, lq=lq, step=step, method=method,
                                   initial_state=initial_state, hidden=hidden, activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    bias, W0 = ResidualLoss("lp", p=float(p)), _start(initial_state, k, hidden, xp)
    if step == "implicit":
        return deep_implicit_scan_vjp(q, k, v, W0, lambda t: LqMoneta(q=lq, alpha=alpha[..., t], eta=eta[..., t]),
                                      bias, activation, do, dW_T, xp, method=method)
    lq = float(lq)
    return deep_scan_vjp(q, k, v, W0, {"alpha": alpha, "eta": eta}, bias, activation,
                         lambda W, g, alpha, eta: lq_step(W, g, alpha, eta, lq, xp),
                         lambda S, W, g, alpha, eta: lq_step_vjp(S, W, g, alpha, eta, lq, xp), do, dW_T, xp)


@finite_gradients
def memora_deep_vjp(q, k, v, eta, *, do, dM_T=None, a=1.0, c=1.0, step="explicit", method="closed",
                    initial_state=None, hidden=None, activation="tanh"):
    """Gradients of Memora on the deep memory (l2 bias, KL step on the rows of each matrix), explicit or implicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.memora.memora_deep_recurrent`.
    """
    o, W_T = memora_deep_recurrent(q, k, v, eta, a=a, c=c, step=step, method=method, initial_state=initial_state,
                                   hidden=hidden, activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    a, c = float(a), float(c)

    def uniform_rows(batch, d, h, xp, dtype):
        return uniform_state(batch, d, h, c, xp, dtype), uniform_state(batch, h, d, c, xp, dtype)

    W0 = _start(initial_state, k, hidden, xp, uniform_rows)
    if step == "implicit":
        return deep_implicit_scan_vjp(q, k, v, W0, lambda t: KLSimplex(eta=eta[..., t], a=a, c=c), ResidualLoss("l2"),
                                      activation, do, dW_T, xp, method=method)
    return deep_scan_vjp(q, k, v, W0, {"eta": eta},
                         ResidualLoss("l2"), activation,
                         lambda W, g, eta: kl_step(W, g, eta, a, c, xp),
                         lambda S, W, g, eta: kl_step_vjp(S, W, g, eta, a, c, xp), do, dW_T, xp)


@finite_gradients
def titans_deep_vjp(q, k, v, alpha, eta, theta, *, do, dM_T=None, dS_T=None, initial_state=None,
                    initial_momentum=None, hidden=None, loss=None, activation="tanh"):
    r"""Gradients of Titans on the deep memory (momentum under the memory level, on each weight matrix).

    Forward (:mod:`refmem.memories.titans_deep`):
    :math:`S_t = \eta_t S_{t-1} - \theta_t g_t`, :math:`g_t = \nabla_W l(W_{t-1}; k_t, v_t)`,
    :math:`W_t = (1 - \alpha_t) W_{t-1} + S_t`, :math:`o_t = \mathcal M_{W_t}(q_t)`.

    Parameters
    ----------
    q, k, v, alpha, eta, theta, initial_state, initial_momentum, hidden, loss, activation
        As :func:`~refmem.memories.titans_deep.titans_deep_recurrent` (closed-form levels).
    do : array ``[..., T, d]``
    dM_T, dS_T : tuple ``(dW1, dW2)``, optional
        Cotangents of the final weights and of the final momentum (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, alpha, eta, theta``, ``initial_state`` and ``initial_momentum`` (pairs).

    Notes
    -----
    The linear Titans' adjoint (:mod:`refmem.backward.titans`) with the bias
    gradient's second derivatives in place of :math:`(M k - v) k^T`'s: with
    :math:`A_t = \partial\mathcal L/\partial W_t`, :math:`B_t = \partial\mathcal L/\partial S_t`
    and the momentum's total adjoint :math:`\bar B_t = B_t + A_t`,

    .. math::

        d\theta_t = -\langle \bar B_t, g_t\rangle, \quad d\eta_t = \langle \bar B_t, S_{t-1}\rangle, \quad
        d\alpha_t = -\langle A_t, W_{t-1}\rangle, \quad G_t = -\theta_t \bar B_t,

        (H_t, dk_t, dv_t) = \nabla_{(W,k,v)}\langle G_t, \nabla_W l\rangle, \quad
        A_{t-1} = (1 - \alpha_t) A_t + H_t, \quad B_{t-1} = \eta_t \bar B_t .
    """
    from ..memories.titans_deep import titans_deep_recurrent

    o, W_T, S_T = titans_deep_recurrent(q, k, v, alpha, eta, theta, initial_state=initial_state,
                                        initial_momentum=initial_momentum, hidden=hidden, loss=loss,
                                        activation=activation, return_momentum=True)
    xp = _namespace(q)
    A = _check_pair(do, dM_T, o, W_T, xp)
    B = _check_pair(do, dS_T, o, S_T, xp)
    loss = residual_loss(loss)
    W0 = _start(initial_state, k, hidden, xp)
    S0 = (xp.zeros_like(W0[0]), xp.zeros_like(W0[1])) if initial_momentum is None else initial_momentum
    T = k.shape[-2]
    Ws, Ss, gs = [W0], [S0], []
    for t in range(T):
        _, g1, g2 = deep_loss_grad(*Ws[-1], k[..., t, :], v[..., t, :], loss, xp, activation)
        gs.append((g1, g2))
        e, th, a = eta[..., t, None, None], theta[..., t, None, None], alpha[..., t, None, None]
        Ss.append(tuple(e * S_i - th * g_i for S_i, g_i in zip(Ss[-1], (g1, g2))))
        Ws.append(tuple((1 - a) * W_i + S_i for W_i, S_i in zip(Ws[-1], Ss[-1])))
    dq, dk, dv, da, de, dth = [], [], [], [], [], []
    total = lambda X, Y: xp.sum(X[0] * Y[0], axis=(-2, -1)) + xp.sum(X[1] * Y[1], axis=(-2, -1))  # noqa: E731
    for t in reversed(range(T)):
        _, read_back = mlp_forward(*Ws[t + 1], q[..., t, :], xp, activation)
        r1, r2, gq = read_back(do[..., t, :])
        A = (A[0] + r1, A[1] + r2)  # A_t
        dq.append(gq)
        Bb = (B[0] + A[0], B[1] + A[1])  # the momentum's total adjoint: W_t reads S_t
        th, e, a = theta[..., t], eta[..., t], alpha[..., t]
        dth.append(-total(Bb, gs[t]))
        de.append(total(Bb, Ss[t]))
        da.append(-total(A, Ws[t]))
        G = tuple(-th[..., None, None] * X for X in Bb)  # cotangent of g_t
        H1, H2, dk_t, dv_t = deep_loss_grad_vjp(*Ws[t], k[..., t, :], v[..., t, :], loss, *G, xp, activation)
        dk.append(dk_t)
        dv.append(dv_t)
        A = ((1 - a[..., None, None]) * A[0] + H1, (1 - a[..., None, None]) * A[1] + H2)
        B = (e[..., None, None] * Bb[0], e[..., None, None] * Bb[1])
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    return {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2), "alpha": stack(da, -1),
            "eta": stack(de, -1), "theta": stack(dth, -1), "initial_state": A, "initial_momentum": B}


def _check_pair(do, dW_T, o, W_T, xp):
    """``dW_T`` checked against the final weights ``(W1, W2)``; zeros when ``None``."""
    if dW_T is None:
        check_cotangents(do, None, o, W_T[0])
        return xp.zeros_like(W_T[0]), xp.zeros_like(W_T[1])
    if not isinstance(dW_T, tuple) or len(dW_T) != 2:
        raise TypeError("dM_T for the deep memory must be a pair (dW1 [..., d, h], dW2 [..., h, d]) like its final state")
    return check_cotangents(do, dW_T[0], o, W_T[0]), check_cotangents(do, dW_T[1], o, W_T[1])


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
