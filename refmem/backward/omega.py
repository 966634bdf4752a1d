r"""Backward passes of the Omega rule (Atlas), explicit and implicit, recurrent.

Forward (:mod:`refmem.memories.omega`): at step ``t`` the window holds the keys
:math:`K_t [c, d_k]` and values :math:`V_t [c, d_v]` of the last ``c`` tokens
(zeros before the sequence) with weights :math:`G_t = \mathrm{diag}(\gamma_t)`; with
:math:`A_t = K_t^T G_t K_t` and :math:`Y_t = V_t^T G_t K_t`,

.. math::

    \text{explicit:}\ M_t = M_{t-1}(a_t I - A_t) + Y_t, \qquad
    \text{implicit:}\ M_t = (a_t M_{t-1} + Y_t)(I + A_t)^{-1}, \qquad o_t = M_t q_t .

Adjoint recurrence
------------------
With :math:`S_t = \partial\mathcal L/\partial M_t` (read-out included), each step
hands back the cotangents of :math:`A_t` and :math:`Y_t` and the adjoint of
:math:`M_{t-1}` (:math:`A_t` and :math:`I + A_t` are symmetric):

.. math::

    \text{explicit:}\ dY = S_t,\ dA = -M_{t-1}^T S_t,\ S_{t-1} = S_t (a_t I - A_t),\ da_t = \langle S_t, M_{t-1}\rangle;

    \text{implicit:}\ dY = S_t (I + A_t)^{-1},\ dA = -M_t^T dY,\ S_{t-1} = a_t\, dY,\ da_t = \langle dY, M_{t-1}\rangle,

and the window terms pass them to the window's keys, values and weights:

.. math::

    dK_t = G_t K_t (dA + dA^T) + G_t V_t\, dY, \quad dV_t = G_t K_t\, dY^T, \quad
    d\gamma_{t,i} = k_i^T dA\, k_i + v_i^T dY\, k_i .

A token sits in ``c`` windows: its gradient is the sum over them. Weights
shared by every step (``gamma [c]``) get the sum over steps and batch.
"""

from __future__ import annotations

from ..linalg import device_of, eye_like, matvec, outer
from ..memories.omega import omega_recurrent
from ..objectives.windowed_l2 import WindowedL2
from .cotangents import finite_gradients, forward_and_cotangents


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def windows(x, c, xp):
    """``x [..., T, d]`` with ``c - 1`` zero rows in front: window ``t`` is rows ``t .. t + c - 1``."""
    pad = xp.zeros(tuple(x.shape[:-2]) + (c - 1, x.shape[-1]), dtype=x.dtype, device=device_of(x))
    return xp.concat([pad, x], axis=-2)  # (.., T + c - 1, d)


def unwindow(dW, xp):
    """Per-window gradients ``[..., T, c, d]`` summed onto their tokens ``[..., T, d]`` (the adjoint of :func:`windows`)."""
    T, c, d = dW.shape[-3:]
    lead = tuple(dW.shape[:-3])
    total = None
    for j in range(c):  # window t, position j holds padded row t + j, i.e. token t + j - (c - 1)
        before = xp.zeros(lead + (j, d), dtype=dW.dtype, device=device_of(dW))
        after = xp.zeros(lead + (c - 1 - j, d), dtype=dW.dtype, device=device_of(dW))
        row = xp.concat([before, dW[..., :, j, :], after], axis=-2)  # (.., T + c - 1, d)
        total = row if total is None else total + row
    return total[..., c - 1:, :]  # (.., T, d): drop the padding rows


