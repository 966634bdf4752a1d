r"""Backward passes of linear attention and gated linear attention (scalar and per-key-channel gates).

Forward (MATH.md 5): :math:`M_t = M_{t-1}\,\mathrm{diag}(a_t) + v_t k_t^T`,
:math:`o_t = M_t q_t` (linear attention: :math:`a_t = 1`; a scalar gate is the
same number on every key channel).

Adjoint recurrence
------------------
Let :math:`S_t = \partial \mathcal L / \partial M_t` be the adjoint of the state
after token ``t``, with every later use of :math:`M_t` counted. The read-out
adds :math:`do_t q_t^T`, the next step passes :math:`S_{t+1}` back through
:math:`\partial M_{t+1} / \partial M_t`:

.. math::

    S_T = dM_T + do_T q_T^T, \qquad S_{t-1} = S_t\,\mathrm{diag}(a_t) + do_{t-1} q_{t-1}^T, \qquad dM_0 = S_0 := S_1 \mathrm{diag}(a_1),

run backward in time: it is gated linear attention again, with the gates of the
*next* step, writing :math:`do\,q^T` instead of :math:`v\,k^T`. The gradients of
step ``t`` read :math:`S_t`:

.. math::

    dq_t = M_t^T do_t, \quad dk_t = S_t^T v_t, \quad dv_t = S_t k_t, \quad
    da_t = \mathrm{diag}(M_{t-1}^T S_t) \ \ (\text{scalar gate: } \langle S_t, M_{t-1}\rangle_F).

Chunked backward
----------------
The same sums regrouped over chunks of ``C`` steps: the chunk-start states come
from one forward pass over the chunks, the chunk-end adjoint from one backward
pass, and inside a chunk every sum over steps is a masked matrix product with
the decays :math:`D_{ts} = \prod_{s<r\le t} a_r` (per channel):

.. math::

    O = (Q \odot \Gamma) M_0^T + P V, \qquad P_{ts} = \textstyle\sum_c q_{tc} k_{sc} D^{c}_{ts}, \qquad
    M_C = M_0\,\mathrm{diag}(\gamma_C) + V^T (K \odot D_{C\cdot}),

so :math:`dV = P^T dO + (K \odot D_{C\cdot})\, dM_C^T`,
:math:`dM_0 = dO^T (Q \odot \Gamma) + dM_C \mathrm{diag}(\gamma_C)`,
:math:`dP = \mathrm{tril}(dO\, V^T)` and ``dQ, dK`` and the gate gradient follow from
``dP`` through ``D`` (:mod:`refmem.backward.decay`).
"""

from __future__ import annotations

from ..chunked.chunks import from_chunks, to_chunks
from ..linalg import matvec, outer
from ..memories.gated_linear_attention import gated_linear_attention_recurrent
from ..memories.linear_attention import linear_attention_recurrent
from .cotangents import finite_gradients, forward_and_cotangents
from .decay import chunk_decays, gate_gradient


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


# --------------------------------------------------------------------------- recurrent


def linear_family_recurrent_vjp(q, k, v, a, M0, do, dM_T, xp):
    """The adjoint recurrence (module docstring) on validated inputs.

    ``a`` is ``None`` (linear attention), ``[..., T]`` (scalar gate) or
    ``[..., T, d_k]`` (per key channel). Returns ``(dq, dk, dv, da, dM0)``
    (``da`` is ``None`` without a gate).
    """
    T = k.shape[-2]
    per_channel = a is not None and a.ndim == k.ndim
    states = [M0]  # M_0 .. M_T, each (.., d_v, d_k)
    for t in range(T):
        M = states[-1]
        if a is not None:
            M = M * a[..., t, None, :] if per_channel else a[..., t, None, None] * M  # M diag(a_t) or a_t M
        states.append(M + outer(v[..., t, :], k[..., t, :]))  # (.., d_v, d_k)
    S = dM_T  # adjoint of M_T before the read-out of token T
    dq, dk, dv, da = [], [], [], []
    for t in reversed(range(T)):
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t (.., d_v, d_k): the read-out o_t = M_t q_t
        dq.append(matvec(mT(states[t + 1], xp), do[..., t, :]))  # M_t^T do_t, (.., d_k)
        dk.append(matvec(mT(S, xp), v[..., t, :]))  # S_t^T v_t, (.., d_k)
        dv.append(matvec(S, k[..., t, :]))  # S_t k_t, (.., d_v)
        if a is not None:
            SM = xp.sum(S * states[t], axis=-2)  # diag(M_{t-1}^T S_t), (.., d_k)
            da.append(SM if per_channel else xp.sum(SM, axis=-1))  # (.., d_k) or (..)
            S = S * a[..., t, None, :] if per_channel else a[..., t, None, None] * S  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731 (collected backward in time)
    grad_a = None if a is None else stack(da, -2 if per_channel else -1)
    return stack(dq, -2), stack(dk, -2), stack(dv, -2), grad_a, S


