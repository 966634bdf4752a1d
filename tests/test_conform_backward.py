"""``refmem conform --backward``: a kernel's gradients against refmem's, named per gradient, in fla's names and spaces.

The kernels (``tests/fla_kernels.py``) are written independently in fla's
conventions, with their backward written out by hand; the planted bugs are the
ones kernel libraries have shipped. The command line's user errors print one
line and exit 2 (as ``tests/test_cli.py`` checks for the forward).
"""

import functools
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
from refmem.conform_backward import NoGradientsError, check_backward, expected_gradients, l2norm_vjp
from refmem.kernel_layouts import Layout
from refmem.memories import MEMORIES
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


@pytest.fixture(scope="module")
def vec_forget(tmp_path_factory):
    d = tmp_path_factory.mktemp("vecf")
    V.generate(str(d), ["yaad", "omega"])
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
    assert not res.skipped and "varlen" in {r.case for r in res.rows}  # packed: one call (and vjp) per sequence


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


# ---------------------------------------------------------------- layout options: every map has its gradient


def _bound(fn, **flags):
    impl = functools.partial(fn, **flags)
    impl.__name__ = impl.__qualname__ = fn.__name__ + "".join(f"_{k}_{v}" for k, v in flags.items())
    impl.__module__ = fn.__module__
    return impl


OPTIONS = [  # (option, the kernel's own convention flags, planted bug, the gradient it must fail on)
    ({"state_v_first": True}, {"state_v_first": True}, "dh0_not_transposed", "dh0"),
    ({"gate_space": "linear"}, {"linear_gates": True}, "dg_other_space", "dg"),
    ({"value_heads_per_qk": 2}, {}, "dq_first_head_of_group", "dq"),
    ({"cu_seqlens": True}, {}, "dh0_first_sequence_only", "dh0"),
    ({"use_qk_l2norm_in_kernel": True}, {}, "dq_without_l2norm_vjp", "dq"),
    ({"scale": 0.3}, {}, "dq_unscaled", "dq"),
]


@pytest.mark.parametrize("option, flags, bug, gradient", OPTIONS, ids=[next(iter(o)) for o, *_ in OPTIONS])
def test_layout_option_gradients_pass_and_a_planted_bug_fails_naming_it(vec, option, flags, bug, gradient):
    fwd = _bound(F.forward_options, **flags)
    res = check_backward(fwd, spec="gated_delta_rule", vectors=vec, layout="fla", vjp=_bound(F.backward_options, **flags),
                         **option)
    assert res.passed, str(res)
    assert {"dq", "dk", "dv", "dbeta", "dg"} <= {r.output for r in res.rows}
    bad = check_backward(fwd, spec="gated_delta_rule", vectors=vec, layout="fla",
                         vjp=_bound(F.backward_options, **flags, bug=bug), **option)
    assert bad.failing_outputs() == [gradient], str(bad)
    assert f"FAIL: gradient(s) {gradient!r} differ" in bad.summary()


def test_per_channel_gates_in_linear_space_are_dgk(vec):
    flags = {"linear_gates": True}
    res = check_backward(_bound(F.forward_options, **flags), spec="gated_linear_attention", vectors=vec, layout="fla",
                         gate_space="linear", vjp=_bound(F.backward_options, **flags), cases=["per_channel_gates", "T1"])
    assert res.passed and {"dg", "dgk"} <= {r.output for r in res.rows}, str(res)
    bad = check_backward(_bound(F.forward_options, **flags), spec="gated_linear_attention", vectors=vec, layout="fla",
                         gate_space="linear", vjp=_bound(F.backward_options, **flags, bug="dg_other_space"),
                         cases=["per_channel_gates"])
    assert bad.failing_outputs() == ["dgk"]


