r"""Backward pass of chunked Titans: the chunk algebra of :mod:`refmem.chunked.titans` transposed, chunk by chunk.

Forward of one chunk
--------------------
With the memory's retention :math:`a_t = 1 - \alpha_t`, the momentum decay
:math:`\eta_t` and the step :math:`\theta_t`, a chunk of ``C`` steps starts from
the pair :math:`X_0 = [M_0, S_0]` (``d_v x 2 d_k``) and computes
(:mod:`refmem.chunked.titans`, MATH.md 8; Titans eqs. 10-14):

.. math::

    D^a_{ts} = \prod_{s<r\le t} a_r, \quad \gamma^a_t = \prod_{r \le t} a_r, \quad
    D^\eta, \gamma^\eta \text{ likewise}, \qquad
    c = D^a (I + \mathrm{strict\_tril}(D^\eta)), \quad p = D^a \gamma^\eta,

    \mathcal A = I + \mathrm{strict\_tril}(\mathrm{diag}(\theta)(c^- \odot K K^T)), \qquad
    [\tilde U, W] = \mathcal A^{-1} \mathrm{diag}(\theta) [V,\ \mathrm{diag}(\gamma^{a-}) K,\ \mathrm{diag}(p^-) K],

    U = \tilde U - W X_0^T, \qquad
    O = Q_g X_0^T + P U, \qquad
    X_C = X_0 \Gamma + U^T \tilde K,

with :math:`x^-_t = x_{t-1}` (:math:`c^-` the rows of ``c`` shifted down,
:math:`\gamma^{a-}_1 = 1`, :math:`p^-_1 = 0`), :math:`P = c \odot Q K^T`,
:math:`Q_g = [\mathrm{diag}(\gamma^a) Q, \mathrm{diag}(p) Q]`,
:math:`\tilde K = [\mathrm{diag}(c_{C\cdot}) K, \mathrm{diag}(D^\eta_{C\cdot}) K]` and
:math:`X_0 \Gamma = [\gamma^a_C M_0 + p_C S_0,\ \gamma^\eta_C S_0]`.

Adjoint of one chunk
--------------------
Given the cotangents :math:`dO` of the chunk's outputs and :math:`dX_C = [dM_C, dS_C]`
of the pair at its end (handed back by the chunk after it), the chunk-to-chunk
pass runs backward through

.. math::

    dU = P^T dO + \tilde K\, dX_C^T, \qquad
    dX_0 = dO^T Q_g + [\gamma^a_C dM_C,\ p_C dM_C + \gamma^\eta_C dS_C] - dU^T W,

the adjoint of the pair recurrence (the recurrent adjoints :math:`A_t, B_t` of
:mod:`refmem.backward.titans` at the chunk boundaries: :math:`dX_0 = [A, B]`).
Everything else is read off :math:`dU` and the chunk's start pair:

.. math::

    dP = dO\, U^T, \quad dQ_g = dO\, X_0, \quad d\tilde K = U\, dX_C, \quad
    d[\tilde U, W] = [dU,\ -dU X_0],

    dR = \mathcal A^{-T} d[\tilde U, W], \qquad d\mathcal A = -\mathrm{strict\_tril}(dR\,[\tilde U, W]^T),

    dq = (dP \odot c) K + \mathrm{diag}(\gamma^a) dQ_{g,M} + \mathrm{diag}(p) dQ_{g,S}, \qquad
    dv = \mathrm{diag}(\theta)\, dR_V,

    dk = (dP \odot c)^T Q + \mathrm{diag}(c_{C\cdot}) d\tilde K_M + \mathrm{diag}(D^\eta_{C\cdot}) d\tilde K_S
         + \mathrm{diag}(\theta\gamma^{a-}) dR_M + \mathrm{diag}(\theta p^-) dR_S + (G + G^T) K,

    d\theta = \mathrm{rows}(dR_V \odot V) + \gamma^{a-} \mathrm{rows}(dR_M \odot K) + p^- \mathrm{rows}(dR_S \odot K)
              + \mathrm{rows}(d\mathcal A \odot c^- \odot K K^T),

with :math:`G = d\mathcal A \odot \mathrm{diag}(\theta) c^-` (the cotangent of
:math:`K K^T`) and :math:`\mathrm{rows}` the sum over the last axis. The gate
products collect

.. math::

    dc = dP \odot Q K^T + (dc^-)^{\uparrow} + e_C\,\mathrm{rows}(K \odot d\tilde K_M)^T, \qquad
    d\gamma^a = \mathrm{rows}(Q \odot dQ_{g,M}) + (d\gamma^{a-})^{\uparrow} + e_C \langle dM_C, M_0\rangle,

    dp = \mathrm{rows}(Q \odot dQ_{g,S}) + (dp^-)^{\uparrow} + e_C \langle dM_C, S_0\rangle, \qquad
    d\gamma^\eta = (D^a)^T dp + e_C \langle dS_C, S_0\rangle,

    dD^a = dc\,(I + \mathrm{strict\_tril}(D^\eta))^T + dp\,(\gamma^\eta)^T, \qquad
    dD^\eta = \mathrm{strict\_tril}((D^a)^T dc) + e_C\,\mathrm{rows}(K \odot d\tilde K_S)^T,

(:math:`x^{\uparrow}` shifts back by one step: the shifted quantities read step
``t - 1``; :math:`d c^- = d\mathcal A \odot \mathrm{diag}(\theta) K K^T`,
:math:`d\gamma^{a-} = \theta\,\mathrm{rows}(dR_M \odot K)`, :math:`dp^- = \theta\,\mathrm{rows}(dR_S \odot K)`),
and each gate's gradient follows from its products by the gate rule of
:mod:`refmem.backward.decay` (no division by a gate): :math:`da` from
:math:`(dD^a, d\gamma^a)`, :math:`d\eta` from :math:`(dD^\eta, d\gamma^\eta)`, and
:math:`d\alpha = -da`.

Order and memory
----------------
The chunks are visited last to first, each from its start pair, ending with
the adjoint handed back by the chunk after it. The start pairs are
checkpointed (gradient checkpointing, the square-root schedule): one forward
pass keeps the pair at the start of every *span* of :math:`s = \lfloor\sqrt{N}\rfloor`
chunks (``N = ceil(T / C)``); the spans are then visited last to first, and each
recomputes its own chunk-start pairs from its checkpoint before its chunks are
differentiated. The pairs held are about :math:`N/s + s \approx 2\sqrt{T/C}` of
``d_v x 2 d_k`` values each, one chunk's factors are the only other temporaries,
and the returned gradients are the only arrays of the sequence's size (the
forward runs about three times in all). A sequence whose length is not a
multiple of ``C`` ends with a chunk of ``T mod C`` steps, as in the forward.
"""

