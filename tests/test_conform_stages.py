"""Stage oracles in conform: a staged chunked kernel passes; a bug planted in one stage is reported at that stage.

The staged kernels are written from the chunked form (MATH.md 8) in
flash-linear-attention's conventions, with NumPy and without calling refmem.
"""

import functools
import math

import numpy as np
import pytest

from refmem import conform
from refmem.vectors import generate


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stage_vectors")
    generate(str(d), ["gated_delta_rule", "delta_rule", "linear_attention", "gated_linear_attention"])
    return str(d)


def fla_chunk_gated_delta_staged(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                                 chunk_size=64, bug=None):
    """Chunked gated delta rule in fla's layout, returning its stages.

    Per chunk (L tokens, cumulative log decay c, decay ratios D_ij = exp(c_i - c_j), i >= j):
    A = strict_tril(diag(b)(D o K K^T)), Ai = (I + A)^{-1}, w = Ai diag(b exp(c)) K,
    u = Ai diag(b) V, v_new = u - w S0, o = scale (diag(exp c) Q S0 + tril(D o Q K^T) v_new),
    S = exp(c_L) S0 + K^T diag(exp(c_L - c)) v_new.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    N = math.ceil(T / C)
    scale = K ** -0.5 if scale is None else scale
    g = np.zeros((B, T, H)) if g is None else g
    S = np.zeros((B, H, K, V)) if initial_state is None else np.array(initial_state, dtype=np.float64)
    st = {"h": np.zeros((B, N, H, K, V)), "g_cumsum": np.zeros((B, T, H)), "A": np.zeros((B, T, H, C)),
          "Ai": np.zeros((B, T, H, C)), "w": np.zeros((B, T, H, K)), "u": np.zeros((B, T, H, V)),
          "v_new": np.zeros((B, T, H, V)), "o": np.zeros((B, T, H, V))}
    tok = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731  (B, L, H, ..) <-> (B, H, L, ..)
    for n in range(N):
        s, e = n * C, min(T, (n + 1) * C)
        L = e - s
        st["h"][:, n] = S if not (bug == "h_drops_initial_state" and n == 0) else 0.0
        qc, kc, vc = tok(q[:, s:e]), tok(k[:, s:e]), tok(v[:, s:e])  # (B, H, L, d)
        bc = np.swapaxes(beta[:, s:e], 1, 2)  # (B, H, L)
        c = np.cumsum(np.swapaxes(g[:, s:e], 1, 2), axis=-1)  # (B, H, L)
        lower = np.tril(np.ones((L, L), dtype=bool))
        diff = c[..., :, None] - c[..., None, :]  # c_i - c_j: (B, H, L, L)
        if bug == "A_ratio_flipped":
            diff = -diff
        D = np.exp(np.where(lower, diff, 0.0)) * lower  # masked before exp: no overflow above the diagonal
        A = np.tril(bc[..., :, None] * (kc @ np.swapaxes(kc, -1, -2)) * D, k=-1)  # (B, H, L, L)
        eye = np.eye(L)
        Ai = eye - A if bug == "Ai_first_order" else np.linalg.inv(eye + A)  # (B, H, L, L)
        decay_k = (bc if bug == "w_without_decay" else bc * np.exp(c))[..., None] * kc  # (B, H, L, K)
        w = Ai @ decay_k
        u = Ai @ (bc[..., None] * vc)  # (B, H, L, V)
        v_new = u - w @ S  # (B, H, L, V)
        o = scale * ((qc * np.exp(c)[..., None]) @ S + ((qc @ np.swapaxes(kc, -1, -2)) * D) @ v_new)
        S = np.exp(c[..., -1])[..., None, None] * S + np.swapaxes(kc * np.exp(c[..., -1:] - c)[..., None], -1, -2) @ v_new
        st["g_cumsum"][:, s:e] = tok(c)
        st["A"][:, s:e, :, :L], st["Ai"][:, s:e, :, :L] = tok(A), tok(Ai)
        st["w"][:, s:e], st["u"][:, s:e], st["v_new"][:, s:e], st["o"][:, s:e] = tok(w), tok(u), tok(v_new), tok(o)
    st["state"] = S
    return st


def refmem_chunk_linear_attention_staged(q, k, v, *, initial_state=None, chunk_size=64, off_by_one=False):
    """Chunked linear attention in refmem's layout returning ``start_states [..., N, d_v, d_k]``, ``o`` and the state."""
    T = k.shape[-2]
    M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])) if initial_state is None else initial_state.copy()
    starts, outs = [], []
    for s in range(0, T, chunk_size):
        starts.append(M)
        Q, Kc, Vc = q[..., s:s + chunk_size, :], k[..., s:s + chunk_size, :], v[..., s:s + chunk_size, :]
        L = Kc.shape[-2]
        outs.append(Q @ np.swapaxes(M, -1, -2) + ((Q @ np.swapaxes(Kc, -1, -2)) * np.tril(np.ones((L, L)))) @ Vc)
        n = L - 1 if off_by_one else L  # BUG: the carried state drops the last token of each chunk
        M = M + np.swapaxes(Vc[..., :n, :], -1, -2) @ Kc[..., :n, :]  # (.., d_v, n) @ (.., n, d_k)
    return {"start_states": np.stack(starts, axis=-3), "o": np.concatenate(outs, axis=-2), "state": M}


