"""Test vectors: byte-identical regeneration, verification, and integrity errors that name the file."""

import json
import os
import shutil

import numpy as np
import pytest

from refmem import vectors as V
from refmem.cli import main
from refmem.memories import MEMORIES

SPECS = ["delta_rule", "linear_attention"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("vec")
    V.generate(str(d), SPECS)
    return str(d)


@pytest.fixture
def copy(generated, tmp_path):
    """A private copy to damage."""
    d = tmp_path / "v"
    shutil.copytree(generated, d)
    return str(d)


def _files(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


def _manifest(d):
    with open(os.path.join(d, V.MANIFEST)) as fh:
        return json.load(fh)


def _write_manifest(d, m):
    with open(os.path.join(d, V.MANIFEST), "w") as fh:
        json.dump(m, fh)


def test_generate_twice_is_byte_identical(generated, tmp_path):
    again = tmp_path / "again"
    V.generate(str(again), SPECS)
    a, b = _files(generated), _files(str(again))
    assert sorted(a) == sorted(b) and len(a) > 10
    assert all(a[n] == b[n] for n in a)


def test_manifest_contents(generated):
    m = _manifest(generated)
    assert m["format"] == V.FORMAT_NAME and m["format_version"] == V.FORMAT_VERSION
    assert m["refmem_version"]
    names = {c["name"] for c in m["specs"]["delta_rule"]["cases"]}
    # the edge shapes kernels get wrong are all there for a gated memory
    assert names == {c.name for c in V.CASES}
    Ts = {c["T"] for c in m["specs"]["delta_rule"]["cases"]}
    assert {1, 63, 100} <= Ts
    assert any(c["d_k"] == 60 for c in m["specs"]["delta_rule"]["cases"])
    for c in m["specs"]["delta_rule"]["cases"]:
        assert len(c["sha256"]) == 64 and c["bytes"] > 0 and isinstance(c["seed"], int)
        assert 0 < c["tolerance"]["float64"] < c["tolerance"]["float32"] < 1e-2
        assert set(c["inputs"]) >= {"q", "k", "v", "beta"} and set(c["outputs"]) == {"o", "state"}
    # a memory without gates lists the gate cases as skipped, with the reason
    skipped = {s["case"]: s["reason"] for s in m["specs"]["linear_attention"]["skipped"]}
    assert set(skipped) == {"zero_gates", "unit_gates"} and "no gates" in skipped["zero_gates"]


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
    for c in V.load(generated, "delta_rule"):
        q, k, v, b = (c.inputs[n] for n in ("q", "k", "v", "beta"))
        M = c.inputs.get("initial_state", np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1])))
        outs = []
        for t in range(k.shape[-2]):
            r = np.einsum("...vk,...k->...v", M, k[..., t, :]) - v[..., t, :]
            M = M - b[..., t, None, None] * r[..., :, None] * k[..., t, None, :]
            outs.append(np.einsum("...vk,...k->...v", M, q[..., t, :]))
        tol = c.tolerance["float64"]
        assert np.max(np.abs(np.stack(outs, -2) - c.outputs["o"])) <= tol * np.max(np.abs(c.outputs["o"])), c.name
        assert np.max(np.abs(M - c.outputs["state"])) <= tol * np.max(np.abs(c.outputs["state"])), c.name


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
    m = _manifest(copy)
    m["format_version"] = 99
    _write_manifest(copy, m)
    with pytest.raises(V.VectorError, match=r"manifest.json: format_version check failed: format_version 99 is not supported"):
        V.load(copy)


def test_unknown_file_version_named(copy):
    # a file that claims another format version, with a manifest updated to match its bytes
    rel = "delta_rule/T1.npz"
    path = os.path.join(copy, rel)
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["format_version"] = np.asarray(2, dtype=np.int64)
    V.write_npz(path, arrays)
    _resign(copy, rel)
    with pytest.raises(V.VectorError, match=r"T1.npz: format_version check failed"):
        V.load(copy)


def _resign(d, rel):
    m = _manifest(d)
    for c in m["specs"][rel.split("/")[0]]["cases"]:
        if c["file"] == rel:
            c["sha256"] = V._sha256(os.path.join(d, rel))
            c["bytes"] = os.path.getsize(os.path.join(d, rel))
    _write_manifest(d, m)


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


def test_missing_file_and_manifest(copy, tmp_path):
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
    assert "wrote 10 cases" in capsys.readouterr().out
    assert main(["vectors", "verify", str(tmp_path)]) == 0


def test_every_registered_memory_generates_and_verifies(tmp_path):
    # What lands in the registry later is covered without new test code.
    names = sorted(MEMORIES)
    m = V.generate(str(tmp_path), names)
    for name in names:
        e = m["specs"][name]
        assert e["cases"], f"{name}: no case could be generated: {e['skipped']}"
        assert len(e["cases"]) + len(e["skipped"]) == len(V.CASES)
    rows = V.verify(str(tmp_path))
    assert all(r["ok"] for r in rows)
    # and every memory's vectors regenerate byte for byte (iterative solvers included)
    V.generate(str(tmp_path / "again"), names)
    first = {n: b for n, b in _files(str(tmp_path)).items() if not n.startswith("again")}
    assert first == _files(str(tmp_path / "again"))


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
    # 10^(T/5) > 1e6 from T = 31 on: T = 33, 40, 63, 100 diverge; T <= 24 are written
    assert {c for c, r in reasons.items() if "diverges" in r} == {"T63_heads3", "T100_d60", "dk60_dv24", "initial_state"}
    assert {c["name"] for c in entry["cases"]} == {"T1", "unit_gates", "large_keys", "batch4_heads4", "no_batch"}
