r"""Backward passes of the mini-batch forms (every gradient of a chunk taken at the chunk-start state).

The mini-batch forms (:mod:`refmem.chunked`; TTT's and Titans' parallel
training) are a different forward from the recurrence unless ``chunk_size = 1``.
Written step by step, with :math:`M_0` the state at the start of the chunk that
holds step ``t`` and :math:`\gamma_t = \prod_{r \le t} a_r` the gate product from
that chunk's start:

.. math::

    \text{delta family:}\quad u_t = b_t(v_t - \gamma_t M_0 k_t), \qquad M_t = a_t M_{t-1} + u_t k_t^T;

    \text{Titans:}\quad u_t = \theta_t (v_t - M_0 k_t), \quad S_t = \eta_t S_{t-1} + u_t k_t^T, \quad
    M_t = (1 - \alpha_t) M_{t-1} + S_t;

and :math:`o_t = M_t q_t`.

Adjoint
-------
The recurrence's adjoint (:mod:`refmem.backward.delta_rule`,
:mod:`refmem.backward.titans`) without the term through :math:`M_{t-1}k_t`, plus an
accumulator :math:`Z` for the chunk-start state, which every step of the chunk
reads: with :math:`du_t = S_t k_t` (delta family; :math:`\bar B_t k_t` for Titans)

.. math::

    dv_t = b_t\,du_t, \quad db_t = du_t^T (v_t - \gamma_t M_0 k_t), \quad
    dk_t = S_t^T u_t - b_t\gamma_t M_0^T du_t, \quad
    Z \mathrel{+}= -b_t\gamma_t\, du_t k_t^T, \quad d\gamma_t = -b_t\, du_t^T M_0 k_t,

    S_{t-1} = a_t S_t + do_{t-1}q_{t-1}^T \;(+ Z \text{ at the chunk's first step, then } Z = 0),

    da_t = \langle S_t, M_{t-1}\rangle + \gamma_{t-1} R_t, \qquad R_t = d\gamma_t + a_{t+1} R_{t+1}
    \ (R = 0 \text{ past the chunk's end}),

the last line being the adjoint of the gate products :math:`\gamma` (no division by a gate).
"""

from __future__ import annotations

from ..chunked.delta_rule import delta_rule_minibatch
from ..chunked.gated_delta_rule import gated_delta_rule_minibatch
from ..chunked.titans import titans_minibatch
from ..linalg import matvec, outer
from .cotangents import check_cotangents, finite_gradients


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def delta_family_minibatch_vjp(q, k, v, a, b, M0, C, do, dM_T, xp):
    """Adjoint of the mini-batch delta family (module docstring); ``a`` is ``None`` for the delta rule (``a = 1``)."""
    T = k.shape[-2]
    gated = a is not None
    a = a if gated else xp.ones_like(b)  # (.., T)
    Ms, starts, gammas = [M0], [], []  # M_0 .. M_T; the chunk-start state and gamma_t of every step
    for t in range(T):
        if t % C == 0:
            start, gamma = Ms[-1], xp.ones_like(a[..., t])
        gamma = gamma * a[..., t]  # gamma_t, (..,)
        starts.append(start)
        gammas.append(gamma)
        kt = k[..., t, :]
        u = b[..., t, None] * (v[..., t, :] - gamma[..., None] * matvec(start, kt))  # (.., d_v)
        Ms.append(a[..., t, None, None] * Ms[-1] + outer(u, kt))
    S, Z, R = dM_T, 0 * dM_T, None
    dq, dk, dv, db, da = [], [], [], [], []
    for t in reversed(range(T)):
        kt, start, g, bt = k[..., t, :], starts[t], gammas[t][..., None], b[..., t, None]  # (.., d_k), .., (.., 1)
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t
        dq.append(matvec(mT(Ms[t + 1], xp), do[..., t, :]))
        M0k = matvec(start, kt)  # (.., d_v)
        r = v[..., t, :] - g * M0k  # v_t - gamma_t M_0 k_t
        du = matvec(S, kt)  # (.., d_v)
        dv.append(bt * du)
        db.append(xp.sum(du * r, axis=-1))
        dk.append(matvec(mT(S, xp), bt * r) - bt * g * matvec(mT(start, xp), du))
        Z = Z - outer(bt * g * du, kt)
        dgamma = -xp.sum(bt * du * M0k, axis=-1)  # (..,)
        R = dgamma if (R is None or (t + 1) % C == 0) else dgamma + a[..., t + 1] * R  # R_t
        gamma_prev = xp.ones_like(dgamma) if t % C == 0 else gammas[t - 1]  # gamma_{t-1} from the chunk's start
        da.append(xp.sum(S * Ms[t], axis=(-2, -1)) + gamma_prev * R)
        S = a[..., t, None, None] * S
        if t % C == 0:  # the chunk's first step: M_{t-1} is the chunk-start state every step of it read
            S, Z = S + Z, 0 * Z
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    grads = {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2), "beta": stack(db, -1)}
    if gated:
        grads["alpha"] = stack(da, -1)
    grads["initial_state"] = S
    return grads