def fla_chunk_gla_staged(q, k, v, g=None, gk=None, scale=None, initial_state=None, output_final_state=False,
                         chunk_size=64, cumsum_from_start=False):
    """GLA in fla's layout returning ``h`` (chunk start states) and ``g_cumsum`` (chunk-local cumulative log gates).

    ``cumsum_from_start``: the planted bug of a cumulative sum that runs over the whole sequence, not per chunk.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    gates = gk if gk is not None else g[..., None]  # (B, T, H, K or 1)
    S = np.zeros((B, H, K, V)) if initial_state is None else np.array(initial_state, dtype=np.float64)
    N = math.ceil(T / chunk_size)
    h, gc, o = np.zeros((B, N, H, K, V)), np.zeros(gates.shape), np.zeros((B, T, H, V))
    run = np.zeros(gates.shape[:1] + gates.shape[2:])  # (B, H, K or 1): the sum since the sequence start
    for n in range(N):
        h[:, n] = S
        local = np.zeros_like(run)  # (B, H, K or 1): the sum since the chunk start
        for t in range(n * chunk_size, min(T, (n + 1) * chunk_size)):
            local, run = local + gates[:, t], run + gates[:, t]
            gc[:, t] = run if cumsum_from_start else local
            S = np.exp(gates[:, t])[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
            o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return {"h": h, "g_cumsum": gc if gk is not None else gc[..., 0], "o": o, "state": S}


def test_staged_gla_decays_per_key_channel(vec_dir):
    res = conform.check(fla_chunk_gla_staged, spec="gated_linear_attention", vectors=vec_dir, layout="fla",
                        stages=True, chunk_size=16)
    assert res.passed, str(res)
    assert {r.output for r in res.rows} == {"h", "g_cumsum", "o", "state"}
    assert any(r.case == "per_channel_gates" and r.output == "g_cumsum" for r in res.rows)  # [B, T, H, K] decays
    bad = conform.check(_bug(fla_chunk_gla_staged, cumsum_from_start=True), spec="gated_linear_attention",
                        vectors=vec_dir, layout="fla", stages=True, chunk_size=16)
    assert bad.first_differing_stage() == "g_cumsum" and bad.failing_outputs() == ["g_cumsum"]


def _bug(fn, **flags):
    impl = functools.partial(fn, **flags)
    impl.__name__ = impl.__qualname__ = fn.__name__ + "_" + "_".join(str(v) for v in flags.values())
    return impl


@pytest.mark.parametrize("spec", ["gated_delta_rule", "delta_rule"])
def test_staged_fla_kernel_passes_every_stage(vec_dir, spec):
    res = conform.check(fla_chunk_gated_delta_staged, spec=spec, vectors=vec_dir, layout="fla", stages=True,
                        chunk_size=16)
    assert res.passed, str(res)
    compared = {r.output for r in res.rows}
    assert compared == {"h", "g_cumsum", "A", "Ai", "w", "u", "v_new", "o", "state"}
    assert dict(res.skipped).keys() == {"varlen"}  # the packed case has no stage oracle: skipped, not passed
    # float32 inputs against the float32 tolerance, and another chunk size
    assert conform.check(fla_chunk_gated_delta_staged, spec=spec, vectors=vec_dir, layout="fla", stages=True,
                         chunk_size=64, dtype="float32").passed


@pytest.mark.parametrize("bug, stage", [
    ("A_ratio_flipped", "A"),
    ("Ai_first_order", "Ai"),
    ("w_without_decay", "w"),
    ("h_drops_initial_state", "h"),
])
def test_a_bug_in_one_stage_is_named(vec_dir, bug, stage):
    res = conform.check(_bug(fla_chunk_gated_delta_staged, bug=bug), spec="gated_delta_rule", vectors=vec_dir,
                        layout="fla", stages=True, chunk_size=16)
    assert not res.passed
    assert res.first_differing_stage() == stage
    assert f"first stage that differs, in the order of the computation" in res.summary()
    assert res.summary().count(f"): {stage!r}") == 1
    # the stages before it in the computation match in every case
    before = res.stage_order[:res.stage_order.index(stage)]
    assert all(r.passed for r in res.rows if r.output in before)


def test_staged_refmem_layout_linear_attention(vec_dir):
    res = conform.check(refmem_chunk_linear_attention_staged, spec="linear_attention", vectors=vec_dir, stages=True,
                        chunk_size=16)
    assert res.passed, str(res)
    assert {r.output for r in res.rows} == {"start_states", "o", "state"}
    bad = conform.check(_bug(refmem_chunk_linear_attention_staged, off_by_one=True), spec="linear_attention",
                        vectors=vec_dir, stages=True, chunk_size=16)
    assert bad.first_differing_stage() == "start_states"
    by = {(r.case, r.output): r.passed for r in bad.rows}
    assert by[("T1", "start_states")] and not by[("T63_heads3", "start_states")]  # one chunk: nothing carried yet


def test_staged_kernel_errors_are_rows_not_crashes(vec_dir):
    def not_a_dict(q, k, v, **kw):
        return q

    res = conform.check(not_a_dict, spec="delta_rule", vectors=vec_dir, layout="fla", stages=True, cases=["T1"])
    assert not res.passed and "must return a dict of named stage arrays" in res.rows[0].message

    def unknown_name(q, k, v, **kw):
        return {"hidden": np.zeros(1)}

    res = conform.check(unknown_name, spec="delta_rule", vectors=vec_dir, layout="fla", stages=True, cases=["T1"])
    msgs = " ".join(r.message for r in res.rows)
    assert not res.passed and "not a stage name of layout 'fla'" in msgs and "returned no stage" in msgs

    def misshapen(q, k, v, **kw):
        return {"w": np.zeros((1, 1))}

    res = conform.check(misshapen, spec="delta_rule", vectors=vec_dir, layout="fla", stages=True, cases=["T1"])
    assert not res.passed and "[B, T, H, ...]" in res.rows[0].message

    def la_with_A(q, k, v, **kw):  # linear attention has no UT factors
        return {"A": np.zeros((2, 1, 1, 64))}

    res = conform.check(la_with_A, spec="linear_attention", vectors=vec_dir, layout="fla", stages=True, cases=["T1"])
    assert not res.passed and "has no stage 'A'" in res.rows[0].message


@pytest.mark.parametrize("kwargs, error, named", [
    ({"stages": "yes"}, TypeError, "stages must be True or False"),
    ({"stages": True, "chunk_size": 0}, ValueError, "chunk_size must be an int >= 1"),
    ({"stages": True, "spec": "titans"}, ValueError, "stage oracles for .*not for 'titans'"),
    ({"stages": True, "layout": "fla", "cu_seqlens": True}, ValueError, "stages cannot be combined with cu_seqlens"),
])
def test_bad_stage_arguments(vec_dir, kwargs, error, named):
    call = {"spec": "delta_rule", "vectors": vec_dir, **kwargs}
    with pytest.raises(error, match=named):
        conform.check(fla_chunk_gated_delta_staged, **call)


def test_cli_stages(vec_dir, tmp_path, monkeypatch, capsys):
    import inspect

    from refmem.cli import main

    (tmp_path / "staged.py").write_text("import math\nimport numpy as np\n\n" + inspect.getsource(fla_chunk_gated_delta_staged)
                                        + "\n\ndef wrong_w(*a, **kw):\n    return fla_chunk_gated_delta_staged(*a, **kw, "
                                        "bug='w_without_decay')\n")
    monkeypatch.chdir(tmp_path)
    base = ["--spec", "gated_delta_rule", "--vectors", vec_dir, "--layout", "fla", "--stages", "--chunk-size", "16"]
    assert main(["conform", "staged:fla_chunk_gated_delta_staged"] + base) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["conform", "staged:wrong_w"] + base) == 1
    assert "first stage that differs, in the order of the computation (g_cumsum, A, Ai, w, u, h, v_new): 'w'" in \
        capsys.readouterr().out
    assert main(["conform", "staged:wrong_w", "--spec", "titans", "--stages"]) == 2
