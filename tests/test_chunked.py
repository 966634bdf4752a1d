"""Chunked (parallel) and mini-batch forms (MATH.md 8).

Every chunked form is compared with its memory's *recurrent* form (written by
another module, the per-token definition) over odd ``T``, chunk sizes 1..64,
zero gates, gates equal to 1 and random initial states, on numpy and
array_api_strict. Tolerance: 1e-10 relative (``refmem.metrics.rel_error``), the
project's float64 default for two exact computations; the observed errors are
~1e-15 (the chunked form reorders sums of at most ``T`` terms of size ``d``).

Mini-batch forms are compared with an independent NumPy loop written here
from their definition (every gradient of a chunk at the chunk-start state),
with the recurrence at ``C = 1`` (equal) and at ``C > 1`` (different).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem.chunked.chunks import decay_matrix, forward_substitution, log_gate_cumsum, lower_mask
from refmem.memories import MEMORIES
from refmem.metrics import rel_error

from conftest import to_numpy

MEMS = MEMORIES
EQUAL_TOL = 1e-10  # float64, exact reordering: see module docstring
EPS32 = float(np.finfo(np.float32).eps)

# memory -> {gate name: (value that makes it "zero", value that makes it "one")}; None: not applicable
GATE_EXTREMES = {
    "linear_attention": {},
    "gated_linear_attention": {"alpha": (0.0, 1.0)},
    "delta_rule": {"beta": (0.0, 1.0)},
    "gated_delta_rule": {"alpha": (0.0, 1.0), "beta": (0.0, 1.0)},
    "longhorn": {"beta": (0.0, 1.0)},
    "titans": {"alpha": (0.0, 1.0), "eta": (0.0, 1.0), "theta": (0.0, 1.0)},
    "mesa": {"lam": (None, 1.0)},  # lam must be > 0: no zero
}
# (memory, make_inputs keyword arguments): the variants every property test runs
VARIANTS = [
    ("linear_attention", {}),
    ("gated_linear_attention", {}),
    ("gated_linear_attention", {"per_channel": True}),
    ("delta_rule", {}),
    ("gated_delta_rule", {}),
    ("longhorn", {}),
    ("longhorn", {"per_channel": True}),
    ("titans", {}),
    ("mesa", {}),
]
VARIANT_IDS = [name + ("-per_channel" if kw else "") for name, kw in VARIANTS]


def np_inputs(name, seed, batch, T, d_k, d_v, mode="random", **kw):
    """Random inputs as NumPy arrays; ``mode`` "zero"/"one" sets ~30% of each gate to its extreme value."""
    with refmem.backend("numpy") as xnp:
        inputs = {n: np.array(a) for n, a in MEMS[name].make_inputs(seed, batch, T, d_k, d_v, xnp, **kw).items()}
    g = np.random.default_rng(seed + 1000)
    if mode != "random":
        for gate, (zero, one) in GATE_EXTREMES[name].items():
            value = zero if mode == "zero" else one
            if value is None:
                continue
            a = inputs[gate]
            inputs[gate] = np.where(g.random(a.shape) < 0.3, value, a)
    return inputs


def initial_for(name, seed, batch, d_k, d_v):
    """A random initial state (Mesa: statistics ``(G_0, H_0)``; Titans: state and momentum)."""
    g = np.random.default_rng(seed + 2000)
    if name == "mesa":
        K = g.standard_normal(batch + (4, d_k)) / np.sqrt(d_k)
        V = g.standard_normal(batch + (4, d_v))
        return {"initial_state": (np.swapaxes(V, -1, -2) @ K, np.swapaxes(K, -1, -2) @ K)}
    out = {"initial_state": g.standard_normal(batch + (d_v, d_k))}
    if name == "titans":
        out["initial_momentum"] = 0.3 * g.standard_normal(batch + (d_v, d_k))
    return out


def to_xp(tree, xp):
    if isinstance(tree, dict):
        return {k: to_xp(v, xp) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(to_xp(v, xp) for v in tree)
    return xp.asarray(tree)


def run_both(name, xp, inputs, init, C, form="chunked"):
    """``(recurrent outputs, form outputs)`` as NumPy arrays."""
    spec = MEMS[name]
    extra = {"return_momentum": True} if name == "titans" else {}
    a = spec.recurrent(**to_xp(inputs, xp), **to_xp(init, xp), **extra)
    b = getattr(spec, form)(**to_xp(inputs, xp), **to_xp(init, xp), chunk_size=C, **extra)
    return [to_numpy(x) for x in a], [to_numpy(x) for x in b]


def max_rel(got, want):
    return max(rel_error(g, w, np) for g, w in zip(got, want))


# ---------------------------------------------------------------- chunked == recurrent


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=8)
@given(T=st.sampled_from([1, 63, 100]), C=st.integers(min_value=1, max_value=64),
       mode=st.sampled_from(["random", "zero", "one"]), seed=st.integers(min_value=0, max_value=2**16),
       with_init=st.booleans())
def test_chunked_equals_recurrent(xp, name, kw, T, C, mode, seed, with_init):
    batch, d_k, d_v = (2,), 5, 4
    inputs = np_inputs(name, seed, batch, T, d_k, d_v, mode, **kw)
    init = initial_for(name, seed, batch, d_k, d_v) if with_init else {}
    want, got = run_both(name, xp, inputs, init, C)
    assert max_rel(got, want) <= EQUAL_TOL


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(("T", "C"), [(1, 1), (1, 64), (63, 64), (64, 64), (65, 64), (100, 1), (100, 7), (100, 33),
                                      (100, 100), (100, 128)])
def test_chunked_grid(name, kw, T, C):
    """Fixed grid on NumPy: C = 1, C = T, C > T, T = C +- 1; multi-dim batch."""
    batch, d_k, d_v = (2, 3), 6, 4
    inputs = np_inputs(name, T * 7 + C, batch, T, d_k, d_v, "zero", **kw)
    init = initial_for(name, T + C, batch, d_k, d_v)
    with refmem.backend("numpy") as xnp:
        want, got = run_both(name, xnp, inputs, init, C)
    assert max_rel(got, want) <= EQUAL_TOL


@pytest.mark.parametrize("name", ["gated_linear_attention", "gated_delta_rule", "titans"])
def test_all_gates_zero_and_one(xp, name):
    """Every gate at 0 (full reset each step) and every gate at 1: still exact, no NaN."""
    batch, T, d_k, d_v = (2,), 37, 4, 3
    for value in (0.0, 1.0):
        inputs = np_inputs(name, 5, batch, T, d_k, d_v)
        for gate in GATE_EXTREMES[name]:
            if gate != "beta" and gate != "theta":
                inputs[gate] = np.full_like(inputs[gate], value)
        init = initial_for(name, 5, batch, d_k, d_v)
        want, got = run_both(name, xp, inputs, init, 8)
        assert all(np.all(np.isfinite(g)) for g in got)
        assert max_rel(got, want) <= EQUAL_TOL


def test_zero_gate_at_chunk_edges():
    """A zero gate on the first and on the last step of a chunk erases exactly what the recurrence erases."""
    batch, T, d_k, d_v, C = (1,), 24, 4, 3, 8
    for pos in (0, 7, 8, 15, 23):
        inputs = np_inputs("gated_delta_rule", pos, batch, T, d_k, d_v)
        inputs["alpha"][..., pos] = 0.0
        init = initial_for("gated_delta_rule", pos, batch, d_k, d_v)
        with refmem.backend("numpy") as xnp:
            want, got = run_both("gated_delta_rule", xnp, inputs, init, C)
        assert max_rel(got, want) <= EQUAL_TOL


def test_tiny_gates_no_nan():
    """Gates of 1e-300 (log = -690, products underflow to 0) give finite, exact results."""
    batch, T, d_k, d_v = (2,), 20, 4, 3
    inputs = np_inputs("gated_linear_attention", 3, batch, T, d_k, d_v)
    inputs["alpha"][..., ::3] = 1e-300
    with refmem.backend("numpy") as xnp:
        want, got = run_both("gated_linear_attention", xnp, inputs, initial_for("x", 3, batch, d_k, d_v), 16)
    assert all(np.all(np.isfinite(g)) for g in got)
    assert max_rel(got, want) <= EQUAL_TOL


def test_mesa_lam_variants(xp):
    """Mesa with a scalar lam, one per step and one per key channel."""
    batch, T, d_k, d_v = (2,), 30, 4, 3
    inputs = np_inputs("mesa", 9, batch, T, d_k, d_v)
    g = np.random.default_rng(9)
    for lam in (0.7, g.uniform(0.3, 1.5, batch + (T,)), g.uniform(0.3, 1.5, batch + (T, d_k))):
        inputs["lam"] = lam
        spec = MEMS["mesa"]
        xin = {k: (v if isinstance(v, float) else xp.asarray(v)) for k, v in inputs.items()}
        want = spec.recurrent(**xin)
        got = spec.chunked(**xin, chunk_size=8)
        assert max_rel([to_numpy(x) for x in got], [to_numpy(x) for x in want]) <= EQUAL_TOL


def test_float32_close_to_float64():
    """float32 chunked vs float64 recurrent: rounding per step ~ d eps, accumulated over T steps of a
    non-expansive recurrence (gates <= 1, beta ||k||^2 < 2), plus the chunk's length-C sums: tol 4 (d + C) T eps32."""
    batch, T, d_k, d_v, C = (2,), 50, 6, 4, 16
    for name in ("gated_delta_rule", "gated_linear_attention", "longhorn", "titans"):
        inputs = np_inputs(name, 11, batch, T, d_k, d_v)
        with refmem.backend("numpy") as xnp:
            want = MEMS[name].recurrent(**to_xp(inputs, xnp))
            got = MEMS[name].chunked(**{k: xnp.asarray(v, dtype=xnp.float32) for k, v in inputs.items()},
                                     chunk_size=C)
        assert got[0].dtype == np.float32
        tol = 4 * (d_k + C) * T * EPS32
        assert max_rel([np.asarray(x, dtype=np.float64) for x in got], want) <= tol