from __future__ import annotations

import math

from ..chunked.chunks import (check_chunk_size, concat_last, lower_mask, mT, prepare_chunks,
                              solve_unit_lower, to_chunks)
from ..chunked.titans import titans_block, titans_chunked
from ..linalg import device_of
from ..memories.titans import check_titans_inputs, titans_gates
from .cotangents import check_cotangents, finite_gradients
from .decay import chunk_decays, gate_gradient
from .delta_rule import solve_unit_upper_transposed


def rows(x, xp):
    """Sum over the last axis."""
    return xp.sum(x, axis=-1)


def shift_down(x, xp, *, fill: float = 0.0, axis: int = -1):
    """``y_t = x_{t-1}`` along ``axis`` (``y_1 = fill``): a quantity read at the step after."""
    n = x.shape[axis]
    first = xp.full_like(xp.take(x, xp.arange(1, device=device_of(x)), axis=axis), fill)
    body = xp.take(x, xp.arange(n - 1, device=device_of(x)), axis=axis)
    return xp.concat([first, body], axis=axis)


def shift_up(x, xp, *, axis: int = -1):
    """``y_t = x_{t+1}`` along ``axis`` (``y_C = 0``): the adjoint of :func:`shift_down`."""
    n = x.shape[axis]
    body = xp.take(x, xp.arange(1, n, device=device_of(x)), axis=axis)
    last = xp.zeros_like(xp.take(x, xp.arange(1, device=device_of(x)), axis=axis))
    return xp.concat([body, last], axis=axis)


