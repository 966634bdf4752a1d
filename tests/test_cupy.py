"""The GPU backend plugin ``refmem_cupy``: availability, the switch, agreement with NumPy, no host round trips.

Two groups of tests:

- CPU tests (always run): refmem never imports CuPy; the entry point is
  registered; the probe names each of its three reasons (simulated with a fake
  ``cupy`` module, since a CPU machine has none of them to offer on demand);
  ``refmem backends`` and ``refmem.use`` tell the truth about this machine.
- GPU tests (skipped with the probe's reason where CuPy is not usable, see
  ``pytest -rs``): every registered level and every registered sequence form
  (recurrent, chunked, mini-batch) on NumPy and on CuPy, compared in float64
  and float32 with tolerances derived below; the switch; the extras; and the
  proof that with ``refmem.options(check_finite=False)`` a closed-form solve
  and every scan make no device-to-host transfer (:func:`forbid_device_reads`
  makes any read raise and names the line that read). What is allowed to read:
  input checks (``check_finite=True``, one read per checked array) and
  iterative solvers (one read per iteration, their stopping test). A memory
  form that runs an inner iterative solver declares it in its spec,
  ``MemorySpec(device_reads={form: "why"})``; its
  no-read test is then skipped with that reason when it reads.

They iterate over the registries (``OBJECTIVES`` x ``RETENTIONS`` x steps,
``refmem.memories.MEMORIES``), so a level or memory added later is covered
without new code here.

Tolerances (both comparisons use ``refmem.metrics.rel_error``, max-abs error over
max-abs reference). NumPy and CuPy run the same code with different kernels,
so their results differ by rounding alone. One step of a level or a scan is a
few dot products of length at most ``d_k + d_v``; each has a normwise relative
rounding error of at most ``(d_k + d_v) u`` (``u`` the unit roundoff), T steps
add their errors (the scans are non-expanding or grow at most linearly), and
the read-out adds one more step: ``growth = (T + 1) (d_k + d_v + 4)``. Two
independent computations double it, and rounding acts on inputs and
intermediates alike, so it is amplified by the problem's relative condition
number ``kappa``, which is *measured* here (the relative change of the NumPy
result under a relative perturbation ``delta = 1e-6`` of the data ``q, k, v,
M_t``, divided by ``delta``). A factor 4 covers the max-norm vs normwise
constants. So ``tol = 8 max(kappa, 1) growth u``; in float64 the floor is the
issue's ``1e-12`` (the derived bound only takes over where conditioning and size
demand it); in float32 the same formula with float32's ``u``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import traceback
import types
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem import backends
from refmem.level import LINEARIZE_AT, STEPS, ClosedFormUnavailable, Level, solve
from refmem.metrics import rel_error
from refmem.objectives import OBJECTIVES
from refmem.retentions import RETENTIONS
from refmem_cupy import availability as cupy_probe_module

REPO = pathlib.Path(__file__).resolve().parents[1]
USABLE, REASON = cupy_probe_module.probe()
gpu = pytest.mark.skipif(not USABLE, reason=f"cupy backend not usable: {REASON}")

try:
    from refmem import memories as _memories

    MEMORIES = dict(_memories.MEMORIES)
    MEMORY_LOAD_ERROR = None
except Exception as exc:  # a half-written memory module must not hide the others' results
    MEMORIES, MEMORY_LOAD_ERROR = {}, f"{type(exc).__name__}: {exc}"

DELTA = 1e-6  # relative perturbation of the data for the condition estimate (float64)
F64_FLOOR = 1e-12  # the float64 agreement


# --------------------------------------------------------------------------- CPU tests


BLOCKER = r'''
import importlib.abc, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cupy" or name.startswith(("cupy.", "cupyx", "cupy_backends")):
            attempts.append(name)
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
'''


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_refmem_source_never_imports_cupy():
    """No module of the core package names CuPy in an import (the plugin lives in refmem_cupy)."""
    pattern = re.compile(r"^\s*(import|from)\s+(cupy|cupyx|cupy_backends)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "refmem").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == [], f"refmem must not import cupy; found in {offenders}"


def test_importing_all_of_refmem_never_imports_cupy():
    """Import every refmem module, load every registry, run a solve: no import of cupy is even attempted."""
    code = BLOCKER + r'''
import pkgutil, importlib, refmem, refmem_cupy
for info in pkgutil.walk_packages(refmem.__path__, "refmem."):
    if info.name.endswith("__main__"):
        continue  # running the CLI is not importing
    try:
        importlib.import_module(info.name)
    except Exception as exc:  # another module's own trouble is not this test's subject; a blocked cupy is recorded
        print("IMPORT-ERROR", info.name, repr(exc))
try:
    from refmem.checks import CHECKS  # the registries are complete on import
    from refmem.memories import MEMORIES
except Exception as exc:
    print("LOAD-ERROR", repr(exc))
import array_api_compat.numpy as xp
from refmem.objectives import L2
from refmem.retentions import LocalL2
M, _ = refmem.solve(refmem.Level(L2(), LocalL2(eta=0.5)), xp.zeros((2, 3)), xp.ones(3), xp.ones(2))
refmem_cupy.backend()
print("ATTEMPTS", attempts)
'''
    out = _run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ATTEMPTS []" in out.stdout, out.stdout


def test_entry_point_registers_cupy():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=backends.ENTRY_POINT_GROUP)}
    assert eps.get("cupy") == "refmem_cupy:backend", f"entry points of {backends.ENTRY_POINT_GROUP}: {eps}"
    b = backends._discover()["cupy"]
    assert b.name == "cupy" and set(b.extras) >= {"solve_triangular", "solve", "synchronize"}


class _FakeCudaRuntimeError(RuntimeError):
    """Stands in for ``cupy_backends.cuda.api.runtime.CUDARuntimeError`` (it carries ``.status``)."""

    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


def _fake_cupy(*, count=1, count_error=None, kernel_result=14.0):
    """A module with the parts of CuPy's API the probe touches, failing the way a real machine would."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "0.fake"
    cupy.float64 = "float64"

    def get_device_count():
        if count_error is not None:
            raise count_error
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count,
                                    getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    cupy.cuda = types.SimpleNamespace(runtime=runtime)

    class _Arr:
        def __mul__(self, other):
            return self

        def sum(self):
            return kernel_result

    cupy.arange = lambda n, dtype=None: _Arr()
    return cupy


