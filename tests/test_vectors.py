"""Test vectors: byte-identical regeneration, verification, and integrity errors that name the file."""

import json
import os
import shutil

import numpy as np
import pytest

from refmem import vectors as V
from refmem.cli import main
from refmem.memories import MEMORIES
from conftest import files_by_path
from vector_files import copy, generated, read_manifest, write_manifest  # noqa: F401 (fixtures)

SPECS = ["delta_rule", "linear_attention"]


def test_generate_twice_is_byte_identical(generated, tmp_path):
    again = tmp_path / "again"
    V.generate(str(again), SPECS)
    a, b = files_by_path(generated), files_by_path(str(again))
    assert sorted(a) == sorted(b) and len(a) > 10
    assert all(a[n] == b[n] for n in a)


def test_manifest_contents(generated):
    m = read_manifest(generated)
    assert m["format"] == V.FORMAT_NAME and m["format_version"] == V.FORMAT_VERSION
    assert m["refmem_version"]
    names = {c["name"] for c in m["specs"]["delta_rule"]["cases"]}
    # the edge shapes kernels get wrong are all there for a gated memory (the delta rule's step is one per token)
    assert names == {c.name for c in V.CASES} - {"per_channel_gates"}
    Ts = {c["T"] for c in m["specs"]["delta_rule"]["cases"]}
    assert {1, 63, 100} <= Ts
    assert any(c["d_k"] == 60 for c in m["specs"]["delta_rule"]["cases"])
    for c in m["specs"]["delta_rule"]["cases"]:
        assert len(c["sha256"]) == 64 and c["bytes"] > 0 and isinstance(c["seed"], int)
        assert 0 < c["tolerance"]["float64"] < c["tolerance"]["float32"] < 1e-2
        assert set(c["inputs"]) >= {"q", "k", "v", "beta"} and set(c["outputs"]) == {"o", "state"}
    # a memory without gates lists the gate cases as skipped, with the reason
    skipped = {s["case"]: s["reason"] for s in m["specs"]["linear_attention"]["skipped"]}
    assert set(skipped) == {"zero_gates", "unit_gates", "per_channel_gates"} and "no gates" in skipped["zero_gates"]
    assert "no per-channel gates" in skipped["per_channel_gates"]


def test_edge_cases_are_what_they_claim(generated):
    cases = {c.name: c for c in V.load(generated, "delta_rule")}
    assert np.all(cases["zero_gates"].inputs["beta"] == 0) and np.all(cases["unit_gates"].inputs["beta"] == 1)
    assert np.min(np.linalg.norm(cases["large_keys"].inputs["k"], axis=-1)) > 3  # ||k|| ~ 8
    assert np.max(np.abs(cases["initial_state"].inputs["initial_state"])) > 0.1
    assert cases["batch4_heads4"].inputs["q"].shape[:2] == (4, 4)
    assert cases["no_batch"].inputs["q"].ndim == 2
    # zero gates: nothing is written, the state stays the initial one (hand derivation)
    z = cases["zero_gates"]
    assert np.array_equal(z.outputs["state"], z.inputs["initial_state"])


