r"""The chunk algebra of the delta-rule family: the exact UT form (DeltaNet's parallel form) and the mini-batch form (TTT) (MATH.md 8).

One chunk of ``C`` steps from ``M0`` is ``O = P_U + Q~ M0^T`` and an affine
``M_C = step(M0)`` (:mod:`refmem.chunked`); for the delta rule ``P_U`` needs the
unit lower-triangular solve of the UT form (:func:`delta_terms`). The loop in
:func:`delta_family` is the only sequential part: four ``C x d x d`` products per
chunk, carrying only the current state.
"""

from __future__ import annotations

from ..backends import host_resident
from ..linalg import device_of
from .chunks import (broadcast_lead, chunk, concat_last, data_bounded, decay_from_start, decay_matrix, gate_cumulants,
                     gates_bounded, lower_mask, mT, prepare_chunks, scalar_chunk, scan_blocks, solve_unit_lower, to_chunks)


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


def delta_pieces(Q, K, V, b, L, Z, xp, *, exact: bool = True, factored: bool = False):
    r"""The ``M0``-independent pieces of a delta-family chunk (see :func:`delta_terms` for the algebra).

    Returns ``U~ [..., C, d_v]``, ``W [..., C, d_k]`` (``U = U~ - W M0^T``),
    ``P = tril(D o Q K^T) [..., C, C]``, ``Qg = diag(gamma) Q``, ``K~ = diag(D_{C.}) K``
    and ``g_end = gamma_C [...]`` (``None`` without a gate).

    ``factored=True`` forms the decays as row and column factors instead of the
    ``C x C`` matrix ``D`` where that is safe (:func:`_factors_bounded`: host
    backends, no gate of these chunks 0, bounded factors); else the ``D`` path.
    """
    U, W, P, Qg, Kh, g_end, Kt = _chunk_pieces(Q, K, V, b, L, Z, xp, exact=exact, factored=factored)
    if Kt is None:  # factored: K~ = gamma_C K^
        Kt = Kh if g_end is None else g_end[..., None, None] * Kh  # (.., C, d_k)
    return U, W, P, Qg, Kt, g_end


def _chunk_pieces(Q, K, V, b, L, Z, xp, *, exact: bool, factored: bool, bounded: bool | None = None):
    r""":func:`delta_pieces` with ``K~`` left as a factor where that saves a pass: ``(U~, W, P, Qg, K^, g_end, K~)``.

    On the factored path ``K~ = gamma_C K^`` is returned as ``K^ = diag(gamma)^{-1} K``
    and ``K~ = None`` (the state update scales by ``gamma_C`` once:
    :math:`M_C = \gamma_C (M_0 + U^T \hat K)`); on the ``D`` path ``K^ = None``.
    ``bounded``: the data part of :func:`_factors_bounded` when the caller has
    checked it for a whole sequence (``None``: check these chunks).

    Notes
    -----
    Factored decays: with :math:`\gamma_t = e^{L_t}` and :math:`D_{ts} = \gamma_t / \gamma_s`
    (``s <= t``), scale the keys once, :math:`\hat K = \mathrm{diag}(\gamma)^{-1} K`; then

    .. math::

        \mathrm{diag}(b)(D \circ K K^T) = \mathrm{diag}(b\gamma) K\, \hat K^T, \qquad
        D \circ Q K^T = \mathrm{diag}(\gamma) Q\, \hat K^T, \qquad
        \tilde K = \gamma_C \hat K

    below the diagonal: two products of scaled factors replace the ``C x C``
    decay matrix and its three elementwise products. The left factor
    :math:`\mathrm{diag}(b\gamma) K` is also the right-hand side of ``W``'s
    triangular solve, formed once; the two right-hand sides are solved
    separately, each in place where the backend allows it (the same ``trsm``
    work as one solve of both, without joining them). The solve reads only
    the strict lower triangle; ``P`` keeps the lower one (``where``). Entries
    above the diagonal are never used; :func:`_factors_bounded` bounds them
    (no overflow).
    """
    C = K.shape[-2]
    dev = device_of(K)
    incl = lower_mask(C, xp, dev)
    if not (factored and Z is None and _factors_bounded(Q, K, b, L, xp, data=bounded)):
        return _pieces_with_decay_matrix(Q, K, V, b, L, Z, incl, xp, exact=exact)
    if L is None:  # no gate: gamma = 1
        Qg, Kh, bg, g_end = Q, K, b, None
    else:
        gamma = xp.exp(L)  # (.., C), in [max^(-1/4), 1] (_factors_bounded)
        Qg = gamma[..., None] * Q  # diag(gamma) Q, (.., C, d_k)
        Kh = xp.exp(-L)[..., None] * K  # K^ = diag(gamma)^-1 K, (.., C, d_k)
        bg = b * gamma
        g_end = gamma[..., C - 1]  # (..)
    bV = b[..., None] * V  # diag(b) V, (.., C, d_v)
    bgK = bg[..., None] * K  # diag(b gamma) K, (.., C, d_k)
    if exact:
        A_low = bgK @ mT(Kh, xp)  # diag(b gamma) K K^^T, (.., C, d_k) @ (.., d_k, C); strict lower read
        Ut, W = _solve_both(A_low, bV, bgK, xp)  # U~, W
        del A_low
    else:
        Ut, W = bV, bgK  # mini-batch: A = I
    P = Qg @ mT(Kh, xp)  # diag(gamma) Q K^^T, (.., C, d_k) @ (.., d_k, C) -> (.., C, C)
    P = xp.where(incl, P, xp.zeros((), dtype=P.dtype, device=dev))  # tril(D o Q K^T)
    return Ut, W, P, Qg, Kh, g_end, None


