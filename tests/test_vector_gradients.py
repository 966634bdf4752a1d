"""Test vectors format version 2: cotangents and expected gradients, their tolerances, schema, and version 1 still read.

The expected gradients are checked against directional derivatives of the
delta rule written out plainly here (MATH.md 5), not against refmem's VJP.
"""

import os

import numpy as np
import pytest

from refmem import vectors as V
from refmem.cli import main
from vector_files import copy, generated, read_manifest, write_manifest  # noqa: F401 (fixtures)

SPECS = ["delta_rule", "softmax_attention"]  # a single-matrix state; a state of two parts (the cache K_T, V_T)


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {n: z[n] for n in z.files}


def _resign(d, rel):
    m = read_manifest(d)
    for c in m["specs"][rel.split("/")[0]]["cases"]:
        if c["file"] == rel:
            c["sha256"] = V._sha256(os.path.join(d, rel))
            c["bytes"] = os.path.getsize(os.path.join(d, rel))
    write_manifest(d, m)


def test_version_2_holds_cotangents_and_gradients(generated):
    m = read_manifest(generated)
    assert m["format_version"] == 2 and "2 * (T + d_k + d_v)" in m["gradient_tolerance_rule"]
    assert m["specs"]["delta_rule"]["backward"] == "refmem.backward.delta_rule:delta_rule_vjp"
    skipped = [c["name"] for c in m["specs"]["delta_rule"]["cases"] if "skipped" in c["backward"]]
    assert skipped == []  # every case, the packed variable-length one included
    varlen = next(c for c in m["specs"]["delta_rule"]["cases"] if c["name"] == "varlen")["backward"]
    assert varlen["cotangents"]["dM_T"]["shape"] == [4, 2, 16, 16]  # one per sequence: [N, H, d_v, d_k]
    assert varlen["gradients"]["initial_state"]["shape"] == [4, 2, 16, 16]
    assert varlen["gradients"]["q"]["shape"] == [1, 2, 110, 16] and "cu_seqlens" not in varlen["gradients"]
    for c in m["specs"]["delta_rule"]["cases"]:
        bw = c["backward"]
        if "skipped" in bw:
            continue
        assert set(bw["cotangents"]) == {"do", "dM_T"}
        assert bw["cotangents"]["do"]["shape"] == c["outputs"]["o"]["shape"]
        assert bw["cotangents"]["dM_T"]["shape"] == c["outputs"]["state"]["shape"]
        want = {"q", "k", "v", "beta"} | ({"initial_state"} if "initial_state" in c["inputs"] else set())
        assert set(bw["gradients"]) == want, c["name"]
        for n, t in bw["tolerance"].items():
            # 8 eps 2 (T + d_k + d_v) max(1, kappa): twice the forward's chain of roundings (the stored
            # kappa is rounded up to two digits, at most 10% above the one the tolerance was derived from)
            n_chain = 2 * (c["T"] + c["d_k"] + c["d_v"])
            assert t["float64"] >= 8 * np.finfo(np.float64).eps * n_chain * bw["kappa"][n] / 1.1
            assert t["float64"] < t["float32"] < 1e-1
    # the attention cache: one cotangent per part of the state, one gradient per part of the initial cache
    att = {c["name"]: c for c in m["specs"]["softmax_attention"]["cases"]}
    assert set(att["initial_state"]["backward"]["cotangents"]) == {"do", "dM_T.0", "dM_T.1"}
    assert {"initial_state.0", "initial_state.1"} <= set(att["initial_state"]["backward"]["gradients"])


def test_cases_without_a_backward_say_so(tmp_path):
    m = V.generate(str(tmp_path), ["cms"])  # a flat-convention reference: forward only
    assert m["specs"]["cms"]["backward"] == ""
    assert all(c["backward"] == {"skipped": "the memory registers no backward pass"} for c in m["specs"]["cms"]["cases"])
    assert all(not c.gradients for c in V.load(str(tmp_path)))


