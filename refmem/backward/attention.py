r"""Backward passes of causal softmax attention, full and sliding-window, with a key-value cache.

Forward (:mod:`refmem.memories.softmax_attention`): over all positions
``n = n_0 + T`` (the cache ``K_0, V_0`` first, then the sequence), query ``t``
reads the positions it may see, :math:`\mathcal W_t = \{i : n_0 + t - c < i \le n_0 + t\}`
(``c = None``: every :math:`i \le n_0 + t`):

.. math::

    s_{ti} = q_t^T k_i, \qquad p_{t\cdot} = \mathrm{softmax}(s_{t, \mathcal W_t}), \qquad
    o_t = \sum_{i \in \mathcal W_t} p_{ti} v_i ,

and the final state is the cache of the last ``min(c, n)`` keys and values.

Adjoint
-------
No recurrence: every read-out depends on the inputs directly, so with the
cotangents ``do`` and ``(dK_T, dV_T)`` of the final cache,

.. math::

    dV = P^T dO, \quad dP = dO\, V^T, \quad dS = P \odot (dP - \mathrm{rowsum}(P \odot dP)), \quad
    dq = dS\, K, \quad dK = dS^T Q,

plus ``dK_T, dV_T`` on the rows the final cache holds. The first ``n_0`` rows of
``dK, dV`` are the cache's gradient (zero for rows no query can see).
"""

from __future__ import annotations

import math

from ..linalg import device_of
from ..memories.softmax_attention import sliding_window_attention_recurrent
from .cotangents import check_cotangents, finite_gradients


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


@finite_gradients
def sliding_window_attention_vjp(q, k, v, *, window, do, dM_T=None, initial_state=None):
    """Gradients of causal (sliding-window) softmax attention (module docstring).

    Parameters
    ----------
    q, k, v, window, initial_state
        As :func:`~refmem.memories.softmax_attention.sliding_window_attention_recurrent`.
    do : array ``[..., T, d_v]``
        Cotangent of ``o``.
    dM_T : tuple ``(dK_T, dV_T)``, optional
        Cotangent of the final cache (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v`` and ``initial_state``: the cache's gradient ``(dK_0, dV_0)``
        (``[..., 0, d]`` arrays without a cache).
    """
    o, (K_T, V_T) = sliding_window_attention_recurrent(q, k, v, window=window, initial_state=initial_state)
    if dM_T is None:
        dM_T = (None, None)
    if not isinstance(dM_T, tuple) or len(dM_T) != 2:
        raise TypeError("dM_T for softmax attention must be the cache's cotangent (dK_T, dV_T)")
    dK_T = check_cotangents(do, dM_T[0], o, K_T)
    dV_T = check_cotangents(do, dM_T[1], o, V_T)
    xp = _namespace(q)
    T, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    batch = tuple(k.shape[:-2])
    if initial_state is None:
        K0 = xp.zeros(batch + (0, d_k), dtype=k.dtype, device=device_of(k))
        V0 = xp.zeros(batch + (0, d_v), dtype=k.dtype, device=device_of(k))
    else:
        K0, V0 = initial_state
    n0 = K0.shape[-2]
    n = n0 + T
    Kall, Vall = xp.concat([K0, k], axis=-2), xp.concat([V0, v], axis=-2)  # (.., n, d)
    pos_t = xp.arange(n0, n, device=device_of(k))[:, None]  # (T, 1): position of query t
    pos_i = xp.arange(0, n, device=device_of(k))[None, :]  # (1, n)
    seen = pos_i <= pos_t
    if window is not None:
        seen = seen & (pos_i > pos_t - int(window))  # (T, n)
    s = q @ mT(Kall, xp)  # (.., T, n)
    s = xp.where(seen, s, xp.full_like(s, -math.inf))
    w = xp.exp(s - xp.max(s, axis=-1, keepdims=True))  # (.., T, n); 0 where unseen
    P = w / xp.sum(w, axis=-1, keepdims=True)  # (.., T, n)
    dP = do @ mT(Vall, xp)  # (.., T, n)
    dS = P * (dP - xp.sum(P * dP, axis=-1, keepdims=True))  # (.., T, n): softmax's Jacobian, transposed
    m = K_T.shape[-2]  # rows the final cache holds: the last m positions
    on_cache = lambda d, width: xp.concat([xp.zeros(batch + (n - m, width), dtype=d.dtype,  # noqa: E731
                                                    device=device_of(d)), d], axis=-2)
    dK = mT(dS, xp) @ q + on_cache(dK_T, d_k)  # (.., n, d_k)
    dV = mT(P, xp) @ do + on_cache(dV_T, d_v)  # (.., n, d_v)
    return {"q": dS @ Kall, "k": dK[..., n0:, :], "v": dV[..., n0:, :],
            "initial_state": (dK[..., :n0, :], dV[..., :n0, :])}


def softmax_attention_vjp(q, k, v, *, do, dM_T=None, initial_state=None):
    """Gradients of full causal softmax attention: :func:`sliding_window_attention_vjp` with ``window=None``."""
    return sliding_window_attention_vjp(q, k, v, window=None, do=do, dM_T=dM_T, initial_state=initial_state)


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