def _solve_both(A_low, bV, bgK, xp):
    """``A^{-1} diag(b) V`` and ``A^{-1} diag(b gamma) K`` for ``A = I + strict_tril(A_low)``, each right-hand side given up."""
    lead = tuple(A_low.shape[:-2])
    Ut = solve_unit_lower(A_low, _with_lead(bV, lead, xp), xp, overwrite_b=True)  # (.., C, d_v)
    W = solve_unit_lower(A_low, _with_lead(bgK, lead, xp), xp, overwrite_b=True)  # (.., C, d_k)
    return Ut, W


def _with_lead(x, lead: tuple, xp):
    """``x [..., C, m]`` broadcast to the leading shape ``lead`` (itself when it has it)."""
    full = broadcast_lead(lead, tuple(x.shape[:-2])) + tuple(x.shape[-2:])
    return x if tuple(x.shape) == full else xp.broadcast_to(x, full)


def _pieces_with_decay_matrix(Q, K, V, b, L, Z, incl, xp, *, exact: bool):
    """:func:`delta_pieces` through the ``C x C`` decay matrix ``D`` (any gates: zeros, tiny products, any backend)."""
    C = K.shape[-2]
    if L is None:
        D = xp.astype(incl, K.dtype)  # (C, C): no gate, D_ts = 1 for s <= t
        bg, g_end, Qg = b, None, Q
    else:
        D = decay_matrix(L, Z, L, Z, incl, xp)  # (.., C, C)
        gamma = decay_from_start(L, Z, xp)  # (.., C)
        bg = b * gamma
        g_end = gamma[..., C - 1]  # (..)
        Qg = gamma[..., None] * Q
    bV = b[..., None] * V  # diag(b) V, (.., C, d_v)
    bgK = bg[..., None] * K  # diag(b gamma) K, (.., C, d_k)
    if exact:
        KK = K @ mT(K, xp)  # (.., C, d_k) @ (.., d_k, C) -> (.., C, C)
        A_low = b[..., :, None] * (D * KK)  # diag(b) (D o K K^T); only its strict lower triangle is read
        del KK
        Ut, W = _solve_both(A_low, bV, bgK, xp)  # U~, W
        del A_low
    else:
        Ut, W = bV, bgK  # mini-batch: A = I
    P = D * (Q @ mT(K, xp))  # tril(D o Q K^T) (D is masked), (.., C, C)
    Kt = D[..., C - 1, :][..., None] * K  # decay from s to the chunk end, (.., C, d_k)
    return Ut, W, P, Qg, None, g_end, Kt


def _factors_bounded(Q, K, b, L, xp, *, data: bool | None = None) -> bool:
    r"""Whether the factored decays are safe in these chunks (reads the data: host backends only).

    ``data``: the data half (:func:`~refmem.chunked.chunks.data_bounded`) when the caller has checked it
    for the whole sequence; ``None`` checks it on these chunks.

    Notes
    -----
    With every :math:`\gamma_t = e^{L_t} \ge \mathrm{max}^{-1/4}`,
    :math:`\gamma_t / \gamma_s \le \mathrm{max}^{1/4}`, so every entry of the two
    factored products, used or not, is at most
    :math:`\mathrm{max}^{1/4}\, d_k \max|K| \max(\max|Q|, \max b \max|K|)`;
    requiring the last factor to be at most :math:`\mathrm{max}^{1/4}` keeps them
    below :math:`\sqrt{\mathrm{max}}`: no overflow, no warning, and the scaled
    factors are normal numbers (no denormals). Relative rounding is that of
    :math:`e^{L_t - L_s}` (a few eps), as for the ``D`` path.
    """
    if data is None:
        data = data_bounded(Q, K, xp, b=b)
    return data and host_resident(xp) and gates_bounded(L, K.dtype, xp)


