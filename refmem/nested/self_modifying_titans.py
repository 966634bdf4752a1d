r"""Self-modifying Titans: keys, values, step sizes and decays produced by their own memories (NLx-83..93).

Every component is a small residual MLP memory
:math:`\mathcal M_\square(z) = z + W_{\square,1}\sigma(W_{\square,2} z)` (NLx-89/91,
:func:`refmem.memories.residual_mlp.mlp_forward`),
:math:`\square \in \{k, v, \eta, \alpha, \mathrm{memory}\}`, and the query is
the fixed projection :math:`q_t = W_q x_t`. Per token (chunk size 1, NLx-86..88):

.. math::

    k_t &= \mathcal M_{k,t-1}(x_t),\quad v_t = \mathcal M_{v,t-1}(x_t),\quad
    \eta_t = g_\eta(\mathcal M_{\eta,t-1}(x_t)),\quad \alpha_t = g_\alpha(\mathcal M_{\alpha,t-1}(x_t)),\\
    y_t &= \mathcal M_{\mathrm{memory},t-1}(q_t), \qquad
    \hat v_{\square,t} = \mathcal M_{\square,t-1}(v_t) \quad\text{(each memory generates its own value)},\\
    \mathcal M_{\square,t} &= \mathcal M_{\square,t-1}(\alpha_t I - \eta_t k_t k_t^T)
        - \eta_t \nabla \mathcal L(\mathcal M_{\square,t-1}; k_t, \hat v_{\square,t}),
    \qquad \mathcal L(\mathcal M; k, v) = \tfrac12\|\mathcal M(k) - v\|^2 ,

delta gradient descent with weight decay :math:`\alpha_t` (DGD, NLx-56, 57).
**Chunked (NLx-90, 91).** With chunk size :math:`C_\square`, everything a
token reads from memory :math:`\square` (its outputs and the point of its
gradient) is the memory's *snapshot*: its state at the end of the previous
chunk, step :math:`C\lfloor (t-1)/C\rfloor`; the running state still
takes the DGD factor every step. ``chunk_size`` applies to ``k, v, eta,
alpha`` and ``memory_chunk_size`` to the memory (the paper uses one size
for each group); ``None`` never refreshes the snapshot (a frozen memory).

Choices where the print is ambiguous (each pinned by a test in
``tests/test_self_modifying_titans.py``):

1. *Which matrix the decay multiplies.* For an MLP memory,
   ":math:`\mathcal M (\alpha I - \eta k k^T)`" is read as the input-side
   matrix: :math:`W_2 \leftarrow W_2(\alpha_t I - \eta_t k_t k_t^T) - \eta_t \nabla_{W_2}`
   (``[h, d] @ [d, d]``: the key enters through :math:`W_2`), and
   :math:`W_1 \leftarrow \alpha_t W_1 - \eta_t \nabla_{W_1}` (plain weight decay).
   For a linear memory this is NLx-93's rule.
2. *Chunk snapshot index.* NLx-90, 91 print :math:`C\lceil t/C\rceil`, the
   *end* of the current chunk (at :math:`C = 1`, :math:`\mathcal M_t`, which
   needs :math:`k_t` to exist); the text says "the last state of the
   previous chunk": refmem uses :math:`C\lfloor (t-1)/C\rfloor`, and
   :math:`C = 1` is the per-step recurrence NLx-86..88 (an erratum).
3. *Momentum.* The ablation table mentions momentum, the update rule has
   none: refmem follows the rule (no momentum state).
4. *Scalar gates from vector memories.* :math:`\mathcal M_\eta, \mathcal M_\alpha`
   map :math:`d \to d` (residual); :math:`\eta_t = \eta_{\max}\,\mathrm{sigmoid}(b_\eta + \mathrm{mean}_j\,\mathcal M_\eta(x_t)_j)`,
   :math:`\alpha_t = \mathrm{sigmoid}(b_\alpha + \mathrm{mean}_j\,\mathcal M_\alpha(x_t)_j)`, with
   operating points ``eta_bias`` :math:`b_\eta = 0` and ``alpha_bias`` :math:`b_\alpha = 4`
   (:math:`\alpha \approx 0.98` for a zero-mean output; at :math:`b_\alpha = 0`,
   :math:`\alpha \approx 1/2` erases every memory within a few dozen tokens). Like
   the initial states they are outer-level parameters.
5. *Normalisation.* The paper drops normalisations "for clarity"; refmem
   l2-normalises :math:`k_t`, :math:`v_t` and :math:`q_t`. With unit keys the
   factor :math:`\alpha I - \eta k k^T` has eigenvalues :math:`\alpha, \alpha - \eta`
   in :math:`(-1, 1)` for :math:`\eta_{\max} \le 1`; with unit values the
   self-generated target cannot outrun the prediction: for a linear memory at
   :math:`C = 1` the rule is :math:`M(\alpha I - 2\eta k k^T + \eta v k^T)`, whose
   eigenvalue along :math:`k` is :math:`\alpha - 2\eta + \eta\, k^T v \in [\alpha - 3\eta, \alpha - \eta]`
   (an unnormalised :math:`v` with :math:`k^T v > 2 + (1 - \alpha)/\eta` grows without bound).
6. *Initialisation.* The initial states are meta-learned (outer loop) and
   are inputs; the default is the identity map for every memory
   (:math:`W_1 = 0`, :math:`W_2 = I`: the deep memory's default), and
   :math:`W_q = I`.
7. *Objective scale.* :math:`\tfrac12\|\cdot\|^2` (refmem's l2; the print's
   :math:`\|\cdot\|^2` doubles the gradient: its :math:`\eta` is half of ours);
   :math:`\hat v` is a target (no gradient flows through it).
8. *The query memory.* NLx-79..89 list :math:`\mathcal M_q` among the
   memories while the text says ":math:`q_t = x_t W_q` is the only
   non-adaptive projection": refmem follows the text (no :math:`\mathcal M_q`).
"""

