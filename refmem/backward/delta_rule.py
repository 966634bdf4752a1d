r"""Backward passes of the delta rule and the gated delta rule, recurrent and chunked (UT form).

Forward (MATH.md 5): :math:`M_t = a_t M_{t-1} - b_t (a_t M_{t-1} k_t - v_t) k_t^T`,
:math:`o_t = M_t q_t` (the delta rule: :math:`a_t = 1`). Written as a linear map
of the retained state :math:`a_t M_{t-1}`,

.. math::

    M_t = a_t M_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T .

The adjoint is a delta rule run backward
-----------------------------------------
With :math:`S_t = \partial \mathcal L / \partial M_t` (every later use of
:math:`M_t` counted), the transpose of :math:`X \mapsto a X (I - b k k^T)` is
itself (the projection is symmetric), so

.. math::

    S_T = dM_T + do_T q_T^T, \qquad
    S_{t-1} = a_t \big(S_t - b_t (S_t k_t) k_t^T\big) + do_{t-1} q_{t-1}^T,

which is the gated delta rule again, run from ``T`` down to ``1``: the same
keys, gates and step sizes, the value ``0`` (the adjoint only ever erases along
:math:`k_t`, it writes nothing of its own there) and an extra linear-attention
write :math:`do\,q^T` of the read-out's cotangent. :math:`dM_0 = S_0`. The
gradients of step ``t`` read :math:`S_t`, the residual
:math:`r_t = a_t M_{t-1} k_t - v_t` and :math:`S_t k_t`:

.. math::

    dq_t = M_t^T do_t, \quad dv_t = b_t S_t k_t, \quad db_t = -r_t^T S_t k_t, \quad
    dk_t = -b_t \big(a_t M_{t-1}^T S_t k_t + S_t^T r_t\big), \quad
    da_t = \langle S_t - b_t (S_t k_t) k_t^T,\ M_{t-1}\rangle_F .

Chunked backward (UT form)
--------------------------
The chunked forward (:mod:`refmem.chunked`, MATH.md 8) computes each chunk of
``C`` steps from its start state :math:`M_0` as

.. math::

    A = I + \mathrm{strict\_tril}(\mathrm{diag}(b)(D \odot K K^T)), \quad
    [\tilde U, W] = A^{-1} [\mathrm{diag}(b) V, \mathrm{diag}(b\gamma) K], \quad U = \tilde U - W M_0^T,

    O = \mathrm{diag}(\gamma) Q M_0^T + (D \odot Q K^T) U, \qquad
    M_C = \gamma_C M_0 + U^T \mathrm{diag}(D_{C\cdot}) K,

with the in-chunk decays :math:`D, \gamma` (:mod:`refmem.backward.decay`). Its
backward is the transpose of these matrix products taken in reverse order:
:math:`dU = P^T dO + \tilde K dM_C^T`, :math:`dM_0 = dO^T \mathrm{diag}(\gamma) Q + \gamma_C dM_C - dU^T W`,
the triangular solve is transposed (:math:`dR = A^{-T} [d\tilde U, dW]`,
:math:`dA = -dR\,[\tilde U, W]^T` on the strict lower triangle), and every
gradient that reaches ``D`` or :math:`\gamma` becomes a gate gradient through the
gate rule. The chunks are visited last to first, each started from its
chunk-start state (one forward pass over the chunks) and ended with the adjoint
handed back by the chunk after it.
"""

from __future__ import annotations

from ..chunked.chunks import from_chunks, solve_unit_lower, to_chunks
from ..linalg import device_of, matvec, outer
from ..memories.delta_rule import delta_rule_recurrent
from ..memories.gated_delta_rule import gated_delta_rule_recurrent
from .cotangents import finite_gradients, forward_and_cotangents
from .decay import chunk_decays, gate_gradient


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


# --------------------------------------------------------------------------- recurrent


