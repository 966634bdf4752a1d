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
gate gradients of the two matrices add up. Only the explicit step has a closed
form; the implicit step (iterative only) has no backward here.
"""

from __future__ import annotations

from ..memories.deep_memory import deep_memory_recurrent
from ..memories.memora import memora_deep_recurrent, uniform_state
from ..memories.moneta import moneta_deep_recurrent
from ..memories.residual_mlp import (ResidualLoss, deep_loss_grad, deep_loss_grad_vjp, default_params, mlp_forward,
                                     residual_loss)
from ..memories.yaad import yaad_deep_recurrent
from .cotangents import check_cotangents, finite_gradients
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


def _start(initial_state, k, hidden, xp, default=default_params):
    if initial_state is not None:
        return initial_state
    d = k.shape[-1]
    return default(k.shape[:-2], d, d if hidden is None else int(hidden), xp, k.dtype)


def _explicit_only(step, name):
    if step != "explicit":
        raise ValueError(f"step must be 'explicit' for {name}'s backward pass (the implicit step of the deep memory "
                         f"is iterative only, with no closed form to differentiate); got {step!r}")


def _forget_gate(xp):
    return (lambda W, g, alpha, eta: forget_gate_step(W, g, alpha, eta, xp),
            lambda S, W, g, alpha, eta: forget_gate_step_vjp(S, W, g, alpha, eta, xp))


@finite_gradients
def deep_memory_vjp(q, k, v, eta, alpha=None, *, do, dM_T=None, initial_state=None, hidden=None, loss=None,
                    step="explicit", activation="tanh"):
    """Gradients of the deep memory's scan, explicit step under the forget gate (module docstring).

    Parameters
    ----------
    q, k, v, eta, alpha, initial_state, hidden, loss, step, activation
        As :func:`~refmem.memories.deep_memory.deep_memory_recurrent`.
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
    _explicit_only(step, "the deep memory")
    o, W_T = deep_memory_recurrent(q, k, v, eta, alpha, initial_state=initial_state, hidden=hidden, loss=loss,
                                   activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    ones = alpha is None
    gates = {"alpha": xp.ones_like(eta) if ones else alpha, "eta": eta}
    step_fn, step_vjp = _forget_gate(xp)
    grads = deep_scan_vjp(q, k, v, _start(initial_state, k, hidden, xp), gates, residual_loss(loss), activation,
                          step_fn, step_vjp, do, dW_T, xp)
    if ones:
        del grads["alpha"]
    return grads


@finite_gradients
def yaad_deep_vjp(q, k, v, alpha, eta, *, do, dM_T=None, delta=1.0, step="explicit", initial_state=None,
                  hidden=None, activation="tanh"):
    """Gradients of Yaad on the deep memory (per-coordinate Huber, forget gate), explicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.yaad.yaad_deep_recurrent`.
    """
    _explicit_only(step, "yaad's deep form")
    o, W_T = yaad_deep_recurrent(q, k, v, alpha, eta, delta=delta, initial_state=initial_state, hidden=hidden,
                                 activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    step_fn, step_vjp = _forget_gate(xp)
    return deep_scan_vjp(q, k, v, _start(initial_state, k, hidden, xp), {"alpha": alpha, "eta": eta},
                         ResidualLoss("huber", delta=float(delta)), activation, step_fn, step_vjp, do, dW_T, xp)


@finite_gradients
def moneta_deep_vjp(q, k, v, alpha, eta, *, do, dM_T=None, p=3.0, lq=4.0, step="explicit", initial_state=None,
                    hidden=None, activation="tanh"):
    """Gradients of Moneta on the deep memory (lp bias, lq FTRL step on each matrix), explicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.moneta.moneta_deep_recurrent`.
    """
    _explicit_only(step, "moneta's deep form")
    o, W_T = moneta_deep_recurrent(q, k, v, alpha, eta, p=p, lq=lq, initial_state=initial_state, hidden=hidden,
                                   activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    lq = float(lq)
    return deep_scan_vjp(q, k, v, _start(initial_state, k, hidden, xp), {"alpha": alpha, "eta": eta},
                         ResidualLoss("lp", p=float(p)), activation,
                         lambda W, g, alpha, eta: lq_step(W, g, alpha, eta, lq, xp),
                         lambda S, W, g, alpha, eta: lq_step_vjp(S, W, g, alpha, eta, lq, xp), do, dW_T, xp)


@finite_gradients
def memora_deep_vjp(q, k, v, eta, *, do, dM_T=None, a=1.0, c=1.0, step="explicit", initial_state=None,
                    hidden=None, activation="tanh"):
    """Gradients of Memora on the deep memory (l2 bias, KL step on the rows of each matrix), explicit step.

    As :func:`deep_memory_vjp` with the arguments of :func:`~refmem.memories.memora.memora_deep_recurrent`.
    """
    _explicit_only(step, "memora's deep form")
    o, W_T = memora_deep_recurrent(q, k, v, eta, a=a, c=c, initial_state=initial_state, hidden=hidden,
                                   activation=activation)
    xp = _namespace(q)
    dW_T = _check_pair(do, dM_T, o, W_T, xp)
    a, c = float(a), float(c)

    def uniform_rows(batch, d, h, xp, dtype):
        return uniform_state(batch, d, h, c, xp, dtype), uniform_state(batch, h, d, c, xp, dtype)

    return deep_scan_vjp(q, k, v, _start(initial_state, k, hidden, xp, uniform_rows), {"eta": eta},
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