# ---------------------------------------------------------------- mini-batch forms


def minibatch_reference(name, inputs, init, C):
    """Mini-batch forms from their definition, plain NumPy loops (gradients at the chunk-start state)."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    T = k.shape[-2]
    M = init.get("initial_state", np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])))
    S = init.get("initial_momentum", np.zeros_like(M))
    outs = []
    for c0 in range(0, T, C):
        M0 = M
        gamma = np.ones(k.shape[:-2])  # gate product since the chunk start
        for t in range(c0, min(c0 + C, T)):
            kt, vt = k[..., t, :], v[..., t, :]
            if name == "titans":
                a, e, th = 1 - inputs["alpha"][..., t], inputs["eta"][..., t], inputs["theta"][..., t]
                r = np.einsum("...ij,...j->...i", M0, kt) - vt  # gradient at the chunk-start M_0
                grad = np.einsum("...i,...j->...ij", r, kt)
                S = e[..., None, None] * S - th[..., None, None] * grad
                M = a[..., None, None] * M + S
            else:
                a = inputs["alpha"][..., t] if name == "gated_delta_rule" else np.ones(k.shape[:-2])
                b = inputs["beta"][..., t]
                gamma = gamma * a
                r = gamma[..., None] * np.einsum("...ij,...j->...i", M0, kt) - vt  # gradient at gamma_t M_0
                M = a[..., None, None] * M - b[..., None, None] * np.einsum("...i,...j->...ij", r, kt)
            outs.append(np.einsum("...ij,...j->...i", M, q[..., t, :]))
    return [np.stack(outs, axis=-2), M] + ([S] if name == "titans" else [])


MINIBATCH = ["delta_rule", "gated_delta_rule", "titans"]


@pytest.mark.parametrize("name", MINIBATCH)
@settings(max_examples=6)
@given(T=st.sampled_from([1, 63, 100]), C=st.integers(min_value=1, max_value=64),
       seed=st.integers(min_value=0, max_value=2**16))
def test_minibatch_matches_its_definition(xp, name, T, C, seed):
    batch, d_k, d_v = (2,), 5, 4
    inputs = np_inputs(name, seed, batch, T, d_k, d_v, "zero")
    init = initial_for(name, seed, batch, d_k, d_v)
    _, got = run_both(name, xp, inputs, init, C, form="minibatch")
    want = minibatch_reference(name, inputs, init, C)
    # two exact computations of the same definition, T steps of length-d sums
    assert max_rel(got, want) <= EQUAL_TOL


@pytest.mark.parametrize("name", MINIBATCH)
def test_minibatch_equals_recurrent_at_C1_and_differs_otherwise(xp, name):
    batch, T, d_k, d_v = (2,), 40, 5, 4
    inputs = np_inputs(name, 21, batch, T, d_k, d_v)
    init = initial_for(name, 21, batch, d_k, d_v)
    want, got = run_both(name, xp, inputs, init, 1, form="minibatch")
    assert max_rel(got, want) <= EQUAL_TOL
    for C in (2, 8, 64):
        want, got = run_both(name, xp, inputs, init, C, form="minibatch")
        # a genuinely different computation: the difference is O(beta^2 ||k||^4) per chunk, far above rounding
        assert max_rel(got, want) > 1e-4


# ---------------------------------------------------------------- building blocks and errors


def test_forward_substitution_matches_scipy(xp):
    """The array-API triangular solve (any size, blocked) against SciPy's LAPACK solve."""
    import scipy.linalg

    g = np.random.default_rng(0)
    for n in (1, 5, 16, 17, 64, 70):
        A = np.tril(g.standard_normal((3, n, n)) * 0.3, -1)
        B = g.standard_normal((3, n, 4))
        want = np.stack([scipy.linalg.solve_triangular(A[i] + np.eye(n), B[i], lower=True) for i in range(3)])
        got = to_numpy(forward_substitution(xp.asarray(A), xp.asarray(B), xp))
        # triangular solves are backward stable: error ~ n eps cond; cond < 10^2 here
        assert rel_error(got, want, np) <= 1e-12


