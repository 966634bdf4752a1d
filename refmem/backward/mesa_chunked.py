r"""Backward pass of the chunked Mesa layer: the chunk algebra of :mod:`refmem.chunked.mesa` transposed.

Forward (per chunk, rows ``t`` of the chunk, start statistics :math:`(G_s, H_s)`):

.. math::

    \mathcal A(Y) = Y H_s + \mathrm{tril}(Y K^T) K + \Lambda \odot Y = Q, \qquad
    O = Y G_s^T + \mathrm{tril}(Y K^T) V,

with :math:`H_s = H_0 + \sum_{m < n} K_m^T K_m`, :math:`G_s = G_0 + \sum_{m<n} V_m^T K_m`
(prefix sums over the chunks ``m`` before chunk ``n``), and the final state
:math:`M_T (H_T + \Lambda_T) = G_T`.

Adjoint
-------
Row ``t`` of :math:`\mathcal A` is the symmetric :math:`H_t + \Lambda_t`, so the
adjoint solve has the same operator (conjugate gradient again):

.. math::

    \bar Y = dO\,G_s + \mathrm{tril}(dO\,V^T) K, \qquad Z = \mathcal A^{-1}(\bar Y), \qquad dQ = Z,

    dG_s = dO^T Y, \quad dH_s = -Y^T Z, \quad d\Lambda = -Z \odot Y,

    dV = \mathrm{tril}(Y K^T)^T dO, \quad
    dK = \mathrm{tril}(dO V^T)^T Y - \mathrm{tril}(Y K^T)^T Z - \mathrm{tril}(Z K^T)^T Y ;

the final state: :math:`dG_T = dM_T (H_T + \Lambda_T)^{-1}` (rows by CG),
:math:`dH_T = -dG_T^T M_T`, :math:`d\Lambda_T = -\mathrm{diag}(dG_T^T M_T)`. The prefix
sums pass :math:`dH_s, dG_s` back as suffix sums over the chunks: the chunk
``m``'s sums :math:`K_m^T K_m`, :math:`V_m^T K_m` get
:math:`\sum_{n > m} dH_{s,n} + dH_T` and the like, hence
:math:`dK_m \mathrel{+}= K_m (D + D^T) + V_m E`, :math:`dV_m \mathrel{+}= K_m E^T`, and
:math:`dH_0 = \sum_n dH_{s,n} + dH_T`, :math:`dG_0 = \sum_n dG_{s,n} + dG_T`.

The recurrent backward (:mod:`refmem.backward.mesa`) solves each step's system
directly; this one solves all the chunk's systems at once by CG, so the two
agree to about :math:`\kappa\,\mathrm{rtol}` relative (the forward's accuracy),
:math:`\kappa` the systems' condition number.
"""

from __future__ import annotations

from ..chunked.chunks import check_chunk_size, from_chunks, lower_mask, mT, prepare_chunks, to_chunks
from ..chunked.mesa import _default_rtol, mesa_chunked, row_cg
from ..linalg import device_of
from ..memories.mesa import _scan_setup
from .cotangents import check_cotangents, finite_gradients


def _prefix_sum_before(x, xp):
    """``y_n = sum_{m < n} x_m`` along the chunk axis ``-3`` of ``[..., N, a, b]``."""
    return xp.cumulative_sum(x, axis=-3) - x


def _suffix_sum_after(x, xp):
    """``y_m = sum_{n > m} x_n`` along the chunk axis ``-3`` of ``[..., N, a, b]``."""
    total = xp.sum(x, axis=-3, keepdims=True)
    return total - xp.cumulative_sum(x, axis=-3)


