r"""Chunked Mesa layer by conjugate gradient (MATH.md 5e, 8).

Mesa's state is the pair of running statistics :math:`H_t = H_0 + \sum_{i\le t} k_i k_i^T`,
:math:`G_t = G_0 + \sum_{i\le t} v_i k_i^T` (:mod:`refmem.memories.mesa`), and
:math:`o_t = M_t q_t = G_t (H_t + \Lambda_t)^{-1} q_t`. Per chunk with start
statistics :math:`(G_0, H_0)`, write :math:`y_t = (H_t + \Lambda_t)^{-1} q_t`; then

.. math::

    (H_t + \Lambda_t)\, y_t = H_0 y_t + \sum_{s \le t} k_s (k_s^T y_t) + \Lambda_t y_t
    \;\Rightarrow\; \mathcal A(Y) = Y H_0 + \mathrm{tril}(Y K^T) K + \Lambda \odot Y,

    O = Y G_0^T + \mathrm{tril}(Y K^T) V,

so the ``C`` systems of a chunk (and of all a block's chunks at once, given each chunk's
start statistics, which are prefix sums of :math:`K^T K` and :math:`V^T K`) are
solved together by conjugate gradient whose operator is three matrix
products. The chunks are taken a block at a time
(:func:`~refmem.chunked.chunks.scan_blocks`): each chunk's start statistics continue
the running sums of the blocks before it, and the CG of a block's rows runs on its
own (each row is its own system, so its iterates do not depend on the block). The final state :math:`M_T = G_T (H_T + \Lambda_T)^{-1}` is solved by
CG too (rows :math:`m_i (H_T + \Lambda_T) = g_i`).

CG stops per system when :math:`\|r\| \le \mathrm{rtol}\,\|b\|`; the error of
:math:`y` is then at most about :math:`\kappa\,\mathrm{rtol}` relative, with
:math:`\kappa \le (\|H_0\| + \sum\|k_i\|^2 + \lambda_{max}) / \lambda_{min}`.
A system that does not converge in ``max_iter`` steps raises
:class:`~refmem.solvers.ConvergenceError`.
"""

from __future__ import annotations

from ..linalg import device_of
from ..memories.mesa import _scan_setup
from ..parallel import workers_option
from ..solvers import ConvergenceError, SolveReport
from ..validation import finite_outputs
from .chunks import check_chunk_size, from_chunks, lower_mask, mT, prepare_chunks, scan_blocks, to_chunks


def _default_rtol(dtype, xp) -> float:
    """``1e-13`` in float64, ``1e-6`` in float32: a few hundred eps, what the recursive CG residual reaches."""
    eps = float(xp.finfo(dtype).eps)
    return 1e-13 if eps < 1e-10 else 1e-6


def row_cg(apply, B, xp, *, rtol: float, max_iter: int):
    """Conjugate gradient for many SPD systems at once, one per row: ``apply(X)[..., i, :] = A_i x_i``.

    Parameters
    ----------
    apply : callable ``[..., m, d] -> [..., m, d]``, symmetric positive definite per row
    B : array ``[..., m, d]``
        Right-hand sides (rows).
    rtol : float
        Stop when every row has ``||b - A x|| <= rtol ||b||`` (recursive residual).
    max_iter : int

    Returns
    -------
    X : array ``[..., m, d]``
    iterations : int
    """
    X = xp.zeros_like(B)
    R = B
    Pd = R
    rr = xp.sum(R * R, axis=-1, keepdims=True)  # (.., m, 1)
    tol2 = (rtol * rtol) * rr
    zero = xp.zeros_like(rr)
    one = xp.ones_like(rr)
    for it in range(max_iter + 1):
        active = rr > tol2
        if not bool(xp.any(active)):
            return X, it
        if it == max_iter:
            break
        AP = apply(Pd)
        pAp = xp.sum(Pd * AP, axis=-1, keepdims=True)
        step = xp.where(active, rr / xp.where(active, pAp, one), zero)  # finished rows stay put (no 0/0)
        X = X + step * Pd
        R = R - step * AP
        rr_new = xp.sum(R * R, axis=-1, keepdims=True)
        beta = xp.where(active, rr_new / xp.where(active, rr, one), zero)
        Pd = R + beta * Pd
        rr = rr_new
    worst = float(xp.max(xp.reshape(xp.sqrt(rr / xp.where(tol2 > 0, tol2, one)) * rtol, (-1,))))
    raise ConvergenceError(SolveReport("iterative", "cg (chunked mesa)", max_iter, worst, rtol, False),
                           hint="the systems are too ill-conditioned for this rtol; raise lam or rtol")