def titans_chunk_factors(Q, K, V, a, eta, theta, xp):
    r"""The start-pair-independent factors of Titans chunks (module docstring, forward of one chunk).

    Parameters
    ----------
    Q, K : array ``[..., C, d_k]``
    V : array ``[..., C, d_v]``
    a, eta, theta : array ``[..., C]``
        Memory retention ``1 - alpha``, momentum decay, step size.

    Returns
    -------
    dict
        ``Da, De [..., C, C]`` and ``ga, ge [..., C]`` (the gate products), ``c [..., C, C]``,
        ``p [..., C]``, ``KK, QK [..., C, C]``, ``A [..., C, C]`` (unit lower), ``X [..., C, d_v + 2 d_k]``
        (:math:`[\tilde U, W]`), ``P [..., C, C]``, ``Qg, Kt [..., C, 2 d_k]``.
    """
    C = K.shape[-2]
    dev = device_of(K)
    strict = lower_mask(C, xp, dev, strict=True)  # (C, C)
    Da, ga = chunk_decays(a, xp)  # (.., C, C), (.., C)
    De, ge = chunk_decays(eta, xp)  # (.., C, C), (.., C)
    c = Da + Da @ xp.where(strict, De, xp.zeros_like(De))  # D^a (I + strict_tril(D^eta)), (.., C, C)
    p = (Da @ ge[..., None])[..., 0]  # D^a gamma^eta, (.., C, C) @ (.., C, 1) -> (.., C)
    c_prev = shift_down(c, xp, axis=-2)  # c_{t-1, s}: strictly lower, (.., C, C)
    ga_prev, p_prev = shift_down(ga, xp, fill=1.0), shift_down(p, xp)  # (.., C)
    KK = K @ mT(K, xp)  # (.., C, C)
    QK = Q @ mT(K, xp)  # (.., C, C)
    A_low = xp.where(strict, theta[..., :, None] * (c_prev * KK), xp.zeros_like(KK))  # (.., C, C) strict lower
    R = theta[..., None] * concat_last(V, ga_prev[..., None] * K, p_prev[..., None] * K, xp=xp)  # (.., C, d_v + 2 d_k)
    eye = xp.eye(C, dtype=K.dtype, device=dev)
    lead = tuple(A_low.shape[:-2])
    R = xp.broadcast_to(R, lead + tuple(R.shape[-2:]))  # (.., C, d_v + 2 d_k)
    X = solve_unit_lower(A_low, R, xp)  # [U~, W_M, W_S], (.., C, d_v + 2 d_k)
    Kt = concat_last(c[..., C - 1, :, None] * K, De[..., C - 1, :, None] * K, xp=xp)  # (.., C, 2 d_k)
    Qg = concat_last(ga[..., None] * Q, p[..., None] * Q, xp=xp)  # (.., C, 2 d_k)
    return {"Da": Da, "De": De, "ga": ga, "ge": ge, "c": c, "p": p, "c_prev": c_prev, "ga_prev": ga_prev,
            "p_prev": p_prev, "KK": KK, "QK": QK, "A": eye + A_low, "X": X, "P": c * QK, "Qg": Qg, "Kt": Kt}


def pair_gates(X, g_a, g_e, p_C, d_k, xp):
    """``X Gamma = [g_a M + p_C S, g_e S]`` for the pair ``X = [M, S] [..., d_v, 2 d_k]`` and gates ``[...]``."""
    g_a, g_e, p_C = g_a[..., None, None], g_e[..., None, None], p_C[..., None, None]
    M, S = X[..., :d_k], X[..., d_k:]
    return concat_last(g_a * M + p_C * S, g_e * S, xp=xp)  # (.., d_v, 2 d_k)


def pair_gates_adjoint(dX, g_a, g_e, p_C, d_k, xp):
    """``dX Gamma^T = [g_a dM, p_C dM + g_e dS]``: the adjoint of :func:`pair_gates`."""
    g_a, g_e, p_C = g_a[..., None, None], g_e[..., None, None], p_C[..., None, None]
    dM, dS = dX[..., :d_k], dX[..., d_k:]
    return concat_last(g_a * dM, p_C * dM + g_e * dS, xp=xp)  # (.., d_v, 2 d_k)