from __future__ import annotations

import math

import numpy as np  # randomness only (random_memories)

from ..linalg import eye_like, matvec, outer
from ..memories.residual_mlp import default_params, mlp_forward
from ..validation import check_arrays, finite_outputs

MEMORY_NAMES = ("k", "v", "eta", "alpha", "memory")  # stacked in this order on a leading axis
OTHER, MEMORY = slice(0, 4), slice(4, 5)


def _sigmoid(z, xp):
    s = 1 / (1 + xp.exp(-xp.abs(z)))  # exp of a non-positive number: no overflow
    return xp.where(z >= 0, s, 1 - s)


def _normalize(z, xp):
    return z / xp.sqrt(xp.sum(z * z, axis=-1, keepdims=True))  # (.., d): unit l2 norm


def default_memories(d: int, xp, dtype="float64", *, hidden=None):
    """Every memory the identity map: ``{name: (W1 = 0 [d, h], W2 = I [h, d])}``."""
    h = d if hidden is None else hidden
    dt = getattr(xp, dtype) if isinstance(dtype, str) else dtype
    return {n: default_params((), d, h, xp, dt) for n in MEMORY_NAMES}


def random_memories(seed: int, d: int, xp, dtype="float64", *, hidden=None, scale=0.3):
    """Identity plus a random perturbation of size ``scale`` (a non-trivial initial state for tests and vectors)."""
    h = d if hidden is None else hidden
    g = np.random.default_rng(seed)
    out = {}
    for n in MEMORY_NAMES:
        W1 = scale * g.standard_normal((d, h)) / np.sqrt(h)
        W2 = np.eye(h, d) + scale * g.standard_normal((h, d)) / np.sqrt(d)
        out[n] = (xp.asarray(np.asarray(W1, dtype=dtype)), xp.asarray(np.asarray(W2, dtype=dtype)))
    return out


def stack_memories(memories, xp):
    """``{name: (W1, W2)}`` -> ``(W1 [5, ..., d, h], W2 [5, ..., h, d])`` in :data:`MEMORY_NAMES` order."""
    if not isinstance(memories, dict) or set(memories) != set(MEMORY_NAMES):
        raise ValueError(f"memories must be a dict with the keys {MEMORY_NAMES}; got "
                         f"{sorted(memories) if isinstance(memories, dict) else type(memories).__name__}")
    W1s, W2s = [], []
    for n in MEMORY_NAMES:
        pair = memories[n]
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"memories[{n!r}] must be a pair (W1 [..., d, h], W2 [..., h, d])")
        check_arrays(**{f"memories[{n!r}][0]": pair[0], f"memories[{n!r}][1]": pair[1]})
        W1s.append(pair[0])
        W2s.append(pair[1])
    shapes = {(tuple(a.shape), tuple(b.shape)) for a, b in zip(W1s, W2s)}
    if len(shapes) != 1:
        raise ValueError(f"every memory must have one shape (W1 [..., d, h], W2 [..., h, d]); got {sorted(shapes)}")
    return xp.stack(W1s, axis=0), xp.stack(W2s, axis=0)