def test_expected_outputs_match_an_independent_recurrence(generated):
    # Not refmem: the delta rule written out directly (MATH.md 5) in the refmem layout.
    # A packed case (varlen) is its sequences one after the other, each from its own initial state.
    for c in V.load(generated, "delta_rule"):
        q, k, v, b = (c.inputs[n] for n in ("q", "k", "v", "beta"))
        T = k.shape[-2]
        cu = [int(x) for x in c.inputs["cu_seqlens"]] if "cu_seqlens" in c.inputs else [0, T]
        outs, finals = [], []
        for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
            if "cu_seqlens" in c.inputs:
                M = c.inputs["initial_state"][i]  # (H, d_v, d_k): sequence i's own
            else:
                M = c.inputs.get("initial_state", np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])))
            for t in range(s, e):
                r = np.einsum("...vk,...k->...v", M, k[..., t, :]) - v[..., t, :]
                M = M - b[..., t, None, None] * r[..., :, None] * k[..., t, None, :]
                outs.append(np.einsum("...vk,...k->...v", M, q[..., t, :]))
            finals.append(M)
        state = np.stack(finals)[:, 0] if "cu_seqlens" in c.inputs else M  # (N, 1, H, ..) -> (N, H, ..)
        tol = c.tolerance["float64"]
        assert np.max(np.abs(np.stack(outs, -2) - c.outputs["o"])) <= tol * np.max(np.abs(c.outputs["o"])), c.name
        assert np.max(np.abs(state - c.outputs["state"])) <= tol * np.max(np.abs(c.outputs["state"])), c.name


def test_verify_passes(generated, capsys):
    rows = V.verify(generated)
    assert rows and all(r["ok"] for r in rows)
    assert main(["vectors", "verify", generated]) == 0
    assert "outputs match" in capsys.readouterr().out


def test_truncated_file_named(copy, capsys):
    path = os.path.join(copy, "delta_rule", "T63_heads3.npz")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(V.VectorError, match="T63_heads3.npz: size check failed") as exc:
        V.verify(copy)
    assert exc.value.file == path and exc.value.check == "size"
    assert main(["vectors", "verify", copy]) == 1
    assert "T63_heads3.npz: size check failed" in capsys.readouterr().out


def test_tampered_file_named(copy):
    path = os.path.join(copy, "delta_rule", "T1.npz")
    data = bytearray(open(path, "rb").read())
    data[-200] ^= 0x01  # one bit inside the last array's data, same size
    open(path, "wb").write(bytes(data))
    with pytest.raises(V.VectorError, match=r"T1.npz: sha256 check failed.*tampered"):
        V.verify(copy)


def test_unknown_format_version_named(copy):
    m = read_manifest(copy)
    m["format_version"] = 99
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match=r"manifest.json: format_version check failed: format_version 99 is not supported"):
        V.load(copy)


def test_unknown_file_version_named(copy):
    # a file that claims another format version, with a manifest updated to match its bytes
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    for other in (99, 1):  # unknown, and a known version that is not the manifest's
        arrays["format_version"] = np.asarray(other, dtype=np.int64)
        V.write_npz(path, arrays)
        _resign(copy, rel)
        with pytest.raises(V.VectorError, match=r"T1.npz: format_version check failed.*manifest.json is format version"):
            V.load(copy)


def _resign(d, rel):
    m = read_manifest(d)
    for c in m["specs"][rel.split("/")[0]]["cases"]:
        if c["file"] == rel:
            c["sha256"] = V._sha256(os.path.join(d, rel))
            c["bytes"] = os.path.getsize(os.path.join(d, rel))
    write_manifest(d, m)


def test_pickled_array_refused(copy):
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    import io
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    members["in.q.npy"] = buf.getvalue()  # an array that only unpickling could read
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: load check failed.*pickle"):
        V.load(copy)