def test_options_compose_for_gradients(vec):
    flags = {"state_v_first": True, "linear_gates": True}
    for dtype in ("float64", "float32"):
        res = check_backward(_bound(F.forward_options, **flags), spec="gated_delta_rule", vectors=vec, layout="fla",
                             vjp=_bound(F.backward_options, **flags), dtype=dtype, state_v_first=True,
                             gate_space="linear", cu_seqlens=True, scale=0.5)
        assert res.passed and len({r.case for r in res.rows}) >= 10, str(res)
    res = check_backward(_bound(F.forward_options, **flags), spec="gated_delta_rule", vectors=vec, layout="fla",
                         vjp=_bound(F.backward_options, **flags), state_v_first=True, gate_space="linear",
                         value_heads_per_qk=2, cu_seqlens=True)
    assert res.passed and {r.case for r in res.rows} == {"grouped_heads"}, str(res)
    assert res.layout == "fla (state_v_first=True, gate_space=linear, value_heads_per_qk=2, cu_seqlens=True)"


def test_varlen_without_the_option_is_one_vjp_call_per_sequence(vec):
    seen = []

    def spy(*args, **kwargs):
        seen.append((args[0].shape[:2], kwargs["do"].shape[:2], kwargs["dht"].shape[0], "cu_seqlens" in kwargs))
        return F.backward_options(*args, **kwargs)

    res = check_backward(F.forward_options, spec="gated_delta_rule", vectors=vec, layout="fla", vjp=spy, cases=["varlen"])
    assert res.passed, str(res)
    assert seen == [((1, n), (1, n), 1, False) for n in (13, 1, 70, 26)]  # B = 1, each sequence its own cotangents
    seen.clear()
    res = check_backward(F.forward_options, spec="gated_delta_rule", vectors=vec, layout="fla", vjp=spy, cases=["varlen"],
                         cu_seqlens=True)
    assert res.passed and seen == [((1, 110), (1, 110), 4, True)]


def test_expected_gradients_through_the_options(vec):
    case = next(c for c in V.load(vec, "gated_delta_rule") if c.name == "grouped_heads")  # (1, 4) heads, q, k in pairs
    plain = expected_gradients(case, "fla", "float64")
    grouped = expected_gradients(case, Layout("fla", value_heads_per_qk=2), "float64")
    # the kernel's q head j is broadcast to value heads 2j, 2j + 1: its dq is their sum
    assert np.array_equal(grouped["dq"][0], plain["dq"][0][:, :, 0::2] + plain["dq"][0][:, :, 1::2])
    assert grouped["dq"][0].shape == (1, 24, 2, 8) and grouped["dv"][0].shape == (1, 24, 4, 8)
    assert grouped["dq"][1] >= plain["dq"][1]  # the sum can magnify an error: its tolerance is at least the file's
    vfirst = expected_gradients(case, Layout("fla", state_v_first=True), "float64")
    assert np.array_equal(vfirst["dh0"][0], np.swapaxes(plain["dh0"][0], -1, -2))
    linear = expected_gradients(case, Layout("fla", gate_space="linear"), "float64")
    assert np.array_equal(linear["dg"][0], np.swapaxes(case.gradients["alpha"], 1, 2))  # dg = da for g = a
    packed = expected_gradients(case, Layout("fla", cu_seqlens=True), "float64")
    assert packed["dq"][0].shape == (1, 24, 4, 8) and packed["dh0"][0].shape == (1, 4, 8, 8)  # B = 1 row: as it was
    scaled = expected_gradients(case, Layout("fla", scale=0.3), "float64")
    assert np.array_equal(scaled["dq"][0], np.swapaxes(case.gradients["q"], 1, 2))  # q sent as it is: refmem's dq


def test_l2norm_vjp_equals_central_differences():
    # d(x / |x|) = (I - x^ x^T) / |x|: against central differences of <du, x / |x|> along random directions
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 5)) * rng.uniform(0.5, 3e4, (3, 7, 1))
    du = rng.standard_normal(x.shape)
    got = l2norm_vjp(x, du)
    f = lambda y: float(np.sum(du * y / np.linalg.norm(y, axis=-1, keepdims=True)))  # noqa: E731
    for _ in range(3):
        u = rng.standard_normal(x.shape) * np.linalg.norm(x, axis=-1, keepdims=True)  # steps relative to |x_t|
        h = 1e-6
        fd = (f(x + h * u) - f(x - h * u)) / (2 * h)
        # truncation h^2 |f'''| |u|^3 ~ 1e-12 relative, rounding eps |f| / h ~ 1e-10: 1e-8 of the scale
        assert abs(fd - float(np.sum(got * u))) <= 1e-8 * np.linalg.norm(got * np.linalg.norm(u)), fd
    # and the gradient is orthogonal to x (a normalised vector does not change along x)
    assert np.max(np.abs(np.sum(got * x, axis=-1))) <= 1e-12 * np.max(np.abs(du))


