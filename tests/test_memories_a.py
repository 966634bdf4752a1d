"""Sequence memories of the gated / delta family, Titans and Omega (issue 3 parts 2 and 4, MATH.md 5).

Each memory is tested three ways: its scan's step against ``solve(step_level)``
in closed form and iteratively (``refmem.checks.sequence_memories_a.step_errors``),
its whole scan against an independent NumPy formula written here from the
mathematics (not by calling refmem), and its input validation. numpy ==
array_api_strict for every memory. Tolerances:

- closed vs iterative: 1e-10 relative (solvers stop at 1e-12 relative
  optimality; condition number of each step < 10);
- scan vs an algebraically equal formula: ``TOL_SAME = 64 d eps`` with ``d``
  the inner-product length (see ``rounding_tol``), times ``T`` where the
  reference sums ``T`` terms in another order.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem.checks.sequence_memories_a import CLOSED_VS_ITERATIVE_TOL, step_errors, titans_step_errors
from refmem.losses import Loss
from refmem.memories import MEMORIES

from conftest import to_numpy

EPS = np.finfo(np.float64).eps
MEMS = MEMORIES


def tol_same(d, T=1):
    """Two algebraically equal float64 computations, inner products of length d, T accumulated steps."""
    return 64 * d * T * EPS


def np_inputs(name, seed=0, batch=(2,), T=6, d_k=4, d_v=3, **kw):
    """A memory's random inputs as NumPy arrays (drawn by its make_inputs on the numpy backend)."""
    with refmem.backend("numpy") as xnp:
        inputs = MEMS[name].make_inputs(seed, batch, T, d_k, d_v, xnp, **kw)
    return {n: np.asarray(a) for n, a in inputs.items()}


def on(xp, arrays):
    return {n: xp.asarray(a) for n, a in arrays.items()}


def rel(a, b):
    a, b = to_numpy(a), np.asarray(b)
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


# ------------------------------------------------------------------ shared properties, every memory

MINE = ["gated_linear_attention", "gated_delta_rule", "longhorn", "titans", "dgd", "omega", "omega_implicit"]


def mem_step_errors(name, xp, **kw):
    """(scan step vs closed, closed vs iterative) for memory ``name`` (Titans: its two levels)."""
    return titans_step_errors(xp, **kw) if name == "titans" else step_errors(name, xp, **kw)


@pytest.mark.parametrize("name", MINE)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 5), d_k=st.integers(1, 5), d_v=st.integers(1, 4))
def test_step_closed_equals_iterative(name, seed, T, d_k, d_v):
    with refmem.backend("numpy") as xnp:
        e_scan, e_iter = mem_step_errors(name, xnp, seed=seed, shape=dict(T=T, d_k=d_k, d_v=d_v))
    assert e_scan <= tol_same(max(d_k, d_v)), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", MINE)
def test_step_closed_equals_iterative_both_backends(name, xp):
    e_scan, e_iter = mem_step_errors(name, xp, seed=11)
    assert e_scan <= tol_same(4), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", MINE)
def test_numpy_equals_strict(name):
    inputs = np_inputs(name, seed=5, batch=(2, 3), T=7)
    M0 = np.random.default_rng(6).standard_normal((2, 3, 3, 4))
    outs = {}
    for b in ("numpy", "array_api_strict"):
        with refmem.backend(b) as xp:
            o, M = MEMS[name].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
            outs[b] = (to_numpy(o), to_numpy(M))
    # same operations in the same order on both backends: bitwise equal is expected; allow rounding
    assert rel(outs["array_api_strict"][0], outs["numpy"][0]) <= tol_same(4)
    assert rel(outs["array_api_strict"][1], outs["numpy"][1]) <= tol_same(4)


@pytest.mark.parametrize("name", MINE)
def test_bad_qkv_shapes(name, xp):
    inputs = on(xp, np_inputs(name))
    bad = dict(inputs, q=inputs["q"][..., :3])
    with pytest.raises(ValueError, match="q and k"):
        MEMS[name].recurrent(**bad)
    bad = dict(inputs, v=inputs["v"][..., :5, :])
    with pytest.raises(ValueError, match="v must be"):
        MEMS[name].recurrent(**bad)
    with pytest.raises(ValueError, match="initial_state"):
        MEMS[name].recurrent(**inputs, initial_state=xp.zeros((2, 4, 4), dtype=xp.float64))
    raw = np_inputs(name)
    for n in ("q", "k", "v"):
        bad = raw[n].copy()
        bad[1, -1, 0] = np.nan
        with pytest.raises(ValueError, match=f"{n} contains non-finite"):
            MEMS[name].recurrent(**on(xp, dict(raw, **{n: bad})))
    M0 = np.zeros((2, 3, 4))
    M0[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="initial_state contains non-finite"):
        MEMS[name].recurrent(**inputs, initial_state=xp.asarray(M0))
    with pytest.raises(TypeError, match="initial_state"):
        MEMS[name].recurrent(**inputs, initial_state=xp.zeros((2, 3, 4), dtype=xp.float32))


