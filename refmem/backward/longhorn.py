r"""Backward passes of Longhorn (the implicit l2 step), recurrent and chunked.

Forward (MATH.md 5): :math:`M_t = M_{t-1} - \mathrm{diag}(e_t)(M_{t-1} k_t - v_t) k_t^T`,
:math:`e_t = b_t / (1 + b_t \|k_t\|^2)` (one step size per token, or one per
token and value channel), :math:`o_t = M_t q_t`.

Adjoint recurrence
------------------
Longhorn is a delta rule whose step size ``e`` depends on the key, so its
adjoint is the delta rule's run backward (:mod:`refmem.backward.delta_rule`)
with ``e`` in place of ``b``, row by row:

.. math::

    S_{t-1} = S_t - \mathrm{diag}(e_t)(S_t k_t) k_t^T + do_{t-1} q_{t-1}^T, \qquad
    dv_t = e_t \odot S_t k_t, \qquad de_t = -r_t \odot S_t k_t,

    dk_t = -M_{t-1}^T (e_t \odot S_t k_t) - S_t^T (e_t \odot r_t) + 2 k_t \textstyle\sum_i de_{t,i} \frac{\partial e_{t,i}}{\partial \|k_t\|^2},

with :math:`r_t = M_{t-1} k_t - v_t`. The step size's own derivatives are
:math:`\partial e / \partial b = 1 / (1 + b\|k\|^2)^2` and
:math:`\partial e / \partial \|k\|^2 = -e^2`, so :math:`db_t = de_t / (1 + b_t\|k_t\|^2)^2`
(for one step size per token, :math:`de_t` is the sum over the rows).

Chunked backward
----------------
The delta rule's chunked backward (UT form) with ``beta = e``, then the same
chain rule through ``e(b, k)``; with one step size per value channel every
row of ``M`` is its own delta rule (``d_v = 1``), the rows a batch axis.
"""

from __future__ import annotations

from ..linalg import matvec, outer, sq_norm
from ..memories.longhorn import longhorn_recurrent
from .cotangents import finite_gradients, forward_and_cotangents
from .delta_rule import delta_family_chunked_vjp


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def step_sizes(k, beta, xp):
    """``e = b / (1 + b ||k||^2)`` and ``de/db = 1 / (1 + b ||k||^2)^2``, shaped like ``beta``."""
    kk = sq_norm(k, xp)  # (.., T)
    if beta.ndim == k.ndim:
        kk = kk[..., None]  # (.., T, 1): per value channel
    denom = 1 + beta * kk
    return beta / denom, 1 / (denom * denom)


def chain_through_step_size(de, e, de_db, k, dk, per_channel, xp):
    """``db`` and the full ``dk`` from ``de`` (module docstring): ``de/db`` and ``de/d||k||^2 = -e^2``."""
    dkk = -(de * e * e)  # (.., T) or (.., T, d_v)
    if per_channel:
        dkk = xp.sum(dkk, axis=-1)  # (.., T)
    return de * de_db, dk + 2 * dkk[..., None] * k  # (.., T[, d_v]), (.., T, d_k)


@finite_gradients
def longhorn_vjp(q, k, v, beta, *, do, dM_T=None, initial_state=None):
    """Gradients of recurrent Longhorn (module docstring, adjoint recurrence).

    Parameters
    ----------
    q, k, v, beta, initial_state
        As :func:`~refmem.memories.longhorn.longhorn_recurrent` (``beta [..., T]`` or ``[..., T, d_v]``).
    do, dM_T : arrays ``[..., T, d_v]`` and ``[..., d_v, d_k]`` (optional)
        Cotangents of ``o`` and of the final state, as :mod:`~refmem.backward.cotangents` states them.

    Returns
    -------
    dict
        ``q, k, v, beta`` and ``initial_state``.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(longhorn_recurrent, (q, k, v, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state)
    per_channel = beta.ndim == k.ndim
    e, de_db = step_sizes(k, beta, xp)
    e_rows = e if per_channel else e[..., None]  # (.., T, d_v) or (.., T, 1): a step size per row
    T = k.shape[-2]
    states = [M0]  # M_0 .. M_T
    for t in range(T):
        r = matvec(states[-1], k[..., t, :]) - v[..., t, :]  # (.., d_v)
        states.append(states[-1] - outer(e_rows[..., t, :] * r, k[..., t, :]))  # (.., d_v, d_k)
    S = dM_T
    dq, dk, dv, de = [], [], [], []
    for t in reversed(range(T)):
        kt, et = k[..., t, :], e_rows[..., t, :]  # (.., d_k), (.., d_v or 1)
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t, (.., d_v, d_k)
        dq.append(matvec(mT(states[t + 1], xp), do[..., t, :]))  # M_t^T do_t
        r = matvec(states[t], kt) - v[..., t, :]  # r_t, (.., d_v)
        eSk = et * matvec(S, kt)  # e o S_t k_t, (.., d_v)
        dv.append(eSk)
        de_rows = -r * matvec(S, kt)  # (.., d_v)
        de.append(de_rows if per_channel else xp.sum(de_rows, axis=-1))
        dk.append(-(matvec(mT(states[t], xp), eSk) + matvec(mT(S, xp), et * r)))  # (.., d_k)
        S = S - outer(eSk, kt)  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    de = stack(de, -2 if per_channel else -1)
    db, dk = chain_through_step_size(de, e, de_db, k, stack(dk, -2), per_channel, xp)
    return {"q": stack(dq, -2), "k": dk, "v": stack(dv, -2), "beta": db, "initial_state": S}


@finite_gradients
def longhorn_chunked_vjp(q, k, v, beta, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of Longhorn, chunk by chunk (module docstring); equal to :func:`longhorn_vjp`.

    Same parameters and returns as :func:`longhorn_vjp`, plus ``chunk_size >= 1``.
    """
    xp, M0, dM_T, C = forward_and_cotangents(longhorn_recurrent, (q, k, v, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state, chunk_size=chunk_size)
    per_channel = beta.ndim == k.ndim
    e, de_db = step_sizes(k, beta, xp)
    if not per_channel:
        dq, dk, dv, _, de, dM0 = delta_family_chunked_vjp(q, k, v, None, e, M0, do, dM_T, C, xp)
    else:  # row i of M: a delta rule with d_v = 1, values v[..., i], step sizes e[..., i]
        d_v = v.shape[-1]
        rows = lambda x: xp.broadcast_to(x[..., None, :, :], tuple(x.shape[:-2]) + (d_v,) + tuple(x.shape[-2:]))  # noqa: E731
        col = lambda x: mT(x, xp)[..., :, :, None]  # noqa: E731 (.., T, d_v) -> (.., d_v, T, 1)
        dq, dk, dv, _, de, dM0 = delta_family_chunked_vjp(
            rows(q), rows(k), col(v), None, mT(e, xp), M0[..., :, None, :], col(do), dM_T[..., :, None, :], C, xp)
        dq, dk = xp.sum(dq, axis=-3), xp.sum(dk, axis=-3)  # q, k are shared by the rows: (.., T, d_k)
        dv, de, dM0 = mT(dv[..., 0], xp), mT(de, xp), dM0[..., :, 0, :]  # (.., T, d_v), (.., T, d_v), (.., d_v, d_k)
    db, dk = chain_through_step_size(de, e, de_db, k, dk, per_channel, xp)
    return {"q": dq, "k": dk, "v": dv, "beta": db, "initial_state": dM0}
