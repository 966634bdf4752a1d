r"""Chunked Longhorn: its implicit l2 step is a delta step with ``e_t = b_t / (1 + b_t ||k_t||^2)`` (MATH.md 5b, 8).

.. math::

    M_t = M_{t-1} - \mathrm{diag}(e_t) (M_{t-1} k_t - v_t) k_t^T .

Scalar ``b_t``: the chunked delta rule (:func:`refmem.chunked.delta_family.delta_terms`,
UT form) with ``beta = e``. Per value channel ``b_t in R^{d_v}``: row ``i`` of
``M`` follows its own delta rule with step ``e_{t,i}``, so each row has its own
unit lower-triangular system
:math:`(I + \mathrm{diag}(e_{\cdot i}) \mathrm{strict\_tril}(K K^T)) u_{\cdot i} = \ldots`,
solved once the chunk-start state is known, all rows by one forward
substitution (:func:`channel_solves`: they share ``K K^T``), a block of chunks
at a time.
"""

from __future__ import annotations

from ..linalg import device_of, sq_norm
from ..memories._inputs import initial
from ..memories.longhorn import check_longhorn_inputs
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import check_chunk_size, chunk, from_chunks, lower_mask, mT, prepare_chunks, scan_blocks, to_chunks
from .delta_family import delta_family


def _checked(q, k, v, beta, initial_state, chunk_size):
    xp, per_channel = check_longhorn_inputs(q, k, v, beta, initial_state)
    return xp, check_chunk_size(chunk_size, k.shape[-2]), per_channel


def longhorn_step_sizes(k, beta, xp):
    """``e_t = b_t / (1 + b_t ||k_t||^2)``: ``[..., T]`` or ``[..., T, d_v]`` like ``beta``."""
    kk = sq_norm(k, xp)  # (.., T)
    if beta.ndim == k.ndim:
        return beta / (1 + beta * kk[..., None])  # (.., T, d_v)
    return beta / (1 + beta * kk)  # (.., T)


@workers_option
@finite_outputs
def longhorn_chunked(q, k, v, beta, *, chunk_size=64, initial_state=None):
    """Longhorn in chunks (exact); equals :func:`~refmem.memories.longhorn.longhorn_recurrent`.

    Parameters and returns are those of the recurrent form (``beta`` per step
    or per step and value channel), plus ``chunk_size >= 1``.
    """
    xp, C, per_channel = _checked(q, k, v, beta, initial_state, chunk_size)
    M0 = initial(initial_state, k, v, xp)
    if not per_channel:
        return delta_family(q, k, v, longhorn_step_sizes(k, beta, xp), None, C, M0, xp, exact=True)
    return _per_channel(q, k, v, beta, C, M0, xp)


def _per_channel(q, k, v, beta, C, M0, xp, *, block_tokens: int = 256):
    r"""One delta rule per row of ``M`` (value channel ``i``, step sizes ``e_{t,i}``), a block of chunks at a time.

    Notes
    -----
    Inside a chunk from ``M_0``, :math:`M_{t-1} k_t = M_0 k_t + \sum_{s<t} u_s (k_s^T k_t)`, so
    channel ``i`` of :math:`u_t = e_t \odot (v_t - M_{t-1} k_t)` solves its own unit
    lower-triangular system

    .. math::

        (I + \mathrm{diag}(e_{\cdot i})\,\mathrm{strict\_tril}(K K^T))\, u_{\cdot i}
        = e_{\cdot i} \odot (V - K M_0^T)_{\cdot i},

    one right-hand side per channel, formed once ``M_0`` is known. Then
    :math:`O = Q M_0^T + \mathrm{tril}(Q K^T) U` and :math:`M_C = M_0 + U^T K`.
    The step sizes ``e [..., T, d_v]`` are formed a block at a time from ``beta``.
    """
    T = k.shape[-2]

    def block(lo, hi, M):
        e = longhorn_step_sizes(k[..., lo:hi, :], beta[..., lo:hi, :], xp)  # (.., t, d_v)
        return _per_channel_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], e, C, M, xp)

    return scan_blocks(T, C, block_tokens, M0, block, xp, share=16)