def test_wrong_expected_values_fail_verify(copy):
    # Integrity intact (manifest re-signed) but an expected output is wrong: recomputation catches it.
    rel = "delta_rule/T100_d60.npz"
    path = os.path.join(copy, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["out.o"] = arrays["out.o"] * (1 + 1e-9)
    V.write_npz(path, arrays)
    _resign(copy, rel)
    bad = [r for r in V.verify(copy) if not r["ok"]]
    assert [(r["case"], r["output"]) for r in bad] == [("T100_d60", "o")]
    assert bad[0]["rel_error"] > bad[0]["tolerance"]


def test_missing_file_andread_manifest(copy, tmp_path):
    os.remove(os.path.join(copy, "linear_attention", "T1.npz"))
    with pytest.raises(V.VectorError, match=r"T1.npz: exists check failed"):
        V.load(copy)
    with pytest.raises(V.VectorError, match=r"manifest.json: exists check failed"):
        V.load(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(V.VectorError, match=r"manifest.json: json check failed"):
        V.load(str(tmp_path))


def test_unknown_spec_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown spec"):
        V.generate(str(tmp_path), ["no_such_memory"])


def test_cli_generate(tmp_path, capsys):
    assert main(["vectors", "generate", "--out", str(tmp_path), "--spec", "delta_rule"]) == 0
    assert "wrote 13 cases" in capsys.readouterr().out  # every case but per_channel_gates
    assert main(["vectors", "verify", str(tmp_path)]) == 0


def test_every_registered_memory_generates_and_verifies(tmp_path):
    # What lands in the registry later is covered without new test code.
    names = sorted(MEMORIES)
    m = V.generate(str(tmp_path), names)
    for name in names:
        e = m["specs"][name]
        assert e["cases"], f"{name}: no case could be generated: {e['skipped']}"
        assert len(e["cases"]) + len(e["skipped"]) == len(V.CASES)
        if MEMORIES[name].backward is not None:  # format version 2: gradients wherever they can be held to a tolerance
            without = [(c["name"], c["backward"]["skipped"]) for c in e["cases"] if "skipped" in c["backward"]]
            assert len(without) < len(e["cases"]), f"{name}: no case has gradients: {without}"
            assert all(why.startswith(("gradient ", "the reference gradients", "a relative perturbation", "a gradient's",
                                       "the VJP refuses", "a packed variable-length case"))
                       for _, why in without), f"{name}: {without}"
    rows = V.verify(str(tmp_path))
    assert all(r["ok"] for r in rows)
    with_backward = {n for n in names if MEMORIES[n].backward is not None}
    assert with_backward and {r["spec"] for r in rows if r["output"].startswith("d")} == with_backward
    # and every memory's vectors regenerate byte for byte (iterative solvers included)
    V.generate(str(tmp_path / "again"), names)
    first = {n: b for n, b in files_by_path(str(tmp_path)).items() if not n.startswith("again")}
    assert first == files_by_path(str(tmp_path / "again"))


def test_tolerance_rule():
    # 8 eps (T + d_k + d_v) kappa, rounded up to two digits
    t = V.tolerance(100, 60, 60, 1.0)
    assert t["float64"] == pytest.approx(8 * np.finfo(np.float64).eps * 220, rel=0.05)
    assert t["float64"] >= 8 * np.finfo(np.float64).eps * 220
    assert t["float32"] >= 8 * np.finfo(np.float32).eps * 220
    assert V.tolerance(10, 8, 8, 50.0)["float32"] >= 50 * V.tolerance(10, 8, 8, 1.0)["float32"] * 0.95


def test_skip_rules(tmp_path, monkeypatch):
    # A stand-in memory (registered only for this test) that refuses zero gates and grows like 10^(T/5):
    # the zero-gate case is "not applicable", long sequences "diverge"; the rest is written.
    from refmem.memories import MEMORIES, MemorySpec

    def toy_recurrent(q, k, v, beta, *, initial_state=None):
        if np.any(beta == 0):
            raise ValueError("beta must be > 0")
        T = k.shape[-2]
        o = v * 10.0 ** (np.arange(1, T + 1)[:, None] / 5)  # (.., T, d_v)
        M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])) if initial_state is None else initial_state
        return o, M

    def toy_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
        g = np.random.default_rng(seed)
        shape = tuple(batch) + (T,)
        return {"q": g.standard_normal(shape + (d_k,)), "k": g.standard_normal(shape + (d_k,)),
                "v": g.standard_normal(shape + (d_v,)), "beta": g.uniform(0.1, 0.9, shape)}

    toy = MemorySpec("toy", toy_recurrent, ("beta",), toy_inputs, "a diverging toy", step_gates=("beta",))
    monkeypatch.setitem(MEMORIES, "toy", toy)
    entry = V.generate(str(tmp_path), ["toy"])["specs"]["toy"]
    reasons = {s["case"]: s["reason"] for s in entry["skipped"]}
    assert "not applicable: beta must be > 0" in reasons["zero_gates"]
    # 10^(T/5) > 1e6 from T = 31 on: T = 33, 40, 63, 100 (and varlen's sequence of 70) diverge; T <= 24 are written
    assert {c for c, r in reasons.items() if "diverges" in r} == {"T63_heads3", "T100_d60", "dk60_dv24", "initial_state",
                                                                  "varlen"}
    assert {c["name"] for c in entry["cases"]} == {"T1", "unit_gates", "large_keys", "batch4_heads4", "no_batch",
                                                   "grouped_heads", "unit_qk"}