def test_refmem_layout_options_for_gradients(vec):
    # the refmem layout with the state stored [K, V] and a read-out scale, around refmem's VJP with the maps by hand
    def fwd(q, k, v, beta, *, initial_state=None, scale=1.0):
        o, M = delta_rule_recurrent(q, k, v, beta, initial_state=None if initial_state is None
                                    else np.swapaxes(initial_state, -1, -2))
        return scale * o, np.swapaxes(M, -1, -2)

    def vjp(q, k, v, beta, *, do, dM_T, initial_state=None, scale=1.0, transpose_back=True):
        M0 = None if initial_state is None else np.swapaxes(initial_state, -1, -2)
        g = delta_rule_vjp(q, k, v, beta, do=scale * do, dM_T=np.swapaxes(dM_T, -1, -2), initial_state=M0)
        if M0 is not None and transpose_back:
            g["initial_state"] = np.swapaxes(g["initial_state"], -1, -2)
        return g

    res = check_backward(fwd, spec="delta_rule", vectors=vec, vjp=vjp, state_v_first=False, scale=2.5)
    assert res.passed and "dinitial_state" in {r.output for r in res.rows}, str(res)
    bad = check_backward(fwd, spec="delta_rule", vectors=vec, vjp=functools.partial(vjp, transpose_back=False),
                         state_v_first=False, scale=2.5)
    assert bad.failing_outputs() == ["dinitial_state"]