@finite_gradients
def linear_attention_vjp(q, k, v, *, do, dM_T=None, initial_state=None):
    """Gradients of recurrent linear attention (module docstring, adjoint recurrence).

    Parameters
    ----------
    q, k, v, initial_state
        As :func:`~refmem.memories.linear_attention.linear_attention_recurrent`.
    do, dM_T : arrays ``[..., T, d_v]`` and ``[..., d_v, d_k]`` (optional)
        Cotangents of ``o`` and of the final state, as :mod:`~refmem.backward.cotangents` states them.

    Returns
    -------
    dict
        ``q, k, v`` and ``initial_state`` (``dM_0``), each of its input's shape.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(linear_attention_recurrent, (q, k, v), do=do, dM_T=dM_T,
                                             initial_state=initial_state)
    dq, dk, dv, _, dM0 = linear_family_recurrent_vjp(q, k, v, None, M0, do, dM_T, xp)
    return {"q": dq, "k": dk, "v": dv, "initial_state": dM0}


@finite_gradients
def gated_linear_attention_vjp(q, k, v, alpha, *, do, dM_T=None, initial_state=None):
    """Gradients of recurrent gated linear attention (module docstring, adjoint recurrence).

    Parameters
    ----------
    q, k, v, alpha, initial_state
        As :func:`~refmem.memories.gated_linear_attention.gated_linear_attention_recurrent`
        (``alpha [..., T]`` or ``[..., T, d_k]``).
    do, dM_T
        Cotangents of ``o`` and of the final state (see :func:`linear_attention_vjp`).

    Returns
    -------
    dict
        ``q, k, v, alpha`` (the shape of ``alpha``) and ``initial_state``.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(gated_linear_attention_recurrent, (q, k, v, alpha), do=do, dM_T=dM_T,
                                             initial_state=initial_state)
    dq, dk, dv, da, dM0 = linear_family_recurrent_vjp(q, k, v, alpha, M0, do, dM_T, xp)
    return {"q": dq, "k": dk, "v": dv, "alpha": da, "initial_state": dM0}


# --------------------------------------------------------------------------- chunked


def linear_chunk_vjp(Q, K, V, a, M0, dO, dMC, xp):
    """One chunk's backward (module docstring, chunked backward), per-channel decays.

    Parameters
    ----------
    Q, K : ``[..., C, d_k]``; V, dO : ``[..., C, d_v]``; M0, dMC : ``[..., d_v, d_k]``
    a : ``[..., C, d_k]`` gates, or ``None`` (no decay)

    Returns
    -------
    dQ, dK : ``[..., C, d_k]``; dV : ``[..., C, d_v]``; da : ``[..., C, d_k]`` or None; dM0 : ``[..., d_v, d_k]``
    """
    C = K.shape[-2]
    if a is None:
        a = xp.ones_like(K)  # (.., C, d_k): the undecayed chunk; its gate gradient is not returned
        gated = False
    else:
        gated = True
    D, gam = chunk_decays(mT(a, xp), xp)  # (.., d_k, C, C), (.., d_k, C): decays per key channel
    Gam = mT(gam, xp)  # (.., C, d_k): Gamma[t, c] = gamma_t on channel c
    D_end = mT(D[..., C - 1, :], xp)  # (.., C, d_k): decay from s to the chunk end
    Qc, Kc = mT(Q, xp), mT(K, xp)  # (.., d_k, C)
    QK3 = Qc[..., :, :, None] * Kc[..., :, None, :]  # (.., d_k, C, C): q_tc k_sc
    P = xp.sum(QK3 * D, axis=-3)  # (.., C, C): P_ts = sum_c q_tc k_sc D^c_ts
    Kt = K * D_end  # (.., C, d_k)
    dV = mT(P, xp) @ dO + Kt @ mT(dMC, xp)  # (.., C, C) @ (.., C, d_v) + (.., C, d_k) @ (.., d_k, d_v)
    dM0 = mT(dO, xp) @ (Q * Gam) + dMC * Gam[..., C - 1:C, :]  # (.., d_v, C) @ (.., C, d_k) + (.., d_v, d_k)
    dP = dO @ mT(V, xp)  # (.., C, C); only t >= s is used (D masks it)
    dOM = dO @ M0  # (.., C, d_k): (do_t^T M_0)_c
    VdM = V @ dMC  # (.., C, d_k): (v_s^T dM_C)_c
    dPD = dP[..., None, :, :] * D  # (.., d_k, C, C)
    dQ = mT(xp.sum(dPD * Kc[..., :, None, :], axis=-1), xp) + dOM * Gam  # (.., C, d_k)
    dK = mT(xp.sum(dPD * Qc[..., :, :, None], axis=-2), xp) + VdM * D_end  # (.., C, d_k)
    da = None
    if gated:
        last = xp.astype(xp.arange(C, device=_device(K)) == C - 1, K.dtype)  # (C,): e_C
        dD = dP[..., None, :, :] * QK3 + last[:, None] * mT(VdM * K, xp)[..., :, None, :]  # (.., d_k, C, C)
        end_state = xp.sum(dMC * M0, axis=-2)  # (.., d_k): dL/dgamma_C through M_0 diag(gamma_C)
        dgam = mT(dOM * Q, xp) + last * end_state[..., :, None]  # (.., d_k, C)
        da = mT(gate_gradient(dD, dgam, D, gam, xp), xp)  # (.., C, d_k)
    return dQ, dK, dV, da, dM0


