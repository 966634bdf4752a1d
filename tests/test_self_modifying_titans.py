"""Self-modifying Titans (NLx-83..93): the reference loop, the chunked form, and one pinning test per printed ambiguity.

The reference here is a plain NumPy loop over a dict of memories with its
own MLP forward and backward; gradients in the pinning tests come from
central finite differences (``refmem.finite_differences``), not from any
hand-written backward.
"""

import math

import numpy as np
import pytest

from conftest import to_numpy
from refmem.finite_differences import central_gradient
from refmem.nested.self_modifying_titans import (MEMORY_NAMES, default_memories, dgd_weight_decay_step, generate,
                                                 printed_snapshot_step, random_memories, self_generated_gradients,
                                                 self_modifying_titans_chunked, self_modifying_titans_recurrent,
                                                 snapshot_step, stack_memories)

EPS = np.finfo(np.float64).eps
NAMES = ("k", "v", "eta", "alpha", "memory")


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _mlp(W1, W2, z):
    return z + W1 @ np.tanh(W2 @ z)


def _mlp_grads(W1, W2, k, target):
    """Textbook backprop of 1/2||MLP(k) - target||^2."""
    a = np.tanh(W2 @ k)
    r = k + W1 @ a - target
    return np.outer(r, a), np.outer((W1.T @ r) * (1 - a * a), k)


def _unit(z):
    return z / np.linalg.norm(z)


def _hand_smt(x, mem, W_q, C=1, Cm=1, eta_max=0.5, eta_bias=0.0, alpha_bias=4.0):
    """NLx-86..91 with refmem's choices, one sequence x [T, d], written out."""
    run = {n: (mem[n][0].copy(), mem[n][1].copy()) for n in NAMES}
    snap = dict(run)
    ys = []
    for t in range(1, len(x) + 1):
        xt = x[t - 1]
        k = _unit(_mlp(*snap["k"], xt))
        v = _unit(_mlp(*snap["v"], xt))
        eta = eta_max * _sig(eta_bias + _mlp(*snap["eta"], xt).mean())
        alpha = _sig(alpha_bias + _mlp(*snap["alpha"], xt).mean())
        q = _unit(W_q @ xt)
        ys.append(_mlp(*snap["memory"], q))
        new = {}
        for n in NAMES:
            S1, S2 = snap[n]
            v_hat = _mlp(S1, S2, v)
            G1, G2 = _mlp_grads(S1, S2, k, v_hat)
            W1, W2 = run[n]
            new[n] = (alpha * W1 - eta * G1, W2 @ (alpha * np.eye(len(k)) - eta * np.outer(k, k)) - eta * G2)
        run = new
        snap = {n: (run[n] if (n == "memory" and Cm and t % Cm == 0) or (n != "memory" and C and t % C == 0)
                    else snap[n]) for n in NAMES}
    return np.array(ys), run


def _setup(seed=0, d=4, T=12, batch=(2,)):
    g = np.random.default_rng(seed)
    x = g.standard_normal(batch + (T, d))
    W_q = np.eye(d) + 0.3 * g.standard_normal((d, d))
    return x, W_q, random_memories(seed, d, np)


def _tol(T, scale=1.0):
    # two float64 evaluations of one T-step recursion whose step map contracts (unit keys and
    # values, alpha < 1, eta_max <= 1): each step adds O(64 eps) relative rounding
    return T * 64 * EPS * max(1.0, scale)


@pytest.mark.parametrize("C, Cm", [(1, 1), (3, 2), (4, None), (None, 5)])
def test_recurrent_form_equals_the_written_out_rule(C, Cm):
    x, W_q, mem = _setup()
    o, state = self_modifying_titans_recurrent(x, W_q, memories=mem, chunk_size=C, memory_chunk_size=Cm)
    for b in range(x.shape[0]):
        ref, run = _hand_smt(x[b], mem, W_q, C, Cm)
        tol = _tol(len(ref), np.abs(ref).max())
        assert np.abs(o[b] - ref).max() <= tol
        for n in NAMES:
            assert np.abs(state[n][0][b] - run[n][0]).max() <= tol
            assert np.abs(state[n][1][b] - run[n][1]).max() <= tol


