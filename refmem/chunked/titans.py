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
affine in :math:`[M_0, S_0]`: with :math:`U = \tilde U - W X_0^T` (:math:`X_0 = [M_0, S_0]`),
:math:`O = P U + [\mathrm{diag}(\gamma^a) Q, \mathrm{diag}(p) Q] X_0^T` and
:math:`X_C = [\gamma^a_C M_0 + p_C S_0,\ \gamma^\eta_C S_0] + U^T [\mathrm{diag}(c_{C\cdot}) K, \mathrm{diag}(D^\eta_{C\cdot}) K]`,
so the chunk-to-chunk pass carries only the pair (``d_v x 2 d_k``), a few
``C x 2 d_k`` products per chunk.

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
from .chunks import (broadcast_lead, check_chunk_size, chunk, concat_last, decay_from_start, decay_matrix,
                     from_chunks, log_gate_cumsum, lower_mask, mT, prepare_chunks, scalar_chunk, scan_blocks,
                     shift_right, solve_unit_lower, to_chunks)


def _checked(q, k, v, alpha, eta, theta, initial_state, initial_momentum, chunk_size):
    xp, M0, S0 = check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum)
    return xp, check_chunk_size(chunk_size, k.shape[-2]), M0, S0


def titans_pieces(Q, K, V, a, eta, theta, xp, *, exact: bool = True):
    r"""The ``[M0, S0]``-independent pieces of Titans chunks (module docstring for the algebra).

    Parameters
    ----------
    Q, K : array ``[..., C, d_k]``
    V : array ``[..., C, d_v]``
    a, eta, theta : array ``[..., C]``
        Memory retention ``1 - alpha``, momentum decay and step size.
    exact : bool
        ``True``: the per-token recurrence (triangular solve). ``False``: the
        mini-batch form, every gradient at the chunk-start memory.

    Returns
    -------
    Ut : ``[..., C, d_v]``, W : ``[..., C, w]``
        ``U = Ut - W X0^T[:w]``: ``w = 2 d_k`` (exact, ``X0 = [M0, S0]``) or ``d_k``
        (mini-batch, ``M0`` only).
    P : ``[..., C, C]``
        ``tril(c o Q K^T)``.
    Qg : ``[..., C, 2 d_k]``
        ``[diag(gamma^a) Q, diag(p) Q]``: ``O = P U + Qg X0^T``.
    Kt : ``[..., C, 2 d_k]``
        ``[diag(c_{C.}) K, diag(D^eta_{C.}) K]``: ``X_C = X0 Gamma + U^T Kt``.
    g_a, g_e, p_C : ``[...]``
        ``Gamma = [[g_a I, 0], [p_C I, g_e I]]``: the chunk's gates on the pair.
    """
    C = K.shape[-2]
    dev = device_of(K)
    incl = lower_mask(C, xp, dev)
    La, Za = log_gate_cumsum(a, xp)
    Le, Ze = log_gate_cumsum(eta, xp)
    Da = decay_matrix(La, Za, La, Za, incl, xp)  # prod_{s<r<=t} a_r, (.., C, C)
    De = decay_matrix(Le, Ze, Le, Ze, incl, xp)  # prod_{s<r<=t} eta_r, (.., C, C)
    ga, ge = decay_from_start(La, Za, xp), decay_from_start(Le, Ze, xp)  # (.., C)
    strict = lower_mask(C, xp, dev, strict=True)
    c = Da + Da @ xp.where(strict, De, xp.zeros_like(De))  # c = D^a + P: coefficient of u_s k_s^T in M_t, (.., C, C)
    p = (Da @ ge[..., None])[..., 0]  # coefficient of S_0 in M_t, (.., C, C) @ (.., C, 1) -> (.., C)
    Kt = concat_last(c[..., C - 1, :][..., None] * K, De[..., C - 1, :][..., None] * K, xp=xp)  # (.., C, 2 d_k)
    del Da
    if exact:
        c_prev = shift_right(c, xp, axis=-2)  # c_{t-1, s}: strictly lower, (.., C, C)
        ga_prev = shift_right(ga, xp, fill=1.0)  # gamma^a_{t-1}, gamma^a_{-1} = 1
        p_prev = shift_right(p, xp)  # p_{t-1}, p_{-1} = 0
        rhs = theta[..., None] * concat_last(V, ga_prev[..., None] * K, p_prev[..., None] * K, xp=xp)  # (.., C, d_v + 2 d_k)
        A_low = theta[..., :, None] * (c_prev * (K @ mT(K, xp)))  # (.., C, C); strict lower triangle read
        del c_prev
        lead = tuple(A_low.shape[:-2])
        X = solve_unit_lower(A_low, xp.broadcast_to(rhs, lead + tuple(rhs.shape[-2:])), xp)  # [U~, W_M, W_S]
        del A_low, rhs
    else:  # gradients at M_0: u_t = theta_t (v_t - M_0 k_t)
        X = theta[..., None] * concat_last(V, K, xp=xp)  # [U~, W_M], (.., C, d_v + d_k)
    d_v = V.shape[-1]
    P = c * (Q @ mT(K, xp))  # tril(c o Q K^T) (c is lower triangular), (.., C, C)
    Qg = concat_last(ga[..., None] * Q, p[..., None] * Q, xp=xp)  # (.., C, 2 d_k)
    return X[..., :d_v], X[..., d_v:], P, Qg, Kt, ga[..., C - 1], ge[..., C - 1], p[..., C - 1]