def test_numpy_solve_triangular_extra():
    """The numpy backend's ``solve_triangular`` extra (BLAS trsm) against SciPy, lower/upper, unit or not, broadcasting."""
    import scipy.linalg

    from refmem.backends import extra

    with refmem.backend("numpy") as xnp:
        fn = extra(xnp, "solve_triangular")
    assert fn is not None
    g = np.random.default_rng(1)
    A = g.standard_normal((2, 3, 6, 6)) * 0.3 + 2 * np.eye(6)
    B = g.standard_normal((3, 6, 5))  # broadcasts against A's batch (2, 3)
    for lower in (True, False):
        for unit in (True, False):
            got = fn(A, B, lower=lower, unit_diagonal=unit)
            want = np.stack([np.stack([scipy.linalg.solve_triangular(A[i, j], B[j], lower=lower, unit_diagonal=unit)
                                       for j in range(3)]) for i in range(2)])
            assert got.shape == (2, 3, 6, 5)
            assert rel_error(got, want, np) <= 1e-13
    for dtype in (np.float32,):
        got = fn(A.astype(dtype), B.astype(dtype), lower=True)
        assert got.dtype == dtype
    vec = fn(A[0, 0], B[0, :, 0], lower=True)
    assert vec.shape == (6,)
    with pytest.raises(ValueError, match="zero on its diagonal"):
        fn(np.zeros((3, 3)), np.ones((3, 2)), lower=True)