def delta_family_recurrent_vjp(q, k, v, a, b, M0, do, dM_T, xp):
    """The adjoint recurrence (module docstring) on validated inputs; ``a=None`` is the delta rule.

    Returns ``(dq, dk, dv, da, db, dM0)`` (``da`` is ``None`` without a gate).
    """
    T = k.shape[-2]
    states = [M0]  # M_0 .. M_T, (.., d_v, d_k)
    for t in range(T):
        aM = states[-1] if a is None else a[..., t, None, None] * states[-1]  # retained state, (.., d_v, d_k)
        r = matvec(aM, k[..., t, :]) - v[..., t, :]  # (.., d_v)
        states.append(aM - b[..., t, None, None] * outer(r, k[..., t, :]))  # (.., d_v, d_k)
    S = dM_T
    dq, dk, dv, da, db = [], [], [], [], []
    for t in reversed(range(T)):
        kt, bt = k[..., t, :], b[..., t, None]  # (.., d_k), (.., 1)
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t: the read-out o_t = M_t q_t, (.., d_v, d_k)
        dq.append(matvec(mT(states[t + 1], xp), do[..., t, :]))  # M_t^T do_t, (.., d_k)
        aM = states[t] if a is None else a[..., t, None, None] * states[t]  # (.., d_v, d_k)
        r = matvec(aM, kt) - v[..., t, :]  # r_t, (.., d_v)
        Sk = matvec(S, kt)  # S_t k_t, (.., d_v)
        dv.append(bt * Sk)  # (.., d_v)
        db.append(-xp.sum(r * Sk, axis=-1))  # (..)
        dk.append(-bt * (matvec(mT(aM, xp), Sk) + matvec(mT(S, xp), r)))  # (.., d_k)
        S_ret = S - bt[..., None] * outer(Sk, kt)  # adjoint of the retained state a_t M_{t-1}, (.., d_v, d_k)
        if a is None:
            S = S_ret
        else:
            da.append(xp.sum(S_ret * states[t], axis=(-2, -1)))  # (..)
            S = a[..., t, None, None] * S_ret  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731 (collected backward in time)
    return (stack(dq, -2), stack(dk, -2), stack(dv, -2), None if a is None else stack(da, -1),
            stack(db, -1), S)