def unstack_memories(W1, W2):
    return {n: (W1[i, ...], W2[i, ...]) for i, n in enumerate(MEMORY_NAMES)}


def generate(W1, W2, x, W_q, eta_max, xp, activation="tanh", eta_bias=0.0, alpha_bias=4.0):
    r"""What a token reads from the (snapshot) memories: ``k, v [..., d]``, ``eta, alpha [...]``, ``q [..., d]``.

    ``W1 [5, ..., d, h]``, ``W2 [5, ..., h, d]`` stacked (batch dims of
    ``x``); ``x [..., d]`` (a token axis may sit before ``d`` if the memories
    carry a matching axis).
    """
    out, _ = mlp_forward(W1, W2, x[None, ...], xp, activation)  # (5, .., d): every memory applied to x
    k = _normalize(out[0, ...], xp)  # (.., d)
    v = _normalize(out[1, ...], xp)  # (.., d)
    eta = eta_max * _sigmoid(eta_bias + xp.mean(out[2, ...], axis=-1), xp)  # (..,)
    alpha = _sigmoid(alpha_bias + xp.mean(out[3, ...], axis=-1), xp)  # (..,)
    q = _normalize(matvec(W_q, x), xp)  # (.., d): the fixed projection
    return k, v, eta, alpha, q


def self_generated_gradients(W1, W2, k, v, xp, activation="tanh"):
    r"""``(G1 [5, ..., d, h], G2 [5, ..., h, d])``: :math:`\nabla \tfrac12\|\mathcal M_\square(k) - \hat v_\square\|^2` with :math:`\hat v_\square = \mathcal M_\square(v)` held fixed."""
    v_hat, _ = mlp_forward(W1, W2, v[None, ...], xp, activation)  # (5, .., d): each memory's own value
    pred, backward = mlp_forward(W1, W2, k[None, ...], xp, activation)  # (5, .., d)
    G1, G2, _ = backward(pred - v_hat)  # dL/dy = M(k) - v_hat
    return G1, G2


def dgd_weight_decay_step(W1, W2, G1, G2, k, eta, alpha, xp):
    r"""One DGD step with weight decay on every memory (choice 1 of the module notes).

    :math:`W_2 (\alpha I - \eta k k^T) - \eta G_2` and :math:`\alpha W_1 - \eta G_1`;
    ``k [..., d]``, ``eta, alpha [...]``, memories stacked ``[5, ..., a, b]``.
    """
    a = alpha[..., None, None]  # (.., 1, 1)
    e = eta[..., None, None]  # (.., 1, 1)
    W2k = matvec(W2, k)  # (5, .., h): W2 k
    W2 = a * W2 - e * outer(W2k, k) - e * G2  # W2 (alpha I - eta k k^T) - eta G2: (5, .., h, d)
    W1 = a * W1 - e * G1  # (5, .., d, h)
    return W1, W2