@pytest.mark.parametrize("name", MINE)
def test_bad_gates(name, xp):
    inputs = np_inputs(name)
    for g in MEMS[name].gates:
        a = inputs[g]
        short = a[..., :-1] if a.ndim == inputs["k"].ndim - 1 else a[..., :-1, :]  # one step short
        shape_bad = dict(inputs, **{g: short})
        with pytest.raises(ValueError, match=g):
            MEMS[name].recurrent(**on(xp, shape_bad))
        nan = inputs[g].copy()
        nan.flat[0] = np.nan
        with pytest.raises(ValueError, match=f"{g} contains non-finite"):
            MEMS[name].recurrent(**on(xp, dict(inputs, **{g: nan})))
        out = inputs[g].copy()
        out.flat[0] = -0.5
        with pytest.raises(ValueError, match=f"{g} must lie in"):
            MEMS[name].recurrent(**on(xp, dict(inputs, **{g: out})))
        with pytest.raises(TypeError, match=g):
            MEMS[name].recurrent(**on(xp, dict(inputs, **{g: inputs[g].astype(np.float32)})))


# ------------------------------------------------------------------ gated linear attention


def np_gla(q, k, v, alpha, M0):
    """Unrolled GLA: M_t = M_0 diag(A_{0,t}) + sum_{s<=t} v_s (A_{s,t} * k_s)^T, A_{s,t} = prod_{r=s+1..t} alpha_r."""
    T = k.shape[-2]
    a = alpha if alpha.ndim == k.ndim else np.broadcast_to(alpha[..., None], k.shape)  # (.., T, d_k)
    o = np.zeros(v.shape)
    for t in range(T):
        decay0 = np.prod(a[..., : t + 1, :], axis=-2)  # (.., d_k)
        M = M0 * decay0[..., None, :]
        for s in range(t + 1):
            A = np.prod(a[..., s + 1: t + 1, :], axis=-2)  # (.., d_k), empty product = 1
            M = M + v[..., s, :, None] * (A * k[..., s, :])[..., None, :]
        o[..., t, :] = np.einsum("...ij,...j->...i", M, q[..., t, :])
    return o, M


