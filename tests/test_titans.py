"""Titans, linear and deep memory: the two-level recurrence against NumPy loops, momentum carried across a split,
the reductions to the delta rule / the deep memory's GD scan, and input validation."""

import numpy as np
import pytest

from conftest import to_numpy
from memory_inputs import CLOSED_VS_ITERATIVE, assert_check_passes, draw, np_inputs, on, rel, tol_same
from refmem.memories import MEMORIES
from refmem.memories.residual_mlp import ResidualLoss, make_initial_state
from refmem.metrics import rel_error


# --- linear memory


def np_titans(q, k, v, alpha, eta, theta, M0, S0):
    """NumPy loop of Titans' eqs. with the l2 gradient written out: S <- eta S - theta (M k - v) k^T; M <- (1-alpha) M + S."""
    B, T, _ = k.shape
    M, S = M0.copy(), S0.copy()
    o = np.zeros(v.shape)
    for n in range(B):
        for t in range(T):
            grad = np.outer(M[n] @ k[n, t] - v[n, t], k[n, t])
            S[n] = eta[n, t] * S[n] - theta[n, t] * grad
            M[n] = (1 - alpha[n, t]) * M[n] + S[n]
            o[n, t] = M[n] @ q[n, t]
    return o, M, S


def test_titans_matches_numpy_loop(xp):
    inputs = np_inputs("titans", seed=41, T=7)
    g = np.random.default_rng(42)
    M0, S0 = g.standard_normal((2, 3, 4)), g.standard_normal((2, 3, 4))
    o, M, S = MEMORIES["titans"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0),
                                       initial_momentum=xp.asarray(S0), return_momentum=True)
    o_ref, M_ref, S_ref = np_titans(**inputs, M0=M0, S0=S0)
    for a, b in ((o, o_ref), (M, M_ref), (S, S_ref)):
        assert rel(a, b) <= tol_same(4, T=7)


def test_titans_split_sequence_carries_momentum(xp):
    """Running T tokens == running 3 then T-3 from (M_3, S_3): the final momentum is the full carried state."""
    inputs = on(xp, np_inputs("titans", seed=43, T=8))
    o, M = MEMORIES["titans"].recurrent(**inputs)
    head = {n: a[..., :3, :] if n in "qkv" else a[..., :3] for n, a in inputs.items()}
    tail = {n: a[..., 3:, :] if n in "qkv" else a[..., 3:] for n, a in inputs.items()}
    o1, M1, S1 = MEMORIES["titans"].recurrent(**head, return_momentum=True)
    o2, M2 = MEMORIES["titans"].recurrent(**tail, initial_state=M1, initial_momentum=S1)
    assert rel(M2, to_numpy(M)) <= tol_same(4) and rel(o2, to_numpy(o)[..., 3:, :]) <= tol_same(4)
    _, M_wrong = MEMORIES["titans"].recurrent(**tail, initial_state=M1)  # dropping the momentum changes the result
    assert rel(M_wrong, to_numpy(M)) > 1e-3


def test_titans_without_momentum_is_delta_rule(xp):
    assert_check_passes(xp, "titans", "eta = 0, alpha = 0 (no momentum, no forgetting) == delta rule")


def test_titans_bad_momentum(xp):
    inputs = on(xp, np_inputs("titans"))
    with pytest.raises(ValueError, match="initial_momentum must have shape"):
        MEMORIES["titans"].recurrent(**inputs, initial_momentum=xp.zeros((2, 4, 3), dtype=xp.float64))
    bad = np.zeros((2, 3, 4))
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="initial_momentum contains non-finite"):
        MEMORIES["titans"].recurrent(**inputs, initial_momentum=xp.asarray(bad))
    with pytest.raises(ValueError, match="eta must lie in"):
        MEMORIES["titans"].recurrent(**dict(inputs, eta=inputs["eta"] + 1.0))


# --- deep memory


