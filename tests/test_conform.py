"""The conformance runner, proved: independent implementations pass, planted bugs fail at the right output.

The implementations below are written from the mathematics (MATH.md 5 and 8)
in flash-linear-attention's layout (``[B, T, H, K]`` inputs, state
``S = M^T`` of shape ``[B, H, K, V]``, ``g = log(alpha)``, default scale
``1/sqrt(K)`` on ``q``), with NumPy, without calling refmem: they stand in
for a foreign kernel. Each planted bug is a copy with one realistic mistake.
"""

import math

import numpy as np
import pytest

from refmem import conform
from refmem.memories import MEMORIES
from refmem.vectors import generate

# ---------------------------------------------------------------- independent fla-layout implementations


def _prep(q, k, scale, initial_state, v):
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, V), dtype=k.dtype) if initial_state is None else np.array(initial_state, dtype=k.dtype)
    return B, T, H, K, V, scale, S


def fla_linear_attention(q, k, v, scale=None, initial_state=None, output_final_state=False):
    """S_t = S_{t-1} + k_t v_t^T (K x V); o_t = (scale q_t)^T S_t."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    o = np.zeros((B, T, H, V), dtype=v.dtype)
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, 1) * (B, H, 1, V)
        o[:, t] = np.sum((scale * q[:, t, :, :, None]) * S, axis=-2)  # sum_K q_K S_KV -> (B, H, V)
    return o, (S if output_final_state else None)


def fla_gated_linear_attention(q, k, v, g=None, gk=None, scale=None, initial_state=None, output_final_state=False,
                               gate_after_read=False):
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T (per key channel: diag(exp(gk_t)) S_{t-1}); o_t = (scale q_t)^T S_t."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    o = np.zeros((B, T, H, V), dtype=v.dtype)
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        decay = np.exp(g[:, t])[:, :, None, None] if gk is None else np.exp(gk[:, t])[..., :, None]  # (B, H, 1|K, 1)
        if gate_after_read:  # BUG: the read sees the state before the decay
            o[:, t] = np.sum((scale * q[:, t, :, :, None]) * (S + kv), axis=-2)
            S = decay * S + kv
        else:
            S = decay * S + kv
            o[:, t] = np.sum((scale * q[:, t, :, :, None]) * S, axis=-2)
    return o, (S if output_final_state else None)


def fla_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, transpose_state=False):
    """u_t = v_t - S^T k_t; S_t = S_{t-1} + beta_t k_t u_t^T; o_t = (scale q_t)^T S_t."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    o = np.zeros((B, T, H, V), dtype=v.dtype)
    for t in range(T):
        kt = k[:, t]  # (B, H, K)
        u = v[:, t] - np.sum(kt[..., :, None] * S, axis=-2)  # (B, H, V)
        S = S + beta[:, t, :, None, None] * kt[..., :, None] * u[..., None, :]  # (B, H, K, V)
        o[:, t] = np.sum((scale * q[:, t, :, :, None]) * S, axis=-2)
    if transpose_state:  # BUG: hands back refmem's orientation [V, K] where fla's S = M^T [K, V] is expected
        S = np.swapaxes(S, -1, -2)
    return o, (S if output_final_state else None)


