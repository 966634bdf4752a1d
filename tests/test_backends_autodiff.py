"""The torch and JAX backends: registration, honest probes, no import at import time, NumPy == backend.

The agreement tests run every registered sequence form (recurrent, chunked,
mini-batch) and every closed-form level on the backend and on NumPy, in
float64 and float32, where the library is installed (skipped with the reason
otherwise). Tolerance, as for CuPy (``tests/test_cupy.py``, whose derivation
applies unchanged: the same code with different kernels differs by rounding
alone): ``8 max(kappa, 1) growth u`` with ``growth = (T + 1)(d_k + d_v + 4)``,
``kappa`` the measured relative condition number, floored at ``1e-12`` in float64.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import refmem
import refmem.memories
from refmem import backends
from refmem.level import LINEARIZE_AT, STEPS, ClosedFormUnavailable, Level, solve
from refmem.metrics import rel_error
from refmem.objectives import OBJECTIVES
from refmem.retentions import RETENTIONS

REPO = pathlib.Path(__file__).resolve().parents[1]
MEMORIES = dict(refmem.memories.MEMORIES)
LIBS = {"torch": "torch", "jax": "jax"}


def installed(name):
    return importlib.util.find_spec(LIBS[name]) is not None


BACKEND_PARAMS = [pytest.param(n, marks=pytest.mark.skipif(not installed(n), reason=f"{n} is not installed "
                                                           f"(pip install 'refmem[{n}]')"), id=n) for n in LIBS]


def test_torch_and_jax_come_from_the_entry_point_group():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=backends.ENTRY_POINT_GROUP)}
    assert eps["torch"] == "refmem.backends:torch_backend" and eps["jax"] == "refmem.backends:jax_backend"


def test_backends_listing_tells_the_truth_for_torch_and_jax():
    rows = {r["name"]: r for r in refmem.available_backends()}
    for name in LIBS:
        assert rows[name]["usable"] == installed(name), rows[name]
        if not installed(name):
            assert f"{name} is not installed" in rows[name]["reason"]


BLOCK = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "jax", "jaxlib"):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
'''


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_not_installed_is_unusable_with_the_reason_and_use_says_so():
    code = BLOCK + r'''
import refmem
import refmem.memories
rows = {r["name"]: r for r in refmem.available_backends()}
for n in ("torch", "jax"):
    assert not rows[n]["usable"] and rows[n]["reason"].startswith(n + " is not installed"), rows[n]
    try:
        refmem.use(n)
    except refmem.BackendError as exc:
        assert "not usable" in str(exc) and "not installed" in str(exc), exc
    else:
        raise AssertionError("use() accepted an uninstalled backend")
print("ok")
'''
    out = _python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_importing_refmem_never_imports_torch_or_jax():
    code = r'''
import pkgutil, importlib, sys, refmem
for info in pkgutil.walk_packages(refmem.__path__, "refmem."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)

print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib")))
'''
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- agreement


def to_numpy(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _arrays(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _arrays(o)]
    return [out] if hasattr(out, "shape") and hasattr(out, "dtype") else []


def _tolerance(kappa, growth, dtype):
    u = float(np.finfo(dtype).eps) / 2
    tol = 8 * max(kappa, 1.0) * growth * u
    return max(tol, 1e-12) if dtype == "float64" else tol


def _condition(fn, inputs, keys, seed):
    base = [to_numpy(a) for a in _arrays(fn(inputs))]
    g = np.random.default_rng(seed)
    kappa = 0.0
    for _ in range(2):
        pert = dict(inputs)
        for key in keys:
            if inputs.get(key) is not None:
                pert[key] = inputs[key] * (1 + 1e-6 * g.uniform(-1, 1, size=inputs[key].shape))
        for b, o in zip(base, [to_numpy(a) for a in _arrays(fn(pert))]):
            scale = np.max(np.abs(b)) if b.size else 0.0
            if scale > 0:
                kappa = max(kappa, float(np.max(np.abs(o - b)) / scale) / 1e-6)
    return kappa


def _compare(out_np, out_b, tol, lib, what):
    a_np, a_b = _arrays(out_np), _arrays(out_b)
    assert len(a_np) == len(a_b), what
    for i, (x, y) in enumerate(zip(a_np, a_b)):
        assert type(y).__module__.split(".")[0] in (lib, "jaxlib"), f"{what}: output {i} is a {type(y)}"
        y = to_numpy(y)
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: output {i} {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        err = rel_error(y, x, np)
        assert err <= tol, f"{what}: output {i} relative error {err:.2e} > {tol:.2e}"


FORMS = ("recurrent", "chunked", "minibatch")
MEMORY_CASES = [(n, f) for n in sorted(MEMORIES) for f in FORMS if getattr(MEMORIES[n], f) is not None]


@pytest.mark.parametrize("lib", BACKEND_PARAMS)
@pytest.mark.parametrize("name, form", MEMORY_CASES, ids=[f"{n}-{f}" for n, f in MEMORY_CASES])
def test_memory_numpy_equals_backend(lib, name, form):
    spec = MEMORIES[name]
    f = getattr(spec, form)
    fn = (lambda inp: f(**inp)) if form == "recurrent" else (lambda inp: f(**inp, chunk_size=3))
    T, d_k, d_v = 7, 3, 3
    with refmem.backend(lib) as xb:
        for dtype in ("float64", "float32"):
            inp = spec.make_inputs(4, (2,), T, d_k, d_v, np, "float64")
            kappa = _condition(fn, inp, ("q", "k", "v"), 4)
            tol = _tolerance(kappa, (T + 1) * (d_k + d_v + 4), dtype)
            inp_np = spec.make_inputs(4, (2,), T, d_k, d_v, np, dtype)
            inp_b = spec.make_inputs(4, (2,), T, d_k, d_v, xb, dtype)
            _compare(fn(inp_np), fn(inp_b), tol, lib, f"{name}/{form} {dtype}")


def _level_cases():
    for oname in sorted(OBJECTIVES):
        for rname in sorted(RETENTIONS):
            for step in STEPS:
                for at in (LINEARIZE_AT if step == "explicit" else ("state",)):
                    yield oname, rname, step, at


PARAM_VALUES = {"eta": 0.6, "alpha": 0.85, "b": 2.0, "a": 4.0, "c": 1.0, "p": 3.0, "q": 3.0, "delta": 0.8,
                "beta": 0.5, "lam": 0.3, "gamma": 0.5, "theta": 0.5}


def _instance(cls):
    import inspect

    kwargs = {n: PARAM_VALUES[n] for n in inspect.signature(cls).parameters if n in PARAM_VALUES}
    return cls(**kwargs)


@pytest.mark.parametrize("lib", BACKEND_PARAMS)
def test_every_closed_form_level_numpy_equals_backend(lib):
    """Every (objective, retention, step) with a closed form, one random problem, float64."""
    g = np.random.default_rng(0)
    d_v, d_k = 3, 4
    compared = 0
    with refmem.backend(lib) as xb:
        for oname, rname, step, at in _level_cases():
            level = Level(_instance(OBJECTIVES[oname]), _instance(RETENTIONS[rname]), step, linearize_at=at)
            M_t = g.standard_normal((2, d_v, d_k))
            M_t = np.exp(M_t) / np.exp(M_t).sum(axis=-1, keepdims=True)  # on the simplex: every retention takes it
            k = g.standard_normal((2, d_k)) / np.sqrt(d_k)
            v = g.standard_normal((2, d_v, d_k) if level.objective.keyless else (2, d_v))
            args = (M_t, None if level.objective.keyless else k, v)
            try:
                want = solve(level, *args, method="closed")[0]
            except (ClosedFormUnavailable, ValueError, ArithmeticError):
                continue  # no closed form here, or inputs this level rejects on NumPy too
            fn = lambda inp: solve(level, inp["M_t"], inp["k"], inp["v"], method="closed")[0]  # noqa: E731
            kappa = _condition(fn, {"M_t": M_t, "k": args[1], "v": v}, ("k", "v"), 0)
            got = solve(level, *(None if a is None else xb.asarray(a) for a in args), method="closed")[0]
            _compare(want, got, _tolerance(kappa, 2 * (d_k + d_v + 4), "float64"), lib, level.label)
            compared += 1
    assert compared >= 20, f"only {compared} levels compared"


@pytest.mark.parametrize("lib", BACKEND_PARAMS)
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [True, False])
def test_solve_triangular_extra_matches_scipy(lib, lower, unit):
    import scipy.linalg

    g = np.random.default_rng(1)
    a = g.standard_normal((3, 5, 5)) + 5 * np.eye(5)
    b = g.standard_normal((3, 5, 2))
    with refmem.backend(lib) as xb:
        kernel = backends.extra(xb, "solve_triangular")
        assert kernel is not None
        got = to_numpy(kernel(xb.asarray(a), xb.asarray(b), lower=lower, unit_diagonal=unit))
    want = np.stack([scipy.linalg.solve_triangular(a[i], b[i], lower=lower, unit_diagonal=unit) for i in range(3)])
    assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))


@pytest.mark.parametrize("lib", BACKEND_PARAMS)
def test_jax_and_torch_compute_in_float64(lib):
    with refmem.backend(lib) as xb:
        x = xb.asarray(np.ones(3))
        assert str(x.dtype).endswith("float64"), x.dtype