# ---------------------------------------------------------------- tampered vector sets: confined, complete, schema-checked


@pytest.fixture
def no_reads(monkeypatch):
    """Record every case-file read (hash or np.load): a refused set must fail before the first one."""
    reads = []
    real_sha, real_load = V._sha256, np.load
    monkeypatch.setattr(V, "_sha256", lambda p: reads.append(p) or real_sha(p))
    monkeypatch.setattr(V.np, "load", lambda p, *a, **k: reads.append(p) or real_load(p, *a, **k))
    return reads


def _case(m, spec, name):
    return next(c for c in m["specs"][spec]["cases"] if c["name"] == name)


def _outside_copy(copy, tmp_path, rel="delta_rule/T1.npz"):
    """A byte-identical copy of a valid case file outside the set (so only confinement can refuse it)."""
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    dst = out / "evil.npz"
    shutil.copy(os.path.join(copy, rel), dst)
    return str(dst)


def test_parent_path_refused_before_any_read(copy, tmp_path, no_reads):
    _outside_copy(copy, tmp_path)
    m = read_manifest(copy)
    _case(m, "delta_rule", "T1")["file"] = "../outside/evil.npz"
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match="confined check failed.*outside the vector directory") as exc:
        V.verify(copy)
    assert exc.value.check == "confined" and "cases[0].file" in exc.value.field
    assert no_reads == []


def test_absolute_path_refused_before_any_read(copy, tmp_path, no_reads):
    m = read_manifest(copy)
    _case(m, "delta_rule", "T1")["file"] = _outside_copy(copy, tmp_path)
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match="confined check failed") as exc:
        V.load(copy, "delta_rule")
    assert exc.value.check == "confined" and no_reads == []


@pytest.mark.parametrize("target", ["valid copy", "/etc/passwd"])
def test_symlinked_case_file_refused_before_any_read(copy, tmp_path, no_reads, target):
    # The valid copy would pass every other check (same bytes, same sha256): only confinement stops it.
    dest = _outside_copy(copy, tmp_path) if target == "valid copy" else target
    path = os.path.join(copy, "delta_rule", "T1.npz")
    os.remove(path)
    os.symlink(dest, path)
    with pytest.raises(V.VectorError, match="confined check failed") as exc:
        V.verify(copy)
    assert exc.value.check == "confined" and no_reads == []


def test_symlinked_spec_folder_refused_before_any_read(copy, tmp_path, no_reads):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(os.path.join(copy, "delta_rule"), elsewhere)
    os.symlink(elsewhere, os.path.join(copy, "delta_rule"))
    with pytest.raises(V.VectorError, match="confined check failed") as exc:
        V.verify(copy)
    assert exc.value.field == "specs['delta_rule']" and no_reads == []


def test_symlinked_manifest_refused(copy, tmp_path):
    outside = tmp_path / "m.json"
    shutil.move(os.path.join(copy, V.MANIFEST), outside)
    os.symlink(outside, os.path.join(copy, V.MANIFEST))
    with pytest.raises(V.VectorError, match="manifest.json: confined check failed"):
        V.load(copy)


