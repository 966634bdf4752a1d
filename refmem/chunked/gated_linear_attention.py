r"""Chunked gated linear attention: scalar gates (RetNet / Mamba2) or per key channel (GLA) (MATH.md 8).

Scalar gate :math:`a_t`: with :math:`\gamma_t = \prod_{r\le t} a_r` and
:math:`D_{ts} = \prod_{s<r\le t} a_r` inside a chunk,

.. math::

    O = \mathrm{tril}(D \odot Q K^T) V + \mathrm{diag}(\gamma) Q M_0^T, \qquad
    M_C = \gamma_C M_0 + V^T \mathrm{diag}(D_{C\cdot}) K .

Per key channel :math:`a_t \in [0,1]^{d_k}` (:math:`M_t = M_{t-1}\mathrm{diag}(a_t) + v_t k_t^T`):
the same with one decay per channel ``c``,

.. math::

    O_{t} = \sum_{s \le t} \Big(\sum_c q_{tc} k_{sc} D^{(c)}_{ts}\Big) v_s + M_0 (\gamma_t \odot q_t),
    \qquad M_C = M_0 \mathrm{diag}(\gamma_C) + V^T (K \odot D_{C\cdot}) .

The decays are formed from cumulative log-gates with an explicit zero count
(:mod:`refmem.chunked.chunks`), never as ratios ``gamma_t / gamma_s`` (which
overflow or divide by zero). The per-channel decays are ``d_k x C x C`` values per
chunk, so that path takes a block of chunks at a time, one chunk at a time within
it, and forms each chunk's scores a few rows at a time.

Where it is safe the per-channel scores are one product of scaled factors
instead (as the delta family's factored decays,
:func:`refmem.chunked.delta_family._factors_bounded`): with
:math:`\gamma_{tc} = e^{L_{tc}}`, :math:`D^{(c)}_{ts} = \gamma_{tc} / \gamma_{sc}` below
the diagonal, so :math:`\sum_c q_{tc} k_{sc} D^{(c)}_{ts} = [(Q \odot \Gamma)(K \oslash \Gamma)^T]_{ts}`.
Safe means: no gate of the chunk is 0, every :math:`\gamma_{tc} \ge \mathrm{max}^{-1/4}`
(:func:`~refmem.chunked.chunks.gates_bounded`) and
:math:`d_k \max|Q| \max|K| \le \mathrm{max}^{1/4}` on the whole sequence: then every
entry of the product, the unused ones above the diagonal included, is below
:math:`\sqrt{\mathrm{max}}` (no overflow), and the relative rounding is that of
:math:`e^{L_t - L_s}`, a few eps. Host backends only (the check reads the data);
elsewhere, or when it fails, the scores are formed from the decays.
"""

from __future__ import annotations

from ..linalg import device_of
from ..memories._inputs import check_sequence, check_step_gate, initial
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import (block_steps, check_chunk_size, chunk, data_bounded, decay_from_start, decay_matrix, from_chunks,
                     gates_bounded, log_gate_cumsum, lower_mask, mT, prepare_chunks, scan_blocks, scan_chunks, to_chunks)
from .linear_family import linear_family


@workers_option
@finite_outputs
def gated_linear_attention_chunked(q, k, v, alpha, *, chunk_size=64, initial_state=None):
    """Gated linear attention in chunks; equals :func:`~refmem.memories.gated_linear_attention.gated_linear_attention_recurrent`.

    Parameters and returns are those of the recurrent form (forget gates
    ``alpha`` per step or per step and key channel, 0 allowed), plus ``chunk_size >= 1``.
    """
    xp = check_sequence(q, k, v, initial_state, alpha=alpha)
    per_channel = check_step_gate(alpha, "alpha", k, xp, channels=k.shape[-1], channel_name="key channel")
    C = check_chunk_size(chunk_size, k.shape[-2])
    M0 = initial(initial_state, k, v, xp)
    if not per_channel:
        return linear_family(q, k, v, alpha, C, M0, xp)
    return _per_channel(q, k, v, alpha, C, M0, xp)


