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
from refmem.checks.sequence_memories_a import CLOSED_VS_ITERATIVE_TOL, step_errors
from refmem.memories import load_all
from refmem.metrics import rel_error

from conftest import to_numpy

EPS = np.finfo(np.float64).eps
MEMS = load_all()


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

MINE = ["gated_linear_attention", "gated_delta_rule"]


@pytest.mark.parametrize("name", MINE)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 5), d_k=st.integers(1, 5), d_v=st.integers(1, 4))
def test_step_closed_equals_iterative(name, seed, T, d_k, d_v):
    with refmem.backend("numpy") as xnp:
        e_scan, e_iter = step_errors(name, xnp, seed=seed, shape=dict(T=T, d_k=d_k, d_v=d_v))
    assert e_scan <= tol_same(max(d_k, d_v)), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", MINE)
def test_step_closed_equals_iterative_both_backends(name, xp):
    e_scan, e_iter = step_errors(name, xp, seed=11)
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


@pytest.mark.parametrize("name", MINE)
def test_bad_gates(name, xp):
    inputs = np_inputs(name)
    for g in MEMS[name].gates:
        shape_bad = dict(inputs, **{g: inputs[g][..., :-1]})  # one step short (or one channel short)
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