@finite_gradients
def mesa_chunked_vjp(q, k, v, lam, *, do, dM_T=None, initial_state=None, chunk_size=64, rtol=None, max_iter=None):
    """Gradients of :func:`~refmem.chunked.mesa.mesa_chunked` (module docstring).

    Parameters
    ----------
    q, k, v, lam, initial_state, chunk_size, rtol, max_iter
        As :func:`~refmem.chunked.mesa.mesa_chunked` (CG for the forward's and the adjoint's systems).
    do : array ``[..., T, d_v]``
    dM_T : array ``[..., d_v, d_k]``, optional (zero when omitted)

    Returns
    -------
    dict
        ``q, k, v, lam`` (shaped like ``lam``) and ``initial_state = (dG_0, dH_0)``, as
        :func:`~refmem.backward.mesa.mesa_vjp`.
    """
    o, M_T = mesa_chunked(q, k, v, lam, chunk_size=chunk_size, initial_state=initial_state, rtol=rtol,
                          max_iter=max_iter)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp, lam, per_channel, G0, H0 = _scan_setup(q, k, v, lam, initial_state)
    C = check_chunk_size(chunk_size, k.shape[-2])
    T, d_k = k.shape[-2], k.shape[-1]
    rtol = _default_rtol(k.dtype, xp) if rtol is None else float(rtol)
    max_iter = 10 * d_k + 10 if max_iter is None else int(max_iter)
    Q, K, V, _ = prepare_chunks(q, k, v, C, xp)  # (.., N, C, d)
    dO = to_chunks(do, C, xp)  # (.., N, C, d_v); padding rows 0
    if lam.ndim == 0:
        lam_rows, lam_end = lam, lam
    elif per_channel:
        lam_rows = to_chunks(lam, C, xp, fill=1.0)  # (.., N, C, d_k)
        lam_end = lam[..., T - 1, :][..., None, :]  # (.., 1, d_k)
    else:
        lam_rows = to_chunks(lam, C, xp, fill=1.0, time_axis=-1)[..., None]  # (.., N, C, 1)
        lam_end = lam[..., T - 1][..., None, None]  # (.., 1, 1)
    KtK = mT(K, xp) @ K  # (.., N, d_k, d_k)
    VtK = mT(V, xp) @ K  # (.., N, d_v, d_k)
    H_start = H0[..., None, :, :] + _prefix_sum_before(KtK, xp)  # (.., N, d_k, d_k)
    G_start = G0[..., None, :, :] + _prefix_sum_before(VtK, xp)  # (.., N, d_v, d_k)
    incl = lower_mask(C, xp, device_of(k))
    zeros = xp.zeros((C, C), dtype=k.dtype, device=device_of(k))
    tril = lambda X: xp.where(incl, X, zeros)  # noqa: E731  (.., N, C, C)

    def apply(Y):  # (H_t + Lambda_t) y_t, rows; symmetric per row, so also the adjoint
        return Y @ H_start + tril(Y @ mT(K, xp)) @ K + lam_rows * Y  # (.., N, C, d_k)

    Y, _ = row_cg(apply, Q, xp, rtol=rtol, max_iter=max_iter)  # (.., N, C, d_k)
    Ybar = dO @ G_start + tril(dO @ mT(V, xp)) @ K  # (.., N, C, d_k)
    Z, _ = row_cg(apply, Ybar, xp, rtol=rtol, max_iter=max_iter)  # (.., N, C, d_k)
    PY, PZ, PO = tril(Y @ mT(K, xp)), tril(Z @ mT(K, xp)), tril(dO @ mT(V, xp))  # (.., N, C, C)
    dV = mT(PY, xp) @ dO  # (.., N, C, d_v)
    dK = mT(PO, xp) @ Y - mT(PY, xp) @ Z - mT(PZ, xp) @ Y  # (.., N, C, d_k)
    dG_s = mT(dO, xp) @ Y  # (.., N, d_v, d_k)
    dH_s = -(mT(Y, xp) @ Z)  # (.., N, d_k, d_k)
    dLam = -(Z * Y)  # (.., N, C, d_k)
    # the final state M_T (H_T + Lambda_T) = G_T, rows by CG
    H_T = H_start[..., -1, :, :] + KtK[..., -1, :, :]
    dG_T, _ = row_cg(lambda R: R @ H_T + lam_end * R, dM_T, xp, rtol=rtol, max_iter=max_iter)  # (.., d_v, d_k)
    dA_T = -(mT(dG_T, xp) @ M_T)  # (.., d_k, d_k)
    # prefix sums -> suffix sums; the final statistics read every chunk
    D = _suffix_sum_after(dH_s, xp) + dA_T[..., None, :, :]  # cotangent of K_m^T K_m, (.., N, d_k, d_k)
    E = _suffix_sum_after(dG_s, xp) + dG_T[..., None, :, :]  # cotangent of V_m^T K_m, (.., N, d_v, d_k)
    dK = dK + K @ (D + mT(D, xp)) + V @ E  # (.., N, C, d_k)
    dV = dV + K @ mT(E, xp)  # (.., N, C, d_v)
    dH0 = xp.sum(dH_s, axis=-3) + dA_T
    dG0 = xp.sum(dG_s, axis=-3) + dG_T
    eye = xp.eye(d_k, dtype=k.dtype, device=device_of(k))
    diag_T = xp.sum(dA_T * eye, axis=-2)  # (.., d_k): diag(dA_T)
    if per_channel:
        dlam = from_chunks(dLam, T, xp)  # (.., T, d_k)
        dlam = xp.concat([dlam[..., :T - 1, :], dlam[..., T - 1:, :] + diag_T[..., None, :]], axis=-2)
    elif lam.ndim > 0:
        dlam = xp.sum(from_chunks(dLam, T, xp), axis=-1)  # (.., T)
        dlam = xp.concat([dlam[..., :T - 1], dlam[..., T - 1:] + xp.sum(diag_T, axis=-1)[..., None]], axis=-1)
    else:
        dlam = xp.sum(dLam) + xp.sum(diag_T)
    return {"q": from_chunks(Z, T, xp), "k": from_chunks(dK, T, xp), "v": from_chunks(dV, T, xp), "lam": dlam,
            "initial_state": (dG0, dH0)}