def _per_channel_block(q, k, v, e, C: int, M, xp):
    """Outputs ``[..., t, d_v]`` of one block from the state ``M``, and the state after it."""
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    E = to_chunks(e, C, xp, fill=0.0)  # (.., n, C, d_v); padding steps write nothing
    incl = lower_mask(C, xp, device_of(k))
    QK = xp.concat([Q, K], axis=-2)  # [Q; K] per chunk, (.., n, 2C, d_k)
    S = QK @ mT(K, xp)  # [Q K^T; K K^T], (.., n, 2C, d_k) @ (.., n, d_k, C) -> (.., n, 2C, C)
    P = xp.where(incl, S[..., :C, :], xp.zeros_like(S[..., :C, :]))  # tril(Q K^T), (.., n, C, C)
    KK = S[..., C:, :]  # K K^T: only its strict lower triangle is read, (.., n, C, C)
    del Q, S
    us, qms = [], []
    MT = mT(M, xp)  # the pass carries M^T, (.., d_k, d_v): its products are A @ B
    for i in range(QK.shape[-3]):
        XM = chunk(QK, i) @ MT  # [Q M^T; K M^T], (.., 2C, d_k) @ (.., d_k, d_v) -> (.., 2C, d_v)
        En = chunk(E, i)  # (.., C, d_v)
        U = channel_solves(chunk(KK, i), En, En * (chunk(V, i) - XM[..., C:, :]), xp)  # (.., C, d_v)
        us.append(U)
        qms.append(XM[..., :C, :])
        MT = MT + mT(chunk(K, i), xp) @ U  # (U^T K)^T = K^T U, (.., d_k, C) @ (.., C, d_v) -> (.., d_k, d_v)
    O = xp.stack(qms, axis=-3) + P @ xp.stack(us, axis=-3)  # (.., n, C, d_v) + (.., n, C, C) @ (.., n, C, d_v)
    return from_chunks(O, T, xp), mT(MT, xp)


def channel_solves(KK, E, R, xp, *, block: int = 16):
    r"""``U[:, i]`` solving ``(I + diag(E[:, i]) strict_tril(KK)) U[:, i] = R[:, i]`` for every channel ``i``.

    ``KK [..., C, C]`` (strict lower triangle read), ``E, R [..., C, d_v]``.

    Notes
    -----
    The channels share ``KK`` and differ only in the row scaling ``E[:, i]``, so
    forward substitution serves them all at once, a row ``t`` for every channel:

    .. math::

        u_t = r_t - e_t \odot \sum_{s<t} (K K^T)_{ts}\, u_s ,

    one ``[1, t] @ [t, d_v]`` product and two elementwise operations per row,
    no ``C x C`` matrix per channel. The rows go in blocks of ``block``: a
    block's rows first take the sum over every earlier block in one product
    (:math:`r_B - e_B \odot (K K^T)_{B,<B} U_{<B}`), then the sum inside the
    block row by row. It is ordinary forward substitution, regrouped.
    """
    C = KK.shape[-1]
    rows = []  # solved rows u_t, each (.., 1, d_v)
    for b0 in range(0, C, block):
        b1 = min(C, b0 + block)
        R_b = R[..., b0:b1, :]  # (.., b, d_v)
        if b0:
            U_before = xp.concat(rows, axis=-2)  # (.., b0, d_v)
            R_b = R_b - E[..., b0:b1, :] * (KK[..., b0:b1, :b0] @ U_before)  # (.., b, b0) @ (.., b0, d_v)
        for t in range(b0, b1):
            u_t = R_b[..., t - b0:t - b0 + 1, :]  # (.., 1, d_v)
            if t > b0:
                U_in = xp.concat(rows[b0:t], axis=-2)  # (.., t - b0, d_v): this block's rows so far
                u_t = u_t - E[..., t:t + 1, :] * (KK[..., t:t + 1, b0:t] @ U_in)  # (.., 1, t - b0) @ (.., t - b0, d_v)
            rows.append(u_t)
    return xp.concat(rows, axis=-2)  # (.., C, d_v)
