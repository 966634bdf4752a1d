r"""Chunked Titans (linear memory, momentum and forgetting): an exact chunked form exists (MATH.md 5c, 8).

Recurrence (:mod:`refmem.memories.titans`), with :math:`a_t = 1 - \alpha_t`:

.. math::

    S_t = \eta_t S_{t-1} + u_t k_t^T, \quad u_t = \theta_t (v_t - M_{t-1} k_t), \qquad
    M_t = a_t M_{t-1} + S_t = a_t M_{t-1} + \eta_t S_{t-1} + u_t k_t^T .

Derivation. The pair :math:`X_t = [M_t, S_t]` (``d_v x 2 d_k``) obeys
:math:`X_t = X_{t-1} (G_t \otimes I) + u_t ((1, 1) \otimes k_t^T)` with the 2 x 2 gate
:math:`G_t = [[a_t, 0], [\eta_t, \eta_t]]`: the l2 gradient couples the levels
only through the rank-one writes, and the gates are a Kronecker product with the
identity. So inside a chunk the coefficients are products of 2 x 2 lower-triangular
gates, :math:`G_{s+1} \cdots G_t = [[D^a_{ts}, 0], [P_{ts}, D^\eta_{ts}]]`, with
:math:`D^a_{ts} = \prod_{s<r\le t} a_r`, :math:`D^\eta_{ts} = \prod_{s<r\le t} \eta_r` and

.. math::

    P_{ts} = \sum_{s < r \le t} D^\eta_{rs} D^a_{tr}
    \quad (P = D^a \, \mathrm{strict\_tril}(D^\eta), \text{ a matrix product}),

the weight with which momentum present at ``s`` has reached ``M`` by ``t``. Then

.. math::

    M_t = \gamma^a_t M_0 + p_t S_0 + \sum_{s \le t} c_{ts} u_s k_s^T, \quad
    S_t = \gamma^\eta_t S_0 + \sum_{s \le t} D^\eta_{ts} u_s k_s^T,

:math:`c = D^a + P`, :math:`\gamma` the decays from the chunk start and
:math:`p_t = \sum_{r \le t} D^a_{tr} \gamma^\eta_r`. Since ``u_t`` reads
:math:`M_{t-1}`, the rows of ``U`` solve a unit lower-triangular system exactly as in
the delta rule (UT form) with the *shifted* coefficients :math:`c_{t-1,s}`:

.. math::

    (I + \mathrm{diag}(\theta)(c^{-} \odot K K^T)) U
    = \mathrm{diag}(\theta)(V - \mathrm{diag}(\gamma^{a-}) K M_0^T - \mathrm{diag}(p^{-}) K S_0^T),

(:math:`x^-_t = x_{t-1}`, :math:`\gamma^{a-}_0 = 1`, :math:`p^-_0 = 0`). Everything is
affine in :math:`[M_0, S_0]`, so the chunk-to-chunk pass carries the pair
(``d_v x 2 d_k``) through one ``2 d_k x 2 d_k`` matrix per chunk.

Mini-batch form (Titans' own parallel training): every gradient of the chunk at
the chunk-start state, :math:`u_t = \theta_t (v_t - M_0 k_t)`: the same formulas
with :math:`A = I` and :math:`M_{t-1}` replaced by :math:`M_0`; equal to the
recurrence only when ``C = 1``.
"""

from __future__ import annotations

from ..linalg import device_of
from ..memories.titans import check_titans_inputs, titans_gates
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import (check_chunk_size, chunk, concat_last, decay_from_start, decay_matrix, from_chunks, log_gate_cumsum,
                     lower_mask, mT, prepare_chunks, scan_chunks, shift_right, solve_unit_lower, to_chunks)


def _checked(q, k, v, alpha, eta, theta, initial_state, initial_momentum, chunk_size):
    xp, M0, S0 = check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum)
    return xp, check_chunk_size(chunk_size, k.shape[-2]), M0, S0