def test_titans_deep_equals_written_out_recurrence(xp):
    from refmem.memories.titans_deep import titans_deep_recurrent

    inp = draw("titans", 3, T=4, d_k=3, d_v=3, xp=xp)
    W0 = make_initial_state(4, (2,), 3, xp, h=2)
    S0 = make_initial_state(5, (2,), 3, xp, h=2)
    o, W, S = titans_deep_recurrent(**inp, initial_state=W0, initial_momentum=S0, return_momentum=True,
                                    loss=ResidualLoss("lp", p=3.0))
    # NumPy, from the Titans equations: S = eta S - theta grad l(W), W = (1 - alpha) W + S, o = q + W1 tanh(W2 q)
    q, k, v, a, e, th = (to_numpy(inp[n]) for n in ("q", "k", "v", "alpha", "eta", "theta"))
    W1, W2 = to_numpy(W0[0]), to_numpy(W0[1])
    S1, S2 = to_numpy(S0[0]), to_numpy(S0[1])
    for t in range(4):
        z = np.einsum("bhd,bd->bh", W2, k[:, t])
        r = k[:, t] + np.einsum("bdh,bh->bd", W1, np.tanh(z)) - v[:, t]
        u = 3.0 * np.sign(r) * r ** 2
        g1 = u[:, :, None] * np.tanh(z)[:, None, :]
        g2 = (np.einsum("bdh,bd->bh", W1, u) * (1 - np.tanh(z) ** 2))[:, :, None] * k[:, t, None, :]
        S1 = e[:, t, None, None] * S1 - th[:, t, None, None] * g1
        S2 = e[:, t, None, None] * S2 - th[:, t, None, None] * g2
        W1 = (1 - a[:, t, None, None]) * W1 + S1
        W2 = (1 - a[:, t, None, None]) * W2 + S2
        o_t = q[:, t] + np.einsum("bdh,bh->bd", W1, np.tanh(np.einsum("bhd,bd->bh", W2, q[:, t])))
        assert rel_error(to_numpy(o[:, t, :]), o_t, np) <= 1e-13  # same products in another order, 4 steps
    for x, y in zip((W[0], W[1], S[0], S[1]), (W1, W2, S1, S2)):
        assert rel_error(to_numpy(x), y, np) <= 1e-13


def test_titans_deep_closed_equals_iterative_and_bad_inputs(xp):
    from refmem.memories.titans_deep import titans_deep_recurrent

    inp = draw("titans", 6, T=3, d_k=3, d_v=3, xp=xp)
    o, W = titans_deep_recurrent(**inp)
    o_it, W_it = titans_deep_recurrent(**inp, method="iterative")
    assert rel_error(o_it, o, xp) <= CLOSED_VS_ITERATIVE  # both levels are quadratic with Hessian I/eta: kappa 1
    assert rel_error(W_it[1], W[1], xp) <= CLOSED_VS_ITERATIVE
    with pytest.raises(ValueError, match="theta"):
        titans_deep_recurrent(**dict(inp, theta=inp["theta"] * 0.0))
    with pytest.raises(ValueError, match="eta"):
        titans_deep_recurrent(**dict(inp, eta=inp["eta"] + 1.0))
    with pytest.raises(ValueError, match="alpha must have shape"):
        titans_deep_recurrent(**dict(inp, alpha=inp["alpha"][..., :1]))
    with pytest.raises(ValueError, match="initial_momentum"):
        titans_deep_recurrent(**inp, initial_momentum=(W[0][..., :2], W[1]))
    with pytest.raises(TypeError, match="initial_momentum"):
        titans_deep_recurrent(**inp, initial_momentum=W[0])
    with pytest.raises(ValueError, match="d_k"):
        titans_deep_recurrent(inp["q"], inp["k"], inp["v"][..., :2], inp["alpha"], inp["eta"], inp["theta"])


def test_paper_names_are_translated_once_into_what_they_are():
    # alpha is the forgetting (1 - alpha is kept), eta the momentum decay, theta the step: written out by hand
    from refmem.memories.titans import titans_gates, titans_levels

    assert titans_gates(0.25, 0.9, 0.1) == (0.75, 0.9, 0.1)
    mom, mem = titans_levels(0.25, 0.9, 0.1)
    assert (mom.retention.eta, mom.retention.alpha) == (0.1, 0.9)  # 1/(2 theta) ||S - eta S_{t-1}||^2
    assert (mem.retention.eta, mem.retention.alpha) == (1.0, 0.75)  # 1/2 ||M - (1 - alpha) M_{t-1}||^2
