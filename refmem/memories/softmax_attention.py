r"""Softmax and sliding-window attention (Vaswani et al., "Attention Is All You Need") as non-parametric minimisers (MATH.md 5f).

For a query ``q_t`` the read-out is the minimiser of a weighted least squares
over the stored values,

.. math::

    o_t = \operatorname*{argmin}_m \tfrac12 \sum_{i \in W_t} s(k_i, q_t)\, \|v_i - m\|^2
        = \frac{\sum_{i \in W_t} s(k_i, q_t)\, v_i}{\sum_{i \in W_t} s(k_i, q_t)}
        = \sum_{i \in W_t} \operatorname{softmax}_i(q_t^T k_i)\, v_i ,

with :math:`s(k, q) = \exp(q^T k)` and the causal window
:math:`W_t = \{i : t - c < i \le t\}` (``c = None``: every ``i <= t``, full
causal attention). The weights enter only through their ratios, so any
positive common factor leaves the minimiser unchanged; both computations use
:math:`\exp(q_t^T k_i - \max_{j \in W_t} q_t^T k_j) \in (0, 1]`, which cannot
overflow and keeps the largest weight at 1 (the denominator is >= 1).

Scale convention: none. The core uses :math:`q^T k` as it is; the usual
:math:`1/\sqrt{d_k}` (or any temperature) is applied by the caller to ``q``.

The memory is non-parametric: its state is the key-value cache, a pair
``(K, V)`` of arrays ``[..., n, d_k]`` and ``[..., n, d_v]`` (the last ``c``
tokens for a window ``c``, all tokens otherwise), not a matrix ``[..., d_v, d_k]``.
``initial_state`` is such a cache of earlier tokens (which precede the
sequence); the final state is the cache after the last token, so scanning
``x[:s]`` and then ``x[s:]`` from the first cache equals scanning ``x``.

Two independent computations:

- :func:`sliding_window_attention_recurrent` / :func:`softmax_attention_recurrent`
  (closed form): a scan over tokens with the cache, stable softmax weights times values;
- :func:`attention_iterative`: conjugate gradient on the stated weighted
  least squares of every step, all ``T`` read-outs as one batch; its gradient
  :math:`\sum_i w_{ti} (m - v_i)` is summed term by term (no normalisation).
"""

from __future__ import annotations

from operator import index

import numpy as np  # randomness only (make_inputs, make_initial_state)

from ..linalg import matvec
from ..solvers import Problem, conjugate_gradient, default_rtol
from ..validation import check_arrays, finite_outputs, require
from ._inputs import check_sequence, random_qkv


def _check_window(window):
    """``None`` or an integer ``>= 1`` (a Python int or a 0-d integer array)."""
    if window is None:
        return None
    if isinstance(window, bool):
        raise TypeError("window must be a positive integer or None, not bool")
    try:
        c = index(window)
    except TypeError:
        raise TypeError(f"window must be a positive integer or None; got {type(window).__name__}") from None
    if c < 1:
        raise ValueError(f"window must be >= 1 (the number of latest tokens attended, the current one included); got {c}")
    return c


def _check_cache(initial_state, k, v, xp):
    """Validate the key-value cache ``(K_0, V_0)``; return it, or an empty one."""
    batch = tuple(k.shape[:-2])
    d_k, d_v = k.shape[-1], v.shape[-1]
    if initial_state is None:
        return (xp.zeros(batch + (0, d_k), dtype=k.dtype), xp.zeros(batch + (0, d_v), dtype=k.dtype))
    if not isinstance(initial_state, tuple) or len(initial_state) != 2:
        raise TypeError("initial_state for softmax attention must be a key-value cache (K_0, V_0) with "
                        "K_0 [..., n, d_k] and V_0 [..., n, d_v]; attention has no matrix state")
    K0, V0 = initial_state
    named = {"initial_state K_0": K0, "initial_state V_0": V0}
    require(**named)
    check_arrays(k=k, **named)
    if K0.ndim != k.ndim or tuple(K0.shape[:-2]) != batch or K0.shape[-1] != d_k:
        raise ValueError(f"initial_state K_0 must have shape {batch} + (n, {d_k}); got {tuple(K0.shape)}")
    if tuple(V0.shape) != batch + (K0.shape[-2], d_v):
        raise ValueError(f"initial_state V_0 must have shape {batch + (K0.shape[-2], d_v)} (as many tokens as K_0); "
                         f"got {tuple(V0.shape)}")
    return K0, V0


def stable_softmax_readout(K, V, q, xp):
    r"""``sum_i softmax_i(q^T k_i) v_i`` over the rows of ``K [..., n, d_k]``, ``V [..., n, d_v]``, ``n >= 1``.

    Notes
    -----
    .. math::

        w_i = \exp(q^T k_i - \max_j q^T k_j) \in (0, 1], \qquad o = \frac{\sum_i w_i v_i}{\sum_i w_i},

    the denominator is at least 1, so nothing overflows or divides by zero.
    """
    s = matvec(K, q)  # (.., n, d_k) @ (.., d_k) -> (.., n)
    w = xp.exp(s - xp.max(s, axis=-1, keepdims=True))  # (.., n), max entry 1
    num = (w[..., None, :] @ V)[..., 0, :]  # (.., 1, n) @ (.., n, d_v) -> (.., d_v)
    return num / xp.sum(w, axis=-1)[..., None]