def fla_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, gate_after_read=False):
    """S' = exp(g_t) S; u = v_t - S'^T k_t; S_t = S' + beta_t k_t u^T (gate before the read, MATH.md 5)."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    o = np.zeros((B, T, H, V), dtype=v.dtype)
    for t in range(T):
        kt = k[:, t]
        decay = np.exp(g[:, t])[:, :, None, None]
        if gate_after_read:  # BUG: M k read from the undecayed state, decay applied afterwards
            u = v[:, t] - np.sum(kt[..., :, None] * S, axis=-2)
            S = decay * S
        else:
            S = decay * S
            u = v[:, t] - np.sum(kt[..., :, None] * S, axis=-2)
        S = S + beta[:, t, :, None, None] * kt[..., :, None] * u[..., None, :]
        o[:, t] = np.sum((scale * q[:, t, :, :, None]) * S, axis=-2)
    return o, (S if output_final_state else None)


def fla_chunked_linear_attention(q, k, v, scale=None, initial_state=None, output_final_state=False, chunk=16, off_by_one=False):
    """Chunked form (MATH.md 8, K x V orientation): O = Q S0 + (Q K^T * tril) V; S = S0 + K^T V per chunk."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    Q = np.swapaxes(q * scale, 1, 2)  # (B, H, T, K)
    Kh, Vh = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)
    outs = []
    for s in range(0, T, chunk):
        Qc, Kc, Vc = Q[:, :, s:s + chunk], Kh[:, :, s:s + chunk], Vh[:, :, s:s + chunk]
        C = Kc.shape[-2]
        mask = np.tril(np.ones((C, C)))  # token i reads tokens j <= i of its chunk (read after write)
        outs.append(Qc @ S + ((Qc @ np.swapaxes(Kc, -1, -2)) * mask) @ Vc)  # (B,H,C,K)@(B,H,K,V) + (B,H,C,C)@(B,H,C,V)
        n = C - 1 if off_by_one else C  # BUG: the carried state drops the last token of each chunk
        S = S + np.swapaxes(Kc[:, :, :n], -1, -2) @ Vc[:, :, :n]  # (B, H, K, n) @ (B, H, n, V)
    o = np.swapaxes(np.concatenate(outs, axis=2), 1, 2)  # (B, H, T, V) -> (B, T, H, V)
    return o, (S if output_final_state else None)