def titans_block_vjp(q, k, v, a, eta, theta, C: int, X0, do, dX, xp):
    r"""Gradients of a block of whole chunks (module docstring, adjoint of one chunk).

    Parameters
    ----------
    q, k : array ``[..., t, d_k]``; v, do : array ``[..., t, d_v]``; a, eta, theta : array ``[..., t]``
        The block's inputs (``t`` a multiple of ``C``), its retention ``a = 1 - alpha`` and
        the cotangent of its outputs.
    X0 : array ``[..., d_v, 2 d_k]``
        The pair ``[M, S]`` at the block's start.
    dX : array ``[..., d_v, 2 d_k]``
        The cotangent of the pair at the block's end.

    Returns
    -------
    dq, dk : ``[..., t, d_k]``; dv : ``[..., t, d_v]``; da, deta, dtheta : ``[..., t]``; dX0 : ``[..., d_v, 2 d_k]``
    """
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    dO = to_chunks(do, C, xp)  # (.., n, C, d_v)
    a, eta, theta = (to_chunks(g, C, xp, time_axis=-1) for g in (a, eta, theta))  # (.., n, C)
    f = titans_chunk_factors(Q, K, V, a, eta, theta, xp)
    d_v, d_k, n = V.shape[-1], K.shape[-1], K.shape[-3]
    Ut, W = f["X"][..., :d_v], f["X"][..., d_v:]  # (.., n, C, d_v), (.., n, C, 2 d_k)
    g_a, g_e, p_C = f["ga"][..., C - 1], f["ge"][..., C - 1], f["p"][..., C - 1]  # (.., n)
    # the chunks' start pairs and surprises U, forward from the block's start pair
    starts, us = [], []
    X = X0
    for i in range(n):
        starts.append(X)
        U = Ut[..., i, :, :] - W[..., i, :, :] @ mT(X, xp)  # (.., C, d_v)
        us.append(U)
        X = (pair_gates(X, g_a[..., i], g_e[..., i], p_C[..., i], d_k, xp)
             + mT(U, xp) @ f["Kt"][..., i, :, :])  # X_C = X_0 Gamma + U^T K~, (.., d_v, 2 d_k)
    # the chunk-to-chunk adjoint, backward: only dU and the pair's adjoint are sequential
    dUs, dXCs = [None] * n, [None] * n
    for i in reversed(range(n)):
        dXCs[i] = dX
        dU = mT(f["P"][..., i, :, :], xp) @ dO[..., i, :, :] + f["Kt"][..., i, :, :] @ mT(dX, xp)  # (.., C, d_v)
        dUs[i] = dU
        dX = (mT(dO[..., i, :, :], xp) @ f["Qg"][..., i, :, :]  # (.., d_v, C) @ (.., C, 2 d_k)
              + pair_gates_adjoint(dX, g_a[..., i], g_e[..., i], p_C[..., i], d_k, xp)
              - mT(dU, xp) @ W[..., i, :, :])  # dX_0 of chunk i = dX_C of chunk i - 1, (.., d_v, 2 d_k)
    X0s, dXC = xp.stack(starts, axis=-3), xp.stack(dXCs, axis=-3)  # (.., n, d_v, 2 d_k)
    U, dU = xp.stack(us, axis=-3), xp.stack(dUs, axis=-3)  # (.., n, C, d_v)
    del starts, dXCs, us, dUs, Ut, W, f["P"], f["Qg"], f["Kt"]  # what the gradients below no longer read
    grads = titans_chunk_grads(Q, K, V, a, eta, theta, f, X0s, U, dU, dO, dXC, xp)
    lead = tuple(K.shape[:-3])
    flat = lambda x: xp.reshape(x, lead + (n * C,) + tuple(x.shape[-1:]))  # noqa: E731  (.., n, C, d) -> (.., t, d)
    flat_steps = lambda x: xp.reshape(x, lead + (n * C,))  # noqa: E731  (.., n, C) -> (.., t)
    dq, dk, dv, da, de, dth = grads
    return flat(dq), flat(dk), flat(dv), flat_steps(da), flat_steps(de), flat_steps(dth), dX


