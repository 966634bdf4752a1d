r"""Chunk mechanics every chunked form shares (the chunkwise forms of GLA and DeltaNet; MATH.md 8): splitting a sequence into chunks, in-chunk gate decays, the triangular solve,
the chunk-to-chunk pass.

A sequence ``[..., T, d]`` is padded at the end to ``N C`` steps (``N = ceil(T / C)``)
and viewed as ``[..., N, C, d]``. Padding steps are chosen to leave the state
unchanged (zero keys, values and write strengths; gates equal to 1), so the
chunked form is exact for any ``T``; the padded outputs are cut off.

Gate decays inside a chunk (MATH.md 8, "cumulative log-gates") are computed
without ever dividing by a gate product and without ``log(0)``: for gates
``a_r`` in ``[0, 1]``

.. math::

    D_{ts} = \prod_{s < r \le t} a_r
           = \exp(L_t - L_s)\,[Z_t = Z_s],
    \qquad L_t = \sum_{r \le t,\ a_r > 0} \log a_r,
    \qquad Z_t = \#\{r \le t : a_r = 0\},

so a zero gate between ``s`` and ``t`` gives exactly 0 (the zero count differs)
and every exponent is ``<= 0`` where it is used.
"""

from __future__ import annotations

import math
from numbers import Integral

from ..backends import extra, host_resident
from ..linalg import device_of