def titans_terms(Q, K, V, a, eta, theta, xp, *, exact: bool = True):
    """Chunk terms of Titans (module docstring) for chunks ``Q, K [..., C, d_k]``, ``V``, gates ``[..., C]``.

    Returns ``PU [..., C, d_v]``, ``Qt [..., C, 2 d_k]``, ``H [..., d_v, 2 d_k]``,
    ``F [..., 2 d_k, 2 d_k]`` with ``O = PU + Qt X0^T`` and ``X_C = X0 F + H`` for
    the pair ``X = [M, S]``.
    """
    C, d_k = K.shape[-2], K.shape[-1]
    d_v = V.shape[-1]
    dev = device_of(K)
    incl = lower_mask(C, xp, dev)
    strict = lower_mask(C, xp, dev, strict=True)
    La, Za = log_gate_cumsum(a, xp)
    Le, Ze = log_gate_cumsum(eta, xp)
    Da = decay_matrix(La, Za, La, Za, incl, xp)  # prod_{s<r<=t} a_r, (.., C, C)
    De = decay_matrix(Le, Ze, Le, Ze, incl, xp)  # prod_{s<r<=t} eta_r, (.., C, C)
    ga, ge = decay_from_start(La, Za, xp), decay_from_start(Le, Ze, xp)  # (.., C)
    P = Da @ xp.where(strict, De, xp.zeros_like(De))  # momentum -> memory weights, (.., C, C) @ (.., C, C)
    c = Da + P  # coefficient of u_s k_s^T in M_t, (.., C, C)
    p = (Da @ ge[..., None])[..., 0]  # coefficient of S_0 in M_t, (.., C, C) @ (.., C, 1) -> (.., C)
    zeros_k = xp.zeros_like(K)
    if exact:
        c_prev = shift_right(c, xp, axis=-2)  # c_{t-1, s}: strictly lower, (.., C, C)
        ga_prev = shift_right(ga, xp, fill=1.0)  # gamma^a_{t-1}, gamma^a_{-1} = 1
        p_prev = shift_right(p, xp)  # p_{t-1}, p_{-1} = 0
        rhs = theta[..., None] * concat_last(V, ga_prev[..., None] * K, p_prev[..., None] * K, xp=xp)
        A_low = theta[..., :, None] * (c_prev * (K @ mT(K, xp)))  # (.., C, C); strict lower triangle read
        X = solve_unit_lower(A_low, rhs, xp)  # [U~, W_M, W_S], (.., C, d_v + 2 d_k)
        del A_low, rhs, c_prev
    else:  # gradients at M_0: u_t = theta_t (v_t - M_0 k_t)
        X = theta[..., None] * concat_last(V, K, zeros_k, xp=xp)
    Pq = c * (Q @ mT(K, xp))  # tril(c o Q K^T), (.., C, C)
    PX = Pq @ X  # (.., C, d_v + 2 d_k)
    PU = PX[..., :d_v]
    Qt = concat_last(ga[..., None] * Q, p[..., None] * Q, xp=xp) - PX[..., d_v:]  # (.., C, 2 d_k)
    Kt = concat_last(c[..., C - 1, :][..., None] * K, De[..., C - 1, :][..., None] * K, xp=xp)  # (.., C, 2 d_k)
    HG = mT(X, xp) @ Kt  # (.., d_v + 2 d_k, C) @ (.., C, 2 d_k) -> (.., d_v + 2 d_k, 2 d_k)
    H, G = HG[..., :d_v, :], HG[..., d_v:, :]
    eye = xp.eye(d_k, dtype=K.dtype, device=dev)
    zero = xp.zeros_like(eye)
    g_a, g_e, p_C = ga[..., C - 1, None, None], ge[..., C - 1, None, None], p[..., C - 1, None, None]
    # [M, S] <- [M, S] [[g_a I, 0], [p_C I, g_e I]] - [M, S] G + H
    top = concat_last(g_a * eye, zero * g_e, xp=xp)  # (.., d_k, 2 d_k)
    bottom = concat_last(p_C * eye, g_e * eye, xp=xp)  # (.., d_k, 2 d_k)
    F = xp.concat([top, bottom], axis=-2) - G  # (.., 2 d_k, 2 d_k)
    return PU, Qt, H, F


