"""Stage oracles of the chunked kernels (``refmem.chunked.stages``) against the recurrence, written out in NumPy.

Every stage is compared with a plain computation from its definition: the
start states with the recurrent scan of the prefix, the in-chunk decays with
``np.cumprod`` of the gates, the chunk's effective values ``U`` with the
recurrence's own write ``u_t = b_t (v_t - a_t M_{t-1} k_t)`` (the gated delta rule
is ``M_t = a_t M_{t-1} + u_t k_t^T``), and ``A``, ``A_inv``, ``W``, ``U~`` with
their defining equations solved by ``np.linalg.solve``. All float64; every
quantity is a few dot products of length at most ``C + d``, so the bound is
``tol = 64 (T + C + d_k + d_v) u`` relative to the quantity's scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from refmem.chunked.stages import STAGES
from refmem.memories import MEMORIES

U64 = np.finfo(np.float64).eps / 2


def tol(T, C, d_k, d_v):
    return 64 * (T + C + d_k + d_v) * U64


def close(a, b, t, what):
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 0.0)
    err = float(np.max(np.abs(np.asarray(a) - b))) if np.size(b) else 0.0
    assert err <= t * scale, f"{what}: error {err:.2e} > {t * scale:.2e}"


def setup(name, seed, T, C, d_k, d_v, per_channel=False):
    kw = {"per_channel": True} if per_channel else {}
    inp = dict(MEMORIES[name].make_inputs(seed, (2,), T, d_k, d_v, np, "float64", **kw))
    inp["initial_state"] = np.random.default_rng(seed + 1).standard_normal((2, d_v, d_k))
    return inp


CASES = [(n, T, C) for n in sorted(STAGES) for T, C in ((7, 3), (8, 4), (5, 8), (6, 1))]


@pytest.mark.parametrize("name, T, C", CASES)
def test_start_states_are_the_recurrent_states_at_chunk_starts(name, T, C):
    inp = setup(name, 0, T, C, 3, 2)
    st = STAGES[name](**inp, chunk_size=C)["start_states"]
    N = -(-T // min(C, T))
    assert st.shape == (2, N, 2, 3)
    for n in range(N):
        if n == 0:
            want = inp["initial_state"]
        else:
            prefix = {key: (a[:, :n * min(C, T)] if key != "initial_state" else a) for key, a in inp.items()}
            want = MEMORIES[name].recurrent(**prefix)[1]
        close(st[:, n], want, tol(T, C, 3, 2), f"{name} start state of chunk {n}")


@pytest.mark.parametrize("per_channel", [False, True])
def test_gated_linear_attention_decays_are_cumulative_gate_products(per_channel):
    T, C = 7, 3
    inp = setup("gated_linear_attention", 1, T, C, 3, 2, per_channel)
    decay = STAGES["gated_linear_attention"](**inp, chunk_size=C)["decay"]
    a = inp["alpha"]
    for n in range(3):
        chunk = a[:, n * C:(n + 1) * C]
        want = np.cumprod(chunk, axis=1)
        assert decay.shape == ((2, 3, C, 3) if per_channel else (2, 3, C))
        close(decay[:, n, :chunk.shape[1]], want, tol(T, C, 3, 2), f"decay of chunk {n}")


@pytest.mark.parametrize("name", ["delta_rule", "gated_delta_rule"])
@pytest.mark.parametrize("T, C", [(7, 3), (8, 4), (6, 1), (5, 8)])
def test_delta_family_ut_factors(name, T, C):
    d_k, d_v = 3, 2
    inp = setup(name, 2, T, C, d_k, d_v)
    s = STAGES[name](**inp, chunk_size=C)
    C = min(C, T)
    q, k, v, b = inp["q"], inp["k"], inp["v"], inp["beta"]
    a = inp.get("alpha", np.ones_like(b))
    t_ = tol(T, C, d_k, d_v)
    # the recurrence written out: M_t = a_t M_{t-1} + u_t k_t^T with u_t = b_t (v_t - a_t M_{t-1} k_t)
    M = inp["initial_state"].copy()
    us = []
    for t in range(T):
        aM = a[:, t, None, None] * M
        u = b[:, t, None] * (v[:, t] - np.einsum("bvk,bk->bv", aM, k[:, t]))
        us.append(u)
        M = aM + np.einsum("bv,bk->bvk", u, k[:, t])
    us = np.stack(us, axis=1)  # (2, T, d_v)
    N = -(-T // C)
    for n in range(N):
        rows = slice(n * C, min((n + 1) * C, T))
        m = rows.stop - rows.start
        close(s["U"][:, n, :m], us[:, rows], t_, f"{name} chunk {n}: U = the recurrence's writes u_t")
        an, bn, kn, vn = a[:, rows], b[:, rows], k[:, rows], v[:, rows]
        gamma = np.cumprod(an, axis=1)
        close(s["decay"][:, n, :m], gamma, t_, f"{name} chunk {n}: decay")
        D = np.ones((2, m, m))
        for i in range(m):
            for j in range(m):
                D[:, i, j] = np.prod(an[:, j + 1:i + 1], axis=1) if j <= i else 0.0
        A = np.tril(bn[:, :, None] * D * np.einsum("bik,bjk->bij", kn, kn), -1)
        close(s["A"][:, n, :m, :m], A, t_, f"{name} chunk {n}: A")
        IA = np.eye(m) + A
        close(s["A_inv"][:, n, :m, :m], np.linalg.inv(IA), t_, f"{name} chunk {n}: A_inv")
        close(s["W"][:, n, :m], np.linalg.solve(IA, (bn * gamma)[:, :, None] * kn), t_, f"{name} chunk {n}: W")
        close(s["U~"][:, n, :m], np.linalg.solve(IA, bn[:, :, None] * vn), t_, f"{name} chunk {n}: U~")


def test_stage_oracles_cover_the_delta_family_and_linear_attention():
    assert set(STAGES) == {"linear_attention", "gated_linear_attention", "delta_rule", "gated_delta_rule"}


def test_bad_chunk_size_is_a_clear_error():
    inp = setup("delta_rule", 0, 4, 2, 3, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        STAGES["delta_rule"](**inp, chunk_size=0)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_array_api_strict_equals_numpy(name):
    import array_api_strict as xps

    inp = setup(name, 4, 7, 3, 3, 2)
    want = STAGES[name](**inp, chunk_size=3)
    got = STAGES[name](**{k: xps.asarray(a) for k, a in inp.items()}, chunk_size=3)
    assert set(got) == set(want)
    for key in want:
        assert type(got[key]).__module__.startswith("array_api_strict"), key
        close(np.asarray(got[key]), want[key], tol(7, 3, 3, 2), f"{name} {key} strict")
