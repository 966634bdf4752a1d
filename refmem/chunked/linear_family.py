r"""The chunk algebra of the linear-attention family (Katharopoulos et al.; RetNet, Mamba2), scalar-gated or not (MATH.md 8).

One chunk of ``C`` steps from ``M0`` is ``O = P_U + Q~ M0^T`` and
``M_C = g_C M0 + H`` (:mod:`refmem.chunked`, :func:`linear_terms`), all chunks'
terms in batched products; the pass over the chunks carries the state from
chunk to chunk.
"""

from __future__ import annotations

from ..linalg import device_of
from .chunks import (chunk, decay_from_start, decay_matrix, gate_cumulants, lower_mask, mT, prepare_chunks, scalar_chunk,
                     scan_blocks)


def linear_terms(Q, K, V, L, Z, xp):
    r"""Chunk terms of (scalar-gated) linear attention: ``O = PU + Qt M0^T``, ``M_C = g_C M0 + H``.

    Notes
    -----
    :math:`M_t = \gamma_t M_0 + \sum_{s\le t} D_{ts} v_s k_s^T`, so
    :math:`O = \mathrm{tril}(D \odot Q K^T) V + \mathrm{diag}(\gamma) Q M_0^T` and
    :math:`M_C = \gamma_C M_0 + V^T \mathrm{diag}(D_{C\cdot}) K` (MATH.md 8, first bullet).
    Returns ``PU, Qt, H^T, g_end`` with ``H^T = K~^T V [..., d_k, d_v]`` (the
    orientation of the state the pass carries, :func:`linear_family`) and
    ``g_end [...]`` (``None`` without a gate).
    """
    C = K.shape[-2]
    incl = lower_mask(C, xp, device_of(K))
    QK = Q @ mT(K, xp)  # (.., C, d_k) @ (.., d_k, C) -> (.., C, C)
    if L is None:
        P = xp.where(incl, QK, xp.zeros_like(QK))
        return P @ V, Q, mT(K, xp) @ V, None  # (.., C, d_v), (.., C, d_k), (.., d_k, d_v)
    D = decay_matrix(L, Z, L, Z, incl, xp)  # (.., C, C)
    gamma = decay_from_start(L, Z, xp)  # (.., C)
    Kt = D[..., C - 1, :][..., None] * K  # (.., C, d_k)
    return (D * QK) @ V, gamma[..., None] * Q, mT(Kt, xp) @ V, gamma[..., C - 1]  # H^T: (.., d_k, C) @ (.., C, d_v)


def linear_family(q, k, v, alpha, C: int, M0, xp, *, block_tokens: int = 256):
    """Chunked (scalar-gated) linear attention on validated inputs. Returns ``(o, M_T)``.

    The sequence is processed in blocks of ``max(1, min(block_tokens, T / 8) // C)``
    whole chunks (chunk boundaries unchanged): a block's terms (:func:`linear_terms`)
    in batched products, then the pass over its chunks (each chunk's outputs from
    its start state); every chunk's outputs are joined once at the end. Only
    ``M`` and one block's temporaries are held besides the outputs. The pass
    carries :math:`S = M^T` so that ``Qt M0^T = Qt S`` is a plain ``A @ B``
    (NumPy's BLAS does ``A @ B^T`` about 1.5x slower at ``64 x 64``; see
    :func:`refmem.chunked.delta_family.delta_family`).
    """
    def block(lo, hi, M):
        return _linear_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :],
                             None if alpha is None else alpha[..., lo:hi], C, M, xp)

    return scan_blocks(k.shape[-2], C, block_tokens, M0, block, xp, chunk_outputs=True)


def _linear_block(q, k, v, alpha, C: int, M, xp):
    """Outputs of one block's chunks (a list of ``[..., C, d_v]``, padding steps included) from the state ``M``, and the state after it."""
    Q, K, V, _ = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    L, Z = gate_cumulants(alpha, C, xp)
    PU, Qt, HT, g_end = linear_terms(Q, K, V, L, Z, xp)
    del Q, K, V
    S = mT(M, xp)  # M0^T, (.., d_k, d_v)
    outs = []
    for n in range(PU.shape[-3]):
        O = chunk(Qt, n) @ S  # Qt M0^T, (.., C, d_k) @ (.., d_k, d_v) -> (.., C, d_v)
        O += chunk(PU, n)  # O is this step's own array
        outs.append(O)
        S = (S if g_end is None else scalar_chunk(g_end, n)[..., None, None] * S) + chunk(HT, n)  # (g_C M0 + H)^T
    return outs, mT(S, xp)
