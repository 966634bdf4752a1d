r"""The chunk algebra of the delta-rule family: the exact UT form (DeltaNet's parallel form) and the mini-batch form (TTT) (MATH.md 8).

One chunk of ``C`` steps from ``M0`` is ``O = P_U + Q~ M0^T`` and an affine
``M_C = step(M0)`` (:mod:`refmem.chunked`); for the delta rule ``P_U`` needs the
unit lower-triangular solve of the UT form (:func:`delta_terms`). The loop in
:func:`delta_family` is the only sequential part: two ``C x d x d`` products per
chunk, carrying only the current state.
"""

from __future__ import annotations

from ..linalg import device_of
from .chunks import (broadcast_lead, chunk, concat_last, decay_from_start, decay_matrix, from_chunks, gate_cumulants, lower_mask, mT,
                     prepare_chunks, scalar_chunk, scan_blocks, solve_unit_lower, to_chunks)


def delta_terms(Q, K, V, b, L, Z, xp, *, exact: bool = True):
    r"""Chunk terms of the gated delta rule (exact UT form, or the mini-batch form).

    Parameters
    ----------
    Q, K : array ``[..., C, d_k]``
    V : array ``[..., C, d_v]``
    b : array ``[..., C]``
        Write strengths ``beta_t`` (Longhorn passes ``e_t``).
    L, Z : array ``[..., C]`` or None
        Cumulative log-gate and zero count of the forget gate ``a_t``
        (:func:`~refmem.chunked.chunks.log_gate_cumsum`); ``None`` for no gate (``a = 1``).
    exact : bool
        ``True``: the per-token recurrence (triangular solve). ``False``: the
        mini-batch form, every gradient taken at the gated chunk-start state.

    Returns
    -------
    PU : ``[..., C, d_v]``, Qt : ``[..., C, d_k]``, H : ``[..., d_v, d_k]``, F : ``[..., d_k, d_k]``
        ``O = PU + Qt M0^T`` and ``M_C = M0 F + H``.

    Notes
    -----
    The recurrence :math:`M_t = a_t M_{t-1} + u_t k_t^T`,
    :math:`u_t = b_t (v_t - a_t M_{t-1} k_t)` unrolls inside a chunk to
    :math:`M_t = \gamma_t M_0 + \sum_{s \le t} D_{ts} u_s k_s^T` with
    :math:`\gamma_t = \prod_{r \le t} a_r`, :math:`D_{ts} = \prod_{s<r\le t} a_r`. Since
    :math:`a_t M_{t-1} = \gamma_t M_0 + \sum_{s<t} D_{ts} u_s k_s^T`, the rows of
    :math:`U` solve the unit lower-triangular system (UT / WY form)

    .. math::

        (I + \mathrm{diag}(b)\,\mathrm{strict\_tril}(D \odot K K^T))\, U
        = \mathrm{diag}(b) V - \mathrm{diag}(b \gamma) K M_0^T,

    so :math:`U = \tilde U - W M_0^T` with :math:`\tilde U = A^{-1} \mathrm{diag}(b) V`,
    :math:`W = A^{-1} \mathrm{diag}(b\gamma) K`. Then, with
    :math:`P = \mathrm{tril}(D \odot Q K^T)` and :math:`\tilde K = \mathrm{diag}(D_{C\cdot}) K`,

    .. math::

        O = P \tilde U + (\mathrm{diag}(\gamma) Q - P W) M_0^T, \qquad
        M_C = M_0 (\gamma_C I - W^T \tilde K) + \tilde U^T \tilde K .

    The mini-batch form takes every gradient at the gated chunk-start state
    :math:`\gamma_t M_0` instead of :math:`a_t M_{t-1}`: the same formulas with
    :math:`A = I`. At ``C = 1`` the two coincide.
    """
    d_v, d_k = V.shape[-1], K.shape[-1]
    U, W, P, Qg, Kt, g_end = delta_pieces(Q, K, V, b, L, Z, xp, exact=exact)
    PX = P @ concat_last(U, W, xp=xp)  # [P U~, P W] (.., C, C) @ (.., C, d_v + d_k)
    PU = PX[..., :d_v]
    Qt = Qg - PX[..., d_v:]  # diag(gamma) Q - P W, (.., C, d_k)
    HG = mT(concat_last(U, W, xp=xp), xp) @ Kt  # [U~^T K~; W^T K~] (.., d_v + d_k, C) @ (.., C, d_k)
    H, G = HG[..., :d_v, :], HG[..., d_v:, :]
    eye = xp.eye(d_k, dtype=K.dtype, device=device_of(K))
    F = (eye if g_end is None else g_end[..., None, None] * eye) - G  # (.., d_k, d_k)
    return PU, Qt, H, F