@pytest.mark.parametrize("per_channel", [False, True])
def test_gla_matches_unrolled_formula(xp, per_channel):
    inputs = np_inputs("gated_linear_attention", seed=2, per_channel=per_channel)
    M0 = np.random.default_rng(3).standard_normal((2, 3, 4))
    o, M = MEMS["gated_linear_attention"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_gla(**inputs, M0=M0)
    assert rel(o, o_ref) <= tol_same(4, T=6)
    assert rel(M, M_ref) <= tol_same(4, T=6)


def test_gla_alpha_one_is_linear_attention(xp):
    from refmem.memories.gated_linear_attention import gated_linear_attention_recurrent
    from refmem.memories.linear_attention import linear_attention_recurrent

    inputs = on(xp, np_inputs("linear_attention", seed=8, T=9))
    for shape in [inputs["k"].shape[:-1], inputs["k"].shape]:
        o1, M1 = gated_linear_attention_recurrent(**inputs, alpha=xp.ones(shape, dtype=xp.float64))
        o2, M2 = linear_attention_recurrent(**inputs)
        assert rel(o1, to_numpy(o2)) == 0.0 and rel(M1, to_numpy(M2)) == 0.0  # x * 1.0 is exact


def test_gla_zero_gate_forgets(xp):
    from refmem.memories.gated_linear_attention import gated_linear_attention_recurrent

    inputs = np_inputs("gated_linear_attention", seed=9, T=4)
    alpha = inputs["alpha"].copy()
    alpha[..., 2] = 0.0  # step 2 forgets everything before it
    M0 = np.random.default_rng(1).standard_normal((2, 3, 4))
    _, M = gated_linear_attention_recurrent(**on(xp, dict(inputs, alpha=alpha)), initial_state=xp.asarray(M0))
    tail = {n: a[..., 2:, :] if a.ndim == 3 else a[..., 2:] for n, a in dict(inputs, alpha=alpha).items()}
    _, M_tail = gated_linear_attention_recurrent(**on(xp, tail))
    assert rel(M, to_numpy(M_tail)) <= tol_same(4, T=2)


def test_gla_per_channel_gate_shape_error(xp):
    inputs = np_inputs("gated_linear_attention")
    bad = dict(inputs, alpha=np.ones((2, 6, 3)))  # d_v channels instead of d_k
    with pytest.raises(ValueError, match=r"alpha must have shape \(2, 6\).*\(2, 6, 4\)"):
        MEMS["gated_linear_attention"].recurrent(**on(xp, bad))


# ------------------------------------------------------------------ gated delta rule


def np_gdr(q, k, v, alpha, beta, M0):
    """NumPy loop of M_t = a M - b (a M k - v) k^T written from MATH.md 5 (matrix form (aM)(I - b k k^T) + b v k^T)."""
    M = M0
    o = np.zeros(v.shape)
    d_k = k.shape[-1]
    for t in range(k.shape[-2]):
        kt = k[..., t, :]
        P = np.eye(d_k) - beta[..., t, None, None] * kt[..., :, None] * kt[..., None, :]  # (.., d_k, d_k)
        M = (alpha[..., t, None, None] * M) @ P + beta[..., t, None, None] * v[..., t, :, None] * kt[..., None, :]
        o[..., t, :] = (M @ q[..., t, :, None])[..., 0]
    return o, M


def test_gdr_matches_matrix_form(xp):
    inputs = np_inputs("gated_delta_rule", seed=21, T=8)
    M0 = np.random.default_rng(22).standard_normal((2, 3, 4))
    o, M = MEMS["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_gdr(**inputs, M0=M0)
    assert rel(o, o_ref) <= tol_same(4, T=8)
    assert rel(M, M_ref) <= tol_same(4, T=8)


def test_gdr_linearises_at_retained_state(xp):
    """Taking the gradient at M instead of a M is a different rule: the test can tell them apart."""
    from refmem import Level, solve
    from refmem.objectives import L2
    from refmem.retentions import ForgetGate

    inputs = np_inputs("gated_delta_rule", seed=23, T=1)
    inputs["alpha"][:] = 0.5
    M0 = np.random.default_rng(24).standard_normal((2, 3, 4))
    _, M = MEMS["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    at_state = Level(L2(), ForgetGate(eta=xp.asarray(inputs["beta"][..., 0]), alpha=0.5), "explicit")
    M_wrong, _ = solve(at_state, xp.asarray(M0), xp.asarray(inputs["k"][..., 0, :]), xp.asarray(inputs["v"][..., 0, :]))
    assert rel(M, to_numpy(M_wrong)) > 1e-3


def test_gdr_alpha_one_is_delta_rule(xp):
    from refmem.memories.delta_rule import delta_rule_recurrent

    inputs = on(xp, np_inputs("gated_delta_rule", seed=25, T=7))
    o1, M1 = MEMS["gated_delta_rule"].recurrent(**dict(inputs, alpha=xp.ones_like(inputs["alpha"])))
    o2, M2 = delta_rule_recurrent(inputs["q"], inputs["k"], inputs["v"], inputs["beta"])
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=7) and rel(M1, to_numpy(M2)) <= tol_same(4, T=7)


def test_gdr_beta_zero_only_decays(xp):
    inputs = np_inputs("gated_delta_rule", seed=26, T=5)
    inputs["beta"][:] = 0.0
    M0 = np.random.default_rng(27).standard_normal((2, 3, 4))
    _, M = MEMS["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    assert rel(M, np.prod(inputs["alpha"], axis=-1)[:, None, None] * M0) <= tol_same(1, T=5)


# ------------------------------------------------------------------ Longhorn


def np_longhorn(q, k, v, beta, M0):
    """Each row of each step from its normal equations M_i (I/b_i + k k^T) = M_{t-1,i}/b_i + v_i k^T (np.linalg.solve)."""
    B, T, d_k = k.shape
    d_v = v.shape[-1]
    b = beta if beta.ndim == 3 else np.broadcast_to(beta[..., None], (B, T, d_v))
    M = M0.copy()
    o = np.zeros(v.shape)
    for n in range(B):
        for t in range(T):
            kt = k[n, t]
            for i in range(d_v):
                A = np.eye(d_k) / b[n, t, i] + np.outer(kt, kt)
                M[n, i] = np.linalg.solve(A, M[n, i] / b[n, t, i] + v[n, t, i] * kt)  # A symmetric
            o[n, t] = M[n] @ q[n, t]
    return o, M


@pytest.mark.parametrize("per_channel", [False, True])
def test_longhorn_matches_normal_equations(xp, per_channel):
    inputs = np_inputs("longhorn", seed=31, T=6, per_channel=per_channel)
    M0 = np.random.default_rng(32).standard_normal((2, 3, 4))
    o, M = MEMS["longhorn"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_longhorn(**inputs, M0=M0)
    # LAPACK solve of a system with condition <= 1 + b ||k||^2 < 10: backward error ~ 10 d eps per step
    assert rel(o, o_ref) <= 10 * tol_same(4, T=6)
    assert rel(M, M_ref) <= 10 * tol_same(4, T=6)


def test_longhorn_equal_channels_equal_scalar(xp):
    inputs = np_inputs("longhorn", seed=33, T=5)
    wide = dict(inputs, beta=np.repeat(inputs["beta"][..., None], 3, axis=-1))
    o1, M1 = MEMS["longhorn"].recurrent(**on(xp, inputs))
    o2, M2 = MEMS["longhorn"].recurrent(**on(xp, wide))
    assert rel(o2, to_numpy(o1)) <= tol_same(4, T=5) and rel(M2, to_numpy(M1)) <= tol_same(4, T=5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_longhorn_bounded_where_delta_diverges(xp, per_channel):
    """||M_t|| <= ||M_{t-1}|| + ||e o v|| ||k|| (each row contracted by I - e k k^T, 0 <= e||k||^2 < 1),
    while the explicit delta rule with the same unit keys and b = 3 (b ||k||^2 = 3 > 2) blows up."""
    from refmem.memories.delta_rule import delta_rule_recurrent

    g = np.random.default_rng(34)
    T = 60
    k = g.standard_normal((1, T, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = g.standard_normal((1, T, 3))
    q = g.standard_normal((1, T, 4))
    beta = np.full((1, T, 3) if per_channel else (1, T), 3.0)
    if per_channel:
        beta[..., 1] = 50.0  # a very large step in one channel stays bounded too
    M = g.standard_normal((1, 3, 4))
    for t in range(T):
        step = [xp.asarray(a[:, t:t + 1]) for a in (q, k, v, beta)]
        _, M_next = MEMS["longhorn"].recurrent(*step, initial_state=xp.asarray(M))
        M_next = to_numpy(M_next)
        b = beta[:, t] if per_channel else beta[:, t, None]
        e = b / (1 + b)  # ||k|| = 1
        bound = np.linalg.norm(M) + np.linalg.norm(e * v[:, t])
        assert np.linalg.norm(M_next) <= bound * (1 + tol_same(4))
        M = M_next
    _, M_delta = delta_rule_recurrent(*(xp.asarray(a) for a in (q, k, v, np.full((1, T), 3.0))))
    assert np.linalg.norm(to_numpy(M_delta)) > 1e6 * np.linalg.norm(M)


def test_longhorn_residual_rates(xp):
    from refmem.checks.sequence_memories_a import LONGHORN_T, longhorn_vs_delta_residuals

    r_delta, r_long, r0 = longhorn_vs_delta_residuals(xp)
    # hand derivation (see the function's docstring): exactly 2^T and 4^-T, up to rounding amplified by 4^T
    assert abs(r_delta / (2.0**LONGHORN_T * r0) - 1) <= tol_same(4, T=LONGHORN_T)
    assert abs(r_long / (4.0**-LONGHORN_T * r0) - 1) <= tol_same(4, T=LONGHORN_T) * 4.0**LONGHORN_T


def test_delta_rule_unit_keys_is_implicit_step(xp):
    """MATH.md 5: ||k|| = 1, b in (0, 1): M - b r k^T == M - e r k^T with e = eta/(1 + eta), eta = b/(1-b)."""
    from refmem.memories.delta_rule import delta_rule_recurrent

    g = np.random.default_rng(35)
    k = g.standard_normal((3, 9, 5))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v = g.standard_normal((3, 9, 5)), g.standard_normal((3, 9, 2))
    b = g.uniform(0.01, 0.99, size=(3, 9))
    o1, M1 = delta_rule_recurrent(*(xp.asarray(a) for a in (q, k, v, b)))
    o2, M2 = MEMS["longhorn"].recurrent(*(xp.asarray(a) for a in (q, k, v, b / (1 - b))))
    # b/(1-b) then eta/(1+eta) loses ~ eps/(1-b) <= 100 eps relative per step
    assert rel(o2, to_numpy(o1)) <= 100 * tol_same(5, T=9)
    assert rel(M2, to_numpy(M1)) <= 100 * tol_same(5, T=9)
    # and with non-unit keys the identity fails (it needs ||k|| = 1)
    o3, _ = MEMS["longhorn"].recurrent(*(xp.asarray(a) for a in (q, 2 * k, v, b / (1 - b))))
    o4, _ = delta_rule_recurrent(*(xp.asarray(a) for a in (q, 2 * k, v, b)))
    assert rel(o3, to_numpy(o4)) > 1e-3


# ------------------------------------------------------------------ per-channel retentions


def test_channel_local_l2_closed_vs_iterative(xp):
    from refmem import ClosedFormUnavailable, Level, solve
    from refmem.objectives import L2, Dot, Inner
    from refmem.retentions.channel_local_l2 import ChannelLocalL2

    g = np.random.default_rng(36)
    M_t, k, v = (xp.asarray(g.standard_normal(s)) for s in ((2, 3, 4), (2, 4), (2, 3)))
    eta = xp.asarray(g.uniform(0.1, 2.0, size=(2, 3)))
    for obj in (L2(), Dot()):
        for step in ("explicit", "implicit"):
            lvl = Level(obj, ChannelLocalL2(eta=eta), step)
            Mc, _ = solve(lvl, M_t, k, v, method="closed")
            Mi, _ = solve(lvl, M_t, k, v, method="iterative")
            assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    # hand form of the explicit l2 step: M_t - diag(eta) (M_t k - v) k^T
    Mc, _ = solve(Level(L2(), ChannelLocalL2(eta=eta), "explicit"), M_t, k, v)
    Mn, kn, vn, en = (to_numpy(a) for a in (M_t, k, v, eta))
    r = np.einsum("bij,bj->bi", Mn, kn) - vn
    assert rel(Mc, Mn - en[..., None] * r[..., None] * kn[:, None, :]) <= tol_same(4)
    with pytest.raises(ClosedFormUnavailable):
        solve(Level(Inner(), ChannelLocalL2(eta=eta), "implicit"), M_t, None, M_t)
    with pytest.raises(ValueError, match="eta must lie in"):
        solve(Level(L2(), ChannelLocalL2(eta=-eta), "implicit"), M_t, k, v)


def test_channel_forget_gate_closed_vs_iterative(xp):
    from refmem import Level, solve
    from refmem.objectives import L2, Dot
    from refmem.retentions.channel_forget_gate import ChannelForgetGate

    g = np.random.default_rng(37)
    M_t, k, v = (xp.asarray(g.standard_normal(s)) for s in ((2, 3, 4), (2, 4), (2, 3)))
    alpha = xp.asarray(g.uniform(0.0, 1.0, size=(2, 4)))
    for obj in (L2(), Dot()):
        for step in ("explicit", "implicit"):
            lvl = Level(obj, ChannelForgetGate(eta=0.7, alpha=alpha), step)
            Mc, _ = solve(lvl, M_t, k, v, method="closed")
            Mi, _ = solve(lvl, M_t, k, v, method="iterative")
            assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    Mc, _ = solve(Level(Dot(), ChannelForgetGate(eta=0.7, alpha=alpha), "explicit"), M_t, k, v)
    Mn, kn, vn, an = (to_numpy(a) for a in (M_t, k, v, alpha))
    assert rel(Mc, Mn @ np.stack([np.diag(a) for a in an]) + 0.7 * vn[..., None] * kn[:, None, :]) <= tol_same(4)
    with pytest.raises(ValueError, match="alpha must lie in"):
        solve(Level(Dot(), ChannelForgetGate(eta=0.7, alpha=alpha + 1.5), "explicit"), M_t, k, v)


# ------------------------------------------------------------------ Titans


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
    o, M, S = MEMS["titans"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0),
                                       initial_momentum=xp.asarray(S0), return_momentum=True)
    o_ref, M_ref, S_ref = np_titans(**inputs, M0=M0, S0=S0)
    for a, b in ((o, o_ref), (M, M_ref), (S, S_ref)):
        assert rel(a, b) <= tol_same(4, T=7)


def test_titans_split_sequence_carries_momentum(xp):
    """Running T tokens == running 3 then T-3 from (M_3, S_3): the final momentum is the full carried state."""
    inputs = on(xp, np_inputs("titans", seed=43, T=8))
    o, M = MEMS["titans"].recurrent(**inputs)
    head = {n: a[..., :3, :] if n in "qkv" else a[..., :3] for n, a in inputs.items()}
    tail = {n: a[..., 3:, :] if n in "qkv" else a[..., 3:] for n, a in inputs.items()}
    o1, M1, S1 = MEMS["titans"].recurrent(**head, return_momentum=True)
    o2, M2 = MEMS["titans"].recurrent(**tail, initial_state=M1, initial_momentum=S1)
    assert rel(M2, to_numpy(M)) <= tol_same(4) and rel(o2, to_numpy(o)[..., 3:, :]) <= tol_same(4)
    _, M_wrong = MEMS["titans"].recurrent(**tail, initial_state=M1)  # dropping the momentum changes the result
    assert rel(M_wrong, to_numpy(M)) > 1e-3


def test_titans_without_momentum_is_delta_rule(xp):
    from refmem.memories.delta_rule import delta_rule_recurrent

    inputs = on(xp, np_inputs("titans", seed=44, T=6))
    z = xp.zeros_like(inputs["alpha"])
    o1, M1 = MEMS["titans"].recurrent(inputs["q"], inputs["k"], inputs["v"], z, z, inputs["theta"])
    o2, M2 = delta_rule_recurrent(inputs["q"], inputs["k"], inputs["v"], inputs["theta"])
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=6) and rel(M1, to_numpy(M2)) <= tol_same(4, T=6)


def test_titans_bad_momentum(xp):
    inputs = on(xp, np_inputs("titans"))
    with pytest.raises(ValueError, match="initial_momentum must have shape"):
        MEMS["titans"].recurrent(**inputs, initial_momentum=xp.zeros((2, 4, 3), dtype=xp.float64))
    bad = np.zeros((2, 3, 4))
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="initial_momentum contains non-finite"):
        MEMS["titans"].recurrent(**inputs, initial_momentum=xp.asarray(bad))
    with pytest.raises(ValueError, match="eta must lie in"):
        MEMS["titans"].recurrent(**dict(inputs, eta=inputs["eta"] + 1.0))


# ------------------------------------------------------------------ DGD


class _Hebbian(Loss):
    """L(y; v) = -<y, v>, dL/dy = -v (test-only loss: with it the self-generated value is v itself)."""

    name = "hebbian"

    def _value(self, y, target, xp):
        return -xp.sum(y * target, axis=-1)

    def _grad(self, y, target, xp):
        return -target + 0 * y

    def _curvature(self, target, xp):
        return xp.zeros(target.shape[:-1], dtype=target.dtype)

    def _third(self, target, xp):
        return xp.zeros(target.shape[:-1], dtype=target.dtype)


def test_dgd_with_hebbian_loss_is_longhorn(xp):
    inputs = on(xp, np_inputs("dgd", seed=51, T=7))
    o1, M1 = MEMS["dgd"].recurrent(**inputs, loss=_Hebbian())
    o2, M2 = MEMS["longhorn"].recurrent(**inputs)
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=7) and rel(M1, to_numpy(M2)) <= tol_same(4, T=7)


def test_dgd_squared_error_fixed_point_is_half_value(xp):
    """Repeating one pair: M k - v/2 shrinks by (1 - 2 e ||k||^2) per step (hand derivation), so M k -> v/2."""
    g = np.random.default_rng(52)
    T = 40
    k1, v1 = g.standard_normal(4), g.standard_normal(3)
    k, v, q = np.tile(k1, (T, 1)), np.tile(v1, (T, 1)), g.standard_normal((T, 4))
    beta = np.full(T, 0.5)
    M0 = g.standard_normal((3, 4))
    _, M = MEMS["dgd"].recurrent(*(xp.asarray(a) for a in (q, k, v, beta)), initial_state=xp.asarray(M0))
    x = 0.5 * (k1 @ k1) / (1 + 0.5 * (k1 @ k1))  # e ||k||^2
    expected = (1 - 2 * x) ** T * (M0 @ k1 - v1 / 2) + v1 / 2
    # |1 - 2x| < 1 contracts rounding too: the error stays ~ d eps per step
    assert np.max(np.abs(to_numpy(M) @ k1 - expected)) <= tol_same(4, T=T) * np.max(np.abs(v1))


def test_dgd_softmax_cross_entropy_matches_numpy(xp):
    """Value u = p - (sum p) softmax(M k) written out in NumPy; the step is the normal-equation solve of np_longhorn."""
    inputs = np_inputs("dgd", seed=53, T=5)
    inputs["v"] = np.abs(inputs["v"])  # class weights >= 0
    M0 = np.random.default_rng(54).standard_normal((2, 3, 4))
    o, M = MEMS["dgd"].recurrent(**on(xp, inputs), loss="softmax_cross_entropy", initial_state=xp.asarray(M0))
    Mr = M0.copy()
    for t in range(5):
        y = np.einsum("bij,bj->bi", Mr, inputs["k"][:, t])
        s = np.exp(y - y.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        p = inputs["v"][:, t]
        u = p - p.sum(-1, keepdims=True) * s
        step = {n: inputs[n][:, t:t + 1] for n in ("q", "k", "beta")}
        _, Mr = np_longhorn(**step, v=u[:, None, :], M0=Mr)
    assert rel(M, Mr) <= 10 * tol_same(4, T=5)
    with pytest.raises(ValueError, match="target must lie in"):
        MEMS["dgd"].recurrent(**on(xp, dict(inputs, v=-inputs["v"])), loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="loss must be"):
        MEMS["dgd"].recurrent(**on(xp, inputs), loss="l7")


# ------------------------------------------------------------------ Omega


def np_omega(q, k, v, alpha, gamma, M0, step):
    """Omega from its definition: window of tokens t-c+1..t (absent before 0); explicit = a M - grad at M,
    implicit = the d_k x d_k normal equations M (I + K^T G K) = a M_{t-1} + V^T G K (np.linalg.solve, no Woodbury)."""
    B, T, d_k = k.shape
    c = gamma.shape[-1]
    M = M0.copy()
    o = np.zeros(v.shape)
    for n in range(B):
        for t in range(T):
            g = gamma if gamma.ndim == 1 else gamma[n, t]
            idx = [(t - c + 1 + j, g[j]) for j in range(c) if t - c + 1 + j >= 0]
            A = sum(w * np.outer(k[n, i], k[n, i]) for i, w in idx)
            Bv = sum(w * np.outer(v[n, i], k[n, i]) for i, w in idx)
            if step == "explicit":
                M[n] = alpha[n, t] * M[n] - (M[n] @ A - Bv)
            else:
                M[n] = np.linalg.solve(np.eye(d_k) + A, (alpha[n, t] * M[n] + Bv).T).T  # A symmetric
            o[n, t] = M[n] @ q[n, t]
    return o, M


@pytest.mark.parametrize("step", ["explicit", "implicit"])
@pytest.mark.parametrize("c", [1, 3, 7])
def test_omega_matches_definition(xp, step, c):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega", seed=61, T=6, c=c)
    if step == "implicit":
        inputs["gamma"] *= 5  # large weights: fine for the implicit rule
    M0 = np.random.default_rng(62).standard_normal((2, 3, 4))
    o, M = omega_recurrent(**on(xp, inputs), step=step, initial_state=xp.asarray(M0))
    o_ref, M_ref = np_omega(**inputs, M0=M0, step=step)
    # implicit: LAPACK solve with condition <= 1 + sum gam ||k||^2 < 20 on each side
    f = 1 if step == "explicit" else 20
    assert rel(o, o_ref) <= f * tol_same(max(4, c), T=6)
    assert rel(M, M_ref) <= f * tol_same(max(4, c), T=6)


def test_omega_shared_gamma(xp):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega", seed=63, T=5)
    shared = np.array([0.05, 0.1, 0.3])
    o1, M1 = omega_recurrent(**on(xp, dict(inputs, gamma=shared)))
    o2, M2 = omega_recurrent(**on(xp, dict(inputs, gamma=np.broadcast_to(shared, (2, 5, 3)).copy())))
    assert rel(o1, to_numpy(o2)) == 0.0 and rel(M1, to_numpy(M2)) == 0.0


def test_omega_c1_is_delta_rule_and_longhorn(xp):
    from refmem.memories.delta_rule import delta_rule_recurrent
    from refmem.memories.longhorn import longhorn_recurrent
    from refmem.memories.omega import omega_implicit_recurrent, omega_recurrent

    inputs = on(xp, np_inputs("delta_rule", seed=64, T=9))
    q, k, v, b = inputs["q"], inputs["k"], inputs["v"], inputs["beta"]
    one = xp.ones_like(b)
    o1, M1 = omega_recurrent(q, k, v, one, b[..., None])
    o2, M2 = delta_rule_recurrent(q, k, v, b)
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=9) and rel(M1, to_numpy(M2)) <= tol_same(4, T=9)
    o3, M3 = omega_implicit_recurrent(q, k, v, one, b[..., None])
    o4, M4 = longhorn_recurrent(q, k, v, b)
    assert rel(o3, to_numpy(o4)) <= tol_same(4, T=9) and rel(M3, to_numpy(M4)) <= tol_same(4, T=9)
    # with a < 1 Omega (gradient at M) is not the gated delta rule (gradient at a M)
    a = 0.5 * one
    o5, _ = omega_recurrent(q, k, v, a, b[..., None])
    o6, _ = MEMS["gated_delta_rule"].recurrent(q, k, v, a, b)
    assert rel(o5, to_numpy(o6)) > 1e-3


def test_omega_implicit_stable_where_explicit_diverges(xp):
    from refmem.memories.omega import omega_implicit_recurrent, omega_recurrent

    g = np.random.default_rng(65)
    T, c = 40, 4
    k = g.standard_normal((1, T, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v = g.standard_normal((1, T, 4)), g.standard_normal((1, T, 3))
    args = [xp.asarray(a) for a in (q, k, v, np.ones((1, T)), np.full(c, 2.0))]  # sum gam ||k||^2 = 8 > 2
    _, M_exp = omega_recurrent(*args)
    _, M_imp = omega_implicit_recurrent(*args)
    # implicit: M_t = (a M_{t-1} + V^T G K)(I + K^T G K)^{-1}, and ||(I + A)^{-1}|| <= 1, ||V^T G K (I + A)^{-1}|| <=
    # ||V^T G^{1/2}|| ||G^{1/2} K (I + A)^{-1}|| <= ||V^T G^{1/2}|| / 2: the norm grows at most linearly in T
    bound = T * np.sqrt(2.0 * c) * np.max(np.linalg.norm(v, axis=-1)) / 2
    assert np.linalg.norm(to_numpy(M_imp)) <= bound
    assert np.linalg.norm(to_numpy(M_exp)) > 1e6 * bound


def test_omega_bad_inputs(xp):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega")
    with pytest.raises(ValueError, match=r"gamma must have shape \[c\]"):
        omega_recurrent(**on(xp, dict(inputs, gamma=np.ones((2, 3)))))
    with pytest.raises(ValueError, match="gamma must lie in"):
        omega_recurrent(**on(xp, dict(inputs, gamma=-inputs["gamma"])))
    with pytest.raises(ValueError, match="c >= 1"):
        omega_recurrent(**on(xp, dict(inputs, gamma=np.ones((0,)))))
    with pytest.raises(ValueError, match="step must be"):
        omega_recurrent(**on(xp, inputs), step="semi")
    with pytest.raises(TypeError, match="gamma"):
        omega_recurrent(**on(xp, dict(inputs, gamma=inputs["gamma"].astype(np.float32))))


def test_windowed_l2_objective(xp):
    """Gradient: exact for a quadratic by central differences <grad, D> = (f(M + hD) - f(M - hD)) / 2h
    (the third derivative is 0: only rounding, ~ eps |f| / h); prox (Woodbury) vs the d_k x d_k solve."""
    from refmem import Level, solve
    from refmem.objectives.windowed_l2 import WindowedL2
    from refmem.retentions import LocalL2

    g = np.random.default_rng(66)
    M, D = xp.asarray(g.standard_normal((2, 3, 4))), xp.asarray(g.standard_normal((2, 3, 4)))
    K, V = xp.asarray(g.standard_normal((2, 5, 4))), xp.asarray(g.standard_normal((2, 5, 3)))
    gam = g.uniform(0, 1, size=(2, 5))
    gam[0, 1] = 0.0  # a zero weight is allowed (no G^{-1} in the Woodbury form)
    obj = WindowedL2(xp.asarray(gam))
    h = 1e-3
    fd = (to_numpy(obj.value(M + h * D, K, V, xp)) - to_numpy(obj.value(M - h * D, K, V, xp))) / (2 * h)
    an = np.sum(to_numpy(obj.grad(M, K, V, xp)) * to_numpy(D), axis=(-2, -1))
    assert np.max(np.abs(fd - an)) <= 100 * EPS * np.max(np.abs(to_numpy(obj.value(M, K, V, xp)))) / h
    eta = xp.asarray(g.uniform(0.5, 2.0, size=(2,)))
    lvl = Level(obj, LocalL2(eta=eta), "implicit")
    Mc, _ = solve(lvl, M, K, V, method="closed")
    Mi, _ = solve(lvl, M, K, V, method="iterative")
    assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    Mn, Kn, Vn, en = (to_numpy(a) for a in (M, K, V, eta))
    for n in range(2):
        A = np.eye(4) / en[n] + Kn[n].T @ (gam[n, :, None] * Kn[n])
        ref = np.linalg.solve(A, (Mn[n] / en[n] + Vn[n].T @ (gam[n, :, None] * Kn[n])).T).T
        assert rel(to_numpy(Mc)[n], ref) <= 20 * tol_same(5)  # condition of A <= 1 + eta sum gam ||k||^2 < 20 here
    with pytest.raises(ValueError, match="same number of samples"):
        solve(lvl, M, K, V[..., :4, :])
    with pytest.raises(ValueError, match=r"\[\.\.\., c, d_k\]"):
        solve(lvl, M, K[0, 0, :], V)


# ------------------------------------------------------------------ more shared properties


@pytest.mark.parametrize("name", ["gated_linear_attention", "longhorn"])
def test_numpy_equals_strict_per_channel(name):
    inputs = np_inputs(name, seed=81, T=5, per_channel=True)
    outs = {}
    for b in ("numpy", "array_api_strict"):
        with refmem.backend(b) as xp:
            outs[b] = [to_numpy(a) for a in MEMS[name].recurrent(**on(xp, inputs))]
    for a, b in zip(outs["array_api_strict"], outs["numpy"]):
        assert rel(a, b) <= tol_same(4)


# gate name -> (low, high) of a constant gate value drawn by hypothesis, endpoints included
GATE_RANGES = {
    "gated_linear_attention": {"alpha": (0.0, 1.0)},
    "gated_delta_rule": {"alpha": (0.0, 1.0), "beta": (0.01, 1.0)},
    "longhorn": {"beta": (0.01, 100.0)},
    "titans": {"alpha": (0.0, 1.0), "eta": (0.0, 1.0), "theta": (0.01, 1.0)},
    "dgd": {"beta": (0.01, 100.0)},
    "omega": {"alpha": (0.0, 1.0)},
    "omega_implicit": {"alpha": (0.0, 1.0), "gamma": (0.0, 100.0)},
}


@pytest.mark.parametrize("name", MINE)
@settings(max_examples=10)
@given(data=st.data())
def test_step_closed_equals_iterative_any_gate_value(name, data):
    """Constant gates drawn over their whole range (endpoints included): every step still agrees."""
    inputs = np_inputs(name, seed=82, T=4)
    for g, (lo, hi) in GATE_RANGES[name].items():
        val = data.draw(st.floats(min_value=lo, max_value=hi, allow_nan=False), label=g)
        inputs[g] = np.full_like(inputs[g], val)
    with refmem.backend("numpy") as xnp:
        args = on(xnp, inputs)
        e_scan, e_iter = mem_step_errors(name, xnp, inputs=args)
    # theta, beta <= 1 or an implicit step: every step has condition number <= 1 + 100 ||k||^2 ~ 500, so the
    # solver tolerance 1e-12 (raised to 32 eps kappa when larger) keeps the error far below 1e-10
    assert e_scan <= tol_same(4), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", MINE)
def test_float32_close_to_float64(name, xp):
    """float32 scan vs float64 scan of the same inputs: relative error <= 64 d T eps32 (stable steps:
    every factor applied to the state has norm <= 1 or the scan is short, T = 6)."""
    inputs = np_inputs(name, seed=83)
    o64, M64 = MEMS[name].recurrent(**on(xp, inputs))
    o32, M32 = MEMS[name].recurrent(**{n: xp.asarray(a.astype(np.float32)) for n, a in inputs.items()})
    assert o32.dtype == xp.float32 and M32.dtype == xp.float32
    tol = 64 * 4 * 6 * float(np.finfo(np.float32).eps)
    assert rel(o32, to_numpy(o64)) <= tol and rel(M32, to_numpy(M64)) <= tol
