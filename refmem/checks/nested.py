r"""``refmem verify`` checks of nested systems (MATH.md 7): the declaration, the CMS, self-modifying Titans, HOPE.

Spec ``nested_system``: momentum SGD on a residual MLP declared as two
levels == momentum SGD written out here (its own forward and backward); the
wrong order (weights before momentum) == the lagged rule written out.

Spec ``cms``: all ``C = 1`` == per-step gradient descent on every block
(written out); chunk-parallel == token by token; closed == iterative
levels; the declared system == the scan; the printed ``C + 1``-term sum ==
``theta - eta (g_{t-1} + g_t)`` at ``C = 1`` (the erratum, evaluated).

Spec ``self_modifying_titans``: segment-at-a-time == token by token;
refmem's snapshot index at ``C = 1`` is the per-step recurrence, the
printed one reads the current step (the erratum, as a count).

Spec ``hope``: chunked == recurrent for one chunking; every memory frozen
== the static network.

Tolerances (float64): two evaluations of one ``T``-step recursion,
``T * 64 eps * max(1, max|value|)`` (rounding per step, step maps with
Lipschitz constant near 1); closed vs iterative ``T * 1e-11`` (CG stops at
relative optimality 1e-12, condition number 1).
"""

from __future__ import annotations

import numpy as np  # randomness only: problems are drawn in NumPy, then moved to xp

from ..metrics import max_abs_error
from ..nested import run
from ..nested.cms import chain_forward, cms_chunked, cms_recurrent, cms_system, printed_chunk_terms
from ..nested.hope import hope_chunked, hope_recurrent
from ..nested.momentum_mlp import train_momentum_mlp
from ..nested.self_modifying_titans import (printed_snapshot_step, random_memories, self_modifying_titans_chunked,
                                            self_modifying_titans_recurrent, snapshot_step)
from .registry import register_check

EPS = float(np.finfo(np.float64).eps)


def _scale(*arrays):
    return max(1.0, max(float(np.max(np.abs(np.asarray(a)))) for a in arrays))


def _tol(T, xp, *arrays):
    return T * 64 * EPS * max(1.0, max(max_abs_error(a, 0 * a, xp) for a in arrays))


def _blocks(seed, K, d, xp):
    g = np.random.default_rng(seed)
    return tuple((xp.asarray(g.standard_normal((d, d)) / np.sqrt(d)), xp.asarray(g.standard_normal((d, d)) / np.sqrt(d)))
                 for _ in range(K))


def _seq(seed, T, d, xp, batch=()):
    g = np.random.default_rng(seed + 1)
    return xp.asarray(g.standard_normal(batch + (T, d))), xp.asarray(g.standard_normal(batch + (T, d)))


def _mlp_grad(W1, W2, x, t, xp):
    """Textbook backprop of 1/2||x + W1 tanh(W2 x) - t||^2 (one token, written out)."""
    a = xp.tanh(W2 @ x)  # (h,)
    r = x + W1 @ a - t  # (d,)
    gz = (xp.matrix_transpose(W1) @ r) * (1 - a * a)  # (h,)
    return r[:, None] * a[None, :], gz[:, None] * x[None, :]


# --------------------------------------------------------------------------- nested_system


def _momentum_by_hand(W1, W2, X, Y, eta, alpha, xp, lag=False):
    m1, m2 = 0 * W1, 0 * W2
    out = [(W1, W2)]
    for t in range(X.shape[0]):
        g1, g2 = _mlp_grad(W1, W2, X[t, :], Y[t, :], xp)
        n1, n2 = alpha * m1 + eta * g1, alpha * m2 + eta * g2
        W1, W2 = (W1 - m1, W2 - m2) if lag else (W1 - n1, W2 - n2)
        m1, m2 = n1, n2
        out.append((W1, W2))
    return out


def _momentum_error(xp, order=None):
    (W1, W2), = _blocks(0, 1, 3, xp)
    X, Y = _seq(0, 12, 3, xp)
    got, _ = train_momentum_mlp((W1, W2), X, Y, 0.05, 0.9, order=order)
    ref = _momentum_by_hand(W1, W2, X, Y, 0.05, 0.9, xp, lag=order is not None)
    err = max(max(max_abs_error(a[0], b[0], xp), max_abs_error(a[1], b[1], xp)) for a, b in zip(got, ref))
    return err, _tol(12, xp, *[w for pair in ref for w in pair])


@register_check("nested_system", "momentum MLP as two levels == momentum SGD written out")
def momentum_two_levels(xp):
    return _momentum_error(xp)


@register_check("nested_system", "wrong order (W before m) == the lagged rule W - m_{t-1}")
def momentum_wrong_order(xp):
    return _momentum_error(xp, order=("W", "m"))


# --------------------------------------------------------------------------- cms