def fla_chunked_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, chunk=16):
    """WY/UT chunked delta rule (MATH.md 8): T = (I + strict_tril(diag(b) K K^T))^{-1} diag(b), W = T K, U = T V."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    Q = np.swapaxes(q * scale, 1, 2)
    Kh, Vh, bh = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2), np.swapaxes(beta, 1, 2)
    outs = []
    for s in range(0, T, chunk):
        Qc, Kc, Vc, bc = Q[:, :, s:s + chunk], Kh[:, :, s:s + chunk], Vh[:, :, s:s + chunk], bh[:, :, s:s + chunk]
        C = Kc.shape[-2]
        A = np.eye(C) + np.tril(bc[..., :, None] * (Kc @ np.swapaxes(Kc, -1, -2)), k=-1)  # (B, H, C, C)
        Tm = np.linalg.solve(A, np.eye(C) * bc[..., None, :])  # A^{-1} diag(b): (B, H, C, C)
        W, U = Tm @ Kc, Tm @ Vc  # (B, H, C, K), (B, H, C, V)
        Unew = U - W @ S  # the pseudo-values after the chunk-start state: (B, H, C, V)
        outs.append(Qc @ S + ((Qc @ np.swapaxes(Kc, -1, -2)) * np.tril(np.ones((C, C)))) @ Unew)
        S = S + np.swapaxes(Kc, -1, -2) @ Unew  # (B, H, K, C) @ (B, H, C, V)
    o = np.swapaxes(np.concatenate(outs, axis=2), 1, 2)
    return o, (S if output_final_state else None)


def refmem_layout_linear_attention(q, k, v, *, initial_state=None):
    """refmem layout: M_t = M_{t-1} + v_t k_t^T ([..., V, K]), o_t = M_t q_t, no scale."""
    M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])) if initial_state is None else initial_state
    o = []
    for t in range(k.shape[-2]):
        M = M + v[..., t, :, None] * k[..., t, None, :]
        o.append(np.sum(M * q[..., t, None, :], axis=-1))
    return np.stack(o, axis=-2), M


def _bug(fn, **flags):
    def impl(*args, **kw):
        return fn(*args, **kw, **flags)

    impl.__name__ = fn.__name__ + "_" + "_".join(flags)
    impl.__signature__ = None  # so that the runner sees **kwargs and passes output_final_state
    return impl


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory):
    """Vectors for the memories these tests check, generated once."""
    d = tmp_path_factory.mktemp("vectors")
    specs = [s for s in ("linear_attention", "delta_rule", "gated_linear_attention", "gated_delta_rule") if s in MEMORIES]
    generate(str(d), specs)
    return str(d)


def _need(spec):
    if spec not in MEMORIES:
        pytest.skip(f"memory {spec!r} is not registered in this checkout")


# ---------------------------------------------------------------- correct implementations pass


@pytest.mark.parametrize("spec, fn", [
    ("linear_attention", fla_linear_attention),
    ("linear_attention", fla_chunked_linear_attention),
    ("delta_rule", fla_delta_rule),
    ("delta_rule", fla_chunked_delta_rule),
    ("gated_linear_attention", fla_gated_linear_attention),
    ("gated_delta_rule", fla_gated_delta_rule),
])
def test_independent_fla_implementation_passes(vec_dir, spec, fn):
    _need(spec)
    res = conform.check(fn, spec=spec, vectors=vec_dir, layout="fla")
    assert res.passed, str(res)
    # every generated case and both outputs were compared, not skipped
    assert {r.output for r in res.rows} == {"o", "state"}
    assert len(res.rows) >= 2 * 8


def test_refmem_layout_implementation_passes(vec_dir):
    res = conform.assert_conforms(refmem_layout_linear_attention, spec="linear_attention", vectors=vec_dir)
    assert res.passed


@pytest.mark.parametrize("spec, fn", [("delta_rule", fla_delta_rule), ("gated_delta_rule", fla_gated_delta_rule)])
def test_float32_kernel_passes_float32_tolerance_only(vec_dir, spec, fn):
    # A float32 computation must pass the derived float32 tolerance and must FAIL the float64 one:
    # the float64 tolerance (8 eps64 (T + d) kappa ~ 1e-13) is far below float32 rounding (~1e-7).
    _need(spec)
    res32 = conform.check(fn, spec=spec, vectors=vec_dir, layout="fla", dtype="float32")
    assert res32.passed, str(res32)
    worst = max(r.max_rel / r.tolerance for r in res32.rows)
    assert worst < 0.5, f"float32 errors use {worst:.2f} of the derived tolerance: the bound is too tight to trust"

    def as32(*a, **kw):
        cast = lambda x: x.astype(np.float32) if isinstance(x, np.ndarray) else x  # noqa: E731
        return fn(*(cast(x) for x in a), **{n: cast(x) for n, x in kw.items()})

    as32.__signature__ = None
    res64 = conform.check(as32, spec=spec, vectors=vec_dir, layout="fla", dtype="float64")
    assert not res64.passed


# ---------------------------------------------------------------- planted bugs fail, at the right output


def test_missing_scale_fails_on_o_only(vec_dir):
    # fla applies 1/sqrt(K) itself; an implementation that ignores it returns o * sqrt(K): the state is right.
    res = conform.check(_bug(fla_linear_attention, scale=1.0), spec="linear_attention", vectors=vec_dir, layout="fla")
    assert not res.passed
    assert res.failing_outputs() == ["o"]
    assert "output 'o' DIFFERS" in res.summary() and "output 'state' matches" in res.summary()


def test_transposed_state_fails_on_state_only(vec_dir):
    res = conform.check(_bug(fla_delta_rule, transpose_state=True), spec="delta_rule", vectors=vec_dir, layout="fla")
    assert res.failing_outputs() == ["state"]
    # o is still compared (and right) in every case, also where the state has the wrong shape
    assert sum(r.output == "o" and r.passed for r in res.rows) == sum(r.output == "state" for r in res.rows)
    msgs = " ".join(r.message for r in res.rows if not r.passed)
    assert "orientation" in msgs  # the d_k != d_v case names the likely cause
    assert any(r.output == "state" and r.case == "T63_heads3" and not r.passed for r in res.rows)  # square: by value


def test_off_by_one_chunk_boundary_fails(vec_dir):
    res = conform.check(_bug(fla_chunked_linear_attention, off_by_one=True), spec="linear_attention",
                        vectors=vec_dir, layout="fla")
    assert set(res.failing_outputs()) == {"o", "state"}
    by_case = {(r.case, r.output): r.passed for r in res.rows}
    # within one chunk (T <= 16 here: T = 1, 9, 12) the read-out is right; across a boundary it is not
    assert by_case[("T1", "o")] and by_case[("no_batch", "o")]
    assert not by_case[("T63_heads3", "o")] and not by_case[("T100_d60", "o")]
    assert "DIFFERS" in res.summary()


@pytest.mark.parametrize("spec, fn", [("gated_linear_attention", fla_gated_linear_attention),
                                      ("gated_delta_rule", fla_gated_delta_rule)])
def test_gate_after_read_fails(vec_dir, spec, fn):
    _need(spec)
    res = conform.check(_bug(fn, gate_after_read=True), spec=spec, vectors=vec_dir, layout="fla")
    assert not res.passed
    assert "o" in res.failing_outputs()
    by_case = {(r.case, r.output): r.passed for r in res.rows}
    # with every gate equal to 1 the decay is the identity: where it is applied cannot matter
    assert by_case[("unit_gates", "o")]
    assert not by_case[("initial_state", "o")] and not by_case[("T100_d60", "o")]


def test_crashing_implementation_is_a_failing_row(vec_dir):
    def broken(q, k, v, **kw):
        raise RuntimeError("kernel launch failed")

    res = conform.check(broken, spec="linear_attention", vectors=vec_dir, layout="fla")
    assert not res.passed and all("RuntimeError: kernel launch failed" in r.message for r in res.rows)


def test_nan_output_fails(vec_dir):
    def nan_impl(q, k, v, *, initial_state=None):
        o, M = refmem_layout_linear_attention(q, k, v, initial_state=initial_state)
        return o * np.nan, M

    res = conform.check(nan_impl, spec="linear_attention", vectors=vec_dir)
    assert res.failing_outputs() == ["o"] and "non-finite" in res.summary()


def test_missing_state_reported_and_outputs_filter(vec_dir):
    only_o = lambda *a, **kw: fla_linear_attention(*a, **kw)[0]  # noqa: E731
    res = conform.check(only_o, spec="linear_attention", vectors=vec_dir, layout="fla")
    assert res.failing_outputs() == ["state"] and "not returned" in res.summary()
    assert conform.check(only_o, spec="linear_attention", vectors=vec_dir, layout="fla", outputs=("o",)).passed


# ---------------------------------------------------------------- DLPack and layouts


def test_dlpack_inputs_and_outputs_array_api_strict(vec_dir):
    # Inputs handed over as array_api_strict arrays; outputs come back through __dlpack__: no torch needed.
    import array_api_strict as xs

    seen = []

    def strict_impl(q, k, v, *, initial_state=None):
        seen.append(type(q).__module__)
        qn, kn, vn = (np.from_dlpack(x) for x in (q, k, v))
        s0 = None if initial_state is None else np.from_dlpack(initial_state)
        o, M = refmem_layout_linear_attention(qn, kn, vn, initial_state=s0)
        return xs.asarray(o), xs.asarray(M)

    res = conform.check(strict_impl, spec="linear_attention", vectors=vec_dir, convert=xs.asarray)
    assert res.passed, str(res)
    assert seen and all(m.startswith("array_api_strict") for m in seen)


def test_to_numpy_accepts_dlpack_producers():
    import array_api_strict as xs

    a = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(conform.to_numpy(xs.asarray(a)), a)
    assert conform.to_numpy(a) is a

    class OnlyDlpack:  # a producer that is nothing but the protocol (what torch / jax / cupy look like here)
        def __init__(self, x):
            self._x = x

        def __dlpack__(self, **kw):
            return self._x.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self._x.__dlpack_device__()

    assert np.array_equal(conform.to_numpy(OnlyDlpack(a)), a)


def test_fla_log_gate_is_finite_at_zero():
    alpha = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    g = conform._log_gate(alpha)
    assert np.all(np.isfinite(g)) and g[2] == 0.0 and abs(g[1] - math.log(0.5)) < 1e-7
    assert np.exp(g[0]) <= np.finfo(np.float32).tiny  # decays to (at most) the smallest normal: a zero gate


def test_lead_dims_to_batch_heads():
    assert conform._lead_to_bh(()) == (1, 1)
    assert conform._lead_to_bh((5,)) == (5, 1)
    assert conform._lead_to_bh((2, 3)) == (2, 3)
    assert conform._lead_to_bh((2, 3, 4)) == (6, 4)


def test_bad_layout_and_dtype_rejected(vec_dir):
    with pytest.raises(ValueError, match="layout"):
        conform.check(fla_linear_attention, spec="linear_attention", vectors=vec_dir, layout="jax")
    with pytest.raises(ValueError, match="dtype"):
        conform.check(fla_linear_attention, spec="linear_attention", vectors=vec_dir, dtype="float16")


# ---------------------------------------------------------------- command line


def test_cli_conform_pass_and_fail(vec_dir, tmp_path, monkeypatch, capsys):
    from refmem.cli import main

    (tmp_path / "my_kernels.py").write_text(
        "import numpy as np\n"
        "def good(q, k, v, scale=None, initial_state=None, output_final_state=False):\n"
        "    B, T, H, K = k.shape\n"
        "    scale = K ** -0.5 if scale is None else scale\n"
        "    S = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state.copy()\n"
        "    o = np.zeros(v.shape)\n"
        "    for t in range(T):\n"
        "        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]\n"
        "        o[:, t] = np.einsum('bhk,bhkv->bhv', scale * q[:, t], S)\n"
        "    return o, S\n"
        "def unscaled(q, k, v, scale=None, initial_state=None, output_final_state=False):\n"
        "    return good(q, k, v, 1.0, initial_state, output_final_state)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["conform", "my_kernels:good", "--spec", "linear_attention", "--vectors", vec_dir, "--layout", "fla"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["conform", "my_kernels:unscaled", "--spec", "linear_attention", "--vectors", vec_dir, "--layout", "fla"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: output(s) 'o' differ" in out and "output 'state' matches" in out
    # without --vectors the runner generates them itself; float32 against the float32 tolerance
    assert main(["conform", "my_kernels:good", "--spec", "linear_attention", "--layout", "fla", "--dtype", "float32"]) == 0
    assert main(["conform", "my_kernels:nope", "--spec", "linear_attention"]) == 2


# ---------------------------------------------------------------- every registered memory, through the runner


def _registered_forms():
    out = []
    for name, mem in sorted(MEMORIES.items()):
        out.append(pytest.param(name, "recurrent", id=f"{name}-recurrent"))
        out.append(pytest.param(name, "recurrent-float32", id=f"{name}-recurrent-float32"))
        if mem.chunked is not None:
            out.append(pytest.param(name, "chunked", id=f"{name}-chunked"))
    return out


@pytest.fixture(scope="module")
def all_vectors(tmp_path_factory):
    """Vectors of every registered memory, generated once for this module."""
    d = tmp_path_factory.mktemp("all_vectors")
    generate(str(d))
    return str(d)


@pytest.mark.parametrize("name, form", _registered_forms())
def test_registered_forms_conform_in_refmem_layout(all_vectors, name, form):
    # The runner drives every registered memory (tuple states, parameters, initial states included);
    # a chunked form with chunk size 16 (so T = 63 and 100 cross chunk boundaries) must match the
    # recurrent reference to the derived float64 tolerance: an independent algorithm, same numbers.
    import functools

    # refmem's own scan run in float32 is a float32 kernel: it must pass the derived float32 tolerance.
    mem = MEMORIES[name]
    fn = functools.partial(mem.chunked, chunk_size=16) if form == "chunked" else mem.recurrent
    dtype = "float32" if form.endswith("float32") else "float64"
    res = conform.check(fn, spec=name, vectors=all_vectors, dtype=dtype, name=f"{name}.{form}")
    assert res.passed, str(res)
    assert res.rows and {r.output for r in res.rows} >= {"o"}


def test_case_the_layout_cannot_express_is_skipped_not_passed(vec_dir, tmp_path):
    # Mesa's state is (G, H): the fla layout has no place for it, so that case is reported as skipped.
    _need("mesa")
    generate(str(tmp_path), ["mesa"])

    def fla_mesa(q, k, v, lam, initial_state=None, output_final_state=False):
        raise AssertionError("must not be called on a case with a tuple state")

    res = conform.check(fla_mesa, spec="mesa", vectors=str(tmp_path), layout="fla", cases=["initial_state"])
    assert not res.passed and not res.rows
    assert res.skipped and res.skipped[0][0] == "initial_state" and "skipped" in res.summary()


def test_compare_measures_huge_and_zero_references():
    # rms is scaled before squaring: a reference near the float64 limit is still measured
    ref = np.full((3, 4), 1e200)
    row = conform.compare(ref * (1 + 1e-3), ref, 1e-6, "c", "o")
    assert not row.passed and abs(row.rms_rel - 1e-3) < 1e-9 and abs(row.max_rel - 1e-3) < 1e-9
    # an all-zero reference is compared absolutely
    assert conform.compare(np.zeros(3), np.zeros(3), 1e-12, "c", "o").passed
    assert not conform.compare(np.full(3, 1e-6), np.zeros(3), 1e-12, "c", "o").passed
    # shape mismatch and non-finite values fail with a message, they do not raise
    assert "shape" in conform.compare(np.zeros((2, 3)), np.zeros((3, 2)), 1.0, "c", "o").message
    assert "non-finite" in conform.compare(np.array([np.inf]), np.array([1.0]), 1.0, "c", "o").message


def fla_gla_per_channel(q, k, v, gk, scale=None, initial_state=None, output_final_state=False):
    """GLA with a per-key-channel log gate: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T (rows of S are key channels)."""
    B, T, H, K, V, scale, S = _prep(q, k, scale, initial_state, v)
    o = np.zeros((B, T, H, V), dtype=v.dtype)
    for t in range(T):
        S = np.exp(gk[:, t])[..., :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, 1) * (B, H, K, V)
        o[:, t] = np.sum((scale * q[:, t, :, :, None]) * S, axis=-2)
    return o, (S if output_final_state else None)


def test_per_channel_gate_goes_to_gk(tmp_path, monkeypatch):
    # Per-key-channel forget gates alpha [..., T, d_k] reach an fla kernel as gk = log(alpha) [B, T, H, K].
    import dataclasses
    import functools

    from refmem.memories import MEMORIES
    from refmem.memories.gated_linear_attention import make_inputs

    _need("gated_linear_attention")
    mem = MEMORIES["gated_linear_attention"]
    monkeypatch.setitem(MEMORIES, "gated_linear_attention",
                        dataclasses.replace(mem, make_inputs=functools.partial(make_inputs, per_channel=True)))
    generate(str(tmp_path), ["gated_linear_attention"])
    res = conform.check(fla_gla_per_channel, spec="gated_linear_attention", vectors=str(tmp_path), layout="fla")
    assert res.passed, str(res)
    assert not conform.check(fla_gla_per_channel, spec="gated_linear_attention", vectors=str(tmp_path),
                             layout="refmem").passed  # wrong layout: refmem passes alpha, not gk


# ---------------------------------------------------------------- bad input to the Python API


def _kernel(q, k, v, **kw):
    return v, None


@pytest.mark.parametrize("kwargs, error, named", [
    ({"fn": 3}, TypeError, "fn must be callable"),
    ({"spec": 3}, TypeError, "spec must be"),
    ({"spec": "nosuch"}, ValueError, "spec 'nosuch' is not a registered memory; known: .*delta_rule"),
    ({"vectors": 3}, TypeError, "vectors must be a directory path"),
    ({"layout": "torch"}, ValueError, "layout must be one of"),
    ({"layout": ["fla"]}, ValueError, "layout must be one of"),
    ({"dtype": "float16"}, ValueError, "dtype must be one of"),
    ({"dtype": np.float32}, ValueError, "dtype must be one of"),
    ({"convert": "torch:from_numpy"}, TypeError, "convert must be callable"),
    ({"cases": 3}, TypeError, "cases must be a name or an iterable"),
    ({"cases": [1]}, TypeError, "cases must hold names"),
    ({"cases": ["T1", "T2000"]}, ValueError, r"cases \['T2000'\] are not among the vectors"),
    ({"outputs": ["out"]}, ValueError, r"outputs \['out'\] must name outputs of 'delta_rule': o, state"),
    ({"outputs": []}, ValueError, "must name outputs"),
    ({"name": 3}, TypeError, "name must be a str"),
])
def test_bad_arguments_are_named(vec_dir, kwargs, error, named):
    call = {"fn": _kernel, "spec": "delta_rule", "vectors": vec_dir, **kwargs}
    with pytest.raises(error, match=named):
        conform.check(call.pop("fn"), **call)


def test_vectors_directory_missing_is_a_vector_error(tmp_path):
    with pytest.raises(conform.VectorError, match="exists check failed: not a directory"):
        conform.check(_kernel, spec="delta_rule", vectors=str(tmp_path / "nope"))


def test_failing_converter_is_named_not_the_kernel(vec_dir):
    def bad_convert(a):
        raise RuntimeError("no device")

    with pytest.raises(conform.ConvertError, match="convert raised RuntimeError: no device") as exc:
        conform.check(_kernel, spec="delta_rule", vectors=vec_dir, convert=bad_convert)
    assert isinstance(exc.value, ValueError)


def test_outputs_o_checks_only_the_read_out(vec_dir):
    """A kernel that returns no state passes on its read-out alone with outputs='o' (and fails without it)."""
    def read_out_only(q, k, v, beta, initial_state=None):
        o, _ = fla_free_delta(q, k, v, beta, initial_state)
        return o

    assert conform.check(read_out_only, spec="delta_rule", vectors=vec_dir, outputs="o").passed
    res = conform.check(read_out_only, spec="delta_rule", vectors=vec_dir)
    assert not res.passed and res.failing_outputs() == ["state"]


def fla_free_delta(q, k, v, beta, initial_state=None):
    """The delta rule in refmem's layout, written out (MATH.md 5): M <- M - beta (M k - v) k^T; o = M q."""
    M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])) if initial_state is None else initial_state.copy()
    o = np.empty(v.shape)
    for t in range(k.shape[-2]):
        r = np.einsum("...vk,...k->...v", M, k[..., t, :]) - v[..., t, :]  # (..., d_v)
        M = M - beta[..., t, None, None] * r[..., :, None] * k[..., t, None, :]  # (..., d_v, d_k)
        o[..., t, :] = np.einsum("...vk,...k->...v", M, q[..., t, :])  # (..., d_v)
    return o, M


def test_cli_outputs_option(vec_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "only_o.py").write_text(
        "from tests_conform_helper import fla_free_delta\n"
        "def k(q, k, v, beta, initial_state=None):\n    return fla_free_delta(q, k, v, beta, initial_state)[0]\n")
    (tmp_path / "tests_conform_helper.py").write_text(
        "import numpy as np\n" + __import__("inspect").getsource(fla_free_delta))
    monkeypatch.chdir(tmp_path)
    from refmem.cli import main

    assert main(["conform", "only_o:k", "--spec", "delta_rule", "--vectors", vec_dir, "--outputs", "o"]) == 0
    assert "output 'o' matches" in capsys.readouterr().out
    assert main(["conform", "only_o:k", "--spec", "delta_rule", "--vectors", vec_dir]) == 1