def test_numpy_solve_triangular_in_place_extra():
    """The in-place extra writes the solution over a right-hand side its caller gives up (a fresh C-ordered array of
    the full batch shape) and copies any other: a view, a read-only array, a right-hand side that broadcasts."""
    import scipy.linalg

    from refmem.backends import extra

    with refmem.backend("numpy") as xnp:
        fn = extra(xnp, "solve_triangular_in_place")
    g = np.random.default_rng(2)
    A = np.tril(g.standard_normal((3, 6, 6)) * 0.3, -1)
    B = g.standard_normal((3, 6, 5))
    want = np.stack([scipy.linalg.solve_triangular(A[i] + np.eye(6), B[i], lower=True) for i in range(3)])
    owned = B.copy()
    got = fn(A, owned, lower=True, unit_diagonal=True)
    assert np.shares_memory(got, owned) and np.array_equal(got, owned)  # solved where it lay
    assert rel_error(got, want, np) <= 1e-13  # backward-stable solve, cond < 10 here
    view = B.copy()[:, :, :]  # a view of another array: left alone
    readonly = B.copy()
    readonly.flags.writeable = False
    for b in (view, readonly, B[0]):
        before = b.copy()
        got = fn(A, b, lower=True, unit_diagonal=True)
        assert not np.shares_memory(got, b) and np.array_equal(b, before)
        assert rel_error(got, want, np) <= 1e-13 if b.ndim == 3 else got.shape == (3, 6, 5)