def delta_pieces(Q, K, V, b, L, Z, xp, *, exact: bool = True):
    """The ``M0``-independent pieces of a delta-family chunk (see :func:`delta_terms` for the algebra).

    Returns ``U~ [..., C, d_v]``, ``W [..., C, d_k]`` (``U = U~ - W M0^T``),
    ``P = tril(D o Q K^T) [..., C, C]``, ``Qg = diag(gamma) Q``, ``K~ = diag(D_{C.}) K``
    and ``g_end = gamma_C [...]`` (``None`` without a gate).
    """
    C = K.shape[-2]
    d_v = V.shape[-1]
    dev = device_of(K)
    incl = lower_mask(C, xp, dev)
    if L is None:
        D = xp.astype(incl, K.dtype)  # (C, C): no gate, D_ts = 1 for s <= t
        bg = b
        g_end = None
        Qg = Q
    else:
        D = decay_matrix(L, Z, L, Z, incl, xp)  # (.., C, C)
        gamma = decay_from_start(L, Z, xp)  # (.., C)
        bg = b * gamma
        g_end = gamma[..., C - 1]  # (..)
        Qg = gamma[..., None] * Q
    rhs = concat_last(b[..., None] * V, bg[..., None] * K, xp=xp)  # [diag(b) V, diag(b gamma) K], (.., C, d_v + d_k)
    if exact:
        KK = K @ mT(K, xp)  # (.., C, d_k) @ (.., d_k, C) -> (.., C, C)
        A_low = b[..., :, None] * (D * KK)  # diag(b) (D o K K^T); only its strict lower triangle is read
        del KK
        lead = tuple(A_low.shape[:-2])
        rhs = xp.broadcast_to(rhs, lead + tuple(rhs.shape[-2:]))  # (.., C, d_v + d_k)
        X = solve_unit_lower(A_low, rhs, xp)  # [U~, W] (.., C, d_v + d_k)
        del A_low, rhs
    else:
        X = rhs  # mini-batch: A = I
    P = D * (Q @ mT(K, xp))  # tril(D o Q K^T) (D is masked), (.., C, C)
    Kt = D[..., C - 1, :][..., None] * K  # decay from s to the chunk end, (.., C, d_k)
    return X[..., :d_v], X[..., d_v:], P, Qg, Kt, g_end


def delta_family(q, k, v, beta, alpha, C: int, M0, xp, *, exact: bool = True, block_tokens: int = 256):
    r"""Chunked gated delta rule on validated inputs (``alpha=None``: the plain delta rule).

    ``exact=False`` gives the mini-batch form (see :func:`delta_terms`).
    Returns ``(o [..., T, d_v], M_T [..., d_v, d_k])``.

    Notes
    -----
    Same algebra as :func:`delta_terms`, ordered for the fewest FLOPs and the
    least memory. The sequence is processed in blocks of ``max(1, min(block_tokens, T / 8) // C)``
    chunks (chunk boundaries unchanged, so every chunk's pieces are those of the
    whole-sequence computation): a block's ``M0``-independent pieces
    (:func:`delta_pieces`) are formed in batched products, then the sequential
    pass over its chunks carries ``M`` and forms, with one product for the two
    right factors ``M_0^T``,

    .. math::

        [W; \mathrm{diag}(\gamma) Q]\, M_0^T, \qquad U = \tilde U - W M_0^T, \qquad
        M_C = \gamma_C M_0 + U^T \tilde K,

    and the block's outputs :math:`O = \mathrm{diag}(\gamma) Q M_0^T + P U` are one
    batched product. Only ``M`` and one block's temporaries are held besides the
    outputs: no per-step history and no per-chunk state stack.
    """
    def block(lo, hi, M):
        return _delta_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], beta[..., lo:hi],
                            None if alpha is None else alpha[..., lo:hi], C, M, xp, exact=exact)

    return scan_blocks(k.shape[-2], C, block_tokens, M0, block, xp)


def _delta_block(q, k, v, beta, alpha, C: int, M, xp, *, exact: bool):
    """Outputs ``[..., t, d_v]`` of one block of ``t`` steps from the state ``M``, and the state after it."""
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    b = to_chunks(beta, C, xp, fill=0.0, time_axis=-1)  # padding steps write nothing
    L, Z = gate_cumulants(alpha, C, xp)
    Ut, W, P, Qg, Kt, g_end = delta_pieces(Q, K, V, b, L, Z, xp, exact=exact)
    del Q, K, V, b, L, Z
    C_, n = Ut.shape[-2], Ut.shape[-3]
    lead = broadcast_lead(tuple(W.shape[:-2]), tuple(Qg.shape[:-2]))
    WQ = xp.concat([xp.broadcast_to(W, lead + tuple(W.shape[-2:])),
                    xp.broadcast_to(Qg, lead + tuple(Qg.shape[-2:]))], axis=-2)  # [W; Qg] per chunk, (.., n, 2C, d_k)
    del W, Qg
    us, qms = [], []
    for i in range(n):
        XM = chunk(WQ, i) @ mT(M, xp)  # [W M^T; Qg M^T], (.., 2C, d_k) @ (.., d_k, d_v) -> (.., 2C, d_v)
        U = chunk(Ut, i) - XM[..., :C_, :]  # (.., C, d_v)
        us.append(U)
        qms.append(XM[..., C_:, :])
        write = mT(U, xp) @ chunk(Kt, i)  # (.., d_v, C) @ (.., C, d_k) -> (.., d_v, d_k)
        M = M + write if g_end is None else scalar_chunk(g_end, i)[..., None, None] * M + write
    O = xp.stack(qms, axis=-3) + P @ xp.stack(us, axis=-3)  # (.., n, C, d_v) + (.., n, C, C) @ (.., n, C, d_v)
    return from_chunks(O, T, xp), M