def titans_chunk_grads(Q, K, V, a, eta, theta, f, X0, U, dU, dO, dXC, xp):
    """Every gradient of chunks whose ``dU`` is known (module docstring), batched over the chunks.

    ``Q, K [..., n, C, d_k]``, ``V, U, dU, dO [..., n, C, d_v]``, gates ``[..., n, C]``, the factors
    ``f`` (:func:`titans_chunk_factors`), the start pairs ``X0`` and end cotangents ``dXC [..., n, d_v, 2 d_k]``.
    Each factor is dropped from ``f`` once read, so that a chunk's temporaries do not all live at once.
    Returns ``dq, dk [..., n, C, d_k]``, ``dv [..., n, C, d_v]``, ``da, deta, dtheta [..., n, C]``.
    """
    C, d_v, d_k = K.shape[-2], V.shape[-1], K.shape[-1]
    dev = device_of(K)
    incl, strict = lower_mask(C, xp, dev), lower_mask(C, xp, dev, strict=True)  # (C, C)
    last = xp.astype(xp.arange(C, device=dev) == C - 1, K.dtype)  # (C,): e_C
    zero = xp.zeros_like(f["KK"])  # (.., n, C, C)
    M0, S0 = X0[..., :d_k], X0[..., d_k:]  # (.., n, d_v, d_k)
    dMC, dSC = dXC[..., :d_k], dXC[..., d_k:]  # (.., n, d_v, d_k)
    c, ga, p = f["c"], f["ga"], f["p"]
    # outputs O = Q_g X0^T + P U
    dP = dO @ mT(U, xp)  # (.., n, C, C)
    dPc = xp.where(incl, dP * c, zero)  # cotangent of Q K^T, (.., n, C, C)
    dQg = dO @ X0  # (.., n, C, d_v) @ (.., n, d_v, 2 d_k) -> (.., n, C, 2 d_k)
    dQ = dPc @ K + ga[..., None] * dQg[..., :d_k] + p[..., None] * dQg[..., d_k:]  # (.., n, C, d_k)
    dK = mT(dPc, xp) @ Q  # (.., n, C, d_k)
    dc = xp.where(incl, dP * f.pop("QK"), zero)  # (.., n, C, C)
    dga = rows(Q * dQg[..., :d_k], xp)  # (.., n, C)
    dp = rows(Q * dQg[..., d_k:], xp)  # (.., n, C)
    del dP, dPc, dQg
    # end pair X_C = X0 Gamma + U^T Kt
    dKt = U @ dXC  # (.., n, C, d_v) @ (.., n, d_v, 2 d_k) -> (.., n, C, 2 d_k)
    dK = dK + c[..., C - 1, :, None] * dKt[..., :d_k] + f["De"][..., C - 1, :, None] * dKt[..., d_k:]  # (.., n, C, d_k)
    dc = dc + last[:, None] * rows(K * dKt[..., :d_k], xp)[..., None, :]  # row C of c, (.., n, C, C)
    dDe_last = last[:, None] * rows(K * dKt[..., d_k:], xp)[..., None, :]  # row C of D^eta, (.., n, C, C)
    dga = dga + last * xp.sum(dMC * M0, axis=(-2, -1))[..., None]  # gamma^a_C, (.., n, C)
    dp = dp + last * xp.sum(dMC * S0, axis=(-2, -1))[..., None]  # p_C, (.., n, C)
    dge = last * xp.sum(dSC * S0, axis=(-2, -1))[..., None]  # gamma^eta_C, (.., n, C)
    del dKt
    # U = U~ - W X0^T and the triangular solve [U~, W] = A^{-1} R
    dX = concat_last(dU, -(dU @ X0), xp=xp)  # d[U~, W], (.., n, C, d_v + 2 d_k)
    dR = solve_unit_upper_transposed(f["A"], dX, xp)  # A^{-T} d[U~, W], (.., n, C, d_v + 2 d_k)
    dA = xp.where(strict, -(dR @ mT(f.pop("X"), xp)), zero)  # (.., n, C, C): strict lower part only
    del dX, f["A"]
    dRV, dRM, dRS = dR[..., :d_v], dR[..., d_v:d_v + d_k], dR[..., d_v + d_k:]  # (.., n, C, d_v / d_k / d_k)
    # R = diag(theta) [V, diag(gamma^a-) K, diag(p-) K]
    RMK, RSK = rows(dRM * K, xp), rows(dRS * K, xp)  # (.., n, C)
    dV = theta[..., None] * dRV  # (.., n, C, d_v)
    dth = rows(dRV * V, xp) + f["ga_prev"] * RMK + f["p_prev"] * RSK  # (.., n, C)
    dK = dK + (theta * f["ga_prev"])[..., None] * dRM + (theta * f["p_prev"])[..., None] * dRS  # (.., n, C, d_k)
    dga = dga + shift_up(theta * RMK, xp)  # gamma^a- reads gamma^a one step back, (.., n, C)
    dp = dp + shift_up(theta * RSK, xp)  # p- likewise, (.., n, C)
    del dR, dRV, dRM, dRS
    # A = I + strict_tril(diag(theta) (c- o K K^T))
    dth = dth + rows(dA * f["c_prev"] * f["KK"], xp)  # (.., n, C)
    dc = dc + shift_up(dA * theta[..., :, None] * f["KK"], xp, axis=-2)  # c- reads c one row back, (.., n, C, C)
    G = dA * theta[..., :, None] * f["c_prev"]  # cotangent of K K^T, (.., n, C, C)
    dK = dK + (G + mT(G, xp)) @ K  # (.., n, C, C) @ (.., n, C, d_k)
    del dA, G, f["KK"], f["c_prev"]
    # c = D^a (I + strict_tril(D^eta)), p = D^a gamma^eta
    Da, De, ge = f["Da"], f["De"], f["ge"]
    SDe = xp.where(strict, De, zero)  # (.., n, C, C)
    eye = xp.eye(C, dtype=K.dtype, device=dev)  # (C, C)
    dDa = dc @ mT(eye + SDe, xp) + dp[..., :, None] * ge[..., None, :]  # (.., n, C, C)
    dDe = xp.where(strict, mT(Da, xp) @ dc, zero) + dDe_last  # (.., n, C, C)
    dge = dge + (mT(Da, xp) @ dp[..., None])[..., 0]  # (.., n, C)
    da = gate_gradient(dDa, dga, Da, ga, xp)  # (.., n, C)
    de = gate_gradient(dDe, dge, De, ge, xp)  # (.., n, C)
    return dQ, dK, dV, da, de, dth