@pytest.mark.parametrize("C, Cm", [(1, 1), (4, 2), (3, 6), (5, None)])
def test_chunked_evaluation_equals_token_by_token(xp, C, Cm):
    x, W_q, mem = _setup(1, T=17)
    mx = {n: (xp.asarray(a), xp.asarray(b)) for n, (a, b) in mem.items()}
    o1, s1 = self_modifying_titans_recurrent(xp.asarray(x), xp.asarray(W_q), memories=mx, chunk_size=C,
                                             memory_chunk_size=Cm)
    o2, s2 = self_modifying_titans_chunked(xp.asarray(x), xp.asarray(W_q), memories=mx, chunk_size=C,
                                           memory_chunk_size=Cm)
    tol = _tol(17)
    assert np.abs(to_numpy(o1) - to_numpy(o2)).max() <= tol
    for n in NAMES:
        assert np.abs(to_numpy(s1[n][1]) - to_numpy(s2[n][1])).max() <= tol


def test_chunk_snapshots_are_a_different_computation_than_the_per_step_recurrence():
    x, W_q, mem = _setup(2, T=16)
    o1, _ = self_modifying_titans_recurrent(x, W_q, memories=mem, chunk_size=1)
    o4, _ = self_modifying_titans_chunked(x, W_q, memories=mem, chunk_size=4)
    # the first chunk reads the initial snapshot in both: equal; afterwards they differ
    assert np.abs(o1[..., :1, :] - o4[..., :1, :]).max() <= _tol(1)
    assert np.abs(o1[..., 4:, :] - o4[..., 4:, :]).max() > 1e-6


# --------------------------------------------------------------------------- the choices, one pinning test each


def _one_step_pieces(seed=3, d=4, h=3):
    g = np.random.default_rng(seed)
    W1 = g.standard_normal((d, h)) / 2
    W2 = g.standard_normal((h, d)) / 2
    k = _unit(g.standard_normal(d))
    v = _unit(g.standard_normal(d))
    return W1, W2, k, v


def _fd_grads(W1, W2, k, v_hat):
    """Central differences of 1/2||k + W1 tanh(W2 k) - v_hat||^2 in W1 and W2 (v_hat held fixed)."""
    def L1(A):  # A [n, d, h]
        r = k + np.einsum("ndh,h->nd", A, np.tanh(W2 @ k)) - v_hat
        return 0.5 * np.sum(r * r, axis=-1)

    def L2(B):  # B [n, h, d]
        r = k + np.einsum("dh,nh->nd", W1, np.tanh(np.einsum("nhd,d->nh", B, k))) - v_hat
        return 0.5 * np.sum(r * r, axis=-1)

    return central_gradient(L1, W1, 1e-5, ndim=2), central_gradient(L2, W2, 1e-5, ndim=2)


def test_choice_objective_is_half_squared_error_with_the_value_held_fixed():
    W1, W2, k, v = _one_step_pieces()
    Ws = stack_memories({n: (W1, W2) for n in MEMORY_NAMES}, np)
    G1, G2 = self_generated_gradients(*Ws, k, v, np)
    v_hat = _mlp(W1, W2, v)
    F1, F2 = _fd_grads(W1, W2, k, v_hat)
    # central differences with h = 1e-5 on an O(1) smooth function: truncation h^2/6 * |f'''| ~ 1e-10,
    # rounding eps/h ~ 2e-11
    assert np.abs(G1[0] - F1).max() < 1e-8 and np.abs(G2[0] - F2).max() < 1e-8
    # the print's ||.||^2 would double it
    assert np.abs(G1[0] - 2 * F1).max() > 1e-3


def test_choice_the_rank_one_decay_multiplies_the_input_side_matrix():
    W1, W2, k, v = _one_step_pieces()
    eta, alpha = 0.3, 0.9
    F1, F2 = _fd_grads(W1, W2, k, _mlp(W1, W2, v))
    Ws = stack_memories({n: (W1, W2) for n in MEMORY_NAMES}, np)
    G = self_generated_gradients(*Ws, k, v, np)
    N1, N2 = dgd_weight_decay_step(*Ws, *G, k, np.asarray(eta), np.asarray(alpha), np)
    want2 = W2 @ (alpha * np.eye(4) - eta * np.outer(k, k)) - eta * F2  # [h, d] @ [d, d]
    want1 = alpha * W1 - eta * F1
    assert np.abs(N2[0] - want2).max() < 1e-8 and np.abs(N1[0] - want1).max() < 1e-8
    # not the output-side reading (alpha I - eta k k^T) W1 - eta G1 with plain decay on W2
    other1 = (alpha * np.eye(4) - eta * np.outer(k, k)) @ W1 - eta * F1
    assert np.abs(N1[0] - other1).max() > 1e-3


