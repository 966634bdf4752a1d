"""``refmem conform --backward``: a kernel's gradients against refmem's, named per gradient, in fla's names and spaces.

The kernels (``tests/fla_kernels.py``) are written independently in fla's
conventions, with their backward written out by hand; the planted bugs are the
ones kernel libraries have shipped. The command line's user errors print one
line and exit 2 (as ``tests/test_cli.py`` checks for the forward).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fla_kernels as F
from refmem import vectors as V
from refmem.backward.delta_rule import delta_rule_vjp
from refmem.conform_backward import NoGradientsError, _fla_gate_consistent, check_backward, expected_gradients
from refmem.memories.delta_rule import delta_rule_recurrent

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install torch; not in the test extra)")

TORCH_CASES = ["T1", "dk60_dv24", "initial_state", "no_batch"]
FLA_SPECS = ["delta_rule", "gated_delta_rule", "gated_linear_attention", "linear_attention"]


@pytest.fixture(scope="module")
def vec(tmp_path_factory):
    d = tmp_path_factory.mktemp("vecb")
    V.generate(str(d), FLA_SPECS + ["titans"])
    return str(d)


@pytest.mark.parametrize("spec", FLA_SPECS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_correct_fla_kernel_passes_through_its_vjp(vec, spec, dtype):
    res = check_backward(F.forward, spec=spec, vectors=vec, layout="fla", dtype=dtype, vjp=F.backward)
    assert res.passed, str(res)
    names = {r.output for r in res.rows}
    want = {"dq", "dk", "dv", "dh0"} | ({"dbeta"} if "delta" in spec else set()) | ({"dg"} if "gated" in spec else set())
    want |= {"dgk"} if spec == "gated_linear_attention" else set()  # the per-channel case: fla's gk
    assert names == want
    assert [c for c, _ in res.skipped] == ["varlen"]  # packed sequences: no gradients stored (one call per sequence)


@pytest.mark.parametrize("bug, spec, gradient", [
    ("dbeta_missing_term", "delta_rule", "dbeta"),
    ("dbeta_missing_term", "gated_delta_rule", "dbeta"),
    ("dh0_dropped", "gated_delta_rule", "dh0"),
    ("dh0_dropped", "linear_attention", "dh0"),
    ("dg_linear_space", "gated_delta_rule", "dg"),
    ("dg_linear_space", "gated_linear_attention", "dg, dgk"),  # per step and per key channel (fla's gk)
])
def test_planted_gradient_bug_fails_naming_the_gradient(vec, bug, spec, gradient):
    res = check_backward(F.forward, spec=spec, vectors=vec, layout="fla", vjp=getattr(F, f"backward_{bug}"))
    assert not res.passed
    names = gradient.split(", ")
    assert res.failing_outputs() == names
    text = res.summary()
    assert all(f"gradient {n!r} DIFFERS" in text for n in names)
    assert f"FAIL: gradient(s) {', '.join(repr(n) for n in names)} differ" in text


def test_dg_in_linear_space_passes_only_where_a_is_one(vec):
    # da = dg exactly when a = 1: the unit-gate case cannot tell the spaces apart (nor T1, whose da = <dS, M_0> = 0)
    res = check_backward(F.forward, spec="gated_delta_rule", vectors=vec, layout="fla", vjp=F.backward_dg_linear_space)
    failing = {r.case for r in res.rows if not r.passed}
    assert "unit_gates" not in failing and {"T63_heads3", "initial_state", "T100_d60"} <= failing


def test_expected_fla_gradients_are_fla_spaces(vec):
    # dq for the q fla received (q sqrt(K)), dg = a da, dh0 = dM_0^T in [B, H, K, V]
    case = next(c for c in V.load(vec, "gated_delta_rule") if c.name == "initial_state")
    want = expected_gradients(case, "fla", "float64")
    K = case.inputs["k"].shape[-1]
    B, H = case.inputs["k"].shape[:2]
    dq = np.swapaxes(case.gradients["q"], 1, 2) / np.sqrt(K)
    assert np.array_equal(want["dq"][0], dq)
    dg = np.swapaxes(case.inputs["alpha"] * case.gradients["alpha"], 1, 2)
    assert np.array_equal(want["dg"][0], dg)
    assert np.array_equal(want["dh0"][0], np.swapaxes(case.gradients["initial_state"], -1, -2))
    assert want["dh0"][0].shape == (B, H, K, case.inputs["v"].shape[-1])
    # tolerances are the file's, dg's scaled by max|a| max|da| / max|dg| >= 1
    tol = case.gradient_tolerance
    assert want["dq"][1] == tol["q"]["float64"] and want["dh0"][1] == tol["initial_state"]["float64"]
    a, da = case.inputs["alpha"], case.gradients["alpha"]
    factor = np.max(np.abs(a)) * np.max(np.abs(da)) / np.max(np.abs(a * da))
    assert want["dg"][1] == pytest.approx(tol["alpha"]["float64"] * max(1.0, factor))


def test_refmem_layout_takes_refmem_vjps(vec):
    res = check_backward(delta_rule_recurrent, spec="delta_rule", vectors=vec, vjp=delta_rule_vjp)
    assert res.passed, str(res)
    assert {r.output for r in res.rows} == {"dq", "dk", "dv", "dbeta", "dinitial_state"}

    def forgets_dM_T(q, k, v, beta, *, do, dM_T=None, initial_state=None):
        return delta_rule_vjp(q, k, v, beta, do=do, dM_T=None, initial_state=initial_state)

    res = check_backward(delta_rule_recurrent, spec="delta_rule", vectors=vec, vjp=forgets_dM_T)
    assert not res.passed and "dinitial_state" in res.failing_outputs()


def test_titans_gate_not_sent_by_meaning_is_skipped_not_passed(vec):
    # fla's g is the log of what the state keeps (1 - alpha for Titans); a layout sending log(alpha) has no fla dg
    case = next(c for c in V.load(vec, "titans") if c.name == "T1")
    alpha = case.inputs["alpha"].reshape(2, 1, 1)  # batch (2,), T = 1: [B, T] -> fla [B, T, H = 1]
    assert _fla_gate_consistent(case, {"g": np.log(1 - alpha)}, np.dtype("float64")) is None
    why = _fla_gate_consistent(case, {"g": np.log(alpha)}, np.dtype("float64"))
    assert "log(1 - alpha)" in why and "what the state keeps" in why
    # and the layout itself sends Titans' gate by meaning, so no case is skipped for that reason
    res = check_backward(F.forward, spec="titans", vectors=vec, layout="fla", vjp=F.backward, cases=["T1"])
    assert not any("what the state keeps" in w for _, w in res.skipped)


def test_crashing_or_misshapen_vjp_is_a_failing_row(vec):
    res = check_backward(F.forward, spec="delta_rule", vectors=vec, layout="fla", vjp=F.backward_returns_a_tuple,
                         cases=["T1"])
    assert not res.passed and res.rows[0].output == "(backward)" and "mapping" in res.rows[0].message

    def partial(*args, **kwargs):
        g = F.backward(*args, **kwargs)
        del g["dbeta"]
        return g

    res = check_backward(F.forward, spec="delta_rule", vectors=vec, layout="fla", vjp=partial, cases=["T1"])
    assert res.failing_outputs() == ["dbeta"] and "not returned" in str(res)


def test_bad_arguments_named(vec, tmp_path):
    with pytest.raises(NoGradientsError, match="adam.*no backward pass.*delta_rule"):  # every memory has one
        check_backward(F.forward, spec="adam", vectors=vec, vjp=F.backward)
    with pytest.raises(TypeError, match="vjp must be callable"):
        check_backward(F.forward, spec="delta_rule", vectors=vec, vjp=3)
    with pytest.raises(ValueError, match="layout"):
        check_backward(F.forward, spec="delta_rule", vectors=vec, layout="nope", vjp=F.backward)
    with pytest.raises(ValueError, match="cases"):
        check_backward(F.forward, spec="delta_rule", vectors=vec, vjp=F.backward, cases=["nosuch"])
    v1 = _version_1_copy(vec, tmp_path)
    with pytest.raises(NoGradientsError, match="hold no gradients"):
        check_backward(F.forward, spec="delta_rule", vectors=v1, vjp=F.backward)


def _version_1_copy(vec, tmp_path):
    """The delta-rule vectors as format version 1 wrote them (no gradients)."""
    d = str(tmp_path / "v1")
    shutil.copytree(vec, d)
    with open(os.path.join(d, V.MANIFEST)) as fh:
        m = json.load(fh)
    m["format_version"] = 1
    del m["gradient_tolerance_rule"]
    m["specs"] = {"delta_rule": m["specs"]["delta_rule"]}
    del m["specs"]["delta_rule"]["backward"]
    for c in m["specs"]["delta_rule"]["cases"]:
        del c["backward"]
        path = os.path.join(d, c["file"])
        with np.load(path, allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith(("cot.", "grad."))}
        arrays["format_version"] = np.asarray(1, dtype=np.int64)
        V.write_npz(path, arrays)
        c["sha256"], c["bytes"] = V._sha256(path), os.path.getsize(path)
    with open(os.path.join(d, V.MANIFEST), "w") as fh:
        json.dump(m, fh)
    return d


# ---------------------------------------------------------------- torch autograd


@needs_torch
@pytest.mark.parametrize("spec", FLA_SPECS)
def test_torch_kernel_passes_through_autograd(vec, spec):
    import torch

    # the edge shapes (one step, d_k != d_v, every gate 0, a non-zero initial state): torch's small ops are slow
    res = check_backward(F.torch_forward, spec=spec, vectors=vec, layout="fla", cases=TORCH_CASES)
    assert res.passed, str(res)
    res = check_backward(F.torch_forward, spec=spec, vectors=vec, layout="fla", dtype="float32",
                         convert=torch.from_numpy, cases=["initial_state"])
    assert res.passed, str(res)


@needs_torch
def test_torch_kernel_that_cuts_the_initial_state_fails_on_dh0(vec):
    res = check_backward(F.torch_forward_detached_h0, spec="gated_delta_rule", vectors=vec, layout="fla",
                         cases=["initial_state", "unit_gates"])
    assert res.failing_outputs() == ["dh0"]


@needs_torch
def test_numpy_kernel_without_vjp_is_told_to_pass_one(vec):
    res = check_backward(F.numpy_forward_for_autograd, spec="delta_rule", vectors=vec, layout="fla", cases=["T1"])
    assert not res.passed and "requires grad" in res.rows[0].message and "--vjp" in res.rows[0].message


def test_autograd_route_without_torch_is_a_clear_error(vec, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ValueError, match="torch is not installed.*vjp"):
        check_backward(F.forward, spec="delta_rule", vectors=vec, layout="fla")


# ---------------------------------------------------------------- command line


def _cli(argv, cwd):
    tests = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run([sys.executable, "-m", "refmem", "conform", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join([tests, *sys.path])))


BAD = [  # (argv, the message must contain)
    ("fla_kernels:forward --spec delta_rule --layout fla --backward --vjp nosuchmodule:f", ["--vjp", "nosuchmodule"]),
    ("fla_kernels:forward --spec delta_rule --layout fla --backward --vjp fla_kernels:missing",
     ["--vjp 'fla_kernels:missing'", "no attribute"]),
    ("fla_kernels:forward --spec delta_rule --layout fla --backward --vjp fla_kernels:BUGS", ["--vjp", "not callable"]),
    ("fla_kernels:forward --spec delta_rule --layout fla --backward --vjp nocolon", ["--vjp", "MODULE:FUNCTION"]),
    ("fla_kernels:forward --spec delta_rule --vjp fla_kernels:backward", ["--vjp", "--backward"]),
    ("fla_kernels:forward --spec adam --backward --vjp fla_kernels:backward", ["adam", "no backward pass"]),
    ("fla_kernels:forward --spec delta_rule --backward --vjp fla_kernels:backward --vectors {v1}",
     ["hold no gradients", "regenerate"]),
    ("fla_kernels:forward --spec delta_rule --layout fla --cu-seqlens --backward --vjp fla_kernels:backward",
     ["--cu-seqlens", "--backward", "default fla layout"]),
]


@pytest.fixture(scope="module")
def cli_dir(vec, tmp_path_factory):
    d = tmp_path_factory.mktemp("clib")
    return str(d), _version_1_copy(vec, d)


@pytest.mark.parametrize("argv, needles", BAD, ids=[a.split("conform")[-1] for a, _ in BAD])
def test_cli_user_errors_are_one_line_exit_2(cli_dir, argv, needles):
    d, v1 = cli_dir
    proc = _cli(argv.format(v1=v1).split(), d)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_cli_without_torch_or_vjp_is_exit_2(cli_dir, monkeypatch):
    if HAS_TORCH:
        pytest.skip("torch is installed: the autograd route is available")
    d, _ = cli_dir
    proc = _cli("fla_kernels:forward --spec delta_rule --layout fla --backward".split(), d)
    assert proc.returncode == 2 and "torch is not installed" in proc.stderr and "--vjp" in proc.stderr


def test_cli_passes_and_fails_naming_the_gradient(vec, cli_dir):
    d, _ = cli_dir
    ok = _cli(f"fla_kernels:forward --spec gated_delta_rule --layout fla --vectors {vec} --backward "
              "--vjp fla_kernels:backward".split(), d)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gradient 'dg' matches" in ok.stdout and "output 'o' matches" in ok.stdout
    bad = _cli(f"fla_kernels:forward --spec gated_delta_rule --layout fla --vectors {vec} --backward "
               "--vjp fla_kernels:backward_dh0_dropped".split(), d)
    assert bad.returncode == 1 and "FAIL: gradient(s) 'dh0' differ" in bad.stdout and "Traceback" not in bad.stderr
