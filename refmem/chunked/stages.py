r"""Stage oracles: the intermediate quantities a chunked kernel computes, per chunk (MATH.md 8).

For the chunked (UT / WY) forms of DeltaNet and Gated DeltaNet and the chunked
forms of linear attention (Katharopoulos et al.) and GLA.

A chunked kernel (flash-linear-attention's ``chunk_*`` kernels and their
kind) runs in stages; when its output is wrong, comparing each stage with
these float64 references says which stage is wrong. For a chunk ``n`` of
``C`` steps started from the state ``M_0^{(n)}``:

- **start states** ``M_0^{(n)} [..., N, d_v, d_k]``: the state before the chunk's
  first token (fla: ``h``, stored as ``S = M^T``);
- **in-chunk decays** :math:`\gamma_t = \prod_{r \le t} a_r` ``[..., N, C]`` (per key
  channel ``[..., N, C, d_k]`` for gated linear attention); fla keeps their logs,
  the chunk-local cumulative sum ``g_cumsum = log gamma``;
- for the delta family, the UT / WY factors:

  .. math::

      A = \mathrm{strict\_tril}(\mathrm{diag}(b)(D \odot K K^T)), \quad
      A^{-1}_{\mathrm{UT}} = (I + A)^{-1}, \quad
      W = (I + A)^{-1} \mathrm{diag}(b \gamma) K, \quad \tilde U = (I + A)^{-1} \mathrm{diag}(b) V,

  and the chunk's effective values :math:`U = \tilde U - W M_0^T` ``[..., N, C, d_v]``
  (fla: ``A`` is the strictly lower ``beta K K^T`` product before the triangular
  solve, ``Ai`` or ``A`` after it, ``w``, ``u`` and ``v_new``), with which
  :math:`O = \mathrm{diag}(\gamma) Q M_0^T + (D \odot Q K^T) U` and
  :math:`M_C = \gamma_C M_0 + U^T \mathrm{diag}(D_{C\cdot}) K`.

Padding: the last chunk is padded to ``C`` steps with zero keys and values,
step size 0 and gate 1 (the padded steps change nothing); its padded rows are
returned as computed.
"""

from __future__ import annotations

from ..backward.decay import chunk_decays
from ..backward.delta_rule import delta_chunk_factors, delta_chunk_forward
from ..backward.linear_attention import linear_chunk_end
from ..linalg import device_of
from ..memories._inputs import initial
from ..memories.delta_rule import delta_rule_recurrent
from ..memories.gated_delta_rule import gated_delta_rule_recurrent
from ..memories.gated_linear_attention import gated_linear_attention_recurrent
from ..memories.linear_attention import linear_attention_recurrent
from .chunks import check_chunk_size, to_chunks


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def delta_rule_stages(q, k, v, beta, *, chunk_size=64, initial_state=None):
    """Stage oracle of the chunked delta rule (module docstring).

    Parameters
    ----------
    q, k, v, beta, initial_state
        As :func:`~refmem.memories.delta_rule.delta_rule_recurrent`.
    chunk_size : int, ``>= 1``

    Returns
    -------
    dict
        ``start_states [..., N, d_v, d_k]``, ``decay [..., N, C]`` (ones),
        ``A``, ``A_inv [..., N, C, C]``, ``W [..., N, C, d_k]``, ``U~``, ``U [..., N, C, d_v]``.
    """
    delta_rule_recurrent(q, k, v, beta, initial_state=initial_state)  # validates the inputs
    return _delta_family_stages(q, k, v, None, beta, chunk_size, initial_state)


def gated_delta_rule_stages(q, k, v, alpha, beta, *, chunk_size=64, initial_state=None):
    """Stage oracle of the chunked gated delta rule (module docstring); same returns as :func:`delta_rule_stages`."""
    gated_delta_rule_recurrent(q, k, v, alpha, beta, initial_state=initial_state)  # validates the inputs
    return _delta_family_stages(q, k, v, alpha, beta, chunk_size, initial_state)