def _check_smt(x, W_q, memories, chunk_size, memory_chunk_size, eta_max, eta_bias, alpha_bias):
    xp = check_arrays(x=x, W_q=W_q)
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"x must be [..., T, d] with T >= 1; got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if W_q is None:
        W_q = eye_like(d, x, xp)
    if W_q.ndim < 2 or tuple(W_q.shape[-2:]) != (d, d):
        raise ValueError(f"W_q must be [..., d, d] with d = {d}; got {tuple(W_q.shape)}")
    if memories is None:
        memories = default_memories(d, xp, x.dtype)
    W1, W2 = stack_memories(memories, xp)
    if W1.dtype != x.dtype:
        raise TypeError(f"memories have dtype {W1.dtype} but x has {x.dtype}")
    if W1.ndim < 3 or W1.shape[-2] != d or W2.shape[-1] != d:
        raise ValueError(f"memories must be (W1 [..., {d}, h], W2 [..., h, {d}]); got {tuple(W1.shape[1:])}, "
                         f"{tuple(W2.shape[1:])}")
    batch = tuple(x.shape[:-2])
    extra = len(batch) - (W1.ndim - 3)
    try:  # one state per sequence: (5, *batch, d, h)
        if extra < 0:
            raise ValueError
        W1 = xp.reshape(W1, (5,) + (1,) * extra + tuple(W1.shape[1:]))
        W2 = xp.reshape(W2, (5,) + (1,) * extra + tuple(W2.shape[1:]))
        W1 = xp.broadcast_to(W1, (5,) + batch + tuple(W1.shape[-2:]))
        W2 = xp.broadcast_to(W2, (5,) + batch + tuple(W2.shape[-2:]))
    except ValueError:
        raise ValueError(f"memories' leading dims {tuple(W1.shape[1:-2])} do not broadcast to x's batch dims {batch}") from None
    for name, c in (("chunk_size", chunk_size), ("memory_chunk_size", memory_chunk_size)):
        if c is not None and not (isinstance(c, int) and not isinstance(c, bool) and c >= 1):
            raise ValueError(f"{name} must be an int >= 1 or None (never refreshed: frozen); got {c!r}")
    if not (isinstance(eta_max, (int, float)) and not isinstance(eta_max, bool) and 0 < eta_max <= 1):
        raise ValueError(f"eta_max must be a number in (0, 1] (keeps alpha I - eta k k^T contracting); got {eta_max!r}")
    for name, b in (("eta_bias", eta_bias), ("alpha_bias", alpha_bias)):
        if not (isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)):
            raise ValueError(f"{name} must be a finite number; got {b!r}")
    return xp, W_q, W1, W2


def _refresh(snap1, snap2, W1, W2, t, chunk_size, memory_chunk_size, xp):
    """Snapshots after step ``t``: the ``k, v, eta, alpha`` group at ``t = 0 mod chunk_size``, the memory at ``memory_chunk_size``."""
    other = chunk_size is not None and t % chunk_size == 0
    mem = memory_chunk_size is not None and t % memory_chunk_size == 0
    if other and mem:
        return W1, W2
    if not (other or mem):
        return snap1, snap2
    take = (W1, W2) if other else (snap1, snap2)
    keep = (snap1, snap2) if other else (W1, W2)
    return (xp.concat([take[0][OTHER, ...], keep[0][MEMORY, ...]], axis=0),
            xp.concat([take[1][OTHER, ...], keep[1][MEMORY, ...]], axis=0))


@finite_outputs
def self_modifying_titans_recurrent(x, W_q=None, *, memories=None, chunk_size=1, memory_chunk_size="chunk_size",
                                    eta_max=0.5, eta_bias=0.0, alpha_bias=4.0, activation="tanh"):
    r"""Self-modifying Titans token by token (the reference form).

    Parameters
    ----------
    x : array ``[..., T, d]``
    W_q : array ``[..., d, d]``, optional
        The fixed query projection (default ``I``).
    memories : dict name -> ``(W1 [..., d, h], W2 [..., h, d])``, optional
        Initial states of :data:`MEMORY_NAMES` (default: identity maps).
    chunk_size : int or None
        :math:`C` of ``k, v, eta, alpha`` (1: the per-step recurrence NLx-86..88).
    memory_chunk_size : int, None or "chunk_size"
        :math:`C` of the memory (``None``: frozen); default: ``chunk_size``.
    eta_max : float in ``(0, 1]``
    eta_bias, alpha_bias : float
        The gates' operating points (choice 4).
    activation : {"tanh", "silu"}

    Returns
    -------
    o : array ``[..., T, d]``
        :math:`y_t = \mathcal M_{\mathrm{memory}}(q_t)` read from the snapshot before the token's update.
    memories : dict
        Running states after step ``T``.
    """
    if memory_chunk_size == "chunk_size":
        memory_chunk_size = chunk_size
    xp, W_q, W1, W2 = _check_smt(x, W_q, memories, chunk_size, memory_chunk_size, eta_max, eta_bias, alpha_bias)
    snap1, snap2 = W1, W2
    outs = []
    for t in range(1, x.shape[-2] + 1):
        x_t = x[..., t - 1, :]  # (.., d)
        k, v, eta, alpha, q = generate(snap1, snap2, x_t, W_q, eta_max, xp, activation, eta_bias, alpha_bias)
        y, _ = mlp_forward(snap1[4, ...], snap2[4, ...], q, xp, activation)  # (.., d): read before write
        outs.append(y)
        G1, G2 = self_generated_gradients(snap1, snap2, k, v, xp, activation)  # at the snapshots
        W1, W2 = dgd_weight_decay_step(W1, W2, G1, G2, k, eta, alpha, xp)
        snap1, snap2 = _refresh(snap1, snap2, W1, W2, t, chunk_size, memory_chunk_size, xp)
    return xp.stack(outs, axis=-2), unstack_memories(W1, W2)