@register_check("cms", "all C = 1 == per-step gradient descent on every block")
def cms_per_step_gd(xp):
    blocks = _blocks(1, 3, 3, xp)
    X, Y = _seq(1, 10, 3, xp)
    y, params = cms_recurrent(X, blocks, (1, 1, 1), 0.1, targets=Y)
    ref, ys = list(blocks), []
    for t in range(10):
        yt, backward = chain_forward(tuple(ref), X[t, :], xp)
        ys.append(yt)
        # the written-out backward of the chain, block by block from the last
        hs = [X[t, :]]
        for W1, W2 in ref[:-1]:
            hs.append(hs[-1] + W1 @ xp.tanh(W2 @ hs[-1]))
        g, grads = yt - Y[t, :], [None] * 3
        for i in (2, 1, 0):
            W1, W2 = ref[i]
            a = xp.tanh(W2 @ hs[i])
            gz = (xp.matrix_transpose(W1) @ g) * (1 - a * a)
            grads[i] = (g[:, None] * a[None, :], gz[:, None] * hs[i][None, :])
            g = g + xp.matrix_transpose(W2) @ gz
        ref = [(W1 - 0.1 * g1, W2 - 0.1 * g2) for (W1, W2), (g1, g2) in zip(ref, grads)]
    want = xp.stack(ys, axis=0)
    err = max(max_abs_error(y, want, xp), *(max_abs_error(a[0], b[0], xp) for a, b in zip(params, ref)))
    return err, _tol(10, xp, want)


@register_check("cms", "chunk-parallel == token by token (C = 6, 3; T = 14)")
def cms_chunked_equals_recurrent(xp):
    blocks = _blocks(2, 2, 3, xp)
    X, Y = _seq(2, 14, 3, xp, batch=(2,))
    errs = []
    for variant, w in (("sequential", None), ("nested", None), ("independent", (0.6, 0.4))):
        y1, p1 = cms_recurrent(X, blocks, (6, 3), 0.1, targets=Y, variant=variant, weights=w)
        y2, p2 = cms_chunked(X, blocks, (6, 3), 0.1, targets=Y, variant=variant, weights=w)
        errs += [max_abs_error(y1, y2, xp), max_abs_error(p1[0][0], p2[0][0], xp)]
    return max(errs), _tol(14, xp, y1)


@register_check("cms", "closed == iterative block levels")
def cms_closed_iterative(xp):
    blocks = _blocks(3, 2, 3, xp)
    X, Y = _seq(3, 8, 3, xp)
    y1, _ = cms_recurrent(X, blocks, (2, 1), 0.1, targets=Y)
    y2, _ = cms_recurrent(X, blocks, (2, 1), 0.1, targets=Y, method="iterative")
    return max_abs_error(y1, y2, xp), 8 * 1e-11 * max(1.0, max_abs_error(y1, 0 * y1, xp))


@register_check("cms", "declared nested system == the scan")
def cms_declared(xp):
    blocks = _blocks(4, 3, 3, xp)
    X, Y = _seq(4, 11, 3, xp)
    C = (3, None, 2)
    state, _ = run(cms_system(blocks, C, 0.1), {f"block{i + 1}": b for i, b in enumerate(blocks)},
                   [(X[t, :], Y[t, :]) for t in range(11)])
    _, params = cms_recurrent(X, blocks, C, 0.1, targets=Y)
    err = max(max_abs_error(state[f"block{i + 1}"][j], params[i][j], xp) for i in range(3) for j in range(2))
    return err, _tol(11, xp, params[0][0])


@register_check("cms", "erratum: printed chunk sum (C + 1 terms) at C = 1 == theta - eta (g_{t-1} + g_t)")
def cms_printed_sum(xp):
    if len(printed_chunk_terms(8, 4)) != 5:
        return float("inf"), 0.0
    blocks = _blocks(5, 1, 3, xp)
    X, Y = _seq(5, 6, 3, xp)
    _, params = cms_recurrent(X, blocks, (1,), 0.1, targets=Y, chunk_sum="printed")
    (W1, W2), prev = blocks[0], None
    for t in range(6):
        g = _mlp_grad(W1, W2, X[t, :], Y[t, :], xp)
        tot = g if prev is None else (g[0] + prev[0], g[1] + prev[1])
        W1, W2, prev = W1 - 0.1 * tot[0], W2 - 0.1 * tot[1], g
    return max(max_abs_error(params[0][0], W1, xp), max_abs_error(params[0][1], W2, xp)), _tol(6, xp, W1, W2)


# --------------------------------------------------------------------------- self_modifying_titans and hope


def _smt_inputs(seed, xp, T=17, d=4):
    g = np.random.default_rng(seed)
    x = xp.asarray(g.standard_normal((2, T, d)))
    W_q = xp.asarray(np.eye(d) + 0.3 * g.standard_normal((d, d)))
    return x, W_q, random_memories(seed, d, xp)


