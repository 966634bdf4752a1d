"""Kernel layouts (specs/kernel_layouts.md): gates by meaning, and every layout option with a passing and a failing kernel.

The kernels here are written from the mathematics (MATH.md 5) in
flash-linear-attention's conventions, with NumPy and without calling refmem:
they stand in for a foreign kernel. Each planted bug is one flag of a correct
kernel, so the failing kernel differs from the passing one by one mistake.
"""

import functools
import math

import numpy as np
import pytest

from refmem import conform
from refmem.kernel_layouts import GATE_MEANINGS, Layout, gate_meaning, gate_table, kept_fraction
from refmem.memories import MEMORIES
from refmem.packed_sequences import merge_packed, sequence_bounds, split_packed
from refmem.vectors import generate

SPECS = ("linear_attention", "gated_linear_attention", "gated_delta_rule", "titans")


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout_vectors")
    generate(str(d), list(SPECS))
    return str(d)


# ---------------------------------------------------------------- an independent fla-style kernel with every option


def fla_gated_delta(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                    cu_seqlens=None, use_qk_l2norm_in_kernel=False, *, state_v_first=False, linear_gates=False,
                    bug=None):
    """Gated delta rule, fla layout: S' = a S; u = v - S'^T k; S = S' + b k u^T; o = (scale q)^T S.

    ``q, k [B, T, H, K]``, ``v [B, T, HV, V]`` with ``HV = G H`` (value head j reads
    q, k head j // G), ``g, beta [B, T, HV]``, states ``[N, HV, K, V]`` (``[N, HV, V, K]``
    with ``state_v_first``); ``cu_seqlens``: B = 1 and N packed sequences.
    ``bug``: one planted mistake (see the tests).
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    if use_qk_l2norm_in_kernel and bug != "no_l2norm":
        q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + 1e-6)  # fla's l2norm, epsilon included
        k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + 1e-6)
    if scale is None or bug == "ignore_scale":
        scale = K ** -0.5
    if cu_seqlens is None:
        seqs = [(b, 0, T) for b in range(B)]
    else:
        cu = [int(c) for c in np.asarray(cu_seqlens)]
        seqs = [(0, s, e) for s, e in zip(cu[:-1], cu[1:])]
    a_all = np.ones((B, T, HV)) if g is None else (g if linear_gates else np.exp(g))  # (B, T, HV)
    b_all = np.ones((B, T, HV)) if beta is None else beta
    o = np.zeros((B, T, HV, V))
    finals = np.zeros((len(seqs), HV, K, V))
    S = None
    for i, (b, s, e) in enumerate(seqs):
        if S is None or bug != "no_reset":
            if initial_state is None or (bug == "first_initial_state_only" and i > 0):
                S = np.zeros((HV, K, V))
            else:
                S0 = np.asarray(initial_state[i], dtype=np.float64)
                S = np.swapaxes(S0, -1, -2).copy() if state_v_first else S0.copy()  # (HV, K, V)
        for t in range(s, e):
            if bug == "tile_heads":  # value head j reads q, k head j % H
                qt, kt = np.tile(q[b, t], (G, 1)), np.tile(k[b, t], (G, 1))  # (HV, K)
            else:  # value head j reads q, k head j // G
                qt, kt = np.repeat(q[b, t], G, axis=0), np.repeat(k[b, t], G, axis=0)  # (HV, K)
            S = a_all[b, t][:, None, None] * S  # (HV, K, V)
            u = v[b, t] - np.einsum("hk,hkv->hv", kt, S)  # (HV, V)
            S = S + b_all[b, t][:, None, None] * kt[:, :, None] * u[:, None, :]
            o[b, t] = np.einsum("hk,hkv->hv", scale * qt, S)
        finals[i] = S
    if state_v_first:
        finals = np.swapaxes(finals, -1, -2)
    return o, (finals if output_final_state else None)


def fla_titans(q, k, v, g, eta, theta, scale=None, initial_state=None, output_final_state=False, g_is_forget=False):
    """Titans (linear memory), fla layout: P = eta P - theta k (S^T k - v)^T; S = a S + P, a = exp(g) the fraction kept.

    ``g_is_forget``: the planted bug of reading ``g`` as the log of the forgetting rate.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, V)) if initial_state is None else np.array(initial_state, dtype=np.float64)
    P = np.zeros((B, H, K, V))
    kept = 1.0 - np.exp(g) if g_is_forget else np.exp(g)  # (B, T, H)
    o = np.zeros((B, T, H, V))
    for t in range(T):
        kt = k[:, t]  # (B, H, K)
        r = np.einsum("bhk,bhkv->bhv", kt, S) - v[:, t]  # S^T k - v: (B, H, V)
        P = eta[:, t, :, None, None] * P - theta[:, t, :, None, None] * kt[..., :, None] * r[..., None, :]
        S = kept[:, t, :, None, None] * S + P
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, (S if output_final_state else None)