def _delta_family_stages(q, k, v, alpha, beta, chunk_size, initial_state):
    xp = _namespace(q)
    C = check_chunk_size(chunk_size, k.shape[-2])
    Q, K, V = (to_chunks(x, C, xp) for x in (q, k, v))  # (.., N, C, d)
    B = to_chunks(beta, C, xp, fill=0.0, time_axis=-1)  # (.., N, C)
    A_gates = None if alpha is None else to_chunks(alpha, C, xp, fill=1.0, time_axis=-1)
    M = initial(initial_state, k, v, xp)
    eye = xp.eye(C, dtype=k.dtype, device=device_of(k))
    rows = {"start_states": [], "decay": [], "A": [], "A_inv": [], "W": [], "U~": [], "U": []}
    for n in range(K.shape[-3]):
        a = None if A_gates is None else A_gates[..., n, :]
        f = delta_chunk_factors(K[..., n, :, :], V[..., n, :, :], B[..., n, :], a, xp)
        A_strict = f["A"] - eye  # (.., C, C): strict_tril(diag(b)(D o K K^T))
        A_inv = _unit_lower_inverse(f["A"], xp)  # (.., C, C)
        U = f["U~"] - f["W"] @ mT(M, xp)  # (.., C, d_v)
        for key, val in (("start_states", M), ("decay", xp.broadcast_to(f["gamma"], tuple(B[..., n, :].shape))),
                         ("A", A_strict), ("A_inv", A_inv), ("W", f["W"]), ("U~", f["U~"]), ("U", U)):
            rows[key].append(val)
        M = delta_chunk_forward(Q[..., n, :, :], K[..., n, :, :], V[..., n, :, :], B[..., n, :], a, M, xp)[1]
    return {key: xp.stack(vals, axis=-3 if vals[0].ndim >= 2 and key != "decay" else -2)
            for key, vals in rows.items()}


def _unit_lower_inverse(A, xp):
    """``A^{-1}`` for unit lower-triangular ``A [..., C, C]`` (the triangular solve against ``I``)."""
    from .chunks import solve_unit_lower

    eye = xp.eye(A.shape[-1], dtype=A.dtype, device=device_of(A))  # (C, C)
    return solve_unit_lower(A - eye, xp.broadcast_to(eye, tuple(A.shape)), xp)  # only the strict lower part is read


def linear_attention_stages(q, k, v, *, chunk_size=64, initial_state=None):
    """Stage oracle of chunked linear attention: ``start_states [..., N, d_v, d_k]``."""
    linear_attention_recurrent(q, k, v, initial_state=initial_state)  # validates the inputs
    return _linear_family_stages(q, k, v, None, chunk_size, initial_state)


def gated_linear_attention_stages(q, k, v, alpha, *, chunk_size=64, initial_state=None):
    """Stage oracle of chunked gated linear attention.

    Returns ``start_states [..., N, d_v, d_k]`` and ``decay``: ``[..., N, C]`` for a
    scalar gate, ``[..., N, C, d_k]`` per key channel (fla's ``gk`` cumulated: ``exp(g_cumsum)``).
    """
    gated_linear_attention_recurrent(q, k, v, alpha, initial_state=initial_state)  # validates the inputs
    return _linear_family_stages(q, k, v, alpha, chunk_size, initial_state)


def _linear_family_stages(q, k, v, alpha, chunk_size, initial_state):
    xp = _namespace(q)
    C = check_chunk_size(chunk_size, k.shape[-2])
    K, V = to_chunks(k, C, xp), to_chunks(v, C, xp)  # (.., N, C, d)
    per_channel = alpha is not None and alpha.ndim == k.ndim
    if alpha is None:
        A = None
    elif per_channel:
        A = to_chunks(alpha, C, xp, fill=1.0)  # (.., N, C, d_k)
    else:
        A = to_chunks(alpha, C, xp, fill=1.0, time_axis=-1)  # (.., N, C)
    M = initial(initial_state, k, v, xp)
    starts, decays = [], []
    for n in range(K.shape[-3]):
        starts.append(M)
        if A is None:
            a_ch = None
        else:
            a_n = A[..., n, :, :] if per_channel else A[..., n, :]
            a_ch = a_n if per_channel else xp.broadcast_to(a_n[..., None], tuple(K[..., n, :, :].shape))
            _, gam = chunk_decays(mT(a_ch, xp), xp)  # (.., d_k, C)
            decays.append(mT(gam, xp) if per_channel else gam[..., 0, :])
        M = linear_chunk_end(K[..., n, :, :], V[..., n, :, :], a_ch, M, xp)
    out = {"start_states": xp.stack(starts, axis=-3)}
    if decays:
        out["decay"] = xp.stack(decays, axis=-3 if per_channel else -2)
    return out


STAGES = {
    "linear_attention": linear_attention_stages,
    "gated_linear_attention": gated_linear_attention_stages,
    "delta_rule": delta_rule_stages,
    "gated_delta_rule": gated_delta_rule_stages,
}


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