@register_check("self_modifying_titans", "segment at a time == token by token (C = 4, memory C = 2)")
def smt_chunked(xp):
    x, W_q, mem = _smt_inputs(6, xp)
    o1, s1 = self_modifying_titans_recurrent(x, W_q, memories=mem, chunk_size=4, memory_chunk_size=2)
    o2, s2 = self_modifying_titans_chunked(x, W_q, memories=mem, chunk_size=4, memory_chunk_size=2)
    return max(max_abs_error(o1, o2, xp), max_abs_error(s1["memory"][1], s2["memory"][1], xp)), _tol(17, xp, o1)


@register_check("self_modifying_titans", "erratum: printed snapshot index C ceil(t/C) reads the current step")
def smt_printed_snapshot(xp):
    # refmem's snapshot precedes the token; the print's is the token's own step (or later) for every t, C
    wrong = sum(1 for C in (1, 2, 4) for t in range(1, 33)
                if not (snapshot_step(t, C) < t <= printed_snapshot_step(t, C)))
    return float(wrong), 0.0


@register_check("hope", "chunked == recurrent (Titans C = 4 / 2, CMS C = 8, 4)")
def hope_chunked_recurrent(xp):
    x, W_q, mem = _smt_inputs(7, xp, T=25)
    blocks = _blocks(7, 2, 4, xp)
    targets = _seq(7, 25, 4, xp, batch=(2,))[1]
    kw = dict(cms_params=blocks, cms_chunk_sizes=(8, 4), cms_eta=0.1, targets=targets, memories=mem, chunk_size=4,
              memory_chunk_size=2)
    y1, _ = hope_recurrent(x, W_q, **kw)
    y2, _ = hope_chunked(x, W_q, **kw)
    return max_abs_error(y1, y2, xp), _tol(25, xp, y1)


@register_check("hope", "every memory frozen == the static network")
def hope_frozen(xp):
    x, W_q, mem = _smt_inputs(8, xp, T=9)
    blocks = _blocks(8, 2, 4, xp)
    targets = _seq(8, 9, 4, xp, batch=(2,))[1]
    y, _ = hope_recurrent(x, W_q, cms_params=blocks, cms_chunk_sizes=(None, None), cms_eta=0.1, targets=targets,
                          memories=mem, chunk_size=None, memory_chunk_size=None)
    M1, M2 = mem["memory"]
    q = x @ xp.matrix_transpose(W_q)  # (2, T, d): W_q x_t for every token
    q = q / xp.sqrt(xp.sum(q * q, axis=-1, keepdims=True))
    h = q + xp.tanh(q @ xp.matrix_transpose(M2)) @ xp.matrix_transpose(M1)  # the initial memory, read
    for W1, W2 in blocks:
        h = h + xp.tanh(h @ xp.matrix_transpose(W2)) @ xp.matrix_transpose(W1)
    return max_abs_error(y, h, xp), _tol(1, xp, h)


# --------------------------------------------------------------------------- optimisers as nested systems


@register_check("nested_system", "Adam declared as two levels == refmem.optimizers.make('adam')")
def adam_declared(xp):
    from ..nested.optimizer_systems import adam_system, train_linear
    from ..optimizers import make
    from ..optimizers.local_surprise import weight_gradient

    g = np.random.default_rng(9)
    W = xp.asarray(g.standard_normal((3, 4)) / 2)
    X, Y = xp.asarray(g.standard_normal((15, 4))), xp.asarray(g.standard_normal((15, 3)))
    got = train_linear(adam_system(lr=0.05, weight_decay=0.1), W, X, Y)
    opt = make("adam", lr=0.05, weight_decay=0.1)
    state, err = opt.init(W), 0.0
    for t in range(15):
        W, state, _ = opt.step(W, weight_gradient("squared_error", W, X[t, :], Y[t, :]), state)
        err = max(err, max_abs_error(got[t + 1], W, xp))
    # same operations, same order, up to the rounding of the preconditioned direction: 4 eps per step
    return err, 15 * 4 * EPS * (max_abs_error(W, 0 * W, xp) + 0.05)


@register_check("nested_system", "M3 declared as five levels == refmem.optimizers.make('m3')")
def m3_declared(xp):
    from ..nested.optimizer_systems import m3_system, minibatch_gradient, train_m3
    from ..optimizers import make

    g = np.random.default_rng(10)
    W = xp.asarray(g.standard_normal((3, 4)) / 2)
    X, Y = xp.asarray(g.standard_normal((13, 6, 4))), xp.asarray(g.standard_normal((13, 6, 3)))
    hp = dict(lr=0.02, betas=(0.5, 0.3, 0.4), alpha=0.5, eps=1e-3, frequency=4)
    got = train_m3(m3_system(**hp), W, X, Y)
    opt = make("m3", **hp)
    state, err = opt.init(W), 0.0
    for t in range(13):
        W, state, _ = opt.step(W, minibatch_gradient("squared_error", W, X[t, ...], Y[t, ...]), state)
        err = max(err, max_abs_error(got[t + 1], W, xp))
    # the same level functions in the same order: rounding of the direction only (4 eps per step)
    return err, 13 * 4 * EPS * (max_abs_error(W, 0 * W, xp) + hp["lr"] * (1 + hp["alpha"]) / hp["eps"])