def check_chunk_size(chunk_size, T: int) -> int:
    """``chunk_size`` (a Python int ``>= 1``) clamped to the sequence length ``T``.

    A chunk longer than the sequence is the same computation as one chunk of
    ``T`` steps, so ``min(chunk_size, T)`` is used: a huge ``chunk_size`` never
    allocates ``(chunk_size, chunk_size)`` masks. ``TypeError`` / ``ValueError``
    for a non-integer or a ``chunk_size < 1``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral):
        raise TypeError(f"chunk_size must be an integer >= 1; got {type(chunk_size).__name__} {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size}")
    return int(min(int(chunk_size), max(int(T), 1)))


def n_chunks(T: int, C: int) -> int:
    """Number of chunks ``ceil(T / C)`` (at least 1 so that ``T = 0`` is not a special case)."""
    return max(1, math.ceil(T / C))


def to_chunks(x, C: int, xp, *, fill: float = 0.0, time_axis: int = -2):
    """``[..., T, d]`` (``time_axis=-2``) or ``[..., T]`` (``time_axis=-1``) -> ``[..., N, C, d]`` / ``[..., N, C]``.

    The time axis is padded at the end with ``fill`` up to ``N C`` steps.
    """
    T = x.shape[time_axis]
    N = n_chunks(T, C)
    pad = N * C - T
    if pad:
        shape = list(x.shape)
        shape[time_axis] = pad
        filler = xp.full(tuple(shape), fill, dtype=x.dtype, device=device_of(x))
        x = xp.concat([x, filler], axis=time_axis)
    lead = tuple(x.shape[: x.ndim + time_axis])
    tail = tuple(x.shape[x.ndim + time_axis + 1:])
    return xp.reshape(x, lead + (N, C) + tail)


def from_chunks(o, T: int, xp):
    """``[..., N, C, d]`` -> ``[..., T, d]``: merge the chunk axes, drop the padding."""
    lead = tuple(o.shape[:-3])
    N, C, d = o.shape[-3:]
    return xp.reshape(o, lead + (N * C, d))[..., :T, :]


def log_gate_cumsum(a, xp, axis: int = -1):
    """Cumulative log-gate and zero count along ``axis`` (the in-chunk time axis).

    Returns ``L = cumsum(log a over a > 0)`` and ``Z = cumsum([a == 0])`` (as floats,
    exact small integers), both shaped like ``a``; ``Z`` is ``None`` when no gate
    is 0 (then ``D`` needs no zero bookkeeping). ``log 0`` is never evaluated.
    """
    zero = a == 0
    if host_resident(xp) and not bool(xp.any(zero)):  # the check reads the data: host backends only
        return xp.cumulative_sum(xp.log(a), axis=axis), None
    logs = xp.log(xp.where(zero, xp.ones_like(a), a))  # log a, 0 where a = 0 (counted in Z instead)
    L = xp.cumulative_sum(logs, axis=axis)
    Z = xp.cumulative_sum(xp.astype(zero, a.dtype), axis=axis)
    return L, Z


def lower_mask(C: int, xp, device, *, strict: bool = False):
    """Boolean ``[C, C]`` mask of ``s <= t`` (``s < t`` when ``strict``); rows ``t``, columns ``s``."""
    i = xp.arange(C, device=device)
    return (i[:, None] > i[None, :]) if strict else (i[:, None] >= i[None, :])


def decay_matrix(L_row, Z_row, L_col, Z_col, mask, xp):
    """``D[t, s] = prod_{s < r <= t} a_r`` where ``mask[t, s]``, else 0.

    ``L_row, Z_row [..., C]`` are the cumulative log-gate / zero count at the row
    times ``t``, ``L_col, Z_col [..., C]`` at the column times ``s`` (so shifted
    cumulants give "decay up to the step before ``t``"). Zero gates give exact
    zeros; ``Z_row = None`` means "no zero gate anywhere" (skips the comparison).
    """
    if Z_row is None and host_resident(xp) and _factor_safe(L_row, L_col, xp):  # reads data: host only
        # exp(L_t) exp(-L_s): two exps of [.., C] instead of one of [.., C, C]; no overflow (see _factor_safe)
        outer = xp.exp(L_row)[..., :, None] * xp.exp(-L_col)[..., None, :]  # (.., C, 1) * (.., 1, C)
        return xp.where(mask, outer, xp.zeros_like(outer))
    diff = L_row[..., :, None] - L_col[..., None, :]  # (.., C, 1) - (.., 1, C) -> (.., C, C)
    valid = mask if Z_row is None else xp.logical_and(mask, Z_row[..., :, None] == Z_col[..., None, :])
    return xp.exp(xp.where(valid, diff, -math.inf))  # exp(-inf) = 0 exactly; exponents <= 0 where valid


def _factor_safe(L_row, L_col, xp) -> bool:
    """Whether ``exp(L_t) exp(-L_s)`` is safe: every ``L >= -log(max)/2``.

    Then ``exp(-L_s) <= sqrt(max)`` does not overflow, ``exp(L_t) >= 1/sqrt(max)``
    is a normal number (no underflow, no denormals), and every product, masked or
    not, is at most ``sqrt(max)``. The relative error, ``|L| eps`` from the
    cumulative sum plus two roundings, matches that of ``exp(L_t - L_s)``.
    """
    limit = 0.5 * math.log(float(xp.finfo(L_row.dtype).max))
    return bool(xp.min(L_row) >= -limit) and bool(xp.min(L_col) >= -limit)


def gates_bounded(L, dtype, xp) -> bool:
    """Whether every ``gamma_t = e^(L_t) >= max^(-1/4)`` (``L = None``, no gate: true); reads the data.

    Then ``e^(-L_s) <= max^(1/4)``: the gate half of the bound that makes factored
    decays ``e^(L_t) e^(-L_s)`` safe (:func:`refmem.chunked.delta_family._factors_bounded`).
    """
    return L is None or bool(xp.min(L) >= -math.log(float(xp.finfo(dtype).max) ** 0.25))


def abs_max(x, xp) -> float:
    """``max |x|`` as ``max(max x, -min x)``: two reductions, no ``|x|`` temporary."""
    return max(float(xp.max(x)), -float(xp.min(x)))


def data_bounded(Q, K, xp, b=None) -> bool:
    """The data half of the factored decays' bound: ``d_k max|K| max(max|Q|, max b max|K|) <= max^(1/4)``
    (``b = None``: ``d_k max|K| max|Q|``); host backends only (it reads the data), false for empty ``K``.

    With :func:`gates_bounded` it keeps every entry of the factored products, the unused ones included,
    below ``sqrt(max)`` (:func:`refmem.chunked.delta_family._factors_bounded`, Notes).
    """
    if not host_resident(xp) or K.shape[-1] == 0 or K.shape[-2] == 0:
        return False
    k_max, q_max = abs_max(K, xp), abs_max(Q, xp)
    left = q_max if b is None else max(q_max, abs_max(b, xp) * k_max)
    return K.shape[-1] * k_max * left <= float(xp.finfo(K.dtype).max) ** 0.25


def decay_from_start(L, Z, xp):
    """``gamma_t = prod_{r <= t} a_r`` (inclusive, from the chunk start): ``exp(L_t) [Z_t = 0]`` (``Z=None``: no zeros)."""
    return xp.exp(L) if Z is None else xp.exp(xp.where(Z == 0, L, -math.inf))


def shift_right(x, xp, *, fill: float = 0.0, axis: int = -1):
    """``y_t = x_{t-1}`` along ``axis`` with ``y_0 = fill`` (cumulants "before step t")."""
    shape = list(x.shape)
    shape[axis] = 1
    first = xp.full(tuple(shape), fill, dtype=x.dtype, device=device_of(x))
    n = x.shape[axis]
    body = xp.take(x, xp.arange(n - 1, device=device_of(x)), axis=axis)
    return xp.concat([first, body], axis=axis)


def solve_unit_lower(A, B, xp, *, overwrite_b: bool = False):
    """Solve ``A X = B`` for unit lower-triangular ``A [..., n, n]``, ``B [..., n, m]``.

    Uses the backend's ``solve_triangular`` extra when it has one (BLAS ``trsm``
    on NumPy); otherwise :func:`forward_substitution`, pure array API.
    Only the strictly lower triangle of ``A`` is read. ``overwrite_b=True``: ``B``
    is a temporary the caller gives up, which a backend with a
    ``solve_triangular_in_place`` extra (NumPy) may overwrite with ``X``
    instead of copying it; never pass an array that is used afterwards.
    """
    in_place = extra(xp, "solve_triangular_in_place") if overwrite_b else None
    if in_place is not None:
        return in_place(A, B, lower=True, unit_diagonal=True)
    fast = extra(xp, "solve_triangular")
    if fast is not None:
        return fast(A, B, lower=True, unit_diagonal=True)
    return forward_substitution(A, B, xp)


def forward_substitution(A, B, xp, *, block: int = 16):
    """Blocked forward substitution for unit lower-triangular ``A`` (array API only).

    Notes
    -----
    With ``A = [[A11, 0], [A21, A22]]``: ``X1 = A11^{-1} B1``, ``X2 = A22^{-1} (B2 - A21 X1)``,
    recursively; blocks of at most ``block`` rows are solved row by row. This is
    ordinary forward substitution reordered into matrix products, with the same
    rounding behaviour (backward stable for triangular systems).
    """
    n = A.shape[-1]
    if n <= block:
        rows = []
        for i in range(n):
            x_i = B[..., i:i + 1, :]  # (.., 1, m)
            if i:
                prev = xp.concat(rows, axis=-2)  # (.., i, m)
                x_i = x_i - A[..., i:i + 1, :i] @ prev  # (.., 1, i) @ (.., i, m) -> (.., 1, m)
            rows.append(x_i)
        return xp.concat(rows, axis=-2)
    h = n // 2
    X1 = forward_substitution(A[..., :h, :h], B[..., :h, :], xp, block=block)
    rhs2 = B[..., h:, :] - A[..., h:, :h] @ X1  # (.., n-h, h) @ (.., h, m) -> (.., n-h, m)
    X2 = forward_substitution(A[..., h:, h:], rhs2, xp, block=block)
    return xp.concat([X1, X2], axis=-2)


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def broadcast_lead(*shapes):
    """Broadcast of the leading shapes ``shapes`` (tuples), NumPy rules."""
    n = max(len(sh) for sh in shapes)
    out = []
    for dims in zip(*((1,) * (n - len(sh)) + tuple(sh) for sh in shapes)):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def concat_last(*arrays, xp):
    """Concatenate along the last axis after broadcasting the other axes."""
    lead = broadcast_lead(*(tuple(a.shape[:-1]) for a in arrays))
    return xp.concat([xp.broadcast_to(a, lead + (a.shape[-1],)) for a in arrays], axis=-1)


def scan_chunks(M0, N: int, chunk_terms, xp):
    """The sequential chunk-to-chunk pass.

    ``chunk_terms(n) -> (PU, Qt, step)``: chunk ``n``'s outputs are
    ``PU + Qt M^T`` and the next state is ``step(M)``. Returns the outputs
    ``[..., N, C, d_v]`` and the final state. Only ``M`` is carried: no state history.
    """
    M = M0
    outs = []
    for n in range(N):
        PU, Qt, step = chunk_terms(n)
        outs.append(PU + Qt @ mT(M, xp))  # (.., C, d_k) @ (.., d_k, d_v) -> (.., C, d_v)
        M = step(M)
    return xp.stack(outs, axis=-3), M


def block_steps(T: int, C: int, *, block_tokens: int = 256, share: int = 8) -> int:
    """Steps per block of a blocked chunked form: whole chunks, at most ``min(block_tokens, T / share)``, at least one chunk.

    A blocked form forms one block's chunk pieces at a time, so its temporaries
    are a fixed fraction of the sequence's (``1 / share`` once ``T >= share C``),
    never a copy per chunk of the whole sequence.
    """
    return max(1, min(int(block_tokens), int(T) // int(share)) // C) * C


def scan_blocks(T: int, C: int, block_tokens: int, M0, block, xp, *, share: int = 8, chunk_outputs: bool = False):
    """Run ``block(lo, hi, M) -> (o [..., hi - lo, d_v], M)`` over the steps in blocks of whole chunks.

    A block holds :func:`block_steps` steps, at most ``min(block_tokens, T / share)``
    (chunk boundaries unchanged, so each chunk sees the numbers of the
    whole-sequence computation); ``M`` is whatever state the blocks carry.
    Returns the outputs ``[..., T, d_v]`` and the final state.
    ``chunk_outputs=True``: a block returns its chunks' outputs instead, a list
    of ``[..., C, d_v]`` (the last chunk zero padded as by :func:`to_chunks`),
    and every chunk's are joined by one stack at the end.
    """
    per_block = block_steps(T, C, block_tokens=block_tokens, share=share)
    M = M0
    outs = []
    for lo in range(0, max(T, 1), per_block):
        o_block, M = block(lo, min(T, lo + per_block), M)
        if chunk_outputs:
            outs.extend(o_block)
        else:
            outs.append(o_block)
    if chunk_outputs:
        return from_chunks(xp.stack(outs, axis=-3), T, xp), M  # (.., N, C, d_v) -> (.., T, d_v)
    return (outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)), M  # (.., T, d_v)


def chunk(x, n: int):
    """Chunk ``n`` of ``[..., N, a, b]``."""
    return x[..., n, :, :]


def scalar_chunk(x, n: int):
    """Chunk ``n`` of ``[..., N]``."""
    return x[..., n]


def prepare_chunks(q, k, v, C: int, xp):
    """``q, k, v`` as chunks ``[..., N, C, d]`` (zero padded) and the sequence length ``T``."""
    return to_chunks(q, C, xp), to_chunks(k, C, xp), to_chunks(v, C, xp), k.shape[-2]


def gate_cumulants(alpha, C: int, xp):
    """``(L, Z)`` of a per-step gate ``[..., T]`` in chunks ``[..., N, C]`` (padding gate 1); ``(None, None)`` if absent."""
    if alpha is None:
        return None, None
    return log_gate_cumsum(to_chunks(alpha, C, xp, fill=1.0, time_axis=-1), xp)