def _flags(fn, **flags):
    impl = functools.partial(fn, **flags)
    impl.__name__ = fn.__name__ + "".join(f"_{k}_{v}" for k, v in flags.items())
    impl.__qualname__ = impl.__name__
    return impl


def _cases(res):
    return {r.case for r in res.rows}


# ---------------------------------------------------------------- gates by meaning


def test_every_registered_gate_has_a_meaning():
    for name, mem in MEMORIES.items():
        assert name in GATE_MEANINGS, f"{name!r} is registered but refmem.kernel_layouts.GATE_MEANINGS does not list it"
        assert set(GATE_MEANINGS[name]) == set(mem.gates), f"{name}: gates {mem.gates} vs meanings {set(GATE_MEANINGS[name])}"
        for gate in mem.step_gates:
            assert gate_meaning(name, gate).meaning == "step", f"{name}.{gate} is a step gate of the registry"
    with pytest.raises(ValueError, match="gate 'nope' of 'titans' has no meaning"):
        gate_meaning("titans", "nope")


@pytest.mark.parametrize("name", ["gated_linear_attention", "gated_delta_rule", "titans", "yaad", "omega", "omega_implicit"])
def test_forget_gate_meaning_matches_the_memory(name):
    # With zero keys and values nothing is written: the state only decays, M_T = prod_t kept_t M_0.
    # This pins the meaning (kept vs forgotten) against the memory's own update, not against the table.
    mem = MEMORIES[name]
    gate = next(g for g, m in GATE_MEANINGS[name].items() if m.forget_gate)
    inputs = mem.make_inputs(3, (2,), 6, 4, 3, np, "float64")
    inputs["k"] = np.zeros_like(inputs["k"])
    inputs["v"] = np.zeros_like(inputs["v"])
    M0 = np.random.default_rng(1).standard_normal((2, 3, 4))
    args = {n: a for n, a in inputs.items() if n not in ("q", "k", "v")}
    _, MT = mem.recurrent(inputs["q"], inputs["k"], inputs["v"], **args, initial_state=M0)
    kept = kept_fraction(gate_meaning(name, gate), inputs[gate])  # (2, 6)
    expected = np.prod(kept, axis=-1)[:, None, None] * M0
    assert np.allclose(MT, expected, rtol=1e-13, atol=1e-15), name


def test_titans_forgetting_rate_reaches_fla_as_log_of_what_is_kept(vec_dir):
    # Titans' alpha is the forgetting rate: an fla kernel reading g as log(kept) passes ...
    res = conform.check(fla_titans, spec="titans", vectors=vec_dir, layout="fla")
    assert res.passed, str(res)
    assert len(res.rows) >= 2 * 10
    # ... and the kernel that takes g for the log of the forgetting rate fails (zero gates: alpha = 0 keeps all)
    bad = conform.check(_flags(fla_titans, g_is_forget=True), spec="titans", vectors=vec_dir, layout="fla")
    assert not bad.passed and set(bad.failing_outputs()) == {"o", "state"}


def test_forget_gates_are_derived_from_the_meanings():
    # refmem.backward.fla_names names gradients from the same table: one forget gate per memory at most
    from refmem.backward.fla_names import FORGET_GATES
    from refmem.gate_meanings import _forget_gates

    for spec, gates in GATE_MEANINGS.items():
        forget = [g for g, m in gates.items() if m.meaning in ("kept", "forgotten")]
        assert FORGET_GATES.get(spec) == (None if not forget else (forget[0], gate_meaning(spec, forget[0]).meaning))
    with pytest.raises(ValueError, match="x has 2 forget gates"):
        _forget_gates({"x": {"a": GATE_MEANINGS["gated_delta_rule"]["alpha"], "b": GATE_MEANINGS["titans"]["alpha"]}})