def delta_family(q, k, v, beta, alpha, C: int, M0, xp, *, exact: bool = True, block_tokens: int = 512):
    r"""Chunked gated delta rule on validated inputs (``alpha=None``: the plain delta rule).

    ``exact=False`` gives the mini-batch form (see :func:`delta_terms`).
    Returns ``(o [..., T, d_v], M_T [..., d_v, d_k])``.

    Notes
    -----
    Same algebra as :func:`delta_terms`, ordered for the fewest FLOPs and the
    least memory. The sequence is processed in blocks of ``max(1, min(block_tokens, T / 8) // C)``
    chunks (chunk boundaries unchanged, so every chunk's pieces are those of the
    whole-sequence computation): a block's ``M0``-independent pieces
    (:func:`delta_pieces`, with factored decays where they are safe)
    are formed in batched products, then the sequential pass over its chunks
    carries ``M`` and gives each chunk's outputs from its start state,

    .. math::

        U = \tilde U - W M_0^T, \qquad O = \mathrm{diag}(\gamma) Q M_0^T + P U, \qquad
        M_C = \gamma_C M_0 + U^T \tilde K,

    four small products per chunk on operands still in cache; the chunks'
    outputs are joined once at the end. Only ``M`` and one block's temporaries
    are held besides the outputs: no per-step history. The pass carries
    :math:`S = M^T` (``[..., d_k, d_v]``, fla's orientation of the state), so every
    product is ``A @ B`` on row-major operands: NumPy's BLAS does ``A @ B^T``
    about 1.5x slower at ``64 x 64`` (measured with OpenBLAS, one thread), and
    ``W M^T = W S``, ``Q M^T = Q S`` would be two of those per chunk. The bound of the
    factored decays on the data (:func:`~refmem.chunked.chunks.data_bounded`) is checked once for
    the whole sequence, the one on the gates per block.

    The block is at most 512 steps (an eighth of ``T``): on one head, the pool's
    slices, that halves the per-block calls against 256 (about 8% faster
    measured on ``T = 4096, d = C = 64``); its temporaries stay under
    ``B H T d`` at ``T / 8``.
    """
    bounded = data_bounded(q, k, xp, b=beta)

    def block(lo, hi, M):
        return _delta_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], beta[..., lo:hi],
                            None if alpha is None else alpha[..., lo:hi], C, M, xp, exact=exact, factored=True,
                            bounded=bounded)

    return scan_blocks(k.shape[-2], C, block_tokens, M0, block, xp, chunk_outputs=True)


def _delta_block(q, k, v, beta, alpha, C: int, M, xp, *, exact: bool, factored: bool, bounded: bool | None = None):
    """Outputs of one block's chunks (a list of ``[..., C, d_v]``, padding steps included) from the state ``M``, and the state after it."""
    Q, K, V, _ = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    b = to_chunks(beta, C, xp, fill=0.0, time_axis=-1)  # padding steps write nothing
    L, Z = gate_cumulants(alpha, C, xp)
    Ut, W, P, Qg, Kh, g_end, Kt = _chunk_pieces(Q, K, V, b, L, Z, xp, exact=exact, factored=factored, bounded=bounded)
    del Q, K, V, b, L, Z
    lead = broadcast_lead(tuple(W.shape[:-3]), tuple(M.shape[:-2]))
    S = mT(xp.broadcast_to(M, lead + tuple(M.shape[-2:])), xp)  # S = M_0^T, (.., d_k, d_v): every chunk start alike
    outs = []
    for i in range(Ut.shape[-3]):
        U = chunk(Ut, i) - chunk(W, i) @ S  # U~ - W M^T, (.., C, d_k) @ (.., d_k, d_v) -> (.., C, d_v)
        O = chunk(Qg, i) @ S  # diag(gamma) Q M^T, (.., C, d_k) @ (.., d_k, d_v)
        O += chunk(P, i) @ U  # + P U, (.., C, C) @ (.., C, d_v); O is this step's own array
        outs.append(O)
        g = None if g_end is None else scalar_chunk(g_end, i)[..., None, None]  # gamma_C, (.., 1, 1)
        if Kt is None:  # factored, K~ = gamma_C K^: M_C^T = gamma_C (M0^T + K^^T U)
            S_next = mT(chunk(Kh, i), xp) @ U  # K^^T U, (.., d_k, C) @ (.., C, d_v) -> (.., d_k, d_v)
            S_next += S
            if g is not None:
                S_next *= g
        else:  # M_C^T = gamma_C M0^T + K~^T U
            S_next = mT(chunk(Kt, i), xp) @ U  # (.., d_k, C) @ (.., C, d_v) -> (.., d_k, d_v)
            S_next += S if g is None else g * S
        S = S_next
    return outs, mT(S, xp)