@pytest.mark.parametrize("spec", ["yaad", "omega"])
def test_every_forget_gate_has_fla_s_dg(vec_forget, spec):
    # The gradient names come from the gate-meaning table: Yaad's and Omega's alpha (what the state keeps) are fla's
    # g, so their dg = alpha dalpha is checked, not skipped. The kernel: refmem's forward and VJP with fla's maps by hand.
    mem = MEMORIES[spec]
    gate = "gamma" if spec == "omega" else "eta"

    def fla_to_refmem(q, k, v, g, h0):
        sw = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731  (B, T, H, ..) <-> (B, H, T, ..)
        K = k.shape[-1]
        return sw(q) / np.sqrt(K), sw(k), sw(v), sw(np.exp(g)), None if h0 is None else np.swapaxes(h0, -1, -2)

    def fwd(q, k, v, g, initial_state=None, output_final_state=True, **steps):
        q, k, v, alpha, M0 = fla_to_refmem(q, k, v, g, initial_state)
        o, M = mem.recurrent(q, k, v, alpha=alpha, initial_state=M0, **{n: np.swapaxes(a, 1, 2) for n, a in steps.items()})
        return np.swapaxes(o, 1, 2), np.swapaxes(M, -1, -2)

    def bwd(q, k, v, g, initial_state=None, output_final_state=True, *, do, dht, linear_bug=False, **steps):
        sw = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
        qr, kr, vr, alpha, M0 = fla_to_refmem(q, k, v, g, initial_state)
        gr = mem.backward.recurrent(qr, kr, vr, alpha=alpha, initial_state=M0, do=sw(do),
                                    dM_T=np.swapaxes(dht, -1, -2), **{n: sw(a) for n, a in steps.items()})
        out = {"dq": sw(gr["q"]) / np.sqrt(k.shape[-1]), "dk": sw(gr["k"]), "dv": sw(gr["v"]),
               "dg": sw(gr["alpha"] if linear_bug else alpha * gr["alpha"]), f"d{gate}": sw(gr[gate])}
        if M0 is not None:
            out["dh0"] = np.swapaxes(gr["initial_state"], -1, -2)
        return out

    cases = ["T1", "initial_state", "no_batch"]
    res = check_backward(fwd, spec=spec, vectors=vec_forget, layout="fla", vjp=bwd, cases=cases)
    assert res.passed and not res.skipped and {"dg", f"d{gate}", "dh0"} <= {r.output for r in res.rows}, str(res)
    bad = check_backward(fwd, spec=spec, vectors=vec_forget, layout="fla", vjp=functools.partial(bwd, linear_bug=True),
                         cases=cases)
    assert bad.failing_outputs() == ["dg"]


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
def test_torch_kernel_with_layout_options_passes_through_autograd(vec):
    # cu_seqlens reaches the kernel as an integer tensor without grad; every other array is a leaf
    flags = {"state_v_first": True, "linear_gates": True}
    res = check_backward(_bound(F.torch_forward_options, **flags), spec="gated_delta_rule", vectors=vec, layout="fla",
                         cases=["varlen", "initial_state"], state_v_first=True, gate_space="linear", cu_seqlens=True,
                         scale=0.5)
    assert res.passed and {"dh0", "dg"} <= {r.output for r in res.rows}, str(res)
    res = check_backward(F.torch_forward_options, spec="gated_delta_rule", vectors=vec, layout="fla",
                         cases=["grouped_heads", "unit_qk"], value_heads_per_qk=2)
    assert res.passed and {r.case for r in res.rows} == {"grouped_heads"}, str(res)
    res = check_backward(F.torch_forward_options, spec="gated_delta_rule", vectors=vec, layout="fla",
                         cases=["unit_qk"], use_qk_l2norm_in_kernel=True)
    assert res.passed, str(res)
    # a kernel that reads the gates in the other space fails (on every gradient the gate touches)
    bad = check_backward(F.torch_forward_options, spec="gated_delta_rule", vectors=vec, layout="fla",
                         cases=["initial_state"], gate_space="linear")
    assert not bad.passed and "dg" in bad.failing_outputs()


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
    ("fla_kernels:forward --spec delta_rule --layout fla --stages --backward --vjp fla_kernels:backward",
     ["--stages", "--backward"]),
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


def test_cli_gradients_with_layout_options(vec, cli_dir):
    d, _ = cli_dir
    with open(os.path.join(d, "option_kernels.py"), "w") as fh:
        fh.write("import functools\nimport fla_kernels as F\n"
                 "fwd = functools.partial(F.forward_options, state_v_first=True)\n"
                 "bwd = functools.partial(F.backward_options, state_v_first=True)\n"
                 "bwd_bug = functools.partial(F.backward_options, state_v_first=True, bug='dh0_first_sequence_only')\n")
    argv = (f"option_kernels:fwd --spec gated_delta_rule --layout fla --vectors {vec} --cu-seqlens --state-v-first "
            "--backward --vjp option_kernels:").split()
    ok = _cli(argv[:-1] + [argv[-1] + "bwd"], d)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gradient 'dh0' matches" in ok.stdout and "layout fla (state_v_first=True, cu_seqlens=True)" in ok.stdout
    bad = _cli(argv[:-1] + [argv[-1] + "bwd_bug"], d)
    assert bad.returncode == 1 and "FAIL: gradient(s) 'dh0' differ" in bad.stdout, bad.stdout + bad.stderr


def test_cli_passes_and_fails_naming_the_gradient(vec, cli_dir):
    d, _ = cli_dir
    ok = _cli(f"fla_kernels:forward --spec gated_delta_rule --layout fla --vectors {vec} --backward "
              "--vjp fla_kernels:backward".split(), d)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gradient 'dg' matches" in ok.stdout and "output 'o' matches" in ok.stdout
    bad = _cli(f"fla_kernels:forward --spec gated_delta_rule --layout fla --vectors {vec} --backward "
               "--vjp fla_kernels:backward_dh0_dropped".split(), d)
    assert bad.returncode == 1 and "FAIL: gradient(s) 'dh0' differ" in bad.stdout and "Traceback" not in bad.stderr