def linear_family_chunked_vjp(q, k, v, a, M0, do, dM_T, C, xp):
    """Chunked backward on validated inputs; ``a`` as in :func:`linear_family_recurrent_vjp`."""
    T = k.shape[-2]
    per_channel = a is not None and a.ndim == k.ndim
    a_ch = None if a is None else (a if per_channel else xp.broadcast_to(a[..., None], tuple(k.shape)))
    Q, K, V, dO = (to_chunks(x, C, xp) for x in (q, k, v, do))  # (.., N, C, d)
    A = None if a_ch is None else to_chunks(a_ch, C, xp, fill=1.0)  # (.., N, C, d_k): padding keeps the state
    N = K.shape[-3]
    starts = [M0]  # chunk-start states (.., d_v, d_k)
    for n in range(N - 1):
        starts.append(linear_chunk_end(K[..., n, :, :], V[..., n, :, :], None if A is None else A[..., n, :, :],
                                       starts[-1], xp))
    S = dM_T
    grads = []
    for n in reversed(range(N)):
        g = linear_chunk_vjp(Q[..., n, :, :], K[..., n, :, :], V[..., n, :, :],
                             None if A is None else A[..., n, :, :], starts[n], dO[..., n, :, :], S, xp)
        grads.append(g)
        S = g[4]
    grads = grads[::-1]
    merge = lambda i: from_chunks(xp.stack([g[i] for g in grads], axis=-3), T, xp)  # noqa: E731 (.., T, d)
    da = None
    if a is not None:
        da = merge(3)  # (.., T, d_k)
        if not per_channel:
            da = xp.sum(da, axis=-1)  # a scalar gate acts on every channel: (.., T)
    return merge(0), merge(1), merge(2), da, S


def linear_chunk_end(K, V, a, M0, xp):
    """The state after one chunk: ``M_0 diag(gamma_C) + V^T (K o D_C.)`` (``a=None``: ``M_0 + V^T K``)."""
    if a is None:
        return M0 + mT(V, xp) @ K  # (.., d_v, C) @ (.., C, d_k)
    C = K.shape[-2]
    D, gam = chunk_decays(mT(a, xp), xp)  # (.., d_k, C, C), (.., d_k, C)
    return M0 * gam[..., None, :, C - 1] + mT(V, xp) @ (K * mT(D[..., C - 1, :], xp))  # (.., d_v, d_k)


@finite_gradients
def linear_attention_chunked_vjp(q, k, v, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of linear attention, computed chunk by chunk; equal to :func:`linear_attention_vjp`.

    Same parameters and returns as :func:`linear_attention_vjp`, plus ``chunk_size >= 1``.
    """
    xp, M0, dM_T, C = forward_and_cotangents(linear_attention_recurrent, (q, k, v), do=do, dM_T=dM_T,
                                             initial_state=initial_state, chunk_size=chunk_size)
    dq, dk, dv, _, dM0 = linear_family_chunked_vjp(q, k, v, None, M0, do, dM_T, C, xp)
    return {"q": dq, "k": dk, "v": dv, "initial_state": dM0}


@finite_gradients
def gated_linear_attention_chunked_vjp(q, k, v, alpha, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of gated linear attention, chunk by chunk; equal to :func:`gated_linear_attention_vjp`.

    Same parameters and returns as :func:`gated_linear_attention_vjp`, plus ``chunk_size >= 1``.
    """
    xp, M0, dM_T, C = forward_and_cotangents(gated_linear_attention_recurrent, (q, k, v, alpha), do=do, dM_T=dM_T,
                                             initial_state=initial_state, chunk_size=chunk_size)
    dq, dk, dv, da, dM0 = linear_family_chunked_vjp(q, k, v, alpha, M0, do, dM_T, C, xp)
    return {"q": dq, "k": dk, "v": dv, "alpha": da, "initial_state": dM0}




def _device(x):
    from ..linalg import device_of

    return device_of(x)