def titans_terms(Q, K, V, a, eta, theta, xp, *, exact: bool = True):
    """Chunk terms of Titans (module docstring) for chunks ``Q, K [..., C, d_k]``, ``V``, gates ``[..., C]``.

    Returns ``PU [..., C, d_v]``, ``Qt [..., C, 2 d_k]``, ``H [..., d_v, 2 d_k]``,
    ``F [..., 2 d_k, 2 d_k]`` with ``O = PU + Qt X0^T`` and ``X_C = X0 F + H`` for
    the pair ``X = [M, S]`` (built from :func:`titans_pieces`; the chunked forms
    use the pieces directly and never form ``F``).
    """
    d_k = K.shape[-1]
    Ut, W, P, Qg, Kt, g_a, g_e, p_C = titans_pieces(Q, K, V, a, eta, theta, xp, exact=exact)
    W = W if W.shape[-1] == 2 * d_k else concat_last(W, xp.zeros_like(W), xp=xp)  # mini-batch: no S_0 term in U
    PU = P @ Ut  # (.., C, C) @ (.., C, d_v)
    Qt = Qg - P @ W  # (.., C, 2 d_k)
    H = mT(Ut, xp) @ Kt  # (.., d_v, C) @ (.., C, 2 d_k)
    G = mT(W, xp) @ Kt  # (.., 2 d_k, C) @ (.., C, 2 d_k)
    eye = xp.eye(d_k, dtype=K.dtype, device=device_of(K))
    zero = xp.zeros_like(eye)
    g_a, g_e, p_C = g_a[..., None, None], g_e[..., None, None], p_C[..., None, None]
    top = concat_last(g_a * eye, zero * g_e, xp=xp)  # (.., d_k, 2 d_k)
    bottom = concat_last(p_C * eye, g_e * eye, xp=xp)  # (.., d_k, 2 d_k)
    return PU, Qt, H, xp.concat([top, bottom], axis=-2) - G  # F: (.., 2 d_k, 2 d_k)


def _titans(q, k, v, alpha, eta, theta, C, M0, S0, xp, *, exact, return_momentum, block_tokens=256):
    """Blocks of whole chunks, then the last partial chunk on its own.

    Padding is not a no-op here (a padded step with ``a = 1`` still moves
    momentum into the memory, and ``eta = 0`` would erase the momentum), so a
    sequence with ``T`` not a multiple of ``C`` ends with a chunk of ``T mod C`` steps.
    The whole chunks go in blocks of at most a sixteenth of the sequence
    (:func:`~refmem.chunked.chunks.scan_blocks`), so the temporaries are sized by
    the block, not by ``T``.
    """
    T = k.shape[-2]
    if T == 0:
        raise ValueError("q, k, v must have at least one step (T >= 1)")
    kept, momentum_decay, step = titans_gates(alpha, eta, theta)  # the paper's names -> what they are

    def block(lo, hi, X):
        return titans_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], kept[..., lo:hi],
                             momentum_decay[..., lo:hi], step[..., lo:hi], min(C, hi - lo), X, xp, exact=exact)

    X = xp.concat([M0, S0], axis=-1)  # (.., d_v, 2 d_k): the pair [M, S]
    full = (T // C) * C
    outs = []
    if full:
        o, X = scan_blocks(full, C, block_tokens, X, block, xp, share=16)
        outs.append(o)
    if T - full:
        o, X = block(full, T, X)
        outs.append(o)
    d_k = k.shape[-1]
    o = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)  # (.., T, d_v)
    M = X[..., :d_k]
    return (o, M, X[..., d_k:]) if return_momentum else (o, M)