def _per_channel(q, k, v, alpha, C, M0, xp, *, block_tokens: int = 256):
    """Per-key-channel gates: a block of chunks at a time (:func:`~refmem.chunked.chunks.scan_blocks`)."""
    T = k.shape[-2]
    rows = max(1, block_steps(T, C, block_tokens=block_tokens, share=16) // C)  # score rows at a time: d_k x rows x C
    bounded = data_bounded(q, k, xp)  # d_k max|q| max|k| <= max^(1/4)

    def block(lo, hi, M):
        return _per_channel_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], alpha[..., lo:hi, :], C, M, xp,
                                  rows=rows, bounded=bounded)

    return scan_blocks(T, C, block_tokens, M0, block, xp, share=16)


def _per_channel_block(q, k, v, alpha, C: int, M, xp, *, rows: int, bounded: bool = False):
    """Outputs ``[..., t, d_v]`` of one block from the state ``M``, and the state after it; one chunk at a time.

    A chunk's scores are one product of scaled factors where that is safe
    (``bounded``: the data half checked on the whole sequence; module docstring),
    else from its per-channel decays ``D_c[t, s]``, ``d_k x C x C`` values, formed
    ``rows`` rows at a time (:func:`channel_scores`).
    """
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    L, Z = log_gate_cumsum(to_chunks(alpha, C, xp, fill=1.0), xp, axis=-2)  # (.., n, C, d_k), along the step axis
    incl = lower_mask(C, xp, device_of(k))

    def terms(n):
        Qn, Kn, Vn, Ln = chunk(Q, n), chunk(K, n), chunk(V, n), chunk(L, n)
        Zn = None if Z is None else chunk(Z, n)  # None: no zero gate anywhere
        gamma = decay_from_start(Ln, Zn, xp)  # (.., C, d_k)
        Qg = gamma * Qn  # diag(gamma) Q per channel, (.., C, d_k)
        if bounded and Zn is None and gates_bounded(Ln, Ln.dtype, xp):  # gamma in [max^(-1/4), 1]
            S = Qg @ mT(xp.exp(-Ln) * Kn, xp)  # sum_c q_tc k_sc gamma_tc / gamma_sc, (.., C, C)
            S = xp.where(incl, S, xp.zeros((), dtype=S.dtype, device=device_of(S)))  # s <= t only
        else:
            S = channel_scores(Qn, Kn, Ln, Zn, incl, xp, rows=rows)  # (.., C, C)
        Lc, Zc = mT(Ln, xp), None if Zn is None else mT(Zn, xp)  # (.., d_k, C): channel-major
        D_end = decay_matrix(Lc[..., C - 1:], None if Zc is None else Zc[..., C - 1:], Lc, Zc, incl[C - 1:, :], xp)
        K_end = Kn * mT(D_end[..., 0, :], xp)  # k_sc D_c[C, s] -> (.., C, d_k)
        H = mT(Vn, xp) @ K_end  # (.., d_v, C) @ (.., C, d_k) -> (.., d_v, d_k)
        g_end = gamma[..., C - 1, :][..., None, :]  # (.., 1, d_k)
        return S @ Vn, Qg, lambda M: M * g_end + H  # M diag(gamma_C) + H

    O, M = scan_chunks(M, Q.shape[-3], terms, xp)
    return from_chunks(O, T, xp), M


def channel_scores(Qn, Kn, Ln, Zn, incl, xp, *, rows: int):
    """``S[t, s] = sum_c q_tc k_sc D_c[t, s]`` for ``s <= t`` (0 above), ``rows`` rows of ``t`` at a time.

    ``Qn, Kn [..., C, d_k]``; ``Ln, Zn [..., C, d_k]`` the cumulative log-gates and
    zero counts per channel (``Zn = None``: no zero gate). Holds ``d_k x rows x C``
    decays at a time instead of ``d_k x C x C``.
    """
    C = Kn.shape[-2]
    Lc, Zc = mT(Ln, xp), None if Zn is None else mT(Zn, xp)  # (.., d_k, C): channel-major
    Qc, Kc = mT(Qn, xp), mT(Kn, xp)  # (.., d_k, C)
    parts = []
    for r0 in range(0, C, rows):
        r1 = min(C, r0 + rows)
        D = decay_matrix(Lc[..., r0:r1], None if Zc is None else Zc[..., r0:r1], Lc, Zc, incl[r0:r1, :], xp)  # (.., d_k, r, C)
        parts.append(xp.sum(Qc[..., r0:r1, None] * Kc[..., None, :] * D, axis=-3))  # sum_c q_tc k_sc D_c[t,s], (.., r, C)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)  # (.., C, C)