def test_decay_matrix_zero_gates(xp):
    """``D[t, s] = prod_{s<r<=t} a_r`` against a direct product, with zeros, ones and tiny gates."""
    a = np.array([0.5, 0.0, 1.0, 1e-300, 0.25, 0.0, 0.9, 1.0])
    C = a.size
    want = np.zeros((C, C))
    for t in range(C):
        for s in range(t + 1):
            want[t, s] = np.prod(a[s + 1:t + 1])
    L, Z = log_gate_cumsum(xp.asarray(a), xp)
    got = to_numpy(decay_matrix(L, Z, L, Z, lower_mask(C, xp, None), xp))
    assert np.all(np.isfinite(got))
    assert np.array_equal(got == 0, want == 0)  # zeros exactly where a zero gate lies in (s, t]
    assert np.max(np.abs(got - want) / np.where(want > 0, want, 1)) <= 16 * np.finfo(float).eps * C


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8", None])
def test_bad_chunk_size(bad):
    inputs = np_inputs("delta_rule", 0, (1,), 5, 3, 2)
    with refmem.backend("numpy") as xnp:
        with pytest.raises((TypeError, ValueError), match="chunk_size"):
            MEMS["delta_rule"].chunked(**to_xp(inputs, xnp), chunk_size=bad)


def test_bad_inputs_named():
    inputs = np_inputs("gated_delta_rule", 0, (1,), 5, 3, 2)
    with refmem.backend("numpy") as xnp:
        bad = dict(inputs, alpha=inputs["alpha"] * 2)  # gate > 1
        with pytest.raises(ValueError, match="alpha"):
            MEMS["gated_delta_rule"].chunked(**to_xp(bad, xnp), chunk_size=2)
        bad = dict(inputs, beta=inputs["beta"][..., :4])
        with pytest.raises(ValueError, match="beta"):
            MEMS["gated_delta_rule"].chunked(**to_xp(bad, xnp), chunk_size=2)
        bad = dict(inputs, q=np.where(np.arange(5)[:, None] == 2, np.nan, inputs["q"]))
        with pytest.raises(ValueError, match="q"):
            MEMS["gated_delta_rule"].chunked(**to_xp(bad, xnp), chunk_size=2)
        with pytest.raises(ValueError, match="initial_state"):
            MEMS["gated_delta_rule"].chunked(**to_xp(inputs, xnp), chunk_size=2, initial_state=xnp.zeros((1, 3, 3)))


def test_mesa_cg_raises_when_not_converged():
    from refmem.solvers import ConvergenceError

    inputs = np_inputs("mesa", 0, (1,), 10, 6, 2)
    with refmem.backend("numpy") as xnp:
        with pytest.raises(ConvergenceError):
            MEMS["mesa"].chunked(**to_xp(inputs, xnp), chunk_size=4, max_iter=1)


def test_every_memory_with_a_chunked_form_is_listed():
    """New chunked forms must join the property tests above."""
    have = {name for name, spec in MEMS.items() if spec.chunked is not None}
    assert have == {name for name, _ in VARIANTS}
    assert {name for name, spec in MEMS.items() if spec.minibatch is not None} >= set(MINIBATCH)