def _delta_rule_loss(q, k, v, beta, M0, do, dM_T, cu_seqlens=None):
    """<do, o> + <dM_T, M_T> of the delta rule written out (MATH.md 5), refmem layout.

    ``cu_seqlens``: packed sequences along time (leading dims (1, H)), sequence i from its own
    M0[i] to its own final state, paired with dM_T[i].
    """
    if cu_seqlens is not None:
        cu = [int(c) for c in cu_seqlens]
        return sum(_delta_rule_loss(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], beta[..., s:e], M0[i:i + 1],
                                    do[..., s:e, :], dM_T[i:i + 1]) for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])))
    M = M0
    loss = 0.0
    for t in range(k.shape[-2]):
        r = np.einsum("...vk,...k->...v", M, k[..., t, :]) - v[..., t, :]
        M = M - beta[..., t, None, None] * r[..., :, None] * k[..., t, None, :]
        loss += np.sum(do[..., t, :] * np.einsum("...vk,...k->...v", M, q[..., t, :]))
    return loss + np.sum(dM_T * M)


@pytest.mark.parametrize("case_name", ["no_batch", "initial_state", "large_keys", "varlen"])
def test_expected_gradients_equal_directional_derivatives(generated, case_name):
    # Central differences of the plain loss above along random directions u: (L(x + h u) - L(x - h u)) / 2h
    # equals <grad x, u> up to h^2 |L'''| / 6 (truncation) + eps |L| / h (rounding): with h = 1e-5 and
    # O(1) inputs, below 1e-7 relative to |grad| |u|.
    case = next(c for c in V.load(generated, "delta_rule") if c.name == case_name)
    x = dict(case.inputs)
    x.setdefault("initial_state", np.zeros(case.outputs["state"].shape))
    do, dM_T = case.cotangents["do"], case.cotangents["dM_T"]
    loss = lambda a: _delta_rule_loss(a["q"], a["k"], a["v"], a["beta"], a["initial_state"], do, dM_T,  # noqa: E731
                                      case.inputs.get("cu_seqlens"))
    rng = np.random.default_rng(0)
    h = 1e-5
    for name, grad in case.gradients.items():
        for _ in range(2):
            u = rng.standard_normal(grad.shape)
            plus, minus = dict(x), dict(x)
            plus[name], minus[name] = x[name] + h * u, x[name] - h * u
            fd = (loss(plus) - loss(minus)) / (2 * h)
            exact = float(np.sum(grad * u))
            scale = np.linalg.norm(grad) * np.linalg.norm(u)
            assert abs(fd - exact) <= 1e-7 * scale, f"{case_name} d{name}: {fd} vs {exact}"


def test_verify_reports_gradient_rows(generated, capsys):
    rows = V.verify(generated, "delta_rule")
    names = {r["output"] for r in rows}
    assert {"o", "state", "dq", "dk", "dv", "dbeta", "dinitial_state"} == names
    assert main(["vectors", "verify", generated]) == 0
    out = capsys.readouterr().out
    assert "outputs match" in out and "gradients match" in out


def test_wrong_expected_gradient_fails_verify_naming_it(copy):
    rel = "delta_rule/T100_d60.npz"
    path = os.path.join(copy, rel)
    arrays = _arrays(path)
    arrays["grad.beta"] = arrays["grad.beta"] * (1 + 1e-9)
    V.write_npz(path, arrays)
    _resign(copy, rel)
    bad = [r for r in V.verify(copy) if not r["ok"]]
    assert [(r["case"], r["output"]) for r in bad] == [("T100_d60", "dbeta")]


def test_generation_is_deterministic_in_the_cotangents(generated, tmp_path):
    V.generate(str(tmp_path), ["delta_rule"])
    for name in ("T1", "initial_state"):
        a = _arrays(os.path.join(generated, "delta_rule", f"{name}.npz"))
        b = _arrays(os.path.join(str(tmp_path), "delta_rule", f"{name}.npz"))
        assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a)
        with open(os.path.join(generated, "delta_rule", f"{name}.npz"), "rb") as f1, \
                open(os.path.join(str(tmp_path), "delta_rule", f"{name}.npz"), "rb") as f2:
            assert f1.read() == f2.read()