def _importer(cupy_module):
    def import_module(name):
        if name == "cupy":
            if cupy_module is None:
                raise ModuleNotFoundError("No module named 'cupy'", name="cupy")
            return cupy_module
        if name == "array_api_compat.cupy":
            return types.ModuleType(name)
        return importlib.import_module(name)

    return import_module


@pytest.mark.parametrize(
    "fake, usable, starts",
    [
        (None, False, cupy_probe_module.NOT_INSTALLED),
        (_fake_cupy(count_error=_FakeCudaRuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver version is "
                                                         "insufficient for CUDA runtime version")),
         False, cupy_probe_module.NO_DRIVER),
        (_fake_cupy(count_error=_FakeCudaRuntimeError(34, "cudaErrorStubLibrary: CUDA driver is a stub library")),
         False, cupy_probe_module.NO_DRIVER),
        (_fake_cupy(count_error=RuntimeError("CuPy failed to load libcuda.so.1: OSError")), False,
         cupy_probe_module.NO_DRIVER),
        (_fake_cupy(count_error=_FakeCudaRuntimeError(100, "cudaErrorNoDevice: no CUDA-capable device is detected")),
         False, cupy_probe_module.NO_DEVICE),
        (_fake_cupy(count=0), False, cupy_probe_module.NO_DEVICE),
        (_fake_cupy(kernel_result=13.0), False, "a tiny kernel gave a wrong answer"),
        (_fake_cupy(), True, "CuPy 0.fake on 1 CUDA device(s): Fake GPU"),
    ],
    ids=["not-installed", "no-driver", "stub-driver", "no-libcuda", "no-device", "zero-devices", "bad-kernel", "usable"],
)
def test_probe_names_each_reason(fake, usable, starts):
    got_usable, reason = cupy_probe_module.probe_uncached(_importer(fake))
    assert got_usable is usable
    assert reason.startswith(starts), reason


def test_probe_never_raises():
    def import_module(name):
        raise KeyError("something unexpected")

    usable, reason = cupy_probe_module.probe_uncached(import_module)
    assert usable is False and "KeyError" in reason


def test_probe_reasons_name_the_three_cases():
    assert "not installed" in cupy_probe_module.NOT_INSTALLED
    assert "no usable NVIDIA driver" in cupy_probe_module.NO_DRIVER
    assert "no CUDA device" in cupy_probe_module.NO_DEVICE


