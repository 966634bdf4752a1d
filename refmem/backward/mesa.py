r"""Backward pass of the Mesa layer (whole-context regularised least squares), recurrent.

Forward (:mod:`refmem.memories.mesa`): running statistics
:math:`H_t = H_0 + \sum_{i\le t} k_i k_i^T`, :math:`G_t = G_0 + \sum_{i \le t} v_i k_i^T`,
:math:`A_t = H_t + \Lambda_t` (:math:`\lambda_t I` or :math:`\mathrm{diag}(\lambda_t)`),
:math:`M_t = G_t A_t^{-1}`, :math:`o_t = M_t q_t`.

Adjoint
-------
Each :math:`M_t` is read once (by :math:`o_t`, and :math:`M_T` by ``dM_T``), with
cotangent :math:`\bar M_t = do_t q_t^T\ (+\, dM_T \text{ at } t = T)`. Through the solve,

.. math::

    dG_t = \bar M_t A_t^{-1}, \qquad dA_t = -dG_t^T M_t \quad (A_t \text{ symmetric}),

and the running sums pass them back as suffix sums, the adjoint of a cumulative sum:

.. math::

    \bar G_t = \sum_{s \ge t} dG_s, \quad \bar H_t = \sum_{s \ge t} dA_s, \qquad
    dv_t = \bar G_t k_t, \quad dk_t = \bar G_t^T v_t + (\bar H_t + \bar H_t^T) k_t,

    dq_t = M_t^T do_t, \quad d\lambda_t = \mathrm{tr}(dA_t)\ (\text{or } \mathrm{diag}(dA_t) \text{ per channel}),
    \quad dG_0 = \bar G_1, \quad dH_0 = \bar H_1 .

``dA_t`` is the gradient in :math:`A_t` as the matrix of the solve
:math:`A_t M_t^T = G_t^T` the forward makes, so ``dH_0`` is the gradient in
``H_0`` as a general matrix (what autodiff through the forward gives); restricted to symmetric perturbations it is
:math:`(dH_0 + dH_0^T)/2`. A regulariser given as one number gets the sum of
:math:`d\lambda_t` over steps and batch.
"""

from __future__ import annotations

from ..linalg import eye_like, matvec, outer
from ..memories.mesa import mesa_recurrent
from .cotangents import check_cotangents, finite_gradients


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


@finite_gradients
def mesa_vjp(q, k, v, lam, *, do, dM_T=None, initial_state=None):
    """Gradients of the recurrent Mesa layer (module docstring).

    Parameters
    ----------
    q, k, v, lam, initial_state
        As :func:`~refmem.memories.mesa.mesa_recurrent` (``initial_state = (G_0, H_0)``).
    do : array ``[..., T, d_v]``
        Cotangent of ``o``.
    dM_T : array ``[..., d_v, d_k]``, optional
        Cotangent of the final minimiser ``M_T`` (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, lam`` (the shape of ``lam``; a Python number gets a 0-d array)
        and ``initial_state = (dG_0, dH_0)``.
    """
    o, M_T = mesa_recurrent(q, k, v, lam, initial_state=initial_state)  # validates the inputs
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp = _namespace(q)
    T, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    batch = tuple(k.shape[:-2])
    lam = xp.asarray(lam, dtype=k.dtype) if not hasattr(lam, "shape") else lam
    per_channel = lam.ndim > 0 and tuple(lam.shape) == tuple(k.shape)
    if initial_state is None:
        G, H = xp.zeros(batch + (d_v, d_k), dtype=k.dtype), xp.zeros(batch + (d_k, d_k), dtype=k.dtype)
    else:
        G, H = initial_state
    I = eye_like(d_k, k, xp)
    dq, dG, dA = [], [], []
    for t in range(T):
        kt = k[..., t, :]
        H = H + outer(kt, kt)  # (.., d_k, d_k)
        G = G + outer(v[..., t, :], kt)  # (.., d_v, d_k)
        lam_t = lam if lam.ndim == 0 else (lam[..., t, :] if per_channel else lam[..., t])
        A = H + (I * lam_t[..., None, :] if per_channel else I * (lam_t if lam_t.ndim == 0 else lam_t[..., None, None]))
        M = mT(xp.linalg.solve(A, mT(G, xp)), xp)  # G A^{-1}, (.., d_v, d_k)
        Mbar = outer(do[..., t, :], q[..., t, :]) + (dM_T if t == T - 1 else 0 * M)  # (.., d_v, d_k)
        dG_t = mT(xp.linalg.solve(A, mT(Mbar, xp)), xp)  # Mbar A^{-1} (A symmetric), (.., d_v, d_k)
        dG.append(dG_t)
        dA.append(-(mT(dG_t, xp) @ M))  # (.., d_k, d_k): A_t as the matrix of the solve A_t M_t^T = G_t^T
        dq.append(matvec(mT(M, xp), do[..., t, :]))  # (.., d_k)
    Gbar, Hbar = 0 * dG[0], 0 * dA[0]
    dk, dv = [], []
    for t in reversed(range(T)):  # suffix sums: the adjoint of the running sums
        Gbar, Hbar = Gbar + dG[t], Hbar + dA[t]
        kt = k[..., t, :]
        dv.append(matvec(Gbar, kt))  # (.., d_v)
        dk.append(matvec(mT(Gbar, xp), v[..., t, :]) + matvec(Hbar + mT(Hbar, xp), kt))  # (.., d_k)
    stack = lambda xs: xp.stack(xs, axis=-2)  # noqa: E731
    diag = xp.stack([xp.sum(a * I, axis=-2) for a in dA], axis=-2)  # (.., T, d_k): diag(dA_t)
    if per_channel:
        dlam = diag
    elif lam.ndim > 0:
        dlam = xp.sum(diag, axis=-1)  # (.., T): tr(dA_t)
    else:
        dlam = xp.sum(diag)  # one number for every step and batch entry
    return {"q": stack(dq), "k": stack(dk[::-1]), "v": stack(dv[::-1]), "lam": dlam,
            "initial_state": (Gbar, Hbar)}


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