@finite_gradients
def titans_chunked_vjp(q, k, v, alpha, eta, theta, *, do, dM_T=None, dS_T=None, initial_state=None,
                       initial_momentum=None, chunk_size=64):
    r"""Gradients of :func:`~refmem.chunked.titans.titans_chunked`, chunk by chunk; equal to the recurrent VJP.

    The recurrent VJP is :func:`~refmem.backward.titans.titans_vjp`.

    Parameters
    ----------
    q, k, v, alpha, eta, theta, initial_state, initial_momentum, chunk_size
        As :func:`~refmem.chunked.titans.titans_chunked`.
    do, dM_T, dS_T
        The cotangents of :func:`~refmem.backward.titans.titans_vjp`.

    Returns
    -------
    dict
        The gradients of :func:`~refmem.backward.titans.titans_vjp`, by the same names.

    Notes
    -----
    The module docstring derives the adjoint of one chunk,

    .. math::

        dU = P^T dO + \tilde K\, dX_C^T, \qquad
        dX_0 = dO^T Q_g + [\gamma^a_C dM_C,\ p_C dM_C + \gamma^\eta_C dS_C] - dU^T W,

    run from :math:`dX_T = [dM_T, dS_T]` over the chunks last to first (each
    from its start pair, recomputed from a checkpoint every :math:`\sqrt{T/C}`
    chunks) down to :math:`[dM_0, dS_0]`; every other gradient of a chunk is
    read off :math:`dU`, :math:`dX_C` and its start pair.

    Examples
    --------
    The same gradients as the recurrent adjoint, for a chunk size that does not divide ``T``:

    >>> import numpy as np
    >>> from refmem.memories.titans import make_inputs
    >>> from refmem.backward.titans import titans_vjp
    >>> inputs = make_inputs(0, (2,), 7, 3, 2, np)  # T = 7, d_k = 3, d_v = 2
    >>> do = np.ones((2, 7, 2))
    >>> rec, chunked = titans_vjp(**inputs, do=do), titans_chunked_vjp(**inputs, do=do, chunk_size=3)
    >>> all(bool(np.allclose(chunked[key], rec[key], rtol=1e-12, atol=1e-14)) for key in rec)
    True
    """
    o, M_T, S_T = titans_chunked(q, k, v, alpha, eta, theta, chunk_size=chunk_size, initial_state=initial_state,
                                 initial_momentum=initial_momentum, return_momentum=True)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    dS_T = check_cotangents(do, dS_T, o, S_T)  # zeros when omitted
    del o
    xp, M0, S0 = check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum)
    T, d_k = k.shape[-2], k.shape[-1]
    C = check_chunk_size(chunk_size, T)
    kept, momentum_decay, step = titans_gates(alpha, eta, theta)  # the paper's names -> what they are
    chunks = [(lo, min(T, lo + C)) for lo in range(0, T, C)]  # the last one T mod C steps long (as in the forward)
    span = max(1, math.isqrt(len(chunks)))  # chunks per checkpoint span: sqrt(T / C) (module docstring)
    spans = [chunks[i:i + span] for i in range(0, len(chunks), span)]

    def inputs(lo, hi):
        return (q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], kept[..., lo:hi], momentum_decay[..., lo:hi],
                step[..., lo:hi])

    def pairs_after(X, span):
        """The pair at the start of each chunk of ``span`` (``(lo, hi)`` pairs), from the span's start pair ``X``."""
        out = [X]
        for lo, hi in span[:-1]:
            out.append(titans_block(*inputs(lo, hi), hi - lo, out[-1], xp, exact=True)[1])  # outputs dropped
        return out

    def span_end(X, span):
        """The pair after ``span``: its whole chunks in one block, then a last partial chunk on its own."""
        (lo, _), (last_lo, hi) = span[0], span[-1]
        whole = last_lo if hi - last_lo < C else hi
        if whole > lo:
            X = titans_block(*inputs(lo, whole), C, X, xp, exact=True)[1]
        return X if whole == hi else titans_block(*inputs(whole, hi), hi - whole, X, xp, exact=True)[1]

    checkpoints = [xp.concat([M0, S0], axis=-1)]  # the pair [M, S] at each span's start, (.., d_v, 2 d_k)
    for sp in spans[:-1]:
        checkpoints.append(span_end(checkpoints[-1], sp))
    dX = xp.concat([dM_T, dS_T], axis=-1)  # (.., d_v, 2 d_k)
    axes = (-2, -2, -2, -1, -1, -1)  # the time axis of dq, dk, dv, da, deta, dtheta
    parts = [[] for _ in axes]  # each gradient per span, last span first
    for sp, X0 in zip(reversed(spans), reversed(checkpoints)):
        starts = pairs_after(X0, sp)  # the span's chunk-start pairs, recomputed
        in_span = [[] for _ in axes]  # each gradient per chunk of the span, last chunk first
        for (lo, hi), Xc in zip(reversed(sp), reversed(starts)):
            *g, dX = titans_block_vjp(*inputs(lo, hi), hi - lo, Xc, do[..., lo:hi, :], dX, xp)
            for part, x in zip(in_span, g):
                part.append(x)
        for part, chunk_parts, axis in zip(parts, in_span, axes):
            part.append(join_forward(chunk_parts, axis, xp))
        del in_span
    del starts, checkpoints
    joined = []
    for i, axis in enumerate(axes):  # one gradient at a time: its spans are freed as it is joined
        part, parts[i] = parts[i], None
        joined.append(join_forward(part, axis, xp))
        del part
    dq, dk, dv, da, de, dth = joined
    return {"q": dq, "k": dk, "v": dv, "alpha": -da, "eta": de, "theta": dth,
            "initial_state": dX[..., :d_k], "initial_momentum": dX[..., d_k:]}


def join_forward(pieces, axis, xp):
    """Pieces collected backward in time (last first), joined forward in time along ``axis``."""
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces[::-1], axis=axis)