def test_math_md_8_delta_formulas_hold_in_refmem_orientation():
    """MATH.md 8's delta-rule chunk formulas, typed in literally, with M0 in refmem's ``[d_v, d_k]`` orientation.

    Erratum (wording, MATH.md 8, 9): the formulas were once labelled "in K x V orientation", but as printed
    (``Q M0^T``, ``W M0^T``, ``M = M0 + (U - W M0^T)^T K``) they are in refmem's ``M [d_v, d_k]``
    orientation; with flash-linear-attention's ``S = M^T [d_k, d_v]`` they read
    ``O = Q S0 + (Q K^T * tril)(U - W S0)``, ``S = S0 + K^T (U - W S0)``. This test checks the printed
    formulas with ``M0 [d_v, d_k]`` against the recurrence (one chunk, NumPy, independent of refmem.chunked).
    """
    g = np.random.default_rng(4)
    C, d_k, d_v = 9, 5, 3
    K = g.standard_normal((C, d_k)) / np.sqrt(d_k)
    Q = g.standard_normal((C, d_k))
    V = g.standard_normal((C, d_v))
    b = g.uniform(0.1, 0.9, C)
    M0 = g.standard_normal((d_v, d_k))
    Tm = np.linalg.inv(np.eye(C) + np.tril(np.diag(b) @ K @ K.T, -1)) @ np.diag(b)
    W, U = Tm @ K, Tm @ V
    M_chunk = M0 + (U - W @ M0.T).T @ K
    O_chunk = Q @ M0.T + (Q @ K.T * np.tril(np.ones((C, C)))) @ (U - W @ M0.T)
    M, outs = M0, []
    for t in range(C):
        M = M - b[t] * np.outer(M @ K[t] - V[t], K[t])
        outs.append(M @ Q[t])
    # explicit inverse of a unit triangular matrix with entries < 1: error ~ C eps
    assert rel_error(M_chunk, M, np) <= EQUAL_TOL
    assert rel_error(O_chunk, np.stack(outs), np) <= EQUAL_TOL


@pytest.mark.parametrize("low", [0.5, 1e-3, 1e-30])
def test_decay_matrix_without_zero_gates(xp, low):
    """No zero gates: the factorised ``exp(L_t) exp(-L_s)`` path (small logs) and the ``exp(L_t - L_s)`` path
    (``1e-30`` gates push ``L`` below ``-log(max)/2``) both equal the direct product.

    Tolerance: an entry is ``exp`` of cumulative logs of size ``|L| <= C |log low|``, each carrying an
    absolute rounding error of about ``|L| eps``, hence a relative error of ``4 C max(1, |log low|) eps``
    (compared on the entries that are normal numbers; the rest underflow in both)."""
    g = np.random.default_rng(7)
    C = 24
    a = g.uniform(low, 1.0, C)
    want = np.zeros((C, C))
    for t in range(C):
        for s in range(t + 1):
            want[t, s] = np.prod(a[s + 1:t + 1])
    L, Z = log_gate_cumsum(xp.asarray(a), xp)
    assert Z is None
    got = to_numpy(decay_matrix(L, Z, L, Z, lower_mask(C, xp, None), xp))
    normal = want > np.finfo(float).tiny
    # each entry is exp of a difference of cumulative logs of size <= C |log low|: relative error <= 4 C |log low| eps
    tol = 4 * C * max(1.0, abs(np.log(low))) * np.finfo(float).eps
    assert np.max(np.abs(got - want)[normal] / want[normal]) <= tol
    assert np.all(got[~np.tril(np.ones((C, C), bool))] == 0)


def _np_gated_delta(q, k, v, alpha, beta):
    """The gated delta rule written out step by step: M_t = a_t M - b_t (a_t M k_t - v_t) k_t^T, o_t = M_t q_t."""
    M = np.zeros(q.shape[:-2] + (v.shape[-1], k.shape[-1]))
    o = np.zeros(v.shape)
    for t in range(q.shape[-2]):
        aM = alpha[..., t, None, None] * M
        r = np.einsum("...ij,...j->...i", aM, k[..., t, :]) - v[..., t, :]
        M = aM - beta[..., t, None, None] * r[..., :, None] * k[..., t, None, :]
        o[..., t, :] = np.einsum("...ij,...j->...i", M, q[..., t, :])
    return o, M