@finite_outputs
def sliding_window_attention_recurrent(q, k, v, *, window, initial_state=None):
    """Causal sliding-window softmax attention: token ``t`` reads the last ``window`` tokens.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    window : int or None
        ``c >= 1``: the current token and the ``c - 1`` before it (earlier
        tokens of ``initial_state`` included); ``None``: all tokens so far.
    initial_state : tuple ``(K_0, V_0)``, optional
        Key-value cache of earlier tokens, ``[..., n, d_k]``, ``[..., n, d_v]``.

    Returns
    -------
    o : array ``[..., T, d_v]``
    cache : tuple ``(K, V)``
        The last ``min(c, n + T)`` keys and values (all of them for ``c = None``).
    """
    xp = check_sequence(q, k, v)
    c = _check_window(window)
    K, V = _check_cache(initial_state, k, v, xp)
    if c is not None and K.shape[-2] > c:  # only the last c earlier tokens can ever be read
        K, V = K[..., K.shape[-2] - c:, :], V[..., V.shape[-2] - c:, :]
    outs = []
    for t in range(k.shape[-2]):
        K = xp.concat([K, k[..., t:t + 1, :]], axis=-2)  # (.., n+1, d_k)
        V = xp.concat([V, v[..., t:t + 1, :]], axis=-2)  # (.., n+1, d_v)
        if c is not None and K.shape[-2] > c:
            K, V = K[..., 1:, :], V[..., 1:, :]  # drop the token that left the window
        outs.append(stable_softmax_readout(K, V, q[..., t, :], xp))  # (.., d_v)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, (K, V)


@finite_outputs
def softmax_attention_recurrent(q, k, v, *, initial_state=None):
    """Full causal softmax attention (no scale on ``q``): :func:`sliding_window_attention_recurrent` with ``window=None``."""
    return sliding_window_attention_recurrent(q, k, v, window=None, initial_state=initial_state)


def attention_problem(q, k, v, *, window=None, initial_state=None):
    r"""The ``T`` weighted least squares of attention as one batched :class:`~refmem.solvers.Problem`.

    Variable ``m [..., T, d_v, 1]`` (read-out ``t`` is a ``d_v x 1`` matrix);
    :math:`f_t(m) = \tfrac12\sum_i w_{ti}\|v_i - m\|^2`, ``w_ti = 0`` outside the window.
    """
    xp = check_sequence(q, k, v)
    c = _check_window(window)
    K0, V0 = _check_cache(initial_state, k, v, xp)
    n0, T = K0.shape[-2], k.shape[-2]
    Kall = xp.concat([K0, k], axis=-2)  # (.., n0+T, d_k)
    Vall = xp.concat([V0, v], axis=-2)  # (.., n0+T, d_v)
    pos_t = xp.arange(n0, n0 + T)[:, None]  # absolute position of query t
    pos_i = xp.arange(0, n0 + T)[None, :]
    allowed = pos_i <= pos_t
    if c is not None:
        allowed = allowed & (pos_i > pos_t - c)  # (T, n0+T)
    s = q @ xp.matrix_transpose(Kall)  # (.., T, d_k) @ (.., d_k, n0+T) -> (.., T, n0+T)
    s = xp.where(allowed, s, xp.asarray(-xp.inf, dtype=s.dtype))
    w = xp.exp(s - xp.max(s, axis=-1, keepdims=True))  # (.., T, n0+T); 0 outside the window
    Vb = Vall[..., None, :, :, None]  # (.., 1, n, d_v, 1)
    wb = w[..., :, :, None, None]  # (.., T, n, 1, 1)

    def value(m):
        d = m[..., :, None, :, :] - Vb  # (.., T, 1, d_v, 1) - (.., 1, n, d_v, 1) -> (.., T, n, d_v, 1)
        return 0.5 * xp.sum(wb * d * d, axis=(-3, -2, -1))

    def grad(m):
        d = m[..., :, None, :, :] - Vb  # (.., T, n, d_v, 1)
        return xp.sum(wb * d, axis=-3)  # sum_i w_ti (m - v_i): (.., T, d_v, 1)

    sw = xp.sum(w, axis=-1)  # (.., T): Hessian of f_t is sw_t I
    x0 = xp.zeros(tuple(v.shape) + (1,), dtype=v.dtype)
    return Problem(xp, x0, value, grad, sw, sw, quadratic=True)


@finite_outputs
def attention_iterative(q, k, v, *, window=None, initial_state=None, rtol=None):
    """Read-outs of (sliding-window) softmax attention by conjugate gradient on the weighted least squares.

    Returns ``(o [..., T, d_v], report)``. The Hessian of every ``f_t`` is a
    multiple of the identity (condition number 1), so CG's stopping test
    bounds the relative error by ``rtol``.
    """
    prob = attention_problem(q, k, v, window=window, initial_state=initial_state)
    xp = prob.xp
    if rtol is None:
        rtol = default_rtol(v.dtype, xp, condition=1.0)
    m, report = conjugate_gradient(prob, rtol=rtol)
    return m[..., 0], report


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    _, inputs, _ = random_qkv(seed, batch, T, d_k, d_v, xp, dtype)
    return inputs


def make_window_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs with an int ``window``."""
    inputs = make_inputs(seed, batch, T, d_k, d_v, xp, dtype)
    inputs["window"] = max(1, min(4, T))
    return inputs


def make_initial_state(seed, batch, d_k, d_v, xp, dtype="float64", *, n=3):
    """A random key-value cache of ``n`` earlier tokens."""
    g = np.random.default_rng(seed)
    K0 = g.standard_normal(tuple(batch) + (n, d_k)) / np.sqrt(d_k)
    V0 = g.standard_normal(tuple(batch) + (n, d_v))
    return xp.asarray(np.asarray(K0, dtype=dtype)), xp.asarray(np.asarray(V0, dtype=dtype))