def omega_family_vjp(q, k, v, alpha, gamma, step, M0, do, dM_T, xp):
    """The adjoint recurrence (module docstring) on validated inputs: ``(dq, dk, dv, dalpha, dgamma, dM0)``."""
    T, d_k = k.shape[-2], k.shape[-1]
    c = gamma.shape[-1]
    Kp, Vp = windows(k, c, xp), windows(v, c, xp)  # (.., T + c - 1, d)
    eye = eye_like(d_k, k, xp)
    window = lambda t: (Kp[..., t:t + c, :], Vp[..., t:t + c, :],  # noqa: E731
                        gamma if gamma.ndim == 1 else gamma[..., t, :])
    states = [M0]
    for t in range(T):
        K, V, g = window(t)
        a = alpha[..., t, None, None]
        if step == "explicit":
            GK = g[..., :, None] * K  # (.., c, d_k)
            states.append(states[-1] @ (a * eye - mT(K, xp) @ GK) + mT(V, xp) @ GK)
        else:
            states.append(WindowedL2(g).prox(a * states[-1], xp.ones_like(alpha[..., t]), K, V, xp))
    S = dM_T
    dq, dKw, dVw, da, dg = [], [], [], [], []
    for t in reversed(range(T)):
        K, V, g = window(t)
        a = alpha[..., t, None, None]
        GK = g[..., :, None] * K  # (.., c, d_k)
        A = mT(K, xp) @ GK  # K^T G K, (.., d_k, d_k)
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t
        dq.append(matvec(mT(states[t + 1], xp), do[..., t, :]))
        if step == "explicit":
            dY, dA = S, -(mT(states[t], xp) @ S)  # (.., d_v, d_k), (.., d_k, d_k)
            da.append(xp.sum(S * states[t], axis=(-2, -1)))
            S_prev = S @ (a * eye - A)
        else:
            dY = mT(xp.linalg.solve(eye + A, mT(S, xp)), xp)  # S (I + A)^{-1}, (.., d_v, d_k)
            dA = -(mT(states[t + 1], xp) @ dY)  # (.., d_k, d_k)
            da.append(xp.sum(dY * states[t], axis=(-2, -1)))
            S_prev = a * dY
        dAs = dA + mT(dA, xp)  # (.., d_k, d_k)
        VdY = V @ dY  # (.., c, d_k): v_i^T dY
        dKw.append(GK @ dAs + g[..., :, None] * VdY)  # (.., c, d_k)
        dVw.append(GK @ mT(dY, xp))  # (.., c, d_v)
        dg.append(xp.sum((K @ dA) * K, axis=-1) + xp.sum(VdY * K, axis=-1))  # (.., c)
        S = S_prev
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    dgamma = stack(dg, -2)  # (.., T, c)
    if gamma.ndim == 1:
        dgamma = xp.sum(xp.reshape(dgamma, (-1, c)), axis=0)  # (c,): shared by every step and batch entry
    return (stack(dq, -2), unwindow(stack(dKw, -3), xp), unwindow(stack(dVw, -3), xp), stack(da, -1), dgamma, S)


@finite_gradients
def omega_vjp(q, k, v, alpha, gamma, *, do, dM_T=None, step="explicit", initial_state=None):
    """Gradients of the recurrent Omega rule (module docstring).

    Parameters
    ----------
    q, k, v, alpha, gamma, step, initial_state
        As :func:`~refmem.memories.omega.omega_recurrent`.
    do, dM_T : arrays ``[..., T, d_v]`` and ``[..., d_v, d_k]`` (optional)
        Cotangents of ``o`` and of the final state, as :mod:`~refmem.backward.cotangents` states them.

    Returns
    -------
    dict
        ``q, k, v, alpha, gamma`` (the shape of ``gamma``) and ``initial_state``.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(omega_recurrent, (q, k, v, alpha, gamma), do=do, dM_T=dM_T,
                                             initial_state=initial_state, step=step)
    dq, dk, dv, da, dg, dM0 = omega_family_vjp(q, k, v, alpha, gamma, step, M0, do, dM_T, xp)
    return {"q": dq, "k": dk, "v": dv, "alpha": da, "gamma": dg, "initial_state": dM0}


@finite_gradients
def omega_implicit_vjp(q, k, v, alpha, gamma, *, do, dM_T=None, initial_state=None):
    """Gradients of the implicit Omega rule: :func:`omega_vjp` with ``step="implicit"``."""
    return omega_vjp(q, k, v, alpha, gamma, do=do, dM_T=dM_T, step="implicit", initial_state=initial_state)