@finite_gradients
def delta_rule_vjp(q, k, v, beta, *, do, dM_T=None, initial_state=None):
    r"""Gradients of the recurrent delta rule, by its adjoint: a delta rule run backward in time.

    The forward :math:`M_t = M_{t-1}(I - \beta_t k_t k_t^T) + \beta_t v_t k_t^T` is
    affine in the state through the symmetric map :math:`I - \beta_t k_t k_t^T`,
    so the adjoint :math:`S_t = \partial\mathcal L/\partial M_t` obeys

    .. math::

        S_{t-1} = S_t - \beta_t (S_t k_t - 0)\, k_t^T + do_{t-1} q_{t-1}^T ,

    the delta rule itself (the same keys and step sizes, value ``0``) scanned
    from ``T`` down to ``1`` with an extra linear-attention write of the
    read-out's cotangent. Everything else is read off it:

    .. math::

        dv_t = \beta_t S_t k_t, \quad d\beta_t = -r_t^T S_t k_t, \quad
        dk_t = -\beta_t (M_{t-1}^T S_t k_t + S_t^T r_t), \quad dq_t = M_t^T do_t,

    with the forward's residual :math:`r_t = M_{t-1} k_t - v_t`.

    Parameters
    ----------
    q, k, v, beta, initial_state
        As :func:`~refmem.memories.delta_rule.delta_rule_recurrent`.
    do, dM_T : arrays ``[..., T, d_v]`` and ``[..., d_v, d_k]`` (optional)
        Cotangents of ``o`` and of the final state, as :mod:`~refmem.backward.cotangents` states them.

    Returns
    -------
    dict
        ``q, k, v, beta`` and ``initial_state`` (``dM_0``), each of its input's shape.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(delta_rule_recurrent, (q, k, v, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state)
    dq, dk, dv, _, db, dM0 = delta_family_recurrent_vjp(q, k, v, None, beta, M0, do, dM_T, xp)
    return {"q": dq, "k": dk, "v": dv, "beta": db, "initial_state": dM0}


@finite_gradients
def gated_delta_rule_vjp(q, k, v, alpha, beta, *, do, dM_T=None, initial_state=None):
    """Gradients of the recurrent gated delta rule (module docstring, adjoint recurrence).

    Parameters
    ----------
    q, k, v, alpha, beta, initial_state
        As :func:`~refmem.memories.gated_delta_rule.gated_delta_rule_recurrent`.
    do, dM_T
        Cotangents of ``o`` and of the final state (see :func:`delta_rule_vjp`).

    Returns
    -------
    dict
        ``q, k, v, alpha, beta`` and ``initial_state``.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(gated_delta_rule_recurrent, (q, k, v, alpha, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state)
    dq, dk, dv, da, db, dM0 = delta_family_recurrent_vjp(q, k, v, alpha, beta, M0, do, dM_T, xp)
    return {"q": dq, "k": dk, "v": dv, "alpha": da, "beta": db, "initial_state": dM0}


# --------------------------------------------------------------------------- chunked


def delta_chunk_factors(K, V, b, a, xp):
    r"""The ``M_0``-independent factors of one chunk (module docstring, chunked backward).

    Parameters
    ----------
    K : ``[..., C, d_k]``; V : ``[..., C, d_v]``; b : ``[..., C]``; a : ``[..., C]`` or ``None``

    Returns
    -------
    dict
        ``D [..., C, C]`` and ``gamma [..., C]`` (decays), ``A [..., C, C]`` (unit lower,
        :math:`I + \mathrm{strict\_tril}(\mathrm{diag}(b)(D \odot K K^T))`),
        ``U~ [..., C, d_v]`` and ``W [..., C, d_k]`` (:math:`A^{-1}\mathrm{diag}(b)V`,
        :math:`A^{-1}\mathrm{diag}(b\gamma)K`: the WY factors, :math:`U = \tilde U - W M_0^T`).
    """
    C, d_v = K.shape[-2], V.shape[-1]
    dev = device_of(K)
    i = xp.arange(C, device=dev)
    strict = i[:, None] > i[None, :]  # (C, C)
    if a is None:
        D = xp.astype(i[:, None] >= i[None, :], K.dtype)  # (C, C): no decay
        gamma = xp.ones_like(b)  # (.., C)
    else:
        D, gamma = chunk_decays(a, xp)  # (.., C, C), (.., C)
    KK = K @ mT(K, xp)  # (.., C, C)
    A_low = xp.where(strict, b[..., :, None] * (D * KK), xp.zeros_like(KK))  # (.., C, C) strict lower
    eye = xp.eye(C, dtype=K.dtype, device=dev)
    rhs = xp.concat([b[..., None] * V, xp.broadcast_to((b * gamma)[..., None] * K, tuple(K.shape))], axis=-1)
    X = solve_unit_lower(A_low, xp.broadcast_to(rhs, tuple(A_low.shape[:-2]) + tuple(rhs.shape[-2:])), xp)
    return {"D": D, "gamma": gamma, "A": eye + A_low, "U~": X[..., :d_v], "W": X[..., d_v:], "KK": KK}


def delta_chunk_forward(Q, K, V, b, a, M0, xp):
    """One chunk's outputs ``O [..., C, d_v]`` and end state ``M_C`` from its start state ``M0``."""
    C = K.shape[-2]
    f = delta_chunk_factors(K, V, b, a, xp)
    U = f["U~"] - f["W"] @ mT(M0, xp)  # (.., C, d_v)
    P = f["D"] * (Q @ mT(K, xp))  # (.., C, C)
    O = (f["gamma"][..., None] * Q) @ mT(M0, xp) + P @ U  # (.., C, d_v)
    M_C = f["gamma"][..., C - 1, None, None] * M0 + mT(U, xp) @ (f["D"][..., C - 1, :, None] * K)  # (.., d_v, d_k)
    return O, M_C


def delta_chunk_vjp(Q, K, V, b, a, M0, dO, dMC, xp):
    """One chunk's backward (module docstring, chunked backward).

    Returns ``dQ, dK [..., C, d_k]``, ``dV [..., C, d_v]``, ``da`` (``[..., C]`` or ``None``),
    ``db [..., C]`` and ``dM0 [..., d_v, d_k]``.
    """
    C, d_v = K.shape[-2], V.shape[-1]
    f = delta_chunk_factors(K, V, b, a, xp)
    D, gamma, Ut, W, KK = f["D"], f["gamma"], f["U~"], f["W"], f["KK"]
    i = xp.arange(C, device=device_of(K))
    strict = i[:, None] > i[None, :]  # (C, C)
    last = xp.astype(i == C - 1, K.dtype)  # (C,): e_C
    U = Ut - W @ mT(M0, xp)  # (.., C, d_v)
    QK = Q @ mT(K, xp)  # (.., C, C)
    P = D * QK  # (.., C, C)
    D_end = D[..., C - 1, :]  # (.., C): decay from s to the chunk end
    Kt = D_end[..., None] * K  # (.., C, d_k)
    # outputs O = diag(gamma) Q M0^T + P U and end state M_C = gamma_C M0 + U^T Kt
    dU = mT(P, xp) @ dO + Kt @ mT(dMC, xp)  # (.., C, d_v)
    dP = dO @ mT(U, xp)  # (.., C, C)
    dKt = U @ dMC  # (.., C, d_k)
    dOM = dO @ M0  # (.., C, d_k): cotangent of diag(gamma) Q
    dM0 = mT(dO, xp) @ (gamma[..., None] * Q) + gamma[..., C - 1, None, None] * dMC - mT(dU, xp) @ W
    dQ = gamma[..., None] * dOM + (dP * D) @ K  # (.., C, d_k)
    dK = mT(dP * D, xp) @ Q + D_end[..., None] * dKt  # (.., C, d_k)
    dD = dP * QK + last[:, None] * xp.sum(dKt * K, axis=-1)[..., None, :]  # (.., C, C)
    dgamma = xp.sum(Q * dOM, axis=-1) + last * xp.sum(dMC * M0, axis=(-2, -1))[..., None]  # (.., C)
    # the WY factors [U~, W] = A^{-1} R, R = [diag(b) V, diag(b gamma) K]
    dX = xp.concat([dU, xp.broadcast_to(-(dU @ M0), tuple(dU.shape[:-1]) + (K.shape[-1],))], axis=-1)
    dR = solve_unit_upper_transposed(f["A"], dX, xp)  # A^{-T} dX, (.., C, d_v + d_k)
    X = xp.concat([Ut, W], axis=-1)  # (.., C, d_v + d_k)
    dA = xp.where(strict, -(dR @ mT(X, xp)), xp.zeros_like(KK))  # (.., C, C): strict lower part only
    dR1, dR2 = dR[..., :d_v], dR[..., d_v:]
    dV = b[..., None] * dR1  # (.., C, d_v)
    R2K = xp.sum(dR2 * K, axis=-1)  # (.., C)
    db = xp.sum(dR1 * V, axis=-1) + gamma * R2K  # (.., C)
    dK = dK + (b * gamma)[..., None] * dR2
    dgamma = dgamma + b * R2K
    # A = I + strict_tril(diag(b) (D o K K^T))
    db = db + xp.sum(dA * D * KK, axis=-1)
    dD = dD + dA * b[..., :, None] * KK
    G = dA * b[..., :, None] * D  # (.., C, C): cotangent of K K^T
    dK = dK + (G + mT(G, xp)) @ K
    da = None if a is None else gate_gradient(dD, dgamma, D, gamma, xp)  # (.., C)
    return dQ, dK, dV, da, db, dM0


def solve_unit_upper_transposed(A, B, xp):
    """Solve ``A^T X = B`` for unit lower-triangular ``A [..., n, n]`` (``A^T`` is unit upper).

    Reversing the order of the unknowns turns ``A^T`` into a unit lower-triangular
    matrix ``J A^T J`` (``J`` the reversal), solved by the forward solver.
    """
    rev = xp.flip(xp.flip(mT(A, xp), axis=-1), axis=-2)  # J A^T J, (.., n, n) unit lower
    lead = tuple(rev.shape[:-2])
    Bf = xp.broadcast_to(xp.flip(B, axis=-2), lead + tuple(B.shape[-2:]))  # J B
    return xp.flip(solve_unit_lower(rev, Bf, xp), axis=-2)  # J (J A^T J)^{-1} J B


def delta_family_chunked_vjp(q, k, v, a, b, M0, do, dM_T, C, xp):
    """Chunked backward on validated inputs; returns ``(dq, dk, dv, da, db, dM0)``."""
    T = k.shape[-2]
    Q, K, V, dO = (to_chunks(x, C, xp) for x in (q, k, v, do))  # (.., N, C, d)
    B = to_chunks(b, C, xp, fill=0.0, time_axis=-1)  # (.., N, C): padding writes nothing
    A = None if a is None else to_chunks(a, C, xp, fill=1.0, time_axis=-1)  # padding keeps the state
    N = K.shape[-3]
    gate = lambda n: None if A is None else A[..., n, :]  # noqa: E731
    starts = [M0]  # chunk-start states
    for n in range(N - 1):
        starts.append(delta_chunk_forward(Q[..., n, :, :], K[..., n, :, :], V[..., n, :, :], B[..., n, :], gate(n),
                                          starts[-1], xp)[1])
    S = dM_T
    grads = []
    for n in reversed(range(N)):
        g = delta_chunk_vjp(Q[..., n, :, :], K[..., n, :, :], V[..., n, :, :], B[..., n, :], gate(n), starts[n],
                            dO[..., n, :, :], S, xp)
        grads.append(g)
        S = g[5]
    grads = grads[::-1]
    merge = lambda i: from_chunks(xp.stack([g[i] for g in grads], axis=-3), T, xp)  # noqa: E731 (.., T, d)
    merge_steps = lambda i: xp.reshape(xp.stack([g[i] for g in grads], axis=-2),  # noqa: E731 (.., T)
                                       tuple(b.shape[:-1]) + (N * C,))[..., :T]
    return merge(0), merge(1), merge(2), (None if a is None else merge_steps(3)), merge_steps(4), S


@finite_gradients
def delta_rule_chunked_vjp(q, k, v, beta, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of the delta rule, chunk by chunk (UT form); equal to :func:`delta_rule_vjp`.

    Same parameters and returns as :func:`delta_rule_vjp`, plus ``chunk_size >= 1``.
    """
    xp, M0, dM_T, C = forward_and_cotangents(delta_rule_recurrent, (q, k, v, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state, chunk_size=chunk_size)
    dq, dk, dv, _, db, dM0 = delta_family_chunked_vjp(q, k, v, None, beta, M0, do, dM_T, C, xp)
    return {"q": dq, "k": dk, "v": dv, "beta": db, "initial_state": dM0}


@finite_gradients
def gated_delta_rule_chunked_vjp(q, k, v, alpha, beta, *, do, dM_T=None, initial_state=None, chunk_size=64):
    """Gradients of the gated delta rule, chunk by chunk (UT form); equal to :func:`gated_delta_rule_vjp`.

    Same parameters and returns as :func:`gated_delta_rule_vjp`, plus ``chunk_size >= 1``.
    """
    xp, M0, dM_T, C = forward_and_cotangents(gated_delta_rule_recurrent, (q, k, v, alpha, beta), do=do, dM_T=dM_T,
                                             initial_state=initial_state, chunk_size=chunk_size)
    dq, dk, dv, da, db, dM0 = delta_family_chunked_vjp(q, k, v, alpha, beta, M0, do, dM_T, C, xp)
    return {"q": dq, "k": dk, "v": dv, "alpha": da, "beta": db, "initial_state": dM0}
