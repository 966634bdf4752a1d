"""The scan's step is its solved level, for every memory with a stated step level (MATH.md 5).

Shared properties of every memory the registry gives a ``step_level`` (or,
Titans, ``levels``), read off ``MEMORIES`` (:mod:`refmem.checks.scan_steps`):
each scan step == ``solve(step_level)`` in closed form == iteratively, for
random shapes and gate values over their whole range; numpy ==
array_api_strict; float32 close to float64; bad shapes and gates are clear
errors. Tolerances: ``memory_inputs``.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import to_numpy
from memory_inputs import np_inputs, on, rel, tol_same
from refmem.checks.scan_steps import CLOSED_VS_ITERATIVE_TOL, step_errors
from refmem.checks.titans import titans_step_errors
from refmem.memories import MEMORIES


# every memory whose step is a stated level (Titans: two) solved from the previous state, except Memora:
# its state lives on the scaled simplex, not on the random matrices these tests start from (test_miras.py)
STEP_MEMORIES = sorted(n for n, s in MEMORIES.items() if (s.step_level or s.levels) and n != "memora")


def mem_step_errors(name, xp, **kw):
    """(scan step vs closed, closed vs iterative) for memory ``name`` (Titans: its two levels)."""
    return titans_step_errors(xp, **kw) if name == "titans" else step_errors(name, xp, **kw)


@pytest.mark.parametrize("name", STEP_MEMORIES)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 5), d_k=st.integers(1, 5), d_v=st.integers(1, 4))
def test_step_closed_equals_iterative(name, seed, T, d_k, d_v):
    with refmem.backend("numpy") as xnp:
        e_scan, e_iter = mem_step_errors(name, xnp, seed=seed, shape=dict(T=T, d_k=d_k, d_v=d_v))
    assert e_scan <= tol_same(max(d_k, d_v)), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", STEP_MEMORIES)
def test_step_closed_equals_iterative_both_backends(name, xp):
    e_scan, e_iter = mem_step_errors(name, xp, seed=11)
    assert e_scan <= tol_same(4), e_scan
    assert e_iter <= CLOSED_VS_ITERATIVE_TOL, e_iter


@pytest.mark.parametrize("name", STEP_MEMORIES)
def test_numpy_equals_strict(name):
    inputs = np_inputs(name, seed=5, batch=(2, 3), T=7)
    M0 = np.random.default_rng(6).standard_normal((2, 3, 3, 4))
    outs = {}
    for b in ("numpy", "array_api_strict"):
        with refmem.backend(b) as xp:
            o, M = MEMORIES[name].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
            outs[b] = (to_numpy(o), to_numpy(M))
    # same operations in the same order on both backends: bitwise equal is expected; allow rounding
    assert rel(outs["array_api_strict"][0], outs["numpy"][0]) <= tol_same(4)
    assert rel(outs["array_api_strict"][1], outs["numpy"][1]) <= tol_same(4)


@pytest.mark.parametrize("name", STEP_MEMORIES)
def test_bad_qkv_shapes(name, xp):
    inputs = on(xp, np_inputs(name))
    bad = dict(inputs, q=inputs["q"][..., :3])
    with pytest.raises(ValueError, match="q and k"):
        MEMORIES[name].recurrent(**bad)
    bad = dict(inputs, v=inputs["v"][..., :5, :])
    with pytest.raises(ValueError, match="v must be"):
        MEMORIES[name].recurrent(**bad)
    with pytest.raises(ValueError, match="initial_state"):
        MEMORIES[name].recurrent(**inputs, initial_state=xp.zeros((2, 4, 4), dtype=xp.float64))
    raw = np_inputs(name)
    for n in ("q", "k", "v"):
        bad = raw[n].copy()
        bad[1, -1, 0] = np.nan
        with pytest.raises(ValueError, match=f"{n} contains non-finite"):
            MEMORIES[name].recurrent(**on(xp, dict(raw, **{n: bad})))
    M0 = np.zeros((2, 3, 4))
    M0[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="initial_state contains non-finite"):
        MEMORIES[name].recurrent(**inputs, initial_state=xp.asarray(M0))
    with pytest.raises(TypeError, match="initial_state"):
        MEMORIES[name].recurrent(**inputs, initial_state=xp.zeros((2, 3, 4), dtype=xp.float32))


@pytest.mark.parametrize("name", STEP_MEMORIES)
def test_bad_gates(name, xp):
    inputs = np_inputs(name)
    for g in MEMORIES[name].gates:
        a = inputs[g]
        short = a[..., :-1] if a.ndim == inputs["k"].ndim - 1 else a[..., :-1, :]  # one step short
        shape_bad = dict(inputs, **{g: short})
        with pytest.raises(ValueError, match=g):
            MEMORIES[name].recurrent(**on(xp, shape_bad))
        nan = inputs[g].copy()
        nan.flat[0] = np.nan
        with pytest.raises(ValueError, match=f"{g} contains non-finite"):
            MEMORIES[name].recurrent(**on(xp, dict(inputs, **{g: nan})))
        out = inputs[g].copy()
        out.flat[0] = -0.5
        with pytest.raises(ValueError, match=f"{g} must lie in"):
            MEMORIES[name].recurrent(**on(xp, dict(inputs, **{g: out})))
        with pytest.raises(TypeError, match=g):
            MEMORIES[name].recurrent(**on(xp, dict(inputs, **{g: inputs[g].astype(np.float32)})))


@pytest.mark.parametrize("name", ["gated_linear_attention", "longhorn"])
def test_numpy_equals_strict_per_channel(name):
    inputs = np_inputs(name, seed=81, T=5, per_channel=True)
    outs = {}
    for b in ("numpy", "array_api_strict"):
        with refmem.backend(b) as xp:
            outs[b] = [to_numpy(a) for a in MEMORIES[name].recurrent(**on(xp, inputs))]
    for a, b in zip(outs["array_api_strict"], outs["numpy"]):
        assert rel(a, b) <= tol_same(4)


# gate name -> (low, high) of a constant gate value drawn by hypothesis, endpoints included
GATE_RANGES = {
    "linear_attention": {},
    "delta_rule": {"beta": (0.01, 1.0)},
    "yaad": {"alpha": (0.0, 1.0), "eta": (0.01, 1.0)},
    "moneta": {"alpha": (0.0, 1.0), "eta": (0.001, 0.01)},  # lp (p = 3) steps: small eta, as its make_inputs draws
    "gated_linear_attention": {"alpha": (0.0, 1.0)},
    "gated_delta_rule": {"alpha": (0.0, 1.0), "beta": (0.01, 1.0)},
    "longhorn": {"beta": (0.01, 100.0)},
    "titans": {"alpha": (0.0, 1.0), "eta": (0.0, 1.0), "theta": (0.01, 1.0)},
    "dgd": {"beta": (0.01, 100.0)},
    "omega": {"alpha": (0.0, 1.0)},
    "omega_implicit": {"alpha": (0.0, 1.0), "gamma": (0.0, 100.0)},
}


@pytest.mark.parametrize("name", STEP_MEMORIES)
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


@pytest.mark.parametrize("name", STEP_MEMORIES)
def test_float32_close_to_float64(name, xp):
    """float32 scan vs float64 scan of the same inputs: relative error <= 64 d T eps32 (stable steps:
    every factor applied to the state has norm <= 1 or the scan is short, T = 6)."""
    inputs = np_inputs(name, seed=83)
    o64, M64 = MEMORIES[name].recurrent(**on(xp, inputs))
    o32, M32 = MEMORIES[name].recurrent(**{n: xp.asarray(a.astype(np.float32)) for n, a in inputs.items()})
    assert o32.dtype == xp.float32 and M32.dtype == xp.float32
    tol = 64 * 4 * 6 * float(np.finfo(np.float32).eps)
    assert rel(o32, to_numpy(o64)) <= tol and rel(M32, to_numpy(M64)) <= tol