def test_gate_table_names_every_gate_once():
    rows = gate_table()
    assert len(rows) == sum(len(g) for g in GATE_MEANINGS.values())
    titans = {r[1]: r for r in rows if r[0] == "titans"}
    assert titans["alpha"][3] == "g" and "log(1 - alpha)" in titans["alpha"][4]
    assert titans["theta"][2] == "step" and titans["theta"][3] == "theta"  # fla names only the forget gate anew
    assert conform.kernel_gates()["titans"] == (["alpha", "eta", "theta"], ["g", "eta", "theta"])
    assert conform.kernel_gates()["gated_delta_rule"] == (["alpha", "beta"], ["g", "beta"])


# ---------------------------------------------------------------- per-key-channel gates (gk)


def fla_gla(q, k, v, g=None, gk=None, scale=None, initial_state=None, output_final_state=False, gk_on_values=False):
    """GLA: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T (or exp(g_t) S_{t-1}); ``gk_on_values``: the bug of decaying the V axis."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, V)) if initial_state is None else np.array(initial_state, dtype=np.float64)
    o = np.zeros((B, T, H, V))
    for t in range(T):
        if gk is not None:
            d = np.exp(gk[:, t])  # (B, H, K)
            S = (d[..., None, : V] if gk_on_values else d[..., :, None]) * S
        else:
            S = np.exp(g[:, t])[..., None, None] * S
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, (S if output_final_state else None)


def test_per_channel_gates_reach_the_kernel_as_gk(vec_dir):
    seen = []

    def spy(q, k, v, **kw):
        seen.append(sorted(n for n in kw if n in ("g", "gk")))
        return fla_gla(q, k, v, **kw)

    res = conform.check(spy, spec="gated_linear_attention", vectors=vec_dir, layout="fla", cases=["per_channel_gates", "T1"])
    assert res.passed, str(res)
    assert ["gk"] in seen and ["g"] in seen
    bad = conform.check(_flags(fla_gla, gk_on_values=True), spec="gated_linear_attention", vectors=vec_dir, layout="fla",
                        cases=["per_channel_gates"])
    assert not bad.passed and "o" in bad.failing_outputs()


# ---------------------------------------------------------------- state_v_first


def test_state_v_first(vec_dir):
    vfirst = _flags(fla_gated_delta, state_v_first=True)
    res = conform.check(vfirst, spec="gated_delta_rule", vectors=vec_dir, layout="fla", state_v_first=True)
    assert res.passed, str(res)
    assert res.layout == "fla (state_v_first=True)"
    # the [K, V] kernel under state_v_first: its initial state is read transposed and its final state is the wrong way
    bad = conform.check(fla_gated_delta, spec="gated_delta_rule", vectors=vec_dir, layout="fla", state_v_first=True)
    assert "state" in bad.failing_outputs()
    by = {(r.case, r.output): r for r in bad.rows}
    assert not by[("dk60_dv24", "state")].passed and "other orientation" in by[("dk60_dv24", "state")].message
    # and the V-first kernel under the default [K, V] layout fails the same way round
    assert not conform.check(vfirst, spec="gated_delta_rule", vectors=vec_dir, layout="fla").passed


def test_state_k_first_in_the_refmem_layout(vec_dir):
    def refmem_kv(q, k, v, *, initial_state=None):  # linear attention with the state stored as S = M^T [..., K, V]
        S = np.zeros(k.shape[:-2] + (k.shape[-1], v.shape[-1])) if initial_state is None else initial_state
        o = []
        for t in range(k.shape[-2]):
            S = S + k[..., t, :, None] * v[..., t, None, :]
            o.append(np.einsum("...k,...kv->...v", q[..., t, :], S))
        return np.stack(o, axis=-2), S

    assert conform.check(refmem_kv, spec="linear_attention", vectors=vec_dir, state_v_first=False).passed
    bad = conform.check(refmem_kv, spec="linear_attention", vectors=vec_dir)  # refmem's default: [V, K]
    assert bad.failing_outputs()[0] == "state"
    assert not {r.passed for r in bad.rows if r.case == "dk60_dv24" and r.output == "state"} & {True}


# ---------------------------------------------------------------- gate space


def test_gate_space_linear_and_log(vec_dir):
    linear = _flags(fla_gated_delta, linear_gates=True)
    assert conform.check(linear, spec="gated_delta_rule", vectors=vec_dir, layout="fla", gate_space="linear").passed
    assert conform.check(fla_gated_delta, spec="gated_delta_rule", vectors=vec_dir, layout="fla", gate_space="log").passed
    # a kernel that reads linear gates fed log gates, and the other way round, fails on both outputs
    for fn, space in ((linear, "log"), (fla_gated_delta, "linear")):
        bad = conform.check(fn, spec="gated_delta_rule", vectors=vec_dir, layout="fla", gate_space=space)
        assert not bad.passed
        by = {(r.case, r.output): r.passed for r in bad.rows}
        assert not by[("initial_state", "o")] and not by[("initial_state", "state")]
        assert not by[("unit_gates", "state")]  # log 1 = 0 read as a kept fraction of 0, or 1 read as e


# ---------------------------------------------------------------- grouped value heads


def test_grouped_value_heads(vec_dir):
    res = conform.check(fla_gated_delta, spec="gated_delta_rule", vectors=vec_dir, layout="fla", value_heads_per_qk=2)
    assert res.passed, str(res)
    assert _cases(res) == {"grouped_heads"}  # the only case whose heads share q, k in pairs
    reasons = dict(res.skipped)
    assert "differs between the value heads of a group" in reasons["T63_heads3"] or "divide" in reasons["T63_heads3"]
    assert "differs between the value heads" in reasons["batch4_heads4"]
    # head j reading q, k head j % H (tile) instead of j // G (repeat) fails
    bad = conform.check(_flags(fla_gated_delta, bug="tile_heads"), spec="gated_delta_rule", vectors=vec_dir,
                        layout="fla", value_heads_per_qk=2)
    assert not bad.passed and set(bad.failing_outputs()) == {"o", "state"}


def test_a_result_with_only_skipped_cases_is_not_a_pass(vec_dir):
    res = conform.check(fla_gated_delta, spec="gated_delta_rule", vectors=vec_dir, layout="fla", value_heads_per_qk=2,
                        cases=["T1", "initial_state"])
    assert not res.rows and len(res.skipped) == 2 and not res.passed


# ---------------------------------------------------------------- packed variable-length batches


def test_cu_seqlens_packed_batches(vec_dir):
    seen = []

    def spy(q, k, v, **kw):
        seen.append((q.shape[0], None if kw.get("cu_seqlens") is None else kw["cu_seqlens"].tolist()))
        return fla_gated_delta(q, k, v, **kw)

    res = conform.check(spy, spec="gated_delta_rule", vectors=vec_dir, layout="fla", cu_seqlens=True)
    assert res.passed, str(res)
    assert "varlen" in _cases(res) and len(_cases(res)) >= 10
    assert all(b == 1 and cu is not None for b, cu in seen)
    assert [0, 13, 14, 84, 110] in [cu for _, cu in seen]  # the varlen case's own boundaries
    for bug in ("no_reset", "first_initial_state_only"):
        bad = conform.check(_flags(fla_gated_delta, bug=bug), spec="gated_delta_rule", vectors=vec_dir, layout="fla",
                            cu_seqlens=True)
        assert not bad.passed, bug
        assert any(r.case == "varlen" and not r.passed for r in bad.rows), bug


def test_varlen_case_without_the_option_is_one_call_per_sequence(vec_dir):
    seen = []

    def spy(q, k, v, **kw):
        seen.append(q.shape)
        assert "cu_seqlens" not in kw
        return fla_gated_delta(q, k, v, **kw)

    res = conform.check(spy, spec="gated_delta_rule", vectors=vec_dir, layout="fla", cases=["varlen"])
    assert res.passed, str(res)
    assert [s[:2] for s in seen] == [(1, 13), (1, 1), (1, 70), (1, 26)]


def test_packed_sequences_split_and_merge():
    rng = np.random.default_rng(0)
    inputs = {"q": rng.standard_normal((1, 2, 6, 3)), "k": rng.standard_normal((1, 2, 6, 3)),
              "v": rng.standard_normal((1, 2, 6, 4)), "beta": rng.uniform(size=(1, 2, 6)),
              "initial_state": rng.standard_normal((2, 2, 4, 3)), "cu_seqlens": np.array([0.0, 2.0, 6.0])}
    parts = split_packed(inputs)
    assert [p["q"].shape for p in parts] == [(1, 2, 2, 3), (1, 2, 4, 3)]
    assert np.array_equal(parts[1]["beta"], inputs["beta"][..., 2:6])
    assert np.array_equal(parts[1]["initial_state"], inputs["initial_state"][1:2])
    merged = merge_packed([{"o": p["v"], "state": p["initial_state"]} for p in parts])
    assert np.array_equal(merged["o"], inputs["v"]) and np.array_equal(merged["state"], inputs["initial_state"])
    for bad, msg in (([1, 2], "start at 0"), ([0, 3, 3], "increase strictly"), ([0.5, 2], "integers"), ([0], "at least 2")):
        with pytest.raises(ValueError, match=msg):
            sequence_bounds(np.array(bad, dtype=float))


# ---------------------------------------------------------------- use_qk_l2norm_in_kernel


def test_qk_l2norm_in_kernel(vec_dir):
    seen = []

    def spy(q, k, v, **kw):
        seen.append((float(np.min(np.linalg.norm(q, axis=-1))), kw.get("use_qk_l2norm_in_kernel")))
        return fla_gated_delta(q, k, v, **kw)

    res = conform.check(spy, spec="gated_delta_rule", vectors=vec_dir, layout="fla", use_qk_l2norm_in_kernel=True)
    assert res.passed, str(res)
    assert _cases(res) == {"unit_qk"} and all(n >= 1e4 * 0.99 and flag is True for n, flag in seen)
    assert "unit vectors" in dict(res.skipped)["T1"]
    bad = conform.check(_flags(fla_gated_delta, bug="no_l2norm"), spec="gated_delta_rule", vectors=vec_dir,
                        layout="fla", use_qk_l2norm_in_kernel=True)
    assert not bad.passed and "o" in bad.failing_outputs()


# ---------------------------------------------------------------- scale


def test_scale_option(vec_dir):
    res = conform.check(fla_gated_delta, spec="gated_delta_rule", vectors=vec_dir, layout="fla", scale=0.3)
    assert res.passed, str(res)
    bad = conform.check(_flags(fla_gated_delta, bug="ignore_scale"), spec="gated_delta_rule", vectors=vec_dir,
                        layout="fla", scale=0.3)
    assert bad.failing_outputs() == ["o"]  # the state never sees the scale

    def refmem_scaled(q, k, v, *, initial_state=None, scale=1.0, ignore_scale=False):  # refmem layout, scaled read-out
        M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])) if initial_state is None else initial_state.copy()
        o = np.empty(v.shape)
        s = 1.0 if ignore_scale else scale
        for t in range(k.shape[-2]):
            M = M + v[..., t, :, None] * k[..., t, None, :]
            o[..., t, :] = s * np.einsum("...vk,...k->...v", M, q[..., t, :])
        return o, M

    assert conform.check(refmem_scaled, spec="linear_attention", vectors=vec_dir, scale=2.5).passed
    assert conform.check(refmem_scaled, spec="linear_attention", vectors=vec_dir).passed  # default 1: not passed
    bad = conform.check(functools.partial(refmem_scaled, ignore_scale=True), spec="linear_attention", vectors=vec_dir,
                        scale=2.5)
    assert bad.failing_outputs() == ["o"]


# ---------------------------------------------------------------- the options together, and bad options


def test_options_compose(vec_dir):
    kernel = _flags(fla_gated_delta, state_v_first=True, linear_gates=True)
    res = conform.check(kernel, spec="gated_delta_rule", vectors=vec_dir, layout="fla", state_v_first=True,
                        gate_space="linear", cu_seqlens=True, scale=0.5, dtype="float32")
    assert res.passed, str(res)
    res = conform.check(kernel, spec="gated_delta_rule", vectors=vec_dir, layout="fla", state_v_first=True,
                        gate_space="linear", value_heads_per_qk=2, cu_seqlens=True)
    assert res.passed and _cases(res) == {"grouped_heads"}


@pytest.mark.parametrize("kwargs, error, named", [
    ({"state_v_first": "yes"}, TypeError, "state_v_first must be True, False or None"),
    ({"gate_space": "exp"}, ValueError, "gate_space must be one of"),
    ({"value_heads_per_qk": 0}, ValueError, "value_heads_per_qk must be an int >= 1"),
    ({"value_heads_per_qk": 2.0}, ValueError, "value_heads_per_qk must be an int >= 1"),
    ({"cu_seqlens": 1}, TypeError, "cu_seqlens must be True or False"),
    ({"use_qk_l2norm_in_kernel": "no"}, TypeError, "use_qk_l2norm_in_kernel must be True or False"),
    ({"scale": "0.5"}, TypeError, "scale must be a number"),
    ({"scale": math.nan}, ValueError, "scale must be finite and non-zero"),
    ({"scale": 0.0}, ValueError, "scale must be finite and non-zero"),
    ({"layout": "refmem", "gate_space": "log"}, ValueError, "option gate_space applies to layout 'fla' only"),
    ({"layout": "refmem", "cu_seqlens": True}, ValueError, "option cu_seqlens applies to layout 'fla' only"),
    ({"layout": "refmem", "value_heads_per_qk": 2}, ValueError, "option value_heads_per_qk applies to layout 'fla'"),
    ({"layout": Layout("fla"), "scale": 1.0}, ValueError, "pass the options there"),
])
def test_bad_options_are_named(vec_dir, kwargs, error, named):
    call = {"spec": "gated_delta_rule", "vectors": vec_dir, "layout": "fla", **kwargs}
    with pytest.raises(error, match=named):
        conform.check(fla_gated_delta, **call)


def test_cli_layout_options(vec_dir, tmp_path, monkeypatch, capsys):
    import inspect

    from refmem.cli import main

    (tmp_path / "layout_kernels.py").write_text(
        "import numpy as np\n\n" + inspect.getsource(fla_gated_delta) + "\n\n"
        "def vfirst(*a, **kw):\n    return fla_gated_delta(*a, **kw, state_v_first=True)\n")
    monkeypatch.chdir(tmp_path)
    base = ["conform", "--spec", "gated_delta_rule", "--vectors", vec_dir, "--layout", "fla"]
    assert main(base[:1] + ["layout_kernels:vfirst"] + base[1:] + ["--state-v-first", "--cu-seqlens"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(base[:1] + ["layout_kernels:vfirst"] + base[1:]) == 1
    assert main(base[:1] + ["layout_kernels:fla_gated_delta"] + base[1:] + ["--value-heads-per-qk", "2",
                                                                             "--use-qk-l2norm-in-kernel"]) == 1
    out = capsys.readouterr().out
    assert "skipped" in out and "FAIL" in out  # no case has both grouped heads and unit q, k: nothing compared
    assert main(base[:1] + ["layout_kernels:fla_gated_delta"] + base[1:] + ["--scale", "0.25"]) == 0
    capsys.readouterr()
    assert main(["conform", "layout_kernels:fla_gated_delta", "--spec", "gated_delta_rule", "--cu-seqlens"]) == 2
    assert "--cu-seqlens applies to --layout fla only" in capsys.readouterr().err
    assert main(base[:1] + ["layout_kernels:fla_gated_delta"] + base[1:] + ["--value-heads-per-qk", "0"]) == 2


def test_fla_layout_passes_the_memory_parameters(tmp_path):
    # a memory's non-array parameters (sliding-window attention's window) reach an fla kernel as they are
    generate(str(tmp_path), ["sliding_window_attention"])
    seen = []

    def spy(q, k, v, **kw):
        seen.append(kw.get("window"))
        raise RuntimeError("only the call is looked at")

    res = conform.check(spy, spec="sliding_window_attention", vectors=str(tmp_path), layout="fla", outputs="o",
                        cases=["T1", "T63_heads3"])
    assert not res.passed and len(seen) == 2
    assert all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in seen)