@finite_outputs
def self_modifying_titans_chunked(x, W_q=None, *, memories=None, chunk_size=1, memory_chunk_size="chunk_size",
                                  eta_max=0.5, eta_bias=0.0, alpha_bias=4.0, activation="tanh"):
    r"""Self-modifying Titans a segment at a time: the same computation as :func:`self_modifying_titans_recurrent`.

    Within a segment of ``gcd(chunk_size, memory_chunk_size)`` tokens (the
    whole sequence when both are ``None``) no snapshot changes, so every
    token's ``k, v, eta, alpha, q``, output and self-generated gradient come
    from one batched call on the segment (NLx-90, 91: "generated in parallel
    before the chunk"); only the running states' factor
    :math:`\alpha I - \eta k k^T` is applied token by token (a product of
    ``d x d`` matrices). Same arguments and returns.
    """
    if memory_chunk_size == "chunk_size":
        memory_chunk_size = chunk_size
    xp, W_q, W1, W2 = _check_smt(x, W_q, memories, chunk_size, memory_chunk_size, eta_max, eta_bias, alpha_bias)
    T = x.shape[-2]
    live = [c for c in (chunk_size, memory_chunk_size) if c is not None]
    seg = math.gcd(*live) if live else T
    snap1, snap2 = W1, W2
    outs = []
    Wq = W_q[..., None, :, :]  # (.., 1, d, d): one projection for the segment's tokens
    for start in range(0, T, seg):
        stop = min(start + seg, T)
        xs = x[..., start:stop, :]  # (.., n, d)
        S1, S2 = snap1[..., None, :, :], snap2[..., None, :, :]  # (5, .., 1, d, h): one snapshot for all n tokens
        k, v, eta, alpha, q = generate(S1, S2, xs, Wq, eta_max, xp, activation, eta_bias, alpha_bias)  # (.., n, d), (.., n)
        y, _ = mlp_forward(S1[4, ...], S2[4, ...], q, xp, activation)  # (.., n, d)
        outs.append(y)
        G1, G2 = self_generated_gradients(S1, S2, k, v, xp, activation)  # (5, .., n, d, h), (5, .., n, h, d)
        for j in range(stop - start):  # the running states' rank-one factors, in order
            W1, W2 = dgd_weight_decay_step(W1, W2, G1[..., j, :, :], G2[..., j, :, :], k[..., j, :], eta[..., j],
                                           alpha[..., j], xp)
            snap1, snap2 = _refresh(snap1, snap2, W1, W2, start + j + 1, chunk_size, memory_chunk_size, xp)
    return xp.concat(outs, axis=-2), unstack_memories(W1, W2)


def printed_snapshot_step(t: int, C: int) -> int:
    r"""NLx-90, 91 as printed: the snapshot of token ``t`` is step :math:`C\lceil t/C\rceil` (the current chunk's end)."""
    return C * math.ceil(t / C)


def snapshot_step(t: int, C: int) -> int:
    r"""refmem's snapshot of token ``t``: step :math:`C\lfloor (t-1)/C\rfloor`, the last state of the previous chunk."""
    return C * ((t - 1) // C)


__all__ = ["MEMORY_NAMES", "default_memories", "dgd_weight_decay_step", "generate", "printed_snapshot_step",
           "random_memories", "self_generated_gradients", "self_modifying_titans_chunked",
           "self_modifying_titans_recurrent", "snapshot_step", "stack_memories", "unstack_memories"]