def _zeros_state(k, v, xp):
    return xp.zeros(tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1]), dtype=k.dtype)


@finite_gradients
def delta_rule_minibatch_vjp(q, k, v, beta, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of :func:`~refmem.chunked.delta_rule.delta_rule_minibatch` (module docstring).

    Returns
    -------
    dict
        ``q, k, v, beta, initial_state``.
    """
    o, M_T = delta_rule_minibatch(q, k, v, beta, chunk_size=chunk_size, initial_state=initial_state)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp = _namespace(q)
    M0 = _zeros_state(k, v, xp) if initial_state is None else initial_state
    return delta_family_minibatch_vjp(q, k, v, None, beta, M0, min(int(chunk_size), k.shape[-2]), do, dM_T, xp)


@finite_gradients
def gated_delta_rule_minibatch_vjp(q, k, v, alpha, beta, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of :func:`~refmem.chunked.gated_delta_rule.gated_delta_rule_minibatch` (module docstring).

    Returns
    -------
    dict
        ``q, k, v, alpha, beta, initial_state``.
    """
    o, M_T = gated_delta_rule_minibatch(q, k, v, alpha, beta, chunk_size=chunk_size, initial_state=initial_state)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp = _namespace(q)
    M0 = _zeros_state(k, v, xp) if initial_state is None else initial_state
    return delta_family_minibatch_vjp(q, k, v, alpha, beta, M0, min(int(chunk_size), k.shape[-2]), do, dM_T, xp)


@finite_gradients
def titans_minibatch_vjp(q, k, v, alpha, eta, theta, *, do, dM_T=None, dS_T=None, initial_state=None,
                         initial_momentum=None, chunk_size=64):
    """Gradients of :func:`~refmem.chunked.titans.titans_minibatch` (module docstring).

    Returns
    -------
    dict
        ``q, k, v, alpha, eta, theta``, ``initial_state`` (``dM_0``) and ``initial_momentum`` (``dS_0``).
    """
    o, M_T, S_T = titans_minibatch(q, k, v, alpha, eta, theta, chunk_size=chunk_size, initial_state=initial_state,
                                   initial_momentum=initial_momentum, return_momentum=True)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp = _namespace(q)
    dS_T = xp.zeros_like(S_T) if dS_T is None else check_cotangents(do, dS_T, o, S_T)
    M0 = _zeros_state(k, v, xp) if initial_state is None else initial_state
    S0 = _zeros_state(k, v, xp) if initial_momentum is None else initial_momentum
    T, C = k.shape[-2], min(int(chunk_size), k.shape[-2])
    Ms, Ss, starts = [M0], [S0], []
    for t in range(T):
        if t % C == 0:
            start = Ms[-1]
        starts.append(start)
        kt = k[..., t, :]
        u = theta[..., t, None] * (v[..., t, :] - matvec(start, kt))  # (.., d_v)
        Ss.append(eta[..., t, None, None] * Ss[-1] + outer(u, kt))
        Ms.append((1 - alpha[..., t, None, None]) * Ms[-1] + Ss[-1])
    A, B, Z = dM_T, dS_T, 0 * dM_T
    dq, dk, dv, da, de, dth = [], [], [], [], [], []
    for t in reversed(range(T)):
        kt, start, th = k[..., t, :], starts[t], theta[..., t, None]
        A = A + outer(do[..., t, :], q[..., t, :])  # A_t
        dq.append(matvec(mT(Ms[t + 1], xp), do[..., t, :]))
        Bb = B + A  # the momentum's total adjoint: M_t reads S_t
        r = v[..., t, :] - matvec(start, kt)  # (.., d_v)
        du = matvec(Bb, kt)  # (.., d_v)
        dv.append(th * du)
        dth.append(xp.sum(du * r, axis=-1))
        dk.append(matvec(mT(Bb, xp), th * r) - th * matvec(mT(start, xp), du))
        Z = Z - outer(th * du, kt)
        de.append(xp.sum(Bb * Ss[t], axis=(-2, -1)))
        da.append(-xp.sum(A * Ms[t], axis=(-2, -1)))
        A = (1 - alpha[..., t, None, None]) * A
        B = eta[..., t, None, None] * Bb
        if t % C == 0:  # the chunk's first step: M_{t-1} is the chunk-start memory every step of it read
            A, Z = A + Z, 0 * Z
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    return {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2), "alpha": stack(da, -1),
            "eta": stack(de, -1), "theta": stack(dth, -1), "initial_state": A, "initial_momentum": B}


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