@pytest.mark.parametrize("gates", ["ordinary", "tiny", "zero", "none"])
def test_factored_and_matrix_decays_agree_with_the_step_by_step_rule(gates, monkeypatch):
    """The chunked delta family forms its decays as row / column factors where that is safe and through the C x C
    matrix D elsewhere (tiny gate products, zero gates): both paths, forced in turn, equal the step-by-step rule
    written above to EQUAL_TOL. "tiny": gates 1e-9, whose product over a full chunk of 16 (1e-144) is below
    max^(-1/4) (about 1e-77), so the factored path must refuse those blocks (the last, 5 steps, is allowed:
    1e-45) and still give the right answer."""
    from refmem.chunked import delta_family

    rng = np.random.default_rng(12)
    B, T, d, C = 2, 37, 5, 16
    q, k, v = (rng.standard_normal((B, T, d)) for _ in range(3))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0.1, 0.9, (B, T))
    alpha = {"ordinary": rng.uniform(0.8, 1.0, (B, T)), "tiny": np.full((B, T), 1e-9),
             "zero": np.where(rng.uniform(size=(B, T)) < 0.2, 0.0, rng.uniform(0.8, 1.0, (B, T))),
             "none": np.ones((B, T))}[gates]
    o_ref, M_ref = _np_gated_delta(q, k, v, alpha, beta)
    taken = []
    real = delta_family._factors_bounded
    monkeypatch.setattr(delta_family, "_factors_bounded", lambda *a, **kw: taken.append(real(*a, **kw)) or taken[-1])
    fn = MEMS["gated_delta_rule"].chunked if gates != "none" else MEMS["delta_rule"].chunked
    kw = {"alpha": alpha} if gates != "none" else {}
    o, M = fn(q, k, v, beta=beta, chunk_size=C, **kw)
    assert rel_error(o, o_ref, np) < EQUAL_TOL and rel_error(M, M_ref, np) < EQUAL_TOL
    if gates in ("ordinary", "none"):
        assert taken and all(taken)  # the factored path was taken
    elif gates == "tiny":
        assert taken and not all(taken)  # refused where a block holds 16 such gates: the D path there
    monkeypatch.setattr(delta_family, "_factors_bounded", lambda *a, **kw: False)  # force the D path everywhere
    o_d, M_d = fn(q, k, v, beta=beta, chunk_size=C, **kw)
    assert rel_error(o_d, o_ref, np) < EQUAL_TOL and rel_error(M_d, M_ref, np) < EQUAL_TOL


@pytest.mark.parametrize("name", ["gated_delta_rule", "delta_rule"])
def test_bench_inputs_take_the_factored_path(name, monkeypatch):
    """The inputs `refmem bench` draws (MEMORIES[name].make_inputs, seed 0, d = C = 64) take the factored decays in
    every block, on the whole batch and on one head (the pool's slice): the bench times the fast path. The D path is
    made to fail so that a fall-back cannot pass unnoticed."""
    from refmem.chunked import delta_family

    def refuse(*a, **kw):
        raise AssertionError("the C x C decay matrix path was taken")

    monkeypatch.setattr(delta_family, "_pieces_with_decay_matrix", refuse)
    inputs = MEMS[name].make_inputs(0, (2, 2), 512, 64, 64, np, "float64")
    for x in (inputs, {key: val[1, 0] for key, val in inputs.items()}):
        o, M = MEMS[name].chunked(**x, chunk_size=64, workers=1)
        assert np.all(np.isfinite(o)) and np.all(np.isfinite(M))


def test_factored_decays_refuse_data_whose_unused_entries_could_overflow():
    """The entries above the diagonal of the factored products are never read but must stay finite (no overflow
    warning): keys of size 1e40 with d = 4 give d |K| max(|Q|, b |K|) = 4e80 > max^(1/4), so the D path is used."""
    from refmem.chunked.delta_family import _factors_bounded

    K = np.full((1, 4, 4), 1e40)
    Q = np.ones((1, 4, 4))
    b = np.full((1, 4), 0.5)
    L = np.zeros((1, 4))
    assert not _factors_bounded(Q, K, b, L, np)
    assert _factors_bounded(Q, K / 1e40, b, L, np)
    assert not _factors_bounded(Q, K / 1e40, b, np.full((1, 4), -200.0), np)  # gamma = e^-200 < max^(-1/4)