def test_choice_snapshot_is_the_last_state_of_the_previous_chunk():
    for C in (1, 2, 5):
        for t in range(1, 20):
            assert snapshot_step(t, C) < t <= printed_snapshot_step(t, C)
            assert snapshot_step(t, C) == C * ((t - 1) // C)
    assert [printed_snapshot_step(t, 1) for t in (1, 2, 3)] == [1, 2, 3]  # the print at C = 1 reads M_t itself
    # at C = 1 refmem's chunked rule is the per-step recurrence NLx-86..88 (reads M_{t-1})
    x, W_q, mem = _setup(4, T=9, batch=())
    o, _ = self_modifying_titans_chunked(x, W_q, memories=mem, chunk_size=1)
    ref, _ = _hand_smt(x, mem, W_q, 1, 1)
    assert np.abs(o - ref).max() <= _tol(9)


def test_choice_no_momentum_state():
    x, W_q, mem = _setup(5, T=5, batch=())
    _, state = self_modifying_titans_recurrent(x, W_q, memories=mem)
    assert set(state) == set(MEMORY_NAMES) and all(len(p) == 2 for p in state.values())
    # the state after one token is exactly one momentum-free DGD step (the written-out rule)
    _, s1 = self_modifying_titans_recurrent(x[:1], W_q, memories=mem)
    _, r1 = _hand_smt(x[:1], mem, W_q)
    assert all(np.abs(s1[n][1] - r1[n][1]).max() <= _tol(1) for n in NAMES)


def test_choice_scalar_gates_and_normalised_k_v_q():
    x, W_q, mem = _setup(6, T=1, batch=())
    Ws = stack_memories(mem, np)
    k, v, eta, alpha, q = generate(*Ws, x[0], W_q, 0.5, np, eta_bias=0.5, alpha_bias=3.0)
    assert eta == pytest.approx(0.5 * _sig(0.5 + _mlp(*mem["eta"], x[0]).mean()), rel=1e-14)
    assert alpha == pytest.approx(_sig(3.0 + _mlp(*mem["alpha"], x[0]).mean()), rel=1e-14)
    for z in (k, v, q):
        assert np.linalg.norm(z) == pytest.approx(1.0, rel=1e-14)
    assert np.abs(q - _unit(W_q @ x[0])).max() < 1e-15  # the fixed projection: no memory for q
    assert "q" not in MEMORY_NAMES


def test_choice_default_initial_state_is_the_identity_map():
    d = 4
    mem = default_memories(d, np)
    assert all(np.array_equal(W1, np.zeros((d, d))) and np.array_equal(W2, np.eye(d)) for W1, W2 in mem.values())
    x = np.random.default_rng(7).standard_normal((3, d))
    o, _ = self_modifying_titans_recurrent(x)
    # the first token reads the initial (identity) memory with W_q = I: y_1 = x_1 / ||x_1||
    assert np.abs(o[0] - _unit(x[0])).max() < 1e-15


def test_sigmoid_gates_do_not_overflow_on_large_inputs():
    x = 1e3 * np.random.default_rng(8).standard_normal((1, 6, 4))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        o, _ = self_modifying_titans_recurrent(x, memories=random_memories(8, 4, np))
    assert np.isfinite(o).all()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(chunk_size=0), ValueError, "chunk_size must be"),
    (dict(memory_chunk_size=1.5), ValueError, "memory_chunk_size must be"),
    (dict(eta_max=1.5), ValueError, "eta_max must be"),
    (dict(alpha_bias=float("nan")), ValueError, "alpha_bias must be"),
    (dict(memories={"k": None}), ValueError, "memories must be a dict"),
    (dict(W_q=np.eye(3)), ValueError, "W_q must be"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    x = np.random.default_rng(9).standard_normal((5, 4))
    with pytest.raises(exc, match=match):
        self_modifying_titans_recurrent(x, **kwargs)
    with pytest.raises(ValueError, match="T >= 1"):
        self_modifying_titans_recurrent(x[:0])