def test_spec_name_that_is_a_path_refused(copy, no_reads):
    m = read_manifest(copy)
    m["specs"]["../delta_rule"] = m["specs"].pop("delta_rule")
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match="schema check failed.*plain name") as exc:
        V.verify(copy)
    assert exc.value.field == "specs['../delta_rule']" and no_reads == []


def test_case_deleted_from_manifest_reported(copy):
    m = read_manifest(copy)
    m["specs"]["delta_rule"]["cases"] = [c for c in m["specs"]["delta_rule"]["cases"] if c["name"] != "T63_heads3"]
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match=r"cases check failed.*missing case\(s\) \['T63_heads3'\]") as exc:
        V.verify(copy)
    assert exc.value.field == "specs['delta_rule']"


def test_unexpected_and_duplicate_cases_reported(copy):
    m = read_manifest(copy)
    m["specs"]["linear_attention"]["skipped"].append({"case": "T1", "reason": "listed twice"})
    m["specs"]["linear_attention"]["skipped"].append({"case": "T2000", "reason": "not a case"})
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match=r"unexpected case\(s\) \['T2000'\]; case\(s\) listed twice \['T1'\]"):
        V.load(copy)


def test_unlisted_file_reported(copy, capsys):
    shutil.copy(os.path.join(copy, "delta_rule", "T1.npz"), os.path.join(copy, "delta_rule", "extra.npz"))
    with pytest.raises(V.VectorError, match=r"unlisted check failed.*\['delta_rule/extra.npz'\]"):
        V.verify(copy)
    assert main(["vectors", "verify", copy]) == 1
    assert "delta_rule/extra.npz" in capsys.readouterr().out


def test_unlisted_file_only_matters_for_the_spec_loaded(copy):
    open(os.path.join(copy, "delta_rule", "notes.txt"), "w").write("x")
    assert V.load(copy, "linear_attention")  # the other spec's folder is not this spec's business
    with pytest.raises(V.VectorError, match="unlisted"):
        V.load(copy, "delta_rule")


def _set(obj, path, value):
    """``obj[path[0]][path[1]]... = value``; the value ``_DELETE`` removes the key."""
    for p in path[:-1]:
        obj = obj[p]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


_DELETE = object()
_C0 = ("specs", "delta_rule", "cases", 0)  # the first case (T1)
SCHEMA_TAMPERING = [
    # (where, value, the field the error must name)
    (_C0 + ("sha256",), _DELETE, "cases[0].sha256"),
    (_C0 + ("file",), _DELETE, "cases[0].file"),
    (_C0 + ("bytes",), _DELETE, "cases[0].bytes"),
    (_C0 + ("tolerance",), _DELETE, "cases[0].tolerance"),
    (_C0 + ("inputs",), _DELETE, "cases[0].inputs"),
    (_C0 + ("outputs",), _DELETE, "cases[0].outputs"),
    (_C0 + ("params",), _DELETE, "cases[0].params"),
    (("specs", "delta_rule", "cases"), _DELETE, "specs['delta_rule'].cases"),
    (("specs", "delta_rule", "cases"), {"T1": {}}, "specs['delta_rule'].cases"),
    (_C0 + ("file",), None, "cases[0].file"),
    (_C0 + ("tolerance",), "1e-10", "cases[0].tolerance"),
    (_C0 + ("tolerance", "float32"), "1e-4", "cases[0].tolerance"),
    (_C0 + ("tolerance", "float64"), float("nan"), "cases[0].tolerance"),
    (_C0 + ("bytes",), True, "cases[0].bytes"),
    (_C0 + ("bytes",), 12.0, "cases[0].bytes"),
    (_C0 + ("T",), 1.0, "cases[0].T"),
    (_C0 + ("sha256",), "abc", "cases[0].sha256"),
    (_C0 + ("params",), {"n": [1, 2]}, "cases[0].params"),
    (_C0 + ("inputs", "q", "dtype"), "object", "cases[0].inputs"),
    (_C0 + ("inputs", "q", "shape"), [2, 3, 8], "cases[0].inputs.q"),
    (_C0 + ("outputs", "o", "shape"), [2, 1], "cases[0].outputs.o"),
    (_C0 + ("file",), "delta_rule/T63_heads3.npz", "cases[0].file"),
    (("specs", "delta_rule", "skipped"), {"case": "T1"}, "specs['delta_rule'].skipped"),
    (("specs",), [], "specs"),
    (("refmem_version",), _DELETE, "refmem_version"),
]