def _titans(q, k, v, alpha, eta, theta, C, M0, S0, xp, *, exact, return_momentum):
    """Full chunks batched, then the last partial chunk on its own.

    Padding is not a no-op here (a padded step with ``a = 1`` still moves
    momentum into the memory, and ``eta = 0`` would erase the momentum), so a
    sequence with ``T`` not a multiple of ``C`` ends with a chunk of ``T mod C`` steps.
    """
    T = k.shape[-2]
    if T == 0:
        raise ValueError("q, k, v must have at least one step (T >= 1)")
    n_full = T // C
    pieces = [(0, n_full * C, C)] if n_full else []
    if T - n_full * C:
        pieces.append((n_full * C, T, T - n_full * C))
    kept, momentum_decay, step = titans_gates(alpha, eta, theta)  # the paper's names -> what they are
    X = xp.concat([M0, S0], axis=-1)  # (.., d_v, 2 d_k): the pair [M, S]
    outs = []
    for lo, hi, size in pieces:
        Q, K, V, _ = prepare_chunks(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], size, xp)
        a = to_chunks(kept[..., lo:hi], size, xp, time_axis=-1)  # memory retention a_t = 1 - alpha_t
        e = to_chunks(momentum_decay[..., lo:hi], size, xp, time_axis=-1)
        th = to_chunks(step[..., lo:hi], size, xp, time_axis=-1)
        PU, Qt, H, F = titans_terms(Q, K, V, a, e, th, xp, exact=exact)
        del Q, K, V

        def terms(n, PU=PU, Qt=Qt, H=H, F=F):
            Fn, Hn = chunk(F, n), chunk(H, n)
            return chunk(PU, n), chunk(Qt, n), lambda X: X @ Fn + Hn  # (.., d_v, 2 d_k) @ (.., 2 d_k, 2 d_k)

        O, X = scan_chunks(X, PU.shape[-3], terms, xp)
        outs.append(from_chunks(O, hi - lo, xp))
    d_k = k.shape[-1]
    o = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)  # (.., T, d_v)
    M = X[..., :d_k]
    return (o, M, X[..., d_k:]) if return_momentum else (o, M)


@workers_option
@finite_outputs
def titans_chunked(q, k, v, alpha, eta, theta, *, chunk_size=64, initial_state=None, initial_momentum=None,
                   return_momentum=False):
    """Titans (linear memory) in chunks, exact; equals :func:`~refmem.memories.titans.titans_recurrent`.

    Parameters and returns are those of the recurrent form (forgetting and
    momentum decay 0 and 1 allowed), plus ``chunk_size >= 1``.
    """
    xp, C, M0, S0 = _checked(q, k, v, alpha, eta, theta, initial_state, initial_momentum, chunk_size)
    return _titans(q, k, v, alpha, eta, theta, C, M0, S0, xp, exact=True, return_momentum=return_momentum)


@workers_option
@finite_outputs
def titans_minibatch(q, k, v, alpha, eta, theta, *, chunk_size=64, initial_state=None, initial_momentum=None,
                     return_momentum=False):
    """Mini-batch Titans: every surprise in a chunk is the gradient at the chunk-start memory ``M_0``.

    Titans' parallel training form; a different computation from the recurrence
    unless ``chunk_size == 1``. Same parameters and returns as :func:`titans_chunked`.
    """
    xp, C, M0, S0 = _checked(q, k, v, alpha, eta, theta, initial_state, initial_momentum, chunk_size)
    return _titans(q, k, v, alpha, eta, theta, C, M0, S0, xp, exact=False, return_momentum=return_momentum)