@workers_option
@finite_outputs
def mesa_chunked(q, k, v, lam, *, chunk_size=64, initial_state=None, return_stats=False, rtol=None, max_iter=None):
    """The Mesa layer in chunks, every per-step solve by conjugate gradient.

    Equals :func:`~refmem.memories.mesa.mesa_recurrent` (closed form) to about
    ``kappa * rtol`` relative.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    lam : float or array ``[..., T]`` or ``[..., T, d_k]``, ``> 0``
    chunk_size : int, ``>= 1``
    initial_state : tuple ``(G_0, H_0)``, optional
        Running statistics of an earlier context (see :mod:`refmem.memories.mesa`).
    return_stats : bool
        Also return ``(G_T, H_T)``.
    rtol : float, optional
        CG relative residual per system (default ``1e-13`` float64, ``1e-6`` float32).
    max_iter : int, optional
        CG iterations (default ``10 d_k + 10``; exact arithmetic needs ``d_k``).

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
    stats : tuple ``(G_T, H_T)``, only with ``return_stats=True``
    """
    xp, lam, per_channel, G0, H0 = _scan_setup(q, k, v, lam, initial_state)
    C = check_chunk_size(chunk_size, k.shape[-2])
    T, d_k = k.shape[-2], k.shape[-1]
    if T == 0:
        raise ValueError("q, k, v must have at least one step (T >= 1)")
    rtol = _default_rtol(k.dtype, xp) if rtol is None else float(rtol)
    max_iter = 10 * d_k + 10 if max_iter is None else int(max_iter)
    if lam.ndim == 0:
        lam_end = lam
    elif per_channel:
        lam_end = lam[..., T - 1, :][..., None, :]  # (.., 1, d_k)
    else:
        lam_end = lam[..., T - 1][..., None, None]  # (.., 1, 1)
    # carried from block to block: the sums of k k^T and v k^T so far (without H_0, G_0), and H, G

    def block(lo, hi, state):
        lam_rows = lam if lam.ndim == 0 else (to_chunks(lam[..., lo:hi, :], C, xp, fill=1.0) if per_channel else
                                              to_chunks(lam[..., lo:hi], C, xp, fill=1.0, time_axis=-1)[..., None])
        return _mesa_block(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :], lam_rows, C, G0, H0, state[0],
                           state[1], xp, rtol=rtol, max_iter=max_iter)

    o, (_, _, H_T, G_T) = scan_blocks(T, C, 256, (xp.zeros_like(H0), xp.zeros_like(G0), H0, G0), block, xp, share=16)
    M, _ = row_cg(lambda Mr: Mr @ H_T + lam_end * Mr, G_T, xp, rtol=rtol, max_iter=max_iter)  # m_i (H_T + L_T) = g_i
    return (o, M, (G_T, H_T)) if return_stats else (o, M)


def _mesa_block(q, k, v, lam_rows, C: int, G0, H0, sum_KK, sum_VK, xp, *, rtol: float, max_iter: int):
    """One block of whole chunks: outputs ``[..., t, d_v]`` and ``(sum k k^T, sum v k^T, H, G)`` after it.

    ``lam_rows`` is ``lam`` (a scalar) or its block's rows ``[..., n, C, 1 or d_k]``
    (padding rows have ``q = 0``: any ``lam > 0`` works). ``sum_KK, sum_VK`` are the
    sums of ``k k^T`` and ``v k^T`` over the chunks before the block; each chunk's
    start statistics are ``H_0 +`` (that sum continued over the block's earlier
    chunks), summed in sequence order.
    """
    Q, K, V, T = prepare_chunks(q, k, v, C, xp)  # (.., n, C, d)
    KtK = mT(K, xp) @ K  # per-chunk sum k k^T, (.., n, d_k, C) @ (.., n, C, d_k)
    VtK = mT(V, xp) @ K  # per-chunk sum v k^T, (.., n, d_v, d_k)
    KK_before = _running_sums(sum_KK, KtK, xp)  # (.., n + 1, d_k, d_k): before each chunk, and after the block
    VK_before = _running_sums(sum_VK, VtK, xp)  # (.., n + 1, d_v, d_k)
    H_start = H0[..., None, :, :] + KK_before[..., :-1, :, :]  # (.., n, d_k, d_k)
    G_start = G0[..., None, :, :] + VK_before[..., :-1, :, :]  # (.., n, d_v, d_k)
    incl = lower_mask(C, xp, device_of(k))
    zeros = xp.zeros((C, C), dtype=k.dtype, device=device_of(k))

    def tril_scores(Y):
        return xp.where(incl, Y @ mT(K, xp), zeros)  # tril(Y K^T), (.., n, C, C)

    def apply(Y):  # (H_t + Lambda_t) y_t for every step t of every chunk, rows of Y
        return Y @ H_start + tril_scores(Y) @ K + lam_rows * Y  # (.., n, C, d_k)

    Y, _ = row_cg(apply, Q, xp, rtol=rtol, max_iter=max_iter)
    O = Y @ mT(G_start, xp) + tril_scores(Y) @ V  # (.., n, C, d_v)
    H_end = H_start[..., -1, :, :] + KtK[..., -1, :, :]  # (.., d_k, d_k)
    G_end = G_start[..., -1, :, :] + VtK[..., -1, :, :]  # (.., d_v, d_k)
    return from_chunks(O, T, xp), (KK_before[..., -1, :, :], VK_before[..., -1, :, :], H_end, G_end)


def _running_sums(before, x, xp):
    """``[s, s + x_0, (s + x_0) + x_1, ...]`` along the chunk axis ``-3`` of ``x [..., n, a, b]``: ``n + 1`` sums."""
    return xp.cumulative_sum(xp.concat([before[..., None, :, :], x], axis=-3), axis=-3)