@pytest.mark.parametrize("where, value, field", SCHEMA_TAMPERING,
                         ids=[f"{'.'.join(map(str, w[1:]))}={'deleted' if v is _DELETE else repr(v)}"
                              for w, v, _ in SCHEMA_TAMPERING])
def test_schema_tampering_named(copy, no_reads, where, value, field):
    m = read_manifest(copy)
    _set(m, where, value)
    write_manifest(copy, m)
    with pytest.raises(V.VectorError) as exc:
        V.verify(copy)
    assert exc.value.check == "schema" and field in exc.value.field, str(exc.value)
    assert exc.value.file.endswith("manifest.json") and no_reads == []


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_format_version_must_be_the_integer_one(copy, value):
    m = read_manifest(copy)
    m["format_version"] = value
    write_manifest(copy, m)
    with pytest.raises(V.VectorError, match="format_version check failed") as exc:
        V.load(copy)
    assert exc.value.check == "format_version"


def test_file_format_version_must_be_int64(copy):
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["format_version"] = np.asarray(1.0)
    V.write_npz(path, arrays)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: format_version check failed.*float64"):
        V.load(copy)


def _rewrite_array(d, rel, member, edit):
    path = os.path.join(d, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays[member] = edit(arrays[member])
    V.write_npz(path, arrays)
    _resign(d, rel)


def test_non_finite_array_refused(copy):
    def put_nan(a):
        a = a.copy()
        a.flat[0] = np.nan
        return a

    _rewrite_array(copy, "delta_rule/T1.npz", "out.o", put_nan)
    with pytest.raises(V.VectorError, match=r"T1.npz: finite check failed: output 'o'"):
        V.load(copy)


def test_inputs_the_memory_refuses_are_a_vector_error(copy, capsys):
    # Integrity intact (re-signed), but beta < 0: the delta rule's own input check refuses it.
    _rewrite_array(copy, "delta_rule/T1.npz", "in.beta", lambda b: -np.abs(b) - 1)
    with pytest.raises(V.VectorError, match=r"T1.npz: inputs check failed.*delta_rule's own input checks.*beta") as exc:
        V.verify(copy)
    assert exc.value.check == "inputs"
    assert main(["vectors", "verify", copy]) == 1
    assert "inputs check failed" in capsys.readouterr().out


def test_unexpected_npz_member_refused(copy):
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["payload"] = np.zeros(3)
    V.write_npz(path, arrays)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: arrays check failed: unexpected member\(s\) \['payload'\]"):
        V.load(copy)


def test_generate_bad_arguments_named(tmp_path):
    with pytest.raises(TypeError, match="out_dir must be a directory path"):
        V.generate(3, ["delta_rule"])
    with pytest.raises(TypeError, match="specs must be memory names"):
        V.generate(str(tmp_path), [3])
    with pytest.raises(TypeError, match="vec_dir must be a directory path"):
        V.load(None)
    with pytest.raises(TypeError, match="spec must be a string"):
        V.load(str(tmp_path), spec=["delta_rule"])


def test_generate_takes_one_name(tmp_path):
    m = V.generate(str(tmp_path), "linear_attention")  # one name, not the letters l, i, n, ...
    assert list(m["specs"]) == ["linear_attention"]