@pytest.mark.parametrize("gates", ["ordinary", "tiny", "zero"])
def test_per_channel_gla_factored_and_decay_scores_agree_with_the_recurrence(gates, monkeypatch):
    """Per-key-channel GLA forms its chunk scores as one product of scaled factors where that is safe and from the
    d_k x C x C decays elsewhere (a zero gate in the chunk, channel products below max^(-1/4)): both, the second
    forced everywhere in turn, equal the recurrent form to EQUAL_TOL. "tiny": gates 1e-9 on one channel; a chunk
    of 16 of them (1e-144) is refused, the last chunk of 5 (1e-45) is not."""
    from refmem.chunked import gated_linear_attention as gla

    rng = np.random.default_rng(21)
    B, T, d_k, d_v, C = 2, 37, 5, 3, 16
    q, k = rng.standard_normal((B, T, d_k)), rng.standard_normal((B, T, d_k))
    v = rng.standard_normal((B, T, d_v))
    alpha = rng.uniform(0.8, 1.0, (B, T, d_k))
    if gates == "tiny":
        alpha[..., 2] = 1e-9
    if gates == "zero":
        alpha = np.where(rng.uniform(size=alpha.shape) < 0.05, 0.0, alpha)
    want = MEMS["gated_linear_attention"].recurrent(q, k, v, alpha)
    from_decays = []
    real = gla.channel_scores
    monkeypatch.setattr(gla, "channel_scores", lambda *a, **kw: from_decays.append(1) or real(*a, **kw))
    got = MEMS["gated_linear_attention"].chunked(q, k, v, alpha, chunk_size=C)
    assert max_rel(got, want) <= EQUAL_TOL
    chunks = -(-T // C)
    assert len(from_decays) == {"ordinary": 0, "tiny": chunks - 1}.get(gates, len(from_decays))
    if gates == "zero":
        assert 0 < len(from_decays) <= chunks
    monkeypatch.setattr(gla, "data_bounded", lambda *a, **kw: False)  # the decays everywhere
    from_decays.clear()
    forced = MEMS["gated_linear_attention"].chunked(q, k, v, alpha, chunk_size=C)
    assert len(from_decays) == chunks and max_rel(forced, want) <= EQUAL_TOL


def test_per_channel_gla_factored_scores_refuse_data_whose_unused_entries_could_overflow():
    """d_k max|q| max|k| above max^(1/4) (about 1.2e77 in float64: keys of 1e80) keeps the scores on the decays: no
    overflow warning (the suite makes warnings errors) and the recurrence's answer; the bench's inputs take the product."""
    from refmem.chunked.chunks import data_bounded

    rng = np.random.default_rng(22)
    q, k, v = rng.standard_normal((1, 9, 4)), rng.standard_normal((1, 9, 4)) * 1e80, rng.standard_normal((1, 9, 2))
    alpha = rng.uniform(0.5, 1.0, (1, 9, 4))
    assert not data_bounded(q, k, np) and data_bounded(q, k / 1e80, np)
    got = MEMS["gated_linear_attention"].chunked(q, k, v, alpha, chunk_size=4)
    want = MEMS["gated_linear_attention"].recurrent(q, k, v, alpha)
    assert max_rel(got, want) <= EQUAL_TOL
    with refmem.backend("numpy") as xnp:
        bench = MEMS["gated_linear_attention"].make_inputs(0, (2, 2), 256, 64, 64, xnp, per_channel=True)
    assert data_bounded(np.asarray(bench["q"]), np.asarray(bench["k"]), np)


@pytest.mark.parametrize("C, d_v, block", [(1, 3, 16), (7, 2, 16), (37, 5, 16), (64, 4, 16), (33, 3, 8)])
def test_channel_solves_solve_every_channels_own_system(C, d_v, block):
    """Longhorn's per-channel solves (one forward substitution for every value channel) against each channel's
    own unit lower-triangular system (I + diag(E[:, i]) strict_tril(KK)) solved by numpy.linalg.solve. 1e-12
    relative: both are backward stable on these well-conditioned systems (|E KK| < 0.5)."""
    from refmem.chunked.longhorn import channel_solves

    rng = np.random.default_rng(C * 100 + d_v)
    KK = rng.uniform(-1, 1, (2, C, C))
    E = rng.uniform(0, 0.5, (2, C, d_v)) / C
    R = rng.standard_normal((2, C, d_v))
    with refmem.backend("numpy") as xnp:
        U = np.asarray(channel_solves(xnp.asarray(KK), xnp.asarray(E), xnp.asarray(R), xnp, block=block))
    want = np.empty_like(R)
    for b in range(2):
        for i in range(d_v):
            A = np.eye(C) + E[b, :, i, None] * np.tril(KK[b], -1)
            want[b, :, i] = np.linalg.solve(A, R[b, :, i])
    assert rel_error(U, want, np) <= 1e-12