def test_backends_command_tells_the_truth_about_this_machine(capsys):
    from refmem.cli import main

    assert main(["backends"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cupy ")]
    assert len(rows) == 1, rows
    if USABLE:
        assert " usable " in rows[0] and "NOT usable" not in rows[0]
    else:
        assert "NOT usable" in rows[0] and REASON in rows[0]
        assert any(r in REASON for r in (cupy_probe_module.NOT_INSTALLED, cupy_probe_module.NO_DRIVER,
                                         cupy_probe_module.NO_DEVICE)) or "failed" in REASON


@pytest.mark.skipif(USABLE, reason="this machine has a usable GPU: the unusable path is not reachable here")
def test_use_cupy_without_gpu_is_a_clear_error():
    with pytest.raises(backends.BackendError, match=re.escape(REASON)):
        refmem.use("cupy")
    with pytest.raises(backends.BackendError, match="not usable"):
        with refmem.backend("cupy"):
            pass
    assert backends.current_name() == "numpy"


# --------------------------------------------------------------------------- helpers for the GPU tests


def _npx():
    import array_api_compat.numpy as npx

    return npx


def _cpx():
    import array_api_compat.cupy as cpx

    return cpx


def _host(a):
    """A NumPy copy of a NumPy or CuPy array (explicit transfer, outside any guarded region)."""
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def _arrays(out):
    """The arrays of a result, in order (tuples and lists flattened; reports and scalars skipped)."""
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, dict):
        return [a for k in sorted(out) for a in _arrays(out[k])]
    return [out] if hasattr(out, "shape") and hasattr(out, "dtype") else []


def _unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def _tolerance(kappa: float, growth: float, dtype) -> float:
    """``8 max(kappa, 1) growth u`` (module docstring); float64 floored at the issue's 1e-12."""
    tol = 8 * max(kappa, 1.0) * growth * _unit_roundoff(dtype)
    return max(tol, F64_FLOOR) if np.dtype(dtype) == np.float64 else tol


STATE_KEYS = ("M_t", "initial_state")


def _condition(fn, inputs: dict, data_keys, seed: int) -> float:
    """Measured relative condition number of ``fn`` w.r.t. the data (float64, NumPy, two trials).

    A state with a constraint (rows on a simplex) may reject the perturbation: then
    the state is held fixed and only the other data are perturbed.
    """
    base = [_host(a) for a in _arrays(fn(inputs))]
    g = np.random.default_rng(seed)
    kappa = 0.0
    for _ in range(2):
        outs = None
        for keys in (data_keys, [k for k in data_keys if k not in STATE_KEYS]):
            pert = dict(inputs)
            for key in keys:
                if inputs.get(key) is not None:
                    x = inputs[key]
                    pert[key] = x * _npx().asarray(1 + DELTA * g.uniform(-1, 1, size=x.shape))
            try:
                outs = [_host(a) for a in _arrays(fn(pert))]
                break
            except ValueError:
                continue
        if outs is None:
            raise AssertionError("the condition estimate found no perturbation the function accepts")
        for b, o in zip(base, outs):
            scale = np.max(np.abs(b)) if b.size else 0.0
            if scale > 0:
                kappa = max(kappa, float(np.max(np.abs(o - b)) / scale) / DELTA)
    return kappa


def _compare(out_np, out_cp, tol, what):
    a_np, a_cp = _arrays(out_np), _arrays(out_cp)
    assert len(a_np) == len(a_cp), f"{what}: NumPy returned {len(a_np)} arrays, CuPy {len(a_cp)}"
    npx = _npx()
    worst = 0.0
    for i, (x, y) in enumerate(zip(a_np, a_cp)):
        assert type(y).__module__.startswith("cupy"), f"{what}: output {i} left the device ({type(y)})"
        assert tuple(x.shape) == tuple(y.shape), f"{what}: output {i} shape {x.shape} vs {y.shape}"
        assert x.dtype == _host(y).dtype, f"{what}: output {i} dtype {x.dtype} vs {y.dtype}"
        err = rel_error(npx.asarray(_host(y)), npx.asarray(x), npx)
        assert np.isfinite(err), f"{what}: output {i} not finite"
        worst = max(worst, err)
    _log_agreement(what, worst, tol)
    assert worst <= tol, f"{what}: relative error {worst:.3e} > tolerance {tol:.3e}"
    return worst


def _log_agreement(what, err, tol):
    """Append ``what, err, tol`` to the JSON-lines file ``$REFMEM_AGREEMENT_LOG`` (set by scripts/gpu_run.sh)."""
    path = os.environ.get("REFMEM_AGREEMENT_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"case": what, "rel_error": err, "tolerance": tol}) + "\n")


# ---- levels

PARAM_VALUES = {  # values for constructor parameters, by name (a later parameter without a default needs one here)
    "eta": 0.6, "alpha": 0.85, "b": 2.0, "a": 4.0, "c": 1.0, "p": 3.0, "q": 3.0, "delta": 0.8,
    "beta": 0.5, "lam": 0.3, "gamma": 0.5, "theta": 0.5,
}


def _instantiate(cls):
    """An instance of a registered objective/retention class with sensible parameters, or a skip reason."""
    kwargs = {}
    for name, par in inspect.signature(cls).parameters.items():
        if par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
            continue
        if name in PARAM_VALUES:
            kwargs[name] = PARAM_VALUES[name]
        elif par.default is par.empty:
            return None, f"{cls.__name__}: no test value for required parameter {name!r} (add it to PARAM_VALUES)"
    try:
        return cls(**kwargs), ""
    except Exception as exc:
        return None, f"{cls.__name__}({kwargs}) failed: {exc!r}"


def _level_cases():
    for oname in sorted(OBJECTIVES):
        for rname in sorted(RETENTIONS):
            for step in STEPS:
                for at in (LINEARIZE_AT if step == "explicit" else ("state",)):
                    yield pytest.param(oname, rname, step, at, id=f"{oname}-{rname}-{step}" + ("" if at == "state" else "-" + at))


def _level(oname, rname, step, at):
    obj, why = _instantiate(OBJECTIVES[oname])
    if obj is None:
        pytest.skip(why)
    ret, why = _instantiate(RETENTIONS[rname])
    if ret is None:
        pytest.skip(why)
    return Level(obj, ret, step, linearize_at=at)


def _level_inputs(level, seed, batch, d_v, d_k, dtype, xp, simplex=False):
    g = np.random.default_rng(seed)
    M_t = g.standard_normal(batch + (d_v, d_k))
    if simplex:  # retentions on a scaled simplex need positive rows summing to c = 1
        M_t = np.exp(M_t)
        M_t = M_t / M_t.sum(axis=-1, keepdims=True)
    k = g.standard_normal(batch + (d_k,)) / np.sqrt(d_k)
    v = g.standard_normal(batch + ((d_v, d_k) if level.objective.keyless else (d_v,)))
    conv = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    return {"M_t": conv(M_t), "k": None if level.objective.keyless else conv(k), "v": conv(v)}


def _solve_closed(level):
    def fn(inp):
        return solve(level, inp["M_t"], inp["k"], inp["v"], method="closed")[0]

    return fn


def _valid_level_inputs(level, seed, batch, d_v, d_k):
    """Inputs the level accepts on NumPy (a random state first, a simplex state if the level rejects it)."""
    fn = _solve_closed(level)
    last = None
    for simplex in (False, True):
        inp = _level_inputs(level, seed, batch, d_v, d_k, "float64", _npx(), simplex)
        try:
            out = fn(inp)
        except (ValueError, ArithmeticError) as exc:
            last = exc
            continue
        if all(np.all(np.isfinite(_host(a))) for a in _arrays(out)):
            return simplex
    raise AssertionError(f"{level.label}: no valid random inputs found on NumPy ({last!r})")


def _closed_form_or_skip(level):
    inp = _level_inputs(level, 0, (), 2, 3, "float64", _npx())
    try:
        _solve_closed(level)(inp)
    except ClosedFormUnavailable as exc:
        pytest.skip(f"no closed form: {exc}")
    except (ValueError, ArithmeticError):  # may need inputs on the simplex (KL retention) to get that far
        try:
            _solve_closed(level)(_level_inputs(level, 0, (), 2, 3, "float64", _npx(), True))
        except ClosedFormUnavailable as exc:
            pytest.skip(f"no closed form: {exc}")
        except (ValueError, ArithmeticError):
            pass  # decided per example


level_shapes = st.tuples(
    st.integers(0, 2**16),  # seed
    st.sampled_from([(), (3,), (2, 2)]),  # batch
    st.integers(1, 6),  # d_v
    st.integers(1, 6),  # d_k
)


@gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("oname, rname, step, at", list(_level_cases()))
def test_level_numpy_equals_cupy(oname, rname, step, at, dtype):
    level = _level(oname, rname, step, at)
    _closed_form_or_skip(level)
    fn = _solve_closed(level)

    @settings(max_examples=10, deadline=None)  # the first GPU call of a kernel compiles it (seconds)
    @given(level_shapes)
    def check(shape):
        seed, batch, d_v, d_k = shape
        simplex = _valid_level_inputs(level, seed, batch, d_v, d_k)
        kappa = _condition(fn, _level_inputs(level, seed, batch, d_v, d_k, "float64", _npx(), simplex),
                           ("M_t", "k", "v"), seed)
        tol = _tolerance(kappa, 2 * (d_k + d_v + 4), dtype)  # one step (T = 1): growth (T+1)(d_k+d_v+4)
        out_np = fn(_level_inputs(level, seed, batch, d_v, d_k, dtype, _npx(), simplex))
        out_cp = fn(_level_inputs(level, seed, batch, d_v, d_k, dtype, _cpx(), simplex))
        _compare(out_np, out_cp, tol, f"{level.label} {dtype} batch={batch} d_v={d_v} d_k={d_k}")

    check()


# ---- sequence memories

FORMS = ("recurrent", "chunked", "minibatch")


def _memory_cases():
    if MEMORY_LOAD_ERROR:
        yield pytest.param("<registry>", "recurrent", id="registry-load-error")
        return
    for name in sorted(MEMORIES):
        for form in FORMS:
            if getattr(MEMORIES[name], form) is not None:
                yield pytest.param(name, form, id=f"{name}-{form}")


def _form_fn(spec, form, chunk_size):
    f = getattr(spec, form)
    if form == "recurrent":
        return lambda inp: f(**inp)
    return lambda inp: f(**inp, chunk_size=chunk_size)


def _memory_inputs(spec, seed, batch, T, d_k, d_v, xp, dtype, with_state):
    inp = dict(spec.make_inputs(seed, batch, T, d_k, d_v, xp, dtype))
    if with_state:
        g = np.random.default_rng(seed + 1)
        inp["initial_state"] = xp.asarray(np.asarray(g.standard_normal(tuple(batch) + (d_v, d_k)) / np.sqrt(d_k),
                                                     dtype=dtype))
    return inp


def _valid_memory_setup(spec, fn, seed, batch, T, d_k, d_v, with_state):
    """(d_v, with_state) the memory accepts on NumPy: equal widths or no initial state if it rejects them."""
    tries = [(d_v, with_state), (d_k, with_state), (d_v, False), (d_k, False)]
    last = None
    for dv, ws in tries:
        try:
            fn(_memory_inputs(spec, seed, batch, T, d_k, dv, _npx(), "float64", ws))
            return dv, ws
        except (ValueError, TypeError) as exc:
            last = exc
    raise AssertionError(f"{spec.name}: no valid inputs found on NumPy ({last!r})")


memory_shapes = st.tuples(
    st.integers(0, 2**16),  # seed
    st.sampled_from([(1,), (2,), (2, 2)]),  # batch / heads
    st.integers(1, 20),  # T
    st.integers(1, 6),  # d_k
    st.integers(1, 6),  # d_v
    st.integers(1, 8),  # chunk size
    st.booleans(),  # with an initial state
)


@gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, form", list(_memory_cases()))
def test_memory_numpy_equals_cupy(name, form, dtype):
    if MEMORY_LOAD_ERROR:
        pytest.fail(f"importing refmem.memories failed: {MEMORY_LOAD_ERROR}")
    spec = MEMORIES[name]
    if spec.make_inputs is None:
        pytest.skip(f"memory {name!r} registers no make_inputs")

    @settings(max_examples=8, deadline=None)  # the first GPU call of a kernel compiles it (seconds)
    @given(memory_shapes)
    def check(shape):
        seed, batch, T, d_k, d_v, C, with_state = shape
        fn = _form_fn(spec, form, C)
        d_v, with_state = _valid_memory_setup(spec, fn, seed, batch, T, d_k, d_v, with_state)
        data = [k for k in ("q", "k", "v", "initial_state")]
        kappa = _condition(fn, _memory_inputs(spec, seed, batch, T, d_k, d_v, _npx(), "float64", with_state), data, seed)
        tol = _tolerance(kappa, (T + 1) * (d_k + d_v + 4), dtype)
        out_np = fn(_memory_inputs(spec, seed, batch, T, d_k, d_v, _npx(), dtype, with_state))
        out_cp = fn(_memory_inputs(spec, seed, batch, T, d_k, d_v, _cpx(), dtype, with_state))
        _compare(out_np, out_cp, tol, f"{name}/{form} {dtype} batch={batch} T={T} d_k={d_k} d_v={d_v} C={C}")

    check()


# ---- no host round trips


class DeviceRead(AssertionError):
    """A device-to-host transfer or a device synchronisation happened where none is allowed."""


READ_METHODS = ("get", "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__")


def _culprit() -> str:
    """Where the read came from: the innermost refmem frame and the innermost frame overall."""
    frames = [f for f in traceback.extract_stack()[:-2] if not f.filename.endswith("test_cupy.py")]
    ours = [f for f in frames if f"{os.sep}refmem{os.sep}" in f.filename]

    def at(f):
        parts = pathlib.Path(f.filename).parts
        return f"{'/'.join(parts[-3:])}:{f.lineno} in {f.name}"

    where = f"at {at(ours[-1])}" if ours else "outside refmem"
    return where + (f" (innermost: {at(frames[-1])})" if frames and (not ours or frames[-1] is not ours[-1]) else "")


@contextlib.contextmanager
def forbid_device_reads():
    """Make every device-to-host read raise :class:`DeviceRead` inside the block.

    ``cupy.ndarray`` is a Python subclass of CuPy's Cython base class, so its
    read methods can be replaced: ``.get()``, ``.item()``, ``.tolist()``,
    ``bool()``, ``float()``, ``int()``, ``operator.index``, ``complex()``,
    ``numpy.asarray()`` (``__array__``), plus ``cupy.asnumpy``. CuPy's own
    synchronisation detector (``cupyx.allow_synchronize(False)``, where this CuPy
    still has it) also catches stream and device synchronisations in CuPy's
    internals that go through ``get`` (e.g. a cuSOLVER status read). A bare
    ``Stream.synchronize()`` is not a transfer and is not caught (measured on
    CuPy 14.2: the detector does not see it).
    """
    import cupy
    import cupyx

    saved = {n: cupy.ndarray.__dict__.get(n) for n in READ_METHODS}

    def forbidden(name):
        def method(self, *args, **kwargs):
            raise DeviceRead(f"device-to-host read: cupy.ndarray.{name} on an array of shape {self.shape}"
                             f" {_culprit()}")

        return method

    saved_asnumpy = cupy.asnumpy
    for n in READ_METHODS:
        setattr(cupy.ndarray, n, forbidden(n))
    cupy.asnumpy = lambda *a, **k: (_ for _ in ()).throw(DeviceRead("device-to-host read: cupy.asnumpy"))
    sync = getattr(cupyx, "allow_synchronize", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # allow_synchronize is deprecated in CuPy >= 10 (still works)
        ctx = sync(False) if sync is not None else contextlib.nullcontext()
    try:
        with ctx:
            yield
    except getattr(cupyx, "DeviceSynchronized", DeviceRead) as exc:
        raise DeviceRead(f"device synchronisation: {exc}") from exc
    finally:
        for n, orig in saved.items():
            if orig is None:
                delattr(cupy.ndarray, n)
            else:
                setattr(cupy.ndarray, n, orig)
        cupy.asnumpy = saved_asnumpy


@gpu
def test_guard_catches_every_kind_of_read():
    """The guard is not vacuous: each way of reading the device raises inside it, and works again after."""
    import operator

    import cupy

    cpx = _cpx()
    x = cpx.asarray(np.arange(3.0))
    reads = [lambda: float(cpx.sum(x)), lambda: bool(cpx.all(x > -1)), lambda: x.get(), lambda: x[0].item(),
             lambda: x.tolist(), lambda: int(cpx.sum(x)), lambda: np.asarray(x), lambda: cupy.asnumpy(x),
             lambda: operator.index(cpx.astype(cpx.sum(x), cpx.int64))]
    for i, read in enumerate(reads):
        try:
            with forbid_device_reads():
                read()
        except DeviceRead:
            continue
        pytest.fail(f"read {i} of {len(reads)} was not caught by the guard")
    assert float(cpx.sum(x)) == 3.0 and x.get().tolist() == [0.0, 1.0, 2.0]


@gpu
@pytest.mark.parametrize("oname, rname, step, at", list(_level_cases()))
def test_closed_form_solve_makes_no_device_read(oname, rname, step, at):
    level = _level(oname, rname, step, at)
    _closed_form_or_skip(level)
    simplex = _valid_level_inputs(level, 5, (4,), 3, 5)
    inp = _level_inputs(level, 5, (4,), 3, 5, "float64", _cpx(), simplex)
    with refmem.options(check_finite=False), forbid_device_reads():
        M, _ = solve(level, inp["M_t"], inp["k"], inp["v"], method="closed")
    assert type(M).__module__.startswith("cupy")


@gpu
@pytest.mark.parametrize("name, form", list(_memory_cases()))
def test_scan_makes_no_device_read(name, form):
    if MEMORY_LOAD_ERROR:
        pytest.fail(f"importing refmem.memories failed: {MEMORY_LOAD_ERROR}")
    spec = MEMORIES[name]
    if spec.make_inputs is None:
        pytest.skip(f"memory {name!r} registers no make_inputs")
    fn = _form_fn(spec, form, 4)
    d_v, _ = _valid_memory_setup(spec, fn, 3, (2,), 11, 4, 5, False)
    inp = _memory_inputs(spec, 3, (2,), 11, 4, d_v, _cpx(), "float64", False)
    declared = _declared_reads(spec, form)
    try:
        with refmem.options(check_finite=False), forbid_device_reads():
            out = fn(inp)
    except DeviceRead as exc:
        if declared:
            pytest.skip(f"{name}/{form} declares device reads ({declared}); first read: {exc}")
        raise
    assert all(type(a).__module__.startswith("cupy") for a in _arrays(out))


def _declared_reads(spec, form) -> str:
    """A memory whose form runs an inner iterative solver (one stopping-test read per iteration) says so:
    ``MemorySpec(device_reads={"chunked": "why"})``, one entry per form."""
    return str(spec.device_reads.get(form) or "")


@gpu
def test_checked_inputs_and_iterative_solvers_do_read_the_device():
    """What the no-read guarantee excludes, shown: input checks (check_finite=True) and iterative stopping tests."""
    from refmem.objectives import L2
    from refmem.retentions import LocalL2

    level = Level(L2(), LocalL2(eta=0.5), "implicit")
    inp = _level_inputs(level, 1, (2,), 3, 4, "float64", _cpx())
    with pytest.raises(DeviceRead):
        with forbid_device_reads():
            solve(level, inp["M_t"], inp["k"], inp["v"], method="closed")
    with pytest.raises(DeviceRead):
        with refmem.options(check_finite=False), forbid_device_reads():
            solve(level, inp["M_t"], inp["k"], inp["v"], method="iterative")


# ---- the switch


@gpu
def test_use_and_backend_switch_to_cupy():
    from refmem.problems import level_problem

    try:
        refmem.use("cupy")
        assert backends.current_name() == "cupy"
        M_t, k, v = level_problem(0, d_v=2, d_k=3)
        assert type(M_t).__module__.startswith("cupy")
    finally:
        refmem.use("numpy")
    with refmem.backend("cupy") as xp:
        M_t, k, v = level_problem(0, d_v=2, d_k=3)
        assert type(M_t).__module__.startswith("cupy") and xp.__name__.endswith("cupy")
    assert backends.current_name() == "numpy"


@gpu
def test_passing_cupy_arrays_keeps_results_on_device():
    import cupy

    from refmem.objectives import L2
    from refmem.retentions import LocalL2

    g = np.random.default_rng(2)
    M_t, k, v = (cupy.asarray(g.standard_normal(s)) for s in ((3, 4), (4,), (3,)))
    M, report = solve(Level(L2(), LocalL2(eta=0.5), "implicit"), M_t, k, v)
    assert isinstance(M, cupy.ndarray) and report.method == "closed"
    M_it, _ = solve(Level(L2(), LocalL2(eta=0.5), "implicit"), M_t, k, v, method="iterative")
    assert isinstance(M_it, cupy.ndarray)
    # closed vs iterative on the GPU: CG stops at relative optimality 1e-12 on a problem of
    # condition 1 + eta ||k||^2 < 10, so 1e-10 (the project default) holds with margin
    assert rel_error(M_it, M, _cpx()) <= 1e-10


@gpu
def test_verify_runs_on_cupy():
    from refmem.verify import run_checks

    rows = run_checks("cupy", spec_filter=["l2"])
    assert rows, "no checks for spec l2"
    numpy_only = [r for r in rows if "NumPy" in r["check"] or "SciPy" in r["check"] or "scipy" in r["check"]]
    failing = [r for r in rows if r["status"] != "pass" and r not in numpy_only]
    assert not failing, "\n".join(f"{r['check']}: {r['max_error']} > {r['tolerance']} {r['error']}" for r in failing)


@gpu
def test_verify_cli_backend_flag(capsys):
    from refmem.cli import main

    main(["verify", "--backend", "cupy", "--spec", "dot"])
    out = capsys.readouterr().out
    assert "passed" in out


# ---- extras


@gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [True, False])
def test_solve_triangular_extra_matches_scipy(lower, unit, dtype):
    import scipy.linalg

    st_ = backends.extra(_cpx(), "solve_triangular")
    g = np.random.default_rng(4)
    n, m, batch = 7, 3, (2, 3)
    A = g.standard_normal(batch + (n, n)) + 4 * np.eye(n)  # diagonally dominant: cond(A) = O(1)
    B = g.standard_normal(batch + (n, m))
    A, B = A.astype(dtype), B.astype(dtype)
    X = st_(_cpx().asarray(A), _cpx().asarray(B), lower=lower, unit_diagonal=unit)
    ref = np.stack([scipy.linalg.solve_triangular(A[i, j], B[i, j], lower=lower, unit_diagonal=unit)
                    for i in range(batch[0]) for j in range(batch[1])]).reshape(batch + (n, m))
    # forward/back substitution is backward stable: error <= cond(A) * n * u with cond(A) small here
    # (|off-diagonal| ~ 1 against a diagonal ~ 4 (or 1 with unit_diagonal: growth up to 2^n)); 2^n n u covers both
    tol = 2.0**n * n * _unit_roundoff(dtype) * 8
    assert rel_error(_npx().asarray(_host(X)), _npx().asarray(ref), _npx()) <= tol
    # a broadcast against a batch of b, and a 1-D b (a vector, as in numpy.linalg.solve)
    x1 = st_(_cpx().asarray(A[0, 0]), _cpx().asarray(B[..., :1]), lower=lower, unit_diagonal=unit)
    assert tuple(x1.shape) == batch + (n, 1)
    assert rel_error(_npx().asarray(_host(x1)[0, 0]), _npx().asarray(ref[0, 0, :, :1]), _npx()) <= tol
    x2 = st_(_cpx().asarray(A[0, 0]), _cpx().asarray(B[0, 0, :, 0]), lower=lower, unit_diagonal=unit)
    assert tuple(x2.shape) == (n,)
    assert rel_error(_npx().asarray(_host(x2)), _npx().asarray(ref[0, 0, :, 0]), _npx()) <= tol


@gpu
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [True, False])
def test_solve_triangular_fallback_matches_scipy(lower, unit, monkeypatch):
    """The LU fallback (a CuPy whose solve_triangular takes no batches) gives the same solution."""
    import cupyx.scipy.linalg
    import scipy.linalg

    real = cupyx.scipy.linalg.solve_triangular

    def two_d_only(a, b, **kw):
        if a.ndim > 2:
            raise ValueError("expected square matrix")  # what CuPy < 13 says for a batch
        return real(a, b, **kw)

    monkeypatch.setattr(cupyx.scipy.linalg, "solve_triangular", two_d_only)
    g = np.random.default_rng(9)
    n, batch = 6, (3,)
    A = g.standard_normal(batch + (n, n)) + 4 * np.eye(n)
    B = g.standard_normal(batch + (n, 2))
    X = backends.extra(_cpx(), "solve_triangular")(_cpx().asarray(A), _cpx().asarray(B), lower=lower,
                                                  unit_diagonal=unit)
    ref = np.stack([scipy.linalg.solve_triangular(A[i], B[i], lower=lower, unit_diagonal=unit) for i in range(3)])
    tol = 2.0**n * n * _unit_roundoff("float64") * 8  # as in the test above (LU of a triangle: same bound)
    assert rel_error(_npx().asarray(_host(X)), _npx().asarray(ref), _npx()) <= tol


@gpu
def test_singular_systems_raise_instead_of_returning_garbage():
    cpx = _cpx()
    A = np.array([[[1.0, 2.0], [2.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]])  # first matrix singular
    B = np.ones((2, 2, 1))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        backends.extra(cpx, "solve")(cpx.asarray(A), cpx.asarray(B))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        backends.extra(cpx, "solve")(cpx.asarray(A[0]), cpx.asarray(B[0]))
    L = np.tril(np.ones((3, 3)))
    L[1, 1] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="diagonal"):
        backends.extra(cpx, "solve_triangular")(cpx.asarray(L), cpx.asarray(np.ones((3, 1))), lower=True)
    x = backends.extra(cpx, "solve")(cpx.asarray(A[1]), cpx.asarray(B[1]))  # a regular system still solves
    assert np.array_equal(_host(x), B[1])


@gpu
def test_synchronize_extra_waits_for_the_stream():
    import cupy

    x = cupy.ones((512, 512))
    y = x @ x
    backends.extra(_cpx(), "synchronize")()
    assert cupy.cuda.get_current_stream().done
    assert float(y[0, 0]) == 512.0


@gpu
def test_peak_bytes_extra_counts_pool_allocations():
    """A call that holds 1 MiB while making and dropping a 2 MiB temporary peaks at 3 MiB (block-rounded)."""
    import cupy

    peak_bytes = backends.extra(_cpx(), "peak_bytes")
    MiB = 1 << 20

    def fn():
        kept = cupy.zeros(MiB // 8)  # 1 MiB of float64
        tmp = cupy.ones(2 * MiB // 8)  # 2 MiB, dropped before returning
        kept += tmp[: MiB // 8]
        del tmp
        return kept

    assert peak_bytes(fn) == 3 * MiB  # both sizes are multiples of the 512-byte block: no rounding
    assert peak_bytes(lambda: None) == 0


def test_cpu_backends_need_no_synchronize():
    """On CPU backends there is nothing to wait for: ``extra(xp, "synchronize")`` is None (documented) or a no-op."""
    sync = backends.extra(_npx(), "synchronize")
    assert sync is None or sync() is None


def test_docs_name_both_cuda_wheels():
    import refmem_cupy

    text = (REPO / "README.md").read_text() + (refmem_cupy.__doc__ or "")
    assert "cupy-cuda12x" in text and "cupy-cuda13x" in text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^cupy = \["cupy-cuda12x', pyproject, re.M) and "cupy-cuda13x" in pyproject
