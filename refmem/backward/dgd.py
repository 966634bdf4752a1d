r"""Backward pass of delta gradient descent (DGD, NLx-56, 57), recurrent.

Forward (:mod:`refmem.memories.dgd`): with :math:`y_t = M_{t-1} k_t` and the
loss gradient :math:`g_t = \nabla_y L(y_t; v_t)` (the value is :math:`u_t = -g_t`),

.. math::

    M_t = M_{t-1} - \mathrm{diag}(e_t)\, r_t k_t^T, \qquad r_t = y_t + g_t, \qquad
    e_t = \frac{b_t}{1 + b_t \|k_t\|^2}, \qquad o_t = M_t q_t .

Adjoint recurrence
------------------
With :math:`S_t = \partial \mathcal L / \partial M_t` and the cotangent of the
residual :math:`w_t = -e_t \odot S_t k_t`, the loss gradient is passed back
through its Jacobians (:func:`surprise_vjp`: the Hessian :math:`H_t = \nabla^2_y L`
and :math:`\partial g / \partial v`), giving :math:`dy_t = w_t + H_t w_t` and

.. math::

    S_{t-1} = S_t + dy_t\, k_t^T + do_{t-1} q_{t-1}^T, \qquad
    dv_t = (\partial g / \partial v)^T w_t, \qquad de_t = -r_t \odot S_t k_t,

    dk_t = M_{t-1}^T dy_t - S_t^T (e_t \odot r_t) + (\text{the chain through } e_t(b_t, \|k_t\|^2)),

the last term and :math:`db_t` exactly as for Longhorn
(:func:`refmem.backward.longhorn.chain_through_step_size`). For the squared
error :math:`H = I`, :math:`\partial g/\partial v = -I`, so
:math:`S_{t-1} = S_t - 2 (e_t \odot S_t k_t) k_t^T + \dots`: a delta rule with
twice the step, run backward.
"""

from __future__ import annotations

from ..linalg import matvec, outer
from ..losses import get_loss
from ..memories.dgd import dgd_recurrent, dgd_value
from ..memories.longhorn import longhorn_step
from .cotangents import finite_gradients, forward_and_cotangents
from .longhorn import chain_through_step_size, step_sizes


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def squared_error_vjp(y, target, w, xp):
    """``g = y - target``: ``(dy, dtarget) = (w, -w)``."""
    return w, -w


def softmax_cross_entropy_vjp(y, target, w, xp):
    r"""``g = (sum p) s - p`` with ``s = softmax(y)``: ``dy = (sum p)(diag(s) - s s^T) w``, ``dp = (s^T w) 1 - w``."""
    m = xp.max(y, axis=-1, keepdims=True)  # (.., 1)
    ex = xp.exp(y - m)  # (.., d)
    s = ex / xp.sum(ex, axis=-1, keepdims=True)  # (.., d)
    sw = xp.sum(s * w, axis=-1, keepdims=True)  # (.., 1)
    return xp.sum(target, axis=-1, keepdims=True) * s * (w - sw), sw - w


SURPRISE_VJPS = {"squared_error": squared_error_vjp, "softmax_cross_entropy": softmax_cross_entropy_vjp}


def surprise_vjp(loss, y, target, w, xp):
    """``(dy, dtarget)``: the cotangent ``w`` of ``g = grad_y L(y; target)`` pulled back to ``y`` and ``target``."""
    if loss.name not in SURPRISE_VJPS:
        raise ValueError(f"loss {loss.name!r} has no backward pass here; losses with one: {sorted(SURPRISE_VJPS)}")
    return SURPRISE_VJPS[loss.name](y, target, w, xp)


@finite_gradients
def dgd_vjp(q, k, v, beta, *, do, dM_T=None, loss="squared_error", initial_state=None):
    """Gradients of recurrent DGD (module docstring, adjoint recurrence).

    Parameters and returns are those of :func:`~refmem.backward.longhorn.longhorn_vjp`,
    plus ``loss`` as in :func:`~refmem.memories.dgd.dgd_recurrent` (one of :data:`SURPRISE_VJPS`).
    """
    loss = get_loss(loss)
    xp, M0, dM_T, _ = forward_and_cotangents(dgd_recurrent, (q, k, v, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state, loss=loss)
    if loss.name not in SURPRISE_VJPS:
        raise ValueError(f"loss {loss.name!r} has no backward pass here; losses with one: {sorted(SURPRISE_VJPS)}")
    per_channel = beta.ndim == k.ndim
    e, de_db = step_sizes(k, beta, xp)
    e_rows = e if per_channel else e[..., None]  # (.., T, d_v) or (.., T, 1)
    T = k.shape[-2]
    states = [M0]
    for t in range(T):
        u = dgd_value(states[-1], k[..., t, :], v[..., t, :], loss)  # (.., d_v)
        states.append(longhorn_step(states[-1], k[..., t, :], u, beta[..., t, :] if per_channel else beta[..., t], xp))
    S = dM_T
    dq, dk, dv, de = [], [], [], []
    for t in reversed(range(T)):
        kt, et, vt = k[..., t, :], e_rows[..., t, :], v[..., t, :]
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t
        dq.append(matvec(mT(states[t + 1], xp), do[..., t, :]))  # M_t^T do_t
        y = matvec(states[t], kt)  # y_t = M_{t-1} k_t, (.., d_v)
        r = y + loss.grad(y, vt)  # (.., d_v)
        Sk = matvec(S, kt)  # (.., d_v)
        w = -et * Sk  # cotangent of r, (.., d_v)
        dy_g, dv_t = surprise_vjp(loss, y, vt, w, xp)
        dy = w + dy_g  # (.., d_v)
        dv.append(dv_t)
        de_rows = -r * Sk
        de.append(de_rows if per_channel else xp.sum(de_rows, axis=-1))
        dk.append(matvec(mT(states[t], xp), dy) - matvec(mT(S, xp), et * r))  # (.., d_k)
        S = S + outer(dy, kt)  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    de = stack(de, -2 if per_channel else -1)
    db, dk = chain_through_step_size(de, e, de_db, k, stack(dk, -2), per_channel, xp)
    return {"q": stack(dq, -2), "k": dk, "v": stack(dv, -2), "beta": db, "initial_state": S}