def _to_version_1(d):
    """The same set in format version 1: no cot./grad. members, no version-2 fields (what older refmem wrote)."""
    m = read_manifest(d)
    m["format_version"] = 1
    del m["gradient_tolerance_rule"]
    for spec, e in m["specs"].items():
        del e["backward"]
        for c in e["cases"]:
            del c["backward"]
            path = os.path.join(d, c["file"])
            arrays = {n: a for n, a in _arrays(path).items() if not n.startswith(("cot.", "grad."))}
            arrays["format_version"] = np.asarray(1, dtype=np.int64)
            V.write_npz(path, arrays)
            c["sha256"], c["bytes"] = V._sha256(path), os.path.getsize(path)
    write_manifest(d, m)


def test_version_1_is_still_read_and_verified(copy, capsys):
    _to_version_1(copy)
    cases = V.load(copy)
    assert cases and all(not c.gradients and not c.cotangents for c in cases)
    rows = V.verify(copy)
    assert rows and all(r["ok"] for r in rows) and all(r["output"] in ("o", "state", "state_0", "state_1") for r in rows)
    assert main(["vectors", "verify", copy]) == 0
    assert "gradients" not in capsys.readouterr().out


def test_version_1_file_may_not_hold_gradients(copy):
    _to_version_1(copy)
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    arrays = _arrays(path)
    arrays["grad.q"] = arrays["in.q"]
    V.write_npz(path, arrays)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: arrays check failed.*grad.q"):
        V.load(copy)


def test_gradient_member_not_in_the_manifest_refused(copy):
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    arrays = _arrays(path)
    arrays["grad.initial_state"] = np.zeros((2, 8, 8))
    V.write_npz(path, arrays)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: arrays check failed: gradients"):
        V.load(copy)


_DELETE = object()
_B0 = ("specs", "delta_rule", "cases", 0, "backward")  # the first case (T1)
SCHEMA_TAMPERING = [
    # (where, value, the field the error must name)
    (_B0, _DELETE, "cases[0].backward"),
    (_B0, {}, "cases[0].backward"),
    (_B0, {"skipped": 3}, "cases[0].backward"),
    (_B0 + ("cotangents",), {}, "cases[0].backward.cotangents"),
    (_B0 + ("cotangents", "do", "shape"), [2, 1, 7], "cases[0].backward.cotangents.do"),
    (_B0 + ("cotangents", "dM_T"), _DELETE, "cases[0].backward.cotangents"),
    (_B0 + ("gradients", "q", "shape"), [2, 1, 7], "cases[0].backward.gradients.q"),
    (_B0 + ("gradients", "q", "dtype"), "float32", "cases[0].backward.gradients"),
    (_B0 + ("gradients", "nosuch"), {"shape": [2], "dtype": "float64"}, "cases[0].backward.gradients"),
    (_B0 + ("kappa", "q"), _DELETE, "cases[0].backward.kappa"),
    (_B0 + ("kappa", "q"), -1.0, "cases[0].backward.kappa"),
    (_B0 + ("tolerance", "beta"), {"float64": 1e-12}, "cases[0].backward.tolerance"),
    (_B0 + ("tolerance", "beta", "float32"), 2.0, "cases[0].backward.tolerance"),
    (("specs", "delta_rule", "backward"), _DELETE, "specs['delta_rule'].backward"),
    (("specs", "delta_rule", "backward"), None, "specs['delta_rule'].backward"),
    (("gradient_tolerance_rule",), _DELETE, "gradient_tolerance_rule"),
]


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize("where, value, field", SCHEMA_TAMPERING,
                         ids=[f"{'.'.join(map(str, w[1:]))}={'deleted' if v is _DELETE else repr(v)}"
                              for w, v, _ in SCHEMA_TAMPERING])
def test_schema_tampering_of_the_gradient_fields_named(copy, where, value, field):
    m = read_manifest(copy)
    _set(m, where, value)
    write_manifest(copy, m)
    with pytest.raises(V.VectorError) as exc:
        V.verify(copy)
    assert exc.value.check == "schema" and field in exc.value.field, str(exc.value)
    assert exc.value.file.endswith("manifest.json")
