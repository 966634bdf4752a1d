r"""Chunked Longhorn: its implicit l2 step is a delta step with ``e_t = b_t / (1 + b_t ||k_t||^2)`` (MATH.md 5b, 8).

.. math::

    M_t = M_{t-1} - \mathrm{diag}(e_t) (M_{t-1} k_t - v_t) k_t^T .

Scalar ``b_t``: the chunked delta rule (:func:`refmem.chunked.delta_family.delta_terms`,
UT form) with ``beta = e``. Per value channel ``b_t in R^{d_v}``: row ``i`` of
``M`` follows its own delta rule with step ``e_{t,i}``, so each row has its own
unit lower-triangular system
:math:`(I + \mathrm{diag}(e_{\cdot i}) \mathrm{strict\_tril}(K K^T)) u_{\cdot i} = \ldots`;
the rows are an extra batch axis, solved one chunk at a time (the per-row
``W`` matrices are ``d_v`` times larger than in the scalar case).
"""

from __future__ import annotations

from ..linalg import sq_norm
from ..memories._inputs import initial
from ..memories.longhorn import check_longhorn_inputs
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import check_chunk_size, chunk, from_chunks, mT, prepare_chunks, to_chunks
from .delta_family import delta_family, delta_terms


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
    e = longhorn_step_sizes(k, beta, xp)
    if not per_channel:
        return delta_family(q, k, v, e, None, C, M0, xp, exact=True)
    return _per_channel(q, k, v, e, C, M0, xp)


def _per_channel(q, k, v, e, C, M0, xp):
    """One delta rule per row of ``M`` (value channel), rows as a batch axis, chunk by chunk.

    Row ``i``, ``m_i = M[i, :]`` held as ``[..., d_v, 1, d_k]``, is a delta rule with
    ``d_v = 1``: :func:`~refmem.chunked.delta_family.delta_terms` on values ``V[:, i]`` and step
    sizes ``e[:, i]`` gives ``o_{t,i} = PU_i + Qt_i m_i^T`` and ``m_i <- m_i F_i + H_i``.
    """
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)
    E = to_chunks(e, C, xp, fill=0.0)  # (.., N, C, d_v); padding steps write nothing
    Mr = M0[..., :, None, :]  # (.., d_v, 1, d_k)
    outs = []
    for n in range(Q.shape[-3]):
        Qn, Kn = chunk(Q, n)[..., None, :, :], chunk(K, n)[..., None, :, :]  # (.., 1, C, d_k), shared by all rows
        Vn = mT(chunk(V, n), xp)[..., :, :, None]  # (.., d_v, C, 1): row i's values
        En = mT(chunk(E, n), xp)  # (.., d_v, C): row i's step sizes
        PU, Qt, H, F = delta_terms(Qn, Kn, Vn, En, None, None, xp, exact=True)
        o_rows = (PU + Qt @ mT(Mr, xp))[..., 0]  # (.., d_v, C, 1) -> (.., d_v, C)
        outs.append(mT(o_rows, xp))  # (.., C, d_v)
        Mr = Mr @ F + H  # (.., d_v, 1, d_k) @ (.., d_v, d_k, d_k) + (.., d_v, 1, d_k)
    return from_chunks(xp.stack(outs, axis=-3), T, xp), Mr[..., :, 0, :]