def titans_block(q, k, v, a, eta, theta, C: int, X, xp, *, exact: bool):
    r"""Outputs ``[..., t, d_v]`` of ``t / C`` whole chunks from the pair ``X = [M, S]``, and the pair after them.

    Per chunk, one product for both right factors ``X^T`` (exact form),

    .. math::

        [W; Q_g]\, X^T, \qquad U = \tilde U - W X^T, \qquad
        X_C = [g_a M + p_C S,\ g_e S] + U^T \tilde K,

    and the block's outputs :math:`O = Q_g X^T + P U` in one batched product.
    """
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    a, eta, theta = (to_chunks(g, C, xp, time_axis=-1) for g in (a, eta, theta))  # (.., n, C)
    Ut, W, P, Qg, Kt, g_a, g_e, p_C = titans_pieces(Q, K, V, a, eta, theta, xp, exact=exact)
    del Q, K, V
    d_k, w, n = Kt.shape[-1] // 2, W.shape[-1], Ut.shape[-3]
    merged = w == Qg.shape[-1]  # exact form: W and Q_g both multiply X^T
    if merged:
        lead = broadcast_lead(tuple(W.shape[:-2]), tuple(Qg.shape[:-2]))
        WQ = xp.concat([xp.broadcast_to(W, lead + tuple(W.shape[-2:])),
                        xp.broadcast_to(Qg, lead + tuple(Qg.shape[-2:]))], axis=-2)  # [W; Qg], (.., n, 2C, 2 d_k)
        del W, Qg
    us, qxs = [], []
    XT = mT(X, xp)  # the pass carries X^T = [M^T; S^T], (.., 2 d_k, d_v): every product below is A @ B
    for i in range(n):
        if merged:
            WQX = chunk(WQ, i) @ XT  # [W X^T; Qg X^T], (.., 2C, 2 d_k) @ (.., 2 d_k, d_v) -> (.., 2C, d_v)
            U = chunk(Ut, i) - WQX[..., :C, :]  # (.., C, d_v)
            qxs.append(WQX[..., C:, :])
        else:
            U = chunk(Ut, i) - chunk(W, i) @ XT[..., :d_k, :]  # u_t = theta_t (v_t - M_0 k_t), (.., C, d_v)
            qxs.append(chunk(Qg, i) @ XT)  # (.., C, 2 d_k) @ (.., 2 d_k, d_v) -> (.., C, d_v)
        us.append(U)
        MT, ST = XT[..., :d_k, :], XT[..., d_k:, :]
        ga, ge, pc = (scalar_chunk(g, i)[..., None, None] for g in (g_a, g_e, p_C))
        gated = _concat_rows(ga * MT + pc * ST, ge * ST, xp)  # (X Gamma)^T, (.., 2 d_k, d_v)
        XT = gated + mT(chunk(Kt, i), xp) @ U  # (U^T K~)^T = K~^T U, (.., 2 d_k, C) @ (.., C, d_v) -> (.., 2 d_k, d_v)
    O = xp.stack(qxs, axis=-3) + P @ xp.stack(us, axis=-3)  # (.., n, C, d_v) + (.., n, C, C) @ (.., n, C, d_v)
    return from_chunks(O, T, xp), mT(XT, xp)


def _concat_rows(top, bottom, xp):
    """``[top; bottom]`` along the second-to-last axis, the leading axes broadcast first."""
    lead = broadcast_lead(tuple(top.shape[:-2]), tuple(bottom.shape[:-2]))
    return xp.concat([xp.broadcast_to(x, lead + tuple(x.shape[-2:])) for x in (top, bottom)], axis=-2)


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
